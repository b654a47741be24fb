"""Study-level figures and tables of per-run analyses (one JSON of numbers per run)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from cnnablate import layout
from cnnablate.figures import LEGEND_BESIDE, save, variant_styles
from cnnablate.vocabulary import Outcome

CONSTANT = 0.99  # a run giving one class to this share of the unshifted test images is a constant predictor


def read_run_jsons(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run: its variant, seed and trained state (from the run's metrics.json) and its numbers."""
    rows = []
    for path in map(Path, paths):
        metrics = layout.run_metrics(path)
        rows.append(
            {
                "variant": metrics["variant"],
                "seed": metrics["seed"],
                "trained": metrics["trained"],
                **json.loads(path.read_text()),
            }
        )
    return pd.DataFrame(rows)


def unreliable_runs(runs: pd.DataFrame) -> pd.Series:
    """Per run, why its predictions say nothing about shift ("" if they do): it predicts (nearly) one class,
    or it did not train."""
    majority = runs.get("majority_class_fraction", pd.Series(float("nan"), index=runs.index)).astype(float)
    reasons = pd.Series("", index=runs.index)
    reasons[~runs["trained"].astype(bool)] = Outcome.DID_NOT_TRAIN.words
    constant = majority >= CONSTANT
    reasons[constant] = [f"constant predictor (one class for {m * 100:.0f}% of images)" for m in majority[constant]]
    return reasons


def _note(reasons: pd.Series) -> str:
    """The table's note for one variant: which of its seeds were left out of the consistency, and why."""
    left_out = reasons[reasons != ""]
    if left_out.empty:
        return ""
    why = "; ".join(dict.fromkeys(left_out))
    if len(left_out) == len(reasons):
        return f"consistency not shown: {why}"
    return f"consistency without {len(left_out)} of {len(reasons)} seeds: {why}"


def shift_robustness_outputs(paths: Iterable[str | Path], figure: str | Path, table: str | Path) -> pd.DataFrame:
    """Accuracy and consistency against shift per variant (mean over seeds): a figure and a CSV table.

    A constant predictor is 100% consistent at every shift without seeing anything: its consistency is left
    out of the figure and the table, and the table says why."""
    runs = read_run_jsons(paths)
    runs["unreliable"] = unreliable_runs(runs)
    notes = {variant: _note(group["unreliable"]) for variant, group in runs.groupby("variant", sort=False)}
    marked = {variant: note for variant, note in notes.items() if note.startswith("consistency not shown")}
    shift_columns = [c for c in runs.columns if c.startswith("shift_")]
    long = runs.melt(
        id_vars=["variant", "seed", "unreliable"], value_vars=shift_columns, var_name="metric", value_name="value"
    ).dropna(subset=["value"])
    long["shift (px)"] = long["metric"].str.extract(r"_(\d+)px$")[0].astype(int)
    long["measure"] = long["metric"].str.extract(r"^shift_(acc|consistency)_")[0]
    long["value"] *= 100
    long = long[~((long["measure"] == "consistency") & (long["unreliable"] != ""))]
    means = long.groupby(["variant", "measure", "shift (px)"], as_index=False)["value"].mean()
    table_frame = means.pivot_table(index="variant", columns=["measure", "shift (px)"], values="value")
    table_frame.columns = [f"{measure}_{shift}px (%)" for measure, shift in table_frame.columns]
    table_frame = table_frame.reindex(list(dict.fromkeys(runs["variant"])))
    table_frame["note"] = [notes[variant] for variant in table_frame.index]
    table_frame.reset_index().to_csv(table, index=False, float_format="%.2f")
    variants = list(dict.fromkeys(runs["variant"]))
    styles = variant_styles(variants)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for ax, measure, label in (
        (axes[0], "acc", "test accuracy (%)"),
        (axes[1], "consistency", "unchanged predictions (%)"),
    ):
        data = long[long["measure"] == measure]
        shown = [v for v in variants if v in set(data["variant"])]
        sns.lineplot(
            data=data,
            x="shift (px)",
            y="value",
            hue="variant",
            hue_order=shown,
            marker="o",
            palette={v: styles[v].color for v in variants},
            errorbar=("pi", 100),
            ax=ax,
            legend=False,
        )
        ax.set_ylabel(label)
        ax.set_xlabel("translation (pixels, zero fill)")
    handles = [plt.Line2D([], [], color=styles[v].color, marker="o") for v in variants]
    labels = list(variants)
    for variant, reason in marked.items():
        handles.append(plt.Line2D([], [], linestyle="none"))
        labels.append(f"{variant}: {reason}")
    axes[1].legend(handles, labels, **LEGEND_BESIDE)
    fig.suptitle("Shift robustness: weight sharing and pooling against translated inputs", fontsize=10)
    save(fig, figure)
    return table_frame
