"""Config validation (every bad value named with its allowed values) and the expansion into variants."""

from __future__ import annotations

import copy

import pytest

from cnnablate.config import ConfigError, Study, load_config, validate_config, variant_id
from conftest import ROOT, snakemake, tiny_config, write_config

BAD_CONFIGS = [
    ({"colour": "red"}, "unknown key(s) ['colour']"),
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
        ({"base": {"arch": "transformer"}}, "['fc', 'local', 'conv']"),
        ({"base": {"pool": "median"}}, "['max', 'avg', 'stride', 'none']"),
        ({"base": {"norm": "weight"}}, "['none', 'batch', 'layer', 'group', 'instance', 'nf']"),
        ({"base": {"kernel_size": 4}}, "odd integer"),
        ({"train": {"max_steps": 0}}, "Cap on optimiser steps"),
    ],
)
def test_bad_value_lists_allowed_values(change: dict, allowed: str) -> None:
    with pytest.raises(ConfigError, match=r"allowed|expected") as error:
        validate_config(_merge(tiny_config(), change))
    assert allowed in str(error.value)


def test_defaults_are_filled_in() -> None:
    config = validate_config({"study": "x", "data": {"dataset": "synthetic"}, "train": {}, "seeds": [0], "base": {}})
    assert config["train"]["max_steps"] == 10000 and config["train"]["patience"] == 500
    assert config["data"]["validation"] == 0.1 and config["tune"]["enabled"] is True
    assert config["base"]["kernel_size"] == 3 and config["base"]["pool"] == "max"
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
    assert counts["tune"] == variants == 20 and counts["tuning_table"] == 1
    assert counts["download_data"] == 1 and counts["mlflow_setup"] == 1


@pytest.mark.e2e
def test_tuning_off_runs_no_tuning_job(tmp_path) -> None:
    config = write_config(tmp_path, tiny_config(tune={"enabled": False}))
    result = snakemake(tmp_path, config, "-n", "--quiet", "rules")
    assert "tune" not in result.stdout and "tuning_table" not in result.stdout
    assert "train" in result.stdout


@pytest.mark.e2e
def test_snakemake_rejects_bad_config_before_any_job(tmp_path) -> None:
    bad = write_config(tmp_path, _merge(tiny_config(), {"base": {"kernel_size": 4}}))
    result = snakemake(tmp_path, bad, "--cores", "1", check=False)
    assert result.returncode != 0
    assert "base.kernel_size" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()
