"""Every run of a study as one table, and per-variant means with 95% confidence intervals (pandas)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cnnablate.config import Study, model_axes
from cnnablate.tracking import numeric_items


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


def collect_results(study: Study, results_dir: str | Path, analyses: Iterable[str] = ()) -> pd.DataFrame:
    """One row per (variant, seed): axes, seed, accuracy, cost, receptive fields and every analysis."""
    results_dir = Path(results_dir)
    memberships: dict[str, list[str]] = {}
    for ablation, variant in study.ablation_members():
        memberships.setdefault(variant, []).append(ablation)
    rows = []
    for variant in study.variants.values():
        for seed in study.config["seeds"]:
            run_dir = results_dir / "runs" / variant.id / f"seed{seed}"
            metrics = json.loads((run_dir / "metrics.json").read_text())
            row: dict[str, Any] = {
                "study": study.name,
                "variant": variant.id,
                "ablations": ",".join(memberships.get(variant.id, ["base"])),
                "seed": seed,
            }
            row.update({axis: _cell(variant.spec[axis]) for axis in model_axes()})
            row.update(
                {
                    key: metrics.get(key)
                    for key in (
                        "test_acc",
                        "test_loss",
                        "params",
                        "epochs_completed",
                        "diverged",
                        "train_seconds",
                        "images_per_second",
                    )
                }
            )
            measures_path = run_dir / "measures.json"
            if measures_path.exists():
                row.update(_measure_columns(json.loads(measures_path.read_text())))
            for analysis in analyses:
                if analysis != "measures":
                    row.update(numeric_items(json.loads((run_dir / f"{analysis}.json").read_text()), ""))
            rows.append(row)
    return pd.DataFrame(rows)


def _cell(value: Any) -> Any:
    return "x".join(map(str, value)) if isinstance(value, list) else value


TEXT_COLUMNS = ("study", "variant", "ablations")


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval; the interval is NaN with fewer than two values."""
    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if data.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(data.mean())
    if data.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, data.size - 1) * data.std(ddof=1) / math.sqrt(data.size))
    return mean, mean - half, mean + half


def difference_interval(a: Iterable[float], b: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Difference of means a - b with a Welch t interval (unequal variances); NaN interval if n < 2."""
    x = np.asarray([v for v in a if v is not None and not math.isnan(v)], dtype=float)
    y = np.asarray([v for v in b if v is not None and not math.isnan(v)], dtype=float)
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
    return diff, diff - half, diff + half


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: accuracy mean and 95% CI over seeds, and its difference to base with its CI."""
    base_acc = results.loc[results["variant"] == "base", "test_acc"].astype(float)
    rows = []
    for variant, group in results.groupby("variant", sort=False):
        accuracy = group["test_acc"].astype(float)
        mean, low, high = mean_interval(accuracy)
        diff, diff_low, diff_high = difference_interval(accuracy, base_acc)
        first = group.iloc[0]
        rows.append(
            {
                "variant": variant,
                "ablations": first["ablations"],
                **{axis: first[axis] for axis in model_axes()},
                "seeds": len(group),
                "diverged": int(group["diverged"].astype(bool).sum()),
                "test_acc_mean": mean,
                "test_acc_ci_low": low,
                "test_acc_ci_high": high,
                "diff_vs_base": diff,
                "diff_ci_low": diff_low,
                "diff_ci_high": diff_high,
                # every measured column, also one that is empty for all runs (an fc-only study has no ERF)
                **{
                    f"{column}_mean": pd.to_numeric(group[column], errors="coerce").mean()
                    for column in group.columns
                    if column not in {*TEXT_COLUMNS, "seed", "test_acc", "diverged", *model_axes()}
                },
            }
        )
    return pd.DataFrame(rows)
