"""benchmarks/overhead.py on the tiny study: the breakdown adds up, and a log of another run is refused."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("overhead", ROOT / "benchmarks" / "overhead.py")
overhead = importlib.util.module_from_spec(spec)
spec.loader.exec_module(overhead)


def test_breakdown_of_the_run_that_made_the_results(tiny_study: Path) -> None:
    results = tiny_study / "results/tiny"
    log = overhead.matching_log(tiny_study, results)
    numbers = overhead.breakdown(results, 2, log)
    assert numbers["training_jobs"] == 6 and numbers["jobs"] == len(list(results.glob("benchmarks/**/*.tsv")))
    assert 0 < numbers["train_job_fixed_seconds_median"] < numbers["sum_job_wall_seconds"]
    assert numbers["train_job_max_rss_mb_min"] >= 200  # torch is loaded in the job's own, measured process
    assert 0 < numbers["overhead_fraction"] < 1


def test_a_log_of_another_run_is_refused(tiny_study: Path, tmp_path: Path) -> None:
    results = tiny_study / "results/tiny"
    log = overhead.matching_log(tiny_study, results)
    other = tmp_path / "other.snakemake.log"
    shutil.copy(log, other)
    text = other.read_text()
    other.write_text(text.replace("benchmark: results/tiny/benchmarks/train/base/seed0.tsv", ""))
    with pytest.raises(overhead.WrongLog, match=r"1 of its \d+ jobs were run elsewhere \(benchmarks/train/base/seed0"):
        overhead.breakdown(results, 2, other)
