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


def read_run_jsons(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run: variant and seed (from the path RUN/<variant>/seed<seed>/<name>.json) and its numbers."""
    rows = []
    for path in map(Path, paths):
        rows.append(
            {
                "variant": path.parent.parent.name,
                "seed": int(path.parent.name.removeprefix("seed")),
                **json.loads(path.read_text()),
            }
        )
    return pd.DataFrame(rows)


def shift_robustness_outputs(paths: Iterable[str | Path], figure: str | Path, table: str | Path) -> pd.DataFrame:
    """Accuracy and consistency against shift per variant (mean over seeds): a figure and a CSV table."""
    runs = read_run_jsons(paths)
    long = runs.melt(id_vars=["variant", "seed"], var_name="metric", value_name="value").dropna(subset=["value"])
    long["shift (px)"] = long["metric"].str.extract(r"_(\d+)px$")[0].astype(int)
    long["measure"] = long["metric"].str.extract(r"^shift_(acc|consistency)_")[0]
    long["value"] *= 100
    means = long.groupby(["variant", "measure", "shift (px)"], as_index=False)["value"].mean()
    table_frame = means.pivot_table(index="variant", columns=["measure", "shift (px)"], values="value")
    table_frame.columns = [f"{measure}_{shift}px (%)" for measure, shift in table_frame.columns]
    table_frame.reset_index().to_csv(table, index=False, float_format="%.2f")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, measure, label in (
        (axes[0], "acc", "test accuracy (%)"),
        (axes[1], "consistency", "unchanged predictions (%)"),
    ):
        sns.lineplot(
            data=long[long["measure"] == measure],
            x="shift (px)",
            y="value",
            hue="variant",
            marker="o",
            errorbar=("ci", 95),
            ax=ax,
            legend=ax is axes[1],
        )
        ax.set_ylabel(label)
        ax.set_xlabel("translation of the test images (pixels, zero fill)")
    axes[1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("Shift robustness: weight sharing and pooling against translated inputs")
    fig.savefig(figure, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return table_frame
