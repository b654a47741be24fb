"""Every run of a study as one table, and per-variant means with 95% confidence intervals (pandas).

A run is found from its declared ``metrics.json``; its other files sit next to it (``cnnablate.layout``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cnnablate import layout
from cnnablate.config import Study, model_axes
from cnnablate.tracking import numeric_items

RUN_FIELDS = (
    "test_acc",
    "test_loss",
    "val_acc",
    "val_loss",
    "best_val_acc",
    "params",
    "lr",
    "lr_source",
    "steps",
    "stop_reason",
    "epochs_completed",
    "diverged",
    "trained",
    "chance",
    "train_seconds",
    "images_per_second",
    "outcome",
    "converged",
    "train_acc",
    "best_train_loss",
    "chance_loss",
    "tuning_val_acc",
    "retried",
    "test_images",
)
TEXT_COLUMNS = ("study", "variant", "ablations", "lr_source", "stop_reason", "outcome")
# run outcomes (metrics.json "outcome"): the first two trained, the last two are states, never numbers to rank
CONVERGED, NOT_CONVERGED, DID_NOT_TRAIN, DIVERGED = "converged", "not_converged", "did_not_train", "diverged"
ACCURACY_BOUNDS = (0.0, 1.0)
DIFFERENCE_BOUNDS = (-1.0, 1.0)
# a seed-level t interval is shown from this many seeds on (t(0.975, 1) = 12.7: two seeds bound nothing)
MIN_SEEDS_FOR_T = 4


def _measure_columns(measures: Mapping[str, Any]) -> dict[str, Any]:
    """The measure rule's numbers under stable column names."""
    columns: dict[str, Any] = {
        key: measures.get(key) for key in ("macs", "flops", "erf_growth", "edge_match_init", "edge_match_trained")
    }
    trf = measures.get("trf") or {}
    columns["trf_size"] = (trf.get("size") or [None])[0]
    columns["trf_stride"] = (trf.get("stride") or [None])[0]
    for stage, erf in (("trained", measures.get("erf")), ("init", measures.get("erf_init"))):
        erf = erf or {}
        std = erf.get("std")
        columns[f"erf_std_{stage}"] = float(np.mean(std)) if std else None
        size = erf.get("erf_size")
        columns[f"erf_size_{stage}"] = float(np.mean(size)) if size else None
        columns[f"erf_trf_ratio_{stage}"] = erf.get("erf_trf_ratio")
        columns[f"erf_radius95_{stage}"] = erf.get("radius95")
    return columns


def steps_to_reach(history: pd.DataFrame, target: float) -> tuple[float, float]:
    """Optimiser steps and seconds until validation accuracy first reaches ``target`` (NaN: never)."""
    if math.isnan(target):
        return math.nan, math.nan
    reached = history[history["val_acc"].astype(float) >= target]
    if reached.empty:
        return math.nan, math.nan
    first = reached.iloc[0]
    return float(first["step"]), float(first["elapsed_seconds"])


def _retry_columns(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A retried run's first attempt (its rate, validation accuracy and its tuning run's) and the rate it was
    retried at; None when the run was not retried."""
    first, retry = (metrics["attempts"][0], metrics["attempts"][1]) if metrics["retried"] else ({}, {})
    return {
        "first_attempt_lr": first.get("lr"),
        "first_attempt_val_acc": first.get("val_acc"),
        "first_attempt_tuning_val_acc": first.get("tuning_val_acc"),
        "retry_lr": retry.get("lr"),
    }


def collect_results(study: Study, metrics_paths: Iterable[str | Path], analyses: Iterable[str] = ()) -> pd.DataFrame:
    """One row per run (the declared metrics.json files): axes, seed, accuracy, learning rate, steps, cost,
    receptive fields, training speed and every analysis."""
    memberships: dict[str, list[str]] = {}
    for ablation, variant in study.ablation_members():
        memberships.setdefault(variant, []).append(ablation)
    rows = []
    for path in map(Path, metrics_paths):
        metrics = json.loads(path.read_text())
        run = path.parent
        variant = study.variants[metrics["variant"]]
        row: dict[str, Any] = {
            "study": study.name,
            "variant": variant.id,
            "ablations": ",".join(memberships.get(variant.id, ["base"])),
            "seed": int(metrics["seed"]),
        }
        row.update({axis: _cell(variant.spec[axis]) for axis in model_axes()})
        row.update({key: metrics.get(key) for key in RUN_FIELDS})
        row["outcome"] = metrics["outcome"]
        row.update(_retry_columns(metrics))
        measures = layout.run_file(run, layout.MEASURES)
        if measures.exists():
            row.update(_measure_columns(json.loads(measures.read_text())))
        for analysis in analyses:
            if analysis != "measures":
                row.update(numeric_items(json.loads(layout.analysis_file(run, analysis).read_text()), ""))
        rows.append(row)
    results = pd.DataFrame(rows)
    return _with_training_speed(results, study, [Path(p).parent for p in metrics_paths])


def _with_training_speed(results: pd.DataFrame, study: Study, runs: list[Path]) -> pd.DataFrame:
    """Steps and seconds to ``analysis.speed_fraction`` x base's final validation accuracy (mean over seeds)."""
    fraction = float(study.config.get("analysis", {}).get("speed_fraction", 0.9))
    base_val = pd.to_numeric(results.loc[results["variant"] == "base", "val_acc"], errors="coerce").mean()
    target = fraction * base_val
    speeds = []
    for run in runs:
        history = layout.run_file(run, layout.HISTORY)
        speeds.append(steps_to_reach(pd.read_csv(history), target) if history.exists() else (math.nan, math.nan))
    results["steps_to_target"] = [steps for steps, _ in speeds]
    results["seconds_to_target"] = [seconds for _, seconds in speeds]
    results.attrs["speed_target"] = target
    results.attrs["speed_fraction"] = fraction
    return results


def read_tuning(paths: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    """variant -> its learning-rate search (results/<study>/tuning/<variant>.json), from the declared files."""
    found = {}
    for path in map(Path, paths):
        tuning = json.loads(path.read_text())
        found[tuning["variant"]] = tuning
    return found


def _cell(value: Any) -> Any:
    return "x".join(map(str, value)) if isinstance(value, list) else value


def _finite(values: Iterable[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)


def mean_interval(
    values: Iterable[float], confidence: float = 0.95, bounds: tuple[float, float] | None = None
) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval; the interval is NaN with fewer than two values.

    ``bounds``: the range the quantity can take (an accuracy lies in [0, 1]); the interval is cut to it, since
    a t interval on few seeds can leave it and a value outside is impossible, not uncertain."""
    data = _finite(values)
    if data.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(data.mean())
    if data.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, data.size - 1) * data.std(ddof=1) / math.sqrt(data.size))
    return mean, *_within(mean - half, mean + half, bounds)


def _within(low: float, high: float, bounds: tuple[float, float] | None) -> tuple[float, float]:
    return (low, high) if bounds is None else (max(low, bounds[0]), min(high, bounds[1]))


def t_interval_informative(values: Iterable[float], confidence: float = 0.95) -> bool:
    """Whether the seed-level t interval of an accuracy says something: at least ``MIN_SEEDS_FOR_T`` seeds and
    an interval that stays inside [0, 1] before it is cut (one that leaves it is wider than the data allow)."""
    data = _finite(values)
    if data.size < MIN_SEEDS_FOR_T:
        return False
    _, low, high = mean_interval(data, confidence)
    return ACCURACY_BOUNDS[0] <= low and high <= ACCURACY_BOUNDS[1]


def binomial_interval(accuracy: float, images: float | None, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured on ``images`` test images (NaN without the count).

    For a mean over seeds the count is the distinct test images, not seeds x images: every seed is scored on
    the same images, so their errors are not independent, and counting each image once keeps the interval
    conservative. It measures how far the finite test set can mislead, not how much another seed would move."""
    if _missing_number(accuracy) or _missing_number(images) or not images:
        return math.nan, math.nan
    interval = stats.binomtest(round(accuracy * images), int(images)).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)


def _missing_number(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def difference_interval(a: Iterable[float], b: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Difference of accuracies' means a - b with a Welch t interval (unequal variances), cut to [-1, 1];
    NaN interval if n < 2."""
    x, y = _finite(a), _finite(b)
    if x.size == 0 or y.size == 0:
        return math.nan, math.nan, math.nan
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return diff, math.nan, math.nan
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    if se == 0:
        return diff, diff, diff
    dof = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof) * se)
    return diff, *_within(diff - half, diff + half, DIFFERENCE_BOUNDS)


def newcombe_interval(
    accuracy: float, other: float, images: float | None, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval (1998, method 10) of ``accuracy - other``, built from the two Wilson
    intervals: how far the finite test set alone can move the difference (NaN without the image count).

    It treats the two accuracies as independent samples; two models scored on the same images err together
    more often than that, so it overstates their test-set error: a conservative floor, not the whole interval."""
    low, high = binomial_interval(accuracy, images, confidence)
    other_low, other_high = binomial_interval(other, images, confidence)
    if _missing_number(low) or _missing_number(other_low):
        return math.nan, math.nan
    diff = accuracy - other
    return (
        diff - math.hypot(accuracy - low, other_high - other),
        diff + math.hypot(high - accuracy, other - other_low),
    )


def with_test_set_floor(
    low: float, high: float, accuracy: float, other: float, images: float | None
) -> tuple[float, float]:
    """A seed-level interval of ``accuracy - other`` widened to hold the test set's own sampling error of it.

    Every seed is scored on the same test images, so however well the seeds agree they cannot remove that
    error: two seeds that each differ by the same count of images give a t interval with no width at all. A
    missing interval (one seed) stays missing: the seeds cannot tell, and the test set does not change that."""
    floor_low, floor_high = newcombe_interval(accuracy, other, images)
    if _missing_number(low) or _missing_number(high) or _missing_number(floor_low):
        return low, high
    return _within(min(low, floor_low), max(high, floor_high), DIFFERENCE_BOUNDS)


def paired_difference_interval(
    a: Mapping[int, float | None], b: Mapping[int, float | None], confidence: float = 0.95
) -> tuple[float, float, float, int]:
    """Mean of the per-seed differences a[seed] - b[seed] of accuracies with its t interval (cut to [-1, 1]), and
    the number of pairs.

    Seeds share data order and augmentation stream, so seed-to-seed noise common to both cancels."""
    pairs = [
        a[seed] - b[seed]
        for seed in a
        if seed in b and a[seed] is not None and b[seed] is not None and not math.isnan(a[seed] - b[seed])
    ]
    return (*mean_interval(pairs, confidence, DIFFERENCE_BOUNDS), len(pairs))


def outcome_counts(outcomes: pd.Series) -> dict[str, int]:
    """How many of a variant's runs ended in each outcome; ``outcome_unknown``: trained runs that predate it."""
    return {
        f"{outcome}_runs": int((outcomes == outcome).sum())
        for outcome in (CONVERGED, NOT_CONVERGED, DID_NOT_TRAIN, DIVERGED)
    } | {"outcome_unknown_runs": int(outcomes.isna().sum())}


def summarize(results: pd.DataFrame, tuning: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """One row per variant: accuracy mean over seeds with its seed-level 95% t interval (cut to [0, 1]; whether it
    is informative) and the Wilson interval of the test set; its difference to base, unpaired (Welch) and paired
    by seed, each with its CI; whether it trained (every seed, and its learning-rate search) and how its runs
    ended; means of every other number."""
    tuning = tuning or {}
    base = results[results["variant"] == "base"]
    base_by_seed = dict(zip(base["seed"], base["test_acc"].astype(float), strict=True))
    base_mean = float(base["test_acc"].astype(float).mean())
    no_mean = {*TEXT_COLUMNS, "seed", "test_acc", "diverged", "trained", "converged", "retried", *model_axes()}
    rows = []
    for variant, group in results.groupby("variant", sort=False):
        accuracy = group["test_acc"].astype(float)
        mean, low, high = mean_interval(accuracy, bounds=ACCURACY_BOUNDS)
        images = pd.to_numeric(group.get("test_images", pd.Series(dtype=float)), errors="coerce").max()
        binomial_low, binomial_high = binomial_interval(mean, images)
        diff, diff_low, diff_high = difference_interval(accuracy, base["test_acc"].astype(float))
        paired, paired_low, paired_high, pairs = paired_difference_interval(
            dict(zip(group["seed"], accuracy, strict=True)), base_by_seed
        )
        if variant != "base":  # base against itself: the same runs on the same images, no test-set error
            diff_low, diff_high = with_test_set_floor(diff_low, diff_high, mean, base_mean, images)
            paired_low, paired_high = with_test_set_floor(paired_low, paired_high, mean, base_mean, images)
        first = group.iloc[0]
        trained, outcomes = group["trained"].astype(bool), group["outcome"]
        rows.append(
            {
                "variant": variant,
                "ablations": first["ablations"],
                **{axis: first[axis] for axis in model_axes()},
                "seeds": len(group),
                "trained_runs": int(trained.sum()),
                # the converged final runs are the evidence; the short tuning runs only chose the learning rate
                "trained": bool(trained.all()),
                **outcome_counts(outcomes),
                "retried_runs": int(group["retried"].astype(bool).sum()),
                "tuned_lr": tuning.get(variant, {}).get("chosen_lr"),
                "diverged": int(group["diverged"].astype(bool).sum()),
                "lr_source": first.get("lr_source"),
                "test_acc_mean": mean,
                "test_acc_ci_low": low,
                "test_acc_ci_high": high,
                "test_acc_t_informative": t_interval_informative(accuracy),
                "test_acc_binomial_low": binomial_low,
                "test_acc_binomial_high": binomial_high,
                "diff_vs_base": diff,
                "diff_ci_low": diff_low,
                "diff_ci_high": diff_high,
                "paired_diff": paired,
                "paired_ci_low": paired_low,
                "paired_ci_high": paired_high,
                "paired_seeds": pairs,
                "target_reached": int(group["steps_to_target"].notna().sum()) if "steps_to_target" in group else 0,
                # every measured column, also one that is empty for all runs (an fc-only study has no ERF)
                **{
                    f"{column}_mean": pd.to_numeric(group[column], errors="coerce").mean()
                    for column in group.columns
                    if column not in no_mean
                },
            }
        )
    return pd.DataFrame(rows)
