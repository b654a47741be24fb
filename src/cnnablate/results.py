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

from cnnablate import intervals, layout
from cnnablate.config import Study, model_axes
from cnnablate.tracking import numeric_items
from cnnablate.vocabulary import Outcome

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


Correctness = Mapping[tuple[str, int], np.ndarray]


def per_image_correctness(
    results: pd.DataFrame, runs: Iterable[str | Path], labels: np.ndarray
) -> dict[tuple[str, int], np.ndarray]:
    """(variant, seed) -> whether the run classified each test image correctly, from its test_predictions.npy
    and the test split's labels; runs without the file (older) or without predictions (diverged) are absent."""
    correct = {}
    for run, variant, seed in zip(map(Path, runs), results["variant"], results["seed"], strict=True):
        path = layout.run_file(run, layout.PREDICTIONS)
        if path.exists():
            predicted = np.load(path)
            if predicted.shape == labels.shape:
                correct[(variant, int(seed))] = predicted == labels
    return correct


def _by_seed(group: pd.DataFrame, column: str) -> dict[int, float]:
    return dict(zip(group["seed"].astype(int), pd.to_numeric(group[column], errors="coerce"), strict=True))


def scored_images(frame: pd.DataFrame) -> float:
    """The number of test images the runs were scored on (NaN when the runs do not say)."""
    return pd.to_numeric(frame.get("test_images", pd.Series(dtype=float)), errors="coerce").max()


def _scored_seeds(group: pd.DataFrame) -> list[int]:
    return [int(seed) for seed in group.loc[group["test_acc"].notna(), "seed"]]


def has_per_image(group: pd.DataFrame, correct: Correctness) -> bool:
    """Whether every scored run of the variant kept its per-image predictions (the engine then pairs by image)."""
    variant = str(group["variant"].iloc[0])
    return all((variant, seed) in correct for seed in _scored_seeds(group))


def accuracy_estimate(group: pd.DataFrame, correct: Correctness) -> intervals.Estimate:
    """One variant's test accuracy over its scored runs: from every run's per-image correctness when each has
    it, else from the accuracies with a binomial test-set term."""
    seeds, variant = _scored_seeds(group), str(group["variant"].iloc[0])
    if seeds and has_per_image(group, correct):
        return intervals.accuracy(np.stack([correct[(variant, seed)] for seed in seeds]))
    return intervals.accuracy_without_images(group["test_acc"].astype(float), scored_images(group))


def difference_estimate(group: pd.DataFrame, other: pd.DataFrame, correct: Correctness) -> intervals.Estimate:
    """Test accuracy of ``group``'s variant minus ``other``'s, over the seeds both scored: paired by seed and by
    image when every such run kept its predictions, else paired by seed with an unpaired test-set term."""
    mine, theirs = _by_seed(group, "test_acc"), _by_seed(other, "test_acc")
    seeds = [s for s in mine if s in theirs and not math.isnan(mine[s]) and not math.isnan(theirs[s])]
    variant, base = str(group["variant"].iloc[0]), str(other["variant"].iloc[0])
    if seeds and all((variant, s) in correct and (base, s) in correct for s in seeds):
        return intervals.difference(
            np.stack([correct[(variant, s)] for s in seeds]), np.stack([correct[(base, s)] for s in seeds])
        )
    return intervals.difference_without_images({s: mine[s] for s in seeds}, theirs, scored_images(group))


def outcome_counts(outcomes: pd.Series) -> dict[str, int]:
    """How many of a variant's runs ended in each outcome; ``outcome_unknown``: trained runs that predate it."""
    return {f"{outcome}_runs": int((outcomes == outcome).sum()) for outcome in Outcome} | {
        "outcome_unknown_runs": int(outcomes.isna().sum())
    }


def _comparisons(
    results: pd.DataFrame, correct: Correctness
) -> tuple[dict[str, intervals.Estimate], dict[str, intervals.Estimate]]:
    """Every trained variant against base (base trained too): its test-accuracy difference and its speed ratio
    (steps to the target, variant / base, paired by seed)."""
    groups = dict(list(results.groupby("variant", sort=False)))
    if "base" not in groups or not groups["base"]["trained"].astype(bool).all():
        return {}, {}
    base = groups["base"]
    compared = [v for v, group in groups.items() if v != "base" and group["trained"].astype(bool).all()]
    differences = {v: difference_estimate(groups[v], base, correct) for v in compared}
    speeds = {}
    if "steps_to_target" in results:
        base_steps = _by_seed(base, "steps_to_target")
        speeds = {v: intervals.paired_ratio(_by_seed(groups[v], "steps_to_target"), base_steps) for v in compared}
    return differences, speeds


def _family(estimates: Mapping[str, intervals.Estimate]) -> tuple[dict[str, float], int]:
    """Holm-adjusted p-values over one family of comparisons with base, and how many comparisons it holds."""
    names = list(estimates)
    adjusted = intervals.holm([estimates[v].p_value for v in names])
    return dict(zip(names, adjusted, strict=True)), sum(not math.isnan(p) for p in adjusted)


def summarize(
    results: pd.DataFrame, tuning: Mapping[str, Mapping[str, Any]] | None = None, correct: Correctness | None = None
) -> pd.DataFrame:
    """One row per variant: its test accuracy over seeds and images with the engine's interval
    (``cnnablate.intervals``); its difference to base paired by seed and image, with the interval, the p-value,
    the Holm-adjusted p-value over the study's comparisons, the smallest difference the design detects (80%
    power at Holm's strictest level) and the seeds the observed difference would need; its steps to the target
    against base's as a ratio with its interval and Holm-adjusted p-value; whether it trained and how its runs
    ended; means of every other number."""
    tuning, correct = tuning or {}, correct or {}
    differences, speeds = _comparisons(results, correct)
    accuracy_holm, comparisons = _family(differences)
    accuracy_level = intervals.family_alpha(comparisons)  # the detectable differences are stated at it
    speed_holm, _ = _family(speeds)
    no_mean = {*TEXT_COLUMNS, "seed", "test_acc", "diverged", "trained", "converged", "retried", *model_axes()}
    missing = intervals.Estimate(math.nan, math.nan, math.nan, 0, math.nan, math.nan, math.nan)
    rows = []
    for variant, group in results.groupby("variant", sort=False):
        accuracy = accuracy_estimate(group, correct)
        difference, speed = differences.get(variant, missing), speeds.get(variant, missing)
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
                "test_acc_mean": accuracy.value,
                "test_acc_ci_low": accuracy.low,
                "test_acc_ci_high": accuracy.high,
                "per_image": has_per_image(group, correct),
                "paired_diff": difference.value,
                "paired_ci_low": difference.low,
                "paired_ci_high": difference.high,
                "paired_seeds": difference.seeds,
                "paired_p": difference.p_value,
                "paired_p_holm": accuracy_holm.get(variant, math.nan),
                "paired_detectable": difference.detectable(accuracy_level),
                "paired_seeds_needed": difference.seeds_needed(accuracy_level),
                "speed_ratio": speed.value,
                "speed_ratio_low": speed.low,
                "speed_ratio_high": speed.high,
                "speed_pairs": speed.seeds,
                "speed_p_holm": speed_holm.get(variant, math.nan),
                "target_reached": int(group["steps_to_target"].notna().sum()) if "steps_to_target" in group else 0,
                # every measured column, also one that is empty for all runs (an fc-only study has no ERF)
                **{
                    f"{column}_mean": pd.to_numeric(group[column], errors="coerce").mean()
                    for column in group.columns
                    if column not in no_mean
                },
            }
        )
    summary = pd.DataFrame(rows)
    summary.attrs["comparisons"] = comparisons
    summary.attrs["detectable_alpha"] = accuracy_level
    return summary
