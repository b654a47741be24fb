"""benchmarks/overhead.py: on the tiny study the breakdown adds up and a log of another run is refused; the GPU
busy fraction counts only work that ran on a GPU."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("overhead", ROOT / "benchmarks" / "overhead.py")
overhead = importlib.util.module_from_spec(spec)
spec.loader.exec_module(overhead)


def test_breakdown_of_the_run_that_made_the_results(tiny_study: Path) -> None:
    results = tiny_study / "results/tiny"
    log = overhead.matching_log(tiny_study, results)
    numbers = overhead.breakdown(results, 2, log)
    assert numbers["training_jobs"] == 6
    assert numbers["jobs"] == len(list(results.glob("benchmarks/**/*.tsv")))
    assert 0 < numbers["train_job_fixed_seconds_median"] < numbers["sum_job_wall_seconds"]
    assert numbers["train_job_max_rss_mb_min"] >= 200  # torch is loaded in the job's own, measured process
    assert 0 < numbers["overhead_fraction"] < 1
    analysis_benchmarks = [
        p for rule in ("measure", "shift", "interpret") for p in results.glob(f"benchmarks/{rule}/**/*.tsv")
    ]
    assert numbers["analysis_jobs"] == len(analysis_benchmarks) > 0
    # the suite runs without a GPU
    assert numbers["gpus"] == 0
    assert numbers["gpu_busy_fraction"] is None
    for rule in ("measure", "shift", "interpret"):
        fixed = numbers[f"{rule}_job_fixed_seconds_median"]
        assert 0 < numbers[f"{rule}_job_imports_and_exit_median"] <= fixed < numbers["sum_job_wall_seconds"]
    assert "train_job_fixed_imports_median" in numbers  # the training jobs' own split of their fixed cost


def test_gpu_busy_fraction_counts_the_work_done_on_gpus(tmp_path: Path) -> None:
    train = pd.DataFrame({"device": ["cuda:0 (H200)", "cuda:1 (H200)", "cpu"], "work": [30.0, 10.0, 50.0]})
    analyses = pd.DataFrame({"device": ["cuda:1", "cpu"], "work": [4.0, 7.0]})
    numbers = overhead.gpu_numbers(train, analyses, tuning_seconds=6.0, wall=100.0, gpus=None)
    assert numbers["gpus"] == 2  # the CUDA devices the jobs name
    assert (numbers["gpu_training_work_seconds"], numbers["gpu_analysis_work_seconds"]) == (40.0, 4.0)
    assert numbers["gpu_busy_fraction"] == pytest.approx((40 + 4 + 6) / (100 * 2))
    on_cpu = overhead.gpu_numbers(
        train[train["device"] == "cpu"], analyses[analyses["device"] == "cpu"], 6.0, 100.0, None
    )
    assert on_cpu["gpus"] == 0
    assert on_cpu["gpu_busy_fraction"] is None
    assert on_cpu["gpu_tuning_work_seconds"] == 0
    samples = tmp_path / "smi.csv"
    samples.write_text("2026/11/30 10:00:00.000, 20 %, 100 MiB, 80 W\n2026/11/30 10:00:01.000, 60 %, 100 MiB, 90 W\n")
    assert overhead.smi_utilization(samples) == pytest.approx(0.4)


def test_a_log_of_another_run_is_refused(tiny_study: Path, tmp_path: Path) -> None:
    results = tiny_study / "results/tiny"
    log = overhead.matching_log(tiny_study, results)
    other = tmp_path / "other.snakemake.log"
    shutil.copy(log, other)
    text = other.read_text()
    other.write_text(text.replace("benchmark: results/tiny/benchmarks/train/base/seed0.tsv", ""))
    with pytest.raises(overhead.WrongLog, match=r"1 of its \d+ jobs were run elsewhere \(benchmarks/train/base/seed0"):
        overhead.breakdown(results, 2, other)
