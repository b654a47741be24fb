"""Config validation (every bad value named with its allowed values) and the expansion into variants."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from cnnablate.config import (
    ConfigError,
    Study,
    job_param,
    load_config,
    read_job_param,
    validate_config,
    variant_id,
)
from conftest import ROOT, snakemake, tiny_config, write_config

BAD_CONFIGS = [
    ({"colour": "red"}, "colour: unknown key"),
    ({"base": {"arch": "transformer"}}, "base.arch"),
    ({"base": {"pool": "median"}}, "base.pool"),
    ({"base": {"norm": "weight"}}, "base.norm"),
    ({"base": {"kernel_size": 4}}, "base.kernel_size"),
    ({"base": {"dilation": 0}}, "base.dilation"),
    ({"ablations": {"pooling": {"pool": []}}}, "ablations.pooling.pool"),
    ({"ablations": {"pooling": {"pool": ["max", "median"]}}}, "ablations.pooling.pool.1"),
    ({"ablations": {"kernels": {"kernel_size": [3, 6]}}}, "ablations.kernels.kernel_size.1"),
    ({"ablations": {"typo": {"pooling": ["max"]}}}, "ablations.typo"),
    ({"ablations": {"kernels": {"kernel_size": [5, 5]}}}, "ablations.kernels.kernel_size"),
    ({"seeds": [0, "one"]}, "seeds.1"),
    ({"seeds": []}, "seeds"),
    ({"train": {"max_steps": 0}}, "train.max_steps"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset"),
    ({"data": {"validation": 0}}, "data.validation"),
    ({"data": {"validation": 1.5}}, "data.validation"),
    ({"tune": {"lrs": []}}, "tune.lrs"),
    ({"tune": {"lrs": [0.1, -1]}}, "tune.lrs.1"),
    ({"tune": {"train_subset": 0}}, "tune.train_subset"),
    ({"tune": {"bogus": 1}}, "tune"),
]


def _merge(base: dict, change: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "ablations":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.mark.parametrize(("change", "named"), BAD_CONFIGS)
def test_bad_config_names_the_key(change: dict, named: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(_merge(tiny_config(), change))
    assert named in str(error.value)


@pytest.mark.parametrize(
    ("change", "allowed"),
    [
        ({"base": {"arch": "transformer"}}, "allowed values: fc, local, conv"),
        ({"base": {"pool": "median"}}, "allowed values: max, avg, stride, none"),
        ({"base": {"norm": "weight"}}, "allowed values: none, batch, layer, group, instance, nf"),
        ({"base": {"kernel_size": 4}}, "odd integer"),
        ({"train": {"max_steps": 0}}, "Cap on optimiser steps"),
    ],
)
def test_bad_value_lists_allowed_values(change: dict, allowed: str) -> None:
    with pytest.raises(ConfigError, match=r"allowed|expected") as error:
        validate_config(_merge(tiny_config(), change))
    assert allowed in str(error.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"batchsize": 64}}, "train.batchsize: unknown key; did you mean train.batch_size?"),
        ({"train": {"lrs": [0.1]}}, "train.lrs: unknown key; did you mean tune.lrs?"),
        ({"base": {"kernelsize": 5}}, "base.kernelsize: unknown key; did you mean base.kernel_size?"),
        (
            {"base": {"norm": "weight"}},
            "base.norm: 'weight' is not allowed; allowed values: none, batch, layer, group, instance, nf",
        ),
    ],
)
def test_config_error_is_one_line_with_the_closest_key_or_the_allowed_values_once(change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(_merge(tiny_config(), change))
    assert str(error.value) == message


def test_missing_base_is_named_without_the_schema_description() -> None:
    config = tiny_config()
    del config["base"]
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert str(error.value) == "base: required, but missing"


def _npz_config(path) -> dict:
    return tiny_config(data={"dataset": "npz", "path": str(path)})


def test_npz_file_and_layout_are_checked_before_any_job(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^data.path: .*missing.npz does not exist"):
        validate_config(_npz_config(tmp_path / "missing.npz"))
    labels = np.arange(20) % 2
    channels_first = np.zeros((20, 3, 32, 32), np.uint8)
    path = tmp_path / "nchw.npz"
    np.savez(path, x_train=channels_first, y_train=labels, x_test=channels_first, y_test=labels)
    with pytest.raises(ConfigError, match=r"x_train is channels-first \(N x C x H x W = \(20, 3, 32, 32\)\)"):
        validate_config(_npz_config(path))
    np.savez(path, x_train=channels_first.transpose(0, 2, 3, 1), y_train=labels, x_test=channels_first, y_test=labels)
    with pytest.raises(ConfigError, match="x_test is channels-first"):
        validate_config(_npz_config(path))


def test_job_params_leave_neutral_keys_out_and_the_job_gets_them_back() -> None:
    spec = Study.from_config(validate_config(tiny_config())).variants["base"].spec
    assert spec["dropout"] == 0.0
    assert "dropout" not in json.loads(job_param("model", spec))
    assert json.loads(job_param("model", {**spec, "dropout": 0.1}))["dropout"] == 0.1
    assert json.loads(job_param("model", spec))["residual"] is False  # no neutral: kept, so a new default reruns
    assert read_job_param(job_param("model", spec), "model") == spec


def test_defaults_are_filled_in() -> None:
    config = validate_config({"study": "x", "data": {"dataset": "synthetic"}, "train": {}, "seeds": [0], "base": {}})
    assert config["train"]["max_steps"] == 10000
    assert config["train"]["patience"] == 500
    assert config["data"]["validation"] == 0.1
    assert config["tune"]["enabled"] is True
    assert config["base"]["kernel_size"] == 3
    assert config["base"]["pool"] == "max"
    assert config["mlflow"]["tracking_uri"] == "sqlite:///results/mlflow.db"
    assert config["data"]["synthetic"]["num_classes"] == 10


def test_variant_equal_to_base_is_trained_once() -> None:
    config = validate_config(
        tiny_config(ablations={"a": {"pool": ["max", "avg"]}, "b": {"pool": ["avg", "none"]}, "c": {"arch": ["conv"]}})
    )
    study = Study.from_config(config)
    assert list(study.variants) == ["base", "pool-avg", "pool-none"]
    assert study.variants["pool-avg"].ablations == ("a", "b")


def test_block_with_several_axes_is_their_product() -> None:
    config = validate_config(tiny_config(ablations={"grid": {"pool": ["max", "avg"], "kernel_size": [3, 5]}}))
    study = Study.from_config(config)
    assert sorted(study.variants) == ["base", "kernel_size-5", "kernel_size-5_pool-avg", "pool-avg"]


def test_variant_ids_are_readable_and_stable() -> None:
    base = validate_config(tiny_config())["base"]
    assert variant_id(base, base) == "base"
    assert variant_id({**base, "widths": [8, 16], "width": 0.5}, base) == "widths-8x16_width-0.5"
    assert variant_id({**base, "norm": "group", "pool": "avg"}, base) == "pool-avg_norm-group"


def test_real_config_validates() -> None:
    study = Study.from_config(load_config(ROOT / "config" / "config.yaml"))
    assert {
        "arch-fc",
        "arch-local",
        "pool-stride",
        "norm-instance",
        "dilation-4",
        "kernel_size-7",
        "activation-gelu",
        "width-2",
    } <= set(study.variants)


@pytest.mark.e2e
def test_dry_run_lists_one_tuning_job_per_variant_and_one_training_job_per_variant_and_seed(tmp_path) -> None:
    config = load_config(ROOT / "config" / "config.yaml")
    variants = len(Study.from_config(config).variants)
    expected = variants * len(config["seeds"])
    result = snakemake(tmp_path, ROOT / "config" / "config.yaml", "-n", "--quiet", "rules")
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in result.stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    assert counts["train"] == expected == 60
    assert counts["tune"] == variants == 20
    assert counts["tuning_table"] == 1
    assert counts["download_data"] == 1
    assert counts["mlflow_setup"] == 1


@pytest.mark.e2e
def test_tuning_off_runs_no_tuning_job(tmp_path) -> None:
    config = write_config(tmp_path, tiny_config(tune={"enabled": False}))
    result = snakemake(tmp_path, config, "-n", "--quiet", "rules")
    assert "tune" not in result.stdout
    assert "tuning_table" not in result.stdout
    assert "train" in result.stdout


@pytest.mark.e2e
def test_snakemake_rejects_bad_config_before_any_job(tmp_path) -> None:
    bad = write_config(tmp_path, _merge(tiny_config(), {"base": {"kernel_size": 4}}))
    result = snakemake(tmp_path, bad, "--cores", "1", check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "profile" not in line]
    assert errors == ["config error: base.kernel_size: 4 is not allowed; expected: " + errors[0].split("expected: ")[1]]
    assert "File " not in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_a_spec_saved_before_a_neutral_axis_existed_gets_the_neutral_value_back() -> None:
    from cnnablate.config import with_neutral

    spec = validate_config(tiny_config())["base"]
    older = {key: value for key, value in spec.items() if key != "dropout"}
    assert with_neutral("model", older) == spec
    assert with_neutral("model", {**spec, "dropout": 0.3})["dropout"] == 0.3  # a value it has stays
