"""Run tables from the declared run files: paired and unpaired intervals, did-not-train state, training speed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cnnablate import intervals, layout
from cnnablate.results import collect_results, per_image_correctness, read_tuning, steps_to_reach, summarize
from study_fixture import write_study


def test_a_difference_without_per_image_predictions_is_paired_by_seed_with_an_unpaired_test_set_term() -> None:
    variant = {0: 0.71, 1: 0.74, 2: 0.78, 3: None}
    base = {0: 0.70, 1: 0.72, 2: 0.75, 3: 0.80, 4: 0.9}
    estimate = intervals.difference_without_images(variant, base, 500)
    assert estimate.seeds == 3
    assert estimate.value == pytest.approx(0.02)
    seeds_only = stats.ttest_rel([0.71, 0.74, 0.78], [0.70, 0.72, 0.75]).confidence_interval(0.95)
    assert estimate.low < seeds_only.low and estimate.high > seeds_only.high  # the test set adds its own error
    assert estimate.image_variance == pytest.approx((0.7433 * 0.2567 + 0.7233 * 0.2767) / 500, rel=1e-3)


def test_agreeing_seeds_cannot_narrow_a_difference_below_the_test_sets_error() -> None:
    # Two seeds that each differ by the same 7 of 500 images: no seed spread, yet the test set still bounds it.
    variant = np.zeros((2, 500), bool)
    variant[:, :494] = True
    base = np.zeros((2, 500), bool)
    base[:, :487] = True
    estimate = intervals.difference(variant, base)
    assert estimate.seed_variance == 0
    assert estimate.low < 7 / 500 < estimate.high and estimate.high - estimate.low > 0.01


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

    runs = [Path(p).parent for p in fixture.metrics]
    correct = per_image_correctness(results, runs, np.load(fixture.test_labels)["y_test"])
    assert len(correct) == len(results) - 1  # the diverged run kept no predictions
    summary = summarize(results, read_tuning(fixture.tuning), correct).set_index("variant")
    assert not summary.loc["norm-none", "trained"]  # at chance: the runs and the search say so
    assert summary.loc["pool-none", "trained_runs"] == 2
    assert not summary.loc["pool-none", "trained"]
    assert summary.loc["base", "tuned_lr"] == 0.03
    assert summary.loc["base", "lr_mean"] == 0.03
    avg, base = (np.stack([correct[(variant, seed)] for seed in (0, 1, 2)]) for variant in ("pool-avg", "base"))
    expected = intervals.difference(avg, base)
    accuracy = (
        results[results["variant"] == "pool-avg"]["test_acc"]
        - results[results["variant"] == "base"]["test_acc"].to_numpy()
    )
    assert summary.loc["pool-avg", "paired_diff"] == pytest.approx(accuracy.mean())
    assert (summary.loc["pool-avg", "paired_ci_low"], summary.loc["pool-avg", "paired_ci_high"]) == pytest.approx(
        (expected.low, expected.high)
    )
    # Holm over every trained variant compared with base (norm-none did not train, pool-none lost a seed)
    compared = summary[summary["paired_p"].notna()]
    assert len(compared) == summary.attrs["comparisons"] == len(fixture.study.variants) - 3
    assert (compared["paired_p_holm"] >= compared["paired_p"]).all()
    assert summary.attrs["detectable_alpha"] == pytest.approx(0.05 / summary.attrs["comparisons"])
    assert summary.loc["pool-avg", "paired_detectable"] == pytest.approx(
        expected.detectable(summary.attrs["detectable_alpha"])
    )
