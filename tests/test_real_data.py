"""benchmarks/real_data.py: its real datasets are balanced, reproducible and read by the workflow as they are;
its config is the demo's; its table reads every run's numbers; end to end, it prints a row per variant."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cnnablate.config import ConfigError, Study, validate_config
from cnnablate.data import ArrayDataset, prepare_dataset, read_npz
from conftest import ROOT, TINY_CONFIG, workflow_env

spec = importlib.util.spec_from_file_location("real_data", ROOT / "benchmarks" / "real_data.py")
real_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real_data)

DEMO = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
SIZES = {"digits": (1797, 10), "textures": (768, 3)}  # images and classes each source has


@pytest.fixture(scope="module", params=sorted(real_data.DATASETS))
def source(request: pytest.FixtureRequest) -> tuple[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """A dataset's name and its images, labels and class names before the split."""
    return request.param, real_data.DATASETS[request.param]()


def test_images_are_32x32_grey_rgb_uint8_using_the_whole_range(source) -> None:
    name, (images, labels, classes) = source
    count, num_classes = SIZES[name]
    assert images.shape == (count, 32, 32, 3)
    assert images.dtype == np.uint8
    assert labels.shape == (count,)
    assert labels.dtype == np.int64
    assert len(classes) == num_classes
    assert (images == images[..., :1]).all()  # grey, copied into three channels
    assert images.min() == 0
    assert images.max() >= 240
    # every class is there, and no class is tiny (digits: 174-183 images each; textures: 256 each)
    assert np.bincount(labels).min() >= 0.9 * count / num_classes


def test_digit_strokes_are_upscaled_bilinearly_not_blocky() -> None:
    images, _, _ = real_data.digits_images()
    grey = images[..., 0].astype(int)
    # nearest-neighbour upscaling repeats each source pixel in 4x4 blocks; bilinear varies inside them
    assert (grey[:, :, 1:] != grey[:, :, :-1]).mean() > 0.3


def test_the_test_split_is_a_stratified_quarter_of_every_image_once(source) -> None:
    name, (images, labels, _) = source
    dataset = real_data.build_dataset(name, seed=0)
    assert len(dataset.y_test) == round(real_data.TEST_FRACTION * len(labels))
    counts, test_counts = np.bincount(labels), np.bincount(dataset.y_test, minlength=len(np.bincount(labels)))
    assert np.abs(test_counts - real_data.TEST_FRACTION * counts).max() <= 1
    # train and test together are the source, each image once (sorted rows of pixels and label)
    rows = np.concatenate([dataset.x_train, dataset.x_test]).reshape(len(labels), -1)
    both = np.column_stack([rows, np.concatenate([dataset.y_train, dataset.y_test])])
    source_rows = np.column_stack([images.reshape(len(labels), -1), labels])
    assert np.array_equal(np.unique(both, axis=0), np.unique(source_rows, axis=0))
    assert len(both) == len(source_rows)


def test_a_seed_fixes_the_split_and_an_identical_file_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "digits.npz"
    first = real_data.write_dataset("digits", path, seed=0)
    written = path.stat().st_mtime_ns
    again = real_data.write_dataset("digits", path, seed=0)
    assert np.array_equal(first.y_test, again.y_test)
    assert np.array_equal(first.x_test, again.x_test)
    assert path.stat().st_mtime_ns == written  # Snakemake would otherwise retrain every finished run
    other = real_data.write_dataset("digits", path, seed=1)
    assert not np.array_equal(first.x_test, other.x_test)
    assert np.array_equal(read_npz(path).x_test, other.x_test)  # a changed split is written


def test_the_workflow_reads_the_file_and_carves_its_validation_split(source, tmp_path: Path) -> None:
    name, _ = source
    path = tmp_path / f"{name}.npz"
    built = real_data.write_dataset(name, path)
    read = read_npz(path)
    assert read.classes == built.classes
    assert np.array_equal(read.x_train, built.x_train)
    config = validate_config(real_data.study_config(DEMO, path, f"real-{name}", [0], train_size=200))
    prepared = prepare_dataset(config["data"])
    assert isinstance(prepared, ArrayDataset)
    assert len(prepared.y_train) + len(prepared.y_val) == 200
    assert len(prepared.y_val) == 20
    assert np.array_equal(prepared.x_test, built.x_test)
    assert set(np.unique(prepared.y_val)) == set(range(len(built.classes)))


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    """A valid npz at tmp_path/d.npz: the config checks the file and its layout before anything runs."""
    images, labels = np.zeros((20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10
    np.savez(tmp_path / "d.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    return tmp_path / "d.npz"


def test_the_config_is_the_demo_reading_the_npz(tmp_path: Path, npz: Path) -> None:
    config = real_data.study_config(DEMO, tmp_path / "d.npz", "real-digits", [0])
    assert config["data"] == {"dataset": "npz", "path": str((tmp_path / "d.npz").resolve())}
    assert config["seeds"] == [0]
    assert config["study"] == "real-digits"
    assert {key: config[key] for key in ("train", "tune", "base", "ablations")} == {
        key: DEMO[key] for key in ("train", "tune", "base", "ablations")
    }
    study = Study.from_config(validate_config(config))
    assert len(study.variants) == 15
    assert len(real_data.run_targets(study)) == 15


def test_a_cut_keeps_base_and_the_named_blocks_and_overrides_the_step_cap(tmp_path: Path, npz: Path) -> None:
    config = real_data.study_config(DEMO, tmp_path / "d.npz", "cut", [0, 1], ["pooling"], max_steps=50)
    study = Study.from_config(validate_config(config))
    assert sorted(study.variants) == ["base", "pool-avg", "pool-none", "pool-stride"]
    assert config["train"]["max_steps"] == 50
    assert config["train"]["patience"] == DEMO["train"]["patience"]
    assert config["analysis"]["interpret"] == []  # arch-local left with its block
    targets = real_data.run_targets(study)
    assert len(targets) == 8
    assert "results/cut/runs/pool-none/seed1/metrics.json" in targets
    base_only = real_data.study_config(DEMO, tmp_path / "d.npz", "cut", [0], [])
    assert list(Study.from_config(validate_config(base_only)).variants) == ["base"]


def test_an_unknown_block_is_refused_naming_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--variants: unknown ablation block\(s\) \['poolin'\]; allowed: \["):
        real_data.study_config(DEMO, tmp_path / "d.npz", "cut", [0], ["poolin"])


def write_run(results: Path, variant: str, seed: int, **metrics) -> None:
    run = results / "runs" / variant / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"variant": variant, "seed": seed, **metrics}))


def test_rows_read_each_run_and_its_tuning_and_count_only_trained_runs(tmp_path: Path, npz: Path) -> None:
    config = real_data.study_config(DEMO, tmp_path / "d.npz", "t", [0], ["pooling"])
    study = Study.from_config(validate_config(config))
    results = tmp_path / "results/t"
    (results / "tuning").mkdir(parents=True)
    grid = [{"lr": 0.01, "val_acc": 0.5}, {"lr": 0.1, "val_acc": 0.8}]
    for variant in ("base", "pool-avg"):
        (results / "tuning" / f"{variant}.json").write_text(json.dumps({"chosen_lr": 0.1, "grid": grid}))
    run = {"lr": 0.1, "val_acc": 0.95, "steps": 600, "stop_reason": "plateau"}
    write_run(results, "base", 0, test_acc=0.93, **run)
    # a newer job reports its own tuning accuracy and outcome fields: those win over the tuning file
    attempts = [{"lr": 0.1, "val_acc": 0.5}, {"lr": 0.03, "val_acc": 0.95}]
    write_run(results, "pool-avg", 0, test_acc=0.97, tuning_val_acc=0.9, outcome="converged", attempts=attempts, **run)
    write_run(results, "pool-stride", 0, test_acc=None, **{**run, "stop_reason": "diverged"})
    rows = {row["variant"]: row for row in real_data.read_rows(tmp_path, study)}
    assert rows["base"]["tuning_val_acc"] == 0.8
    assert rows["base"]["final_val_acc"] == 0.95
    assert rows["pool-avg"]["tuning_val_acc"] == 0.9
    assert rows["pool-avg"]["attempts"] == "0.1 -> 0.03"
    assert rows["pool-none"]["outcome"] == "no metrics"
    assert real_data.reaching(rows.values()) == (2, 4)  # the diverged and the missing run do not count
    table = real_data.markdown_table(rows.values()).splitlines()
    assert table[2:] == [
        "| base | 0 | 93.0% | 0.1 | 80.0% | 95.0% | 600 | plateau | - | - | - |",
        "| pool-avg | 0 | 97.0% | 0.1 | 90.0% | 95.0% | 600 | plateau | converged | 0.1 -> 0.03 | - |",
        "| pool-stride | 0 | - | 0.1 | - | 95.0% | 600 | diverged | - | - | - |",  # no tuning file
        "| pool-none | 0 | - | - | - | - | - | - | no metrics | - | - |",
    ]
    assert real_data.summary_line(list(rows.values()), [0]) == "2/4 variants >= 90% test accuracy (seed 0)"


@pytest.mark.e2e
def test_the_benchmark_prints_a_row_per_variant_with_numbers_in_range(tmp_path: Path) -> None:
    """Two variants of the tiny recipe on 200 digits: data, config, Snakemake, table and files."""
    command = [sys.executable, str(ROOT / "benchmarks/real_data.py"), "--workdir", str(tmp_path)]
    command += ["--config", str(TINY_CONFIG), "--variants", "fc_vs_conv", "--train-size", "200", "--cores", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env=workflow_env(tmp_path), timeout=300)
    log = tmp_path / "snakemake.log"
    assert result.returncode == 0, result.stderr[-3000:] + (log.read_text()[-3000:] if log.exists() else "")
    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    printed = {line.split(" | ")[0][2:]: line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert set(printed) >= {"base", "arch-fc"}
    assert len(printed) == 3  # the header and a row per variant
    with open(tmp_path / "real_digits.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["variant"] for row in rows] == ["base", "arch-fc"]
    for row in rows:
        for field in ("test_acc", "tuning_val_acc", "final_val_acc"):
            assert 0 <= float(row[field]) <= 1, (field, row)
        searched = json.loads(next(tmp_path.glob(f"results/*/tuning/{row['variant']}.json")).read_text())
        assert float(row["lr"]) in [point["lr"] for point in searched["grid"]]  # the grid, extensions included
        assert 0 < int(row["steps"]) <= tiny["train"]["max_steps"]
        assert re.fullmatch(r"[a-z_-]+", row["stop_reason"])
        assert f"| {100 * float(row['test_acc']):.1f}% | {float(row['lr']):g} |" in printed[row["variant"]]
    reached = sum(float(row["test_acc"]) >= 0.9 for row in rows)
    assert f"{reached}/2 variants >= 90% test accuracy (seed 0)" in result.stdout
    assert (tmp_path / "real_digits.md").read_text().startswith(result.stdout.splitlines()[1])
