"""Run tables from the declared run files: paired and unpaired intervals, did-not-train state, training speed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cnnablate import layout
from cnnablate.results import (
    collect_results,
    newcombe_interval,
    paired_difference_interval,
    read_tuning,
    steps_to_reach,
    summarize,
    with_test_set_floor,
)
from study_fixture import write_study


def test_paired_interval_is_the_t_interval_of_per_seed_differences() -> None:
    variant = {0: 0.71, 1: 0.74, 2: 0.78, 3: None}
    base = {0: 0.70, 1: 0.72, 2: 0.75, 3: 0.80, 4: 0.9}
    diff, low, high, pairs = paired_difference_interval(variant, base)
    interval = stats.ttest_rel([0.71, 0.74, 0.78], [0.70, 0.72, 0.75]).confidence_interval(0.95)
    assert pairs == 3
    assert diff == pytest.approx(0.02)
    assert (low, high) == pytest.approx((interval.low, interval.high))


def test_test_set_interval_of_a_difference_is_newcombes_hybrid_score_interval() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, Table II, example (b): 9/10 - 3/10, method 10.
    assert newcombe_interval(0.9, 0.3, 10) == pytest.approx((0.1705, 0.8090), abs=5e-5)
    assert all(math.isnan(value) for value in newcombe_interval(0.9, 0.3, None))


def test_agreeing_seeds_cannot_narrow_a_difference_below_the_test_sets_error() -> None:
    # Two seeds that each differ by 7 of 500 images: the paired t interval has no width at all.
    diff, low, high, _ = paired_difference_interval({0: 0.986, 1: 0.990}, {0: 0.972, 1: 0.976})
    assert low == pytest.approx(high)
    floored = with_test_set_floor(low, high, 0.988, 0.974, 500)
    assert floored == pytest.approx(newcombe_interval(0.988, 0.974, 500))
    assert floored[0] < diff < floored[1]
    # A seed interval wider than the floor is kept as it is; a missing one (one seed) stays missing.
    assert with_test_set_floor(-0.2, 0.3, 0.988, 0.974, 500) == (-0.2, 0.3)
    assert all(math.isnan(value) for value in with_test_set_floor(math.nan, math.nan, 0.988, 0.974, 500))


def test_steps_to_reach_is_the_first_crossing() -> None:
    history = pd.DataFrame(
        {"step": [10, 20, 30, 40], "val_acc": [0.2, 0.5, 0.45, 0.7], "elapsed_seconds": [1.0, 2.0, 3.0, 4.0]}
    )
    assert steps_to_reach(history, 0.5) == (20.0, 2.0)
    assert all(math.isnan(v) for v in steps_to_reach(history, 0.9))


def test_layout_names_each_path_once(tmp_path: Path) -> None:
    assert layout.run_dir(layout.results_dir("s"), "{variant}", "{seed}") == "results/s/runs/{variant}/seed{seed}"
    assert layout.job_key("s", "pool-avg", 2) == "s/pool-avg/seed2"
    run = tmp_path / layout.run_dir("results/s", "pool-avg", 2)
    run.mkdir(parents=True)
    layout.run_file(run, layout.METRICS).write_text(json.dumps({"variant": "pool-avg", "seed": 2}))
    assert layout.run_metrics(layout.analysis_file(run, "shift"))["variant"] == "pool-avg"


def test_results_carry_learning_rate_steps_state_and_speed(tmp_path: Path) -> None:
    fixture = write_study(tmp_path)
    results = collect_results(fixture.study, fixture.metrics, ["measures", "shift"])
    assert len(results) == len(fixture.study.variants) * 3
    raw = [json.loads(Path(p).read_text()) for p in fixture.metrics]
    assert results["lr"].tolist() == [m["lr"] for m in raw]
    assert results["steps"].tolist() == [m["steps"] for m in raw]
    assert results["trained"].tolist() == [m["trained"] for m in raw]
    base_val = np.mean([m["val_acc"] for m in raw if m["variant"] == "base"])
    target = 0.9 * base_val
    assert results.attrs["speed_target"] == pytest.approx(target)
    history = pd.read_csv(layout.run_file(Path(fixture.metrics[0]).parent, layout.HISTORY))
    first = history[history["val_acc"] >= target].iloc[0]
    assert results.loc[0, "steps_to_target"] == first["step"]
    assert results.loc[0, "seconds_to_target"] == pytest.approx(first["elapsed_seconds"])

    summary = summarize(results, read_tuning(fixture.tuning)).set_index("variant")
    assert not summary.loc["norm-none", "trained"]  # at chance: the runs and the search say so
    assert summary.loc["pool-none", "trained_runs"] == 2
    assert not summary.loc["pool-none", "trained"]
    assert summary.loc["pool-none", "paired_seeds"] == 2  # the diverged seed has no accuracy to pair
    assert summary.loc["base", "tuned_lr"] == 0.03
    assert summary.loc["base", "lr_mean"] == 0.03
    avg = results[results["variant"] == "pool-avg"].set_index("seed")["test_acc"]
    base = results[results["variant"] == "base"].set_index("seed")["test_acc"]
    interval = stats.ttest_rel(avg, base).confidence_interval(0.95)
    assert summary.loc["pool-avg", "paired_diff"] == pytest.approx((avg - base).mean())
    # the seeds' t interval, widened where needed to the test set's own error of the difference
    floor = newcombe_interval(avg.mean(), base.mean(), results["test_images"].max())
    expected = (min(interval.low, floor[0]), max(interval.high, floor[1]))
    assert (summary.loc["pool-avg", "paired_ci_low"], summary.loc["pool-avg", "paired_ci_high"]) == pytest.approx(
        expected
    )
