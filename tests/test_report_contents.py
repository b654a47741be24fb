"""What the tiny study's report holds, not only that it exists: figures decode and show something, the points of
the accuracy and cost figures are summary.csv's numbers, every MLflow child run hangs under the study's parent
run, and the summary's intervals are recomputed with scipy from the raw metrics.json files.

Every test reads the session's ``tiny_study`` and writes only under its own ``tmp_path``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats

from cnnablate import figures
from cnnablate.config import Study, validate_config

RESULTS = "results/tiny"


def _study(tiny_study: Path) -> Study:
    return Study.from_config(validate_config(yaml.safe_load((tiny_study / "config.yaml").read_text())))


def _tables(tiny_study: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(tiny_study / RESULTS / "results.csv"), pd.read_csv(tiny_study / RESULTS / "summary.csv")


def test_every_figure_decodes_and_is_not_blank(tiny_study: Path) -> None:
    pictures = sorted((tiny_study / RESULTS).rglob("*.png"))
    report = {p.stem for p in pictures if p.parent.name == "report"}
    assert {"accuracy_vs_cost", "accuracy_pooling", "trf_vs_erf", "erf_maps"} <= report
    assert any(p.name == "measures_erf.png" for p in pictures)
    assert any(p.parent.name == "interpret" for p in pictures)
    for path in pictures:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=float)
        assert pixels.shape[0] > 50, path
        assert pixels.shape[1] > 50, path
        assert pixels.var() > 0, f"{path} is one flat colour"


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[plt.Figure]:
    """The figures the builders in cnnablate.figures hand to ``save``, kept open so their artists can be read."""
    kept: list[plt.Figure] = []

    def keep(fig: plt.Figure, path: str | Path) -> Path:
        kept.append(fig)
        return Path(path)

    monkeypatch.setattr(figures, "save", keep)
    yield kept
    for fig in kept:
        plt.close(fig)


def _points(ax: plt.Axes, label: str | None = None) -> np.ndarray:
    """Every scatter point of an axes (of the collections with ``label``, if given), as rows (x, y)."""
    offsets = [
        collection.get_offsets()
        for collection in ax.collections
        if len(collection.get_offsets()) and type(collection).__name__ == "PathCollection"
        if label is None or collection.get_label() == label
    ]
    return np.concatenate(offsets) if offsets else np.empty((0, 2))


def test_accuracy_figure_points_are_the_runs_and_the_summary(
    tiny_study: Path, tmp_path: Path, drawn: list[plt.Figure]
) -> None:
    results, summary = _tables(tiny_study)
    study = _study(tiny_study)
    for block in study.config["ablations"]:
        members = study.ablation_variants(block)
        figures.accuracy_figure(results, summary, members, block, tmp_path / f"accuracy_{block}.png")
        ax = drawn[-1].axes[0]
        seeds = _points(ax, "one seed")
        expected = results[results["variant"].isin(members)]["test_acc"].to_numpy() * 100
        np.testing.assert_allclose(np.sort(seeds[:, 1]), np.sort(expected))
        stats_by_variant = summary.set_index("variant").loc[members]
        bars = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
        assert len(bars) == len(members)
        assert ax.get_ylim() == (0, 100)
        for container, (_, row) in zip(bars, stats_by_variant.iterrows(), strict=True):
            _, y = container.lines[0].get_data()
            assert y[0] == pytest.approx(row["test_acc_mean"] * 100)
            low, high = row["test_acc_ci_low"], row["test_acc_ci_high"]  # the engine's interval, seeds and images
            if container.has_yerr:
                (segment,) = container.lines[2][0].get_segments()
                assert sorted(segment[:, 1]) == pytest.approx([low * 100, high * 100])
                assert 0 <= low <= row["test_acc_mean"] <= high <= 1


def test_cost_figure_points_are_the_summary(tiny_study: Path, tmp_path: Path, drawn: list[plt.Figure]) -> None:
    _, summary = _tables(tiny_study)
    styles = figures.variant_styles(list(_study(tiny_study).variants))
    figures.cost_figure(summary, styles, tmp_path / "accuracy_vs_cost.png")
    (fig,) = drawn
    for ax, column in zip(fig.axes, ("params_mean", "macs_mean"), strict=False):
        rows = summary.dropna(subset=[column, "test_acc_mean"])
        assert len(rows) == 3
        expected = np.column_stack([rows[column], rows["test_acc_mean"] * 100])
        plotted = _points(ax)
        np.testing.assert_allclose(plotted[np.lexsort(plotted.T[::-1])], expected[np.lexsort(expected.T[::-1])])


def test_every_child_run_hangs_under_the_study_parent_run(tiny_study: Path) -> None:
    setup = json.loads((tiny_study / RESULTS / "mlflow.json").read_text())
    client = MlflowClient(f"sqlite:///{tiny_study}/results/mlflow.db")
    parent = client.get_run(setup["parent_run_id"])
    assert parent.data.tags["cnnablate.role"] == "parent"
    runs = client.search_runs([setup["experiment_id"]], "tags.`cnnablate.role` != 'parent'")
    roles = [run.data.tags["cnnablate.role"] for run in runs]
    assert sorted(roles) == ["job"] * 6 + ["tuning"] * 3
    for run in runs:
        assert run.data.tags.get("mlflow.parentRunId") == setup["parent_run_id"], run.info.run_name


def test_summary_intervals_are_recomputed_from_the_raw_predictions(tiny_study: Path) -> None:
    """The accuracy interval by hand from each run's test_predictions.npy: the variance of the mean over seeds
    and images as var(per-seed accuracy) / n + var(per-image accuracy over seeds) / N, Satterthwaite's degrees
    of freedom, scipy's t quantile, cut to [0, 1]."""
    labels = np.load(tiny_study / RESULTS / "data/dataset.npz")["y_test"]
    summary = pd.read_csv(tiny_study / RESULTS / "summary.csv").set_index("variant")
    for variant, row in summary.iterrows():
        runs = sorted((tiny_study / RESULTS / "runs" / variant).glob("seed*"))
        correct = np.stack([np.load(run / "test_predictions.npy") == labels for run in runs]).astype(float)
        seeds, images = correct.shape
        seed_part = correct.mean(axis=1).var(ddof=1) / seeds
        image_part = correct.mean(axis=0).var(ddof=1) / images
        dof = (seed_part + image_part) ** 2 / (seed_part**2 / (seeds - 1) + image_part**2 / (images - 1))
        half = stats.t.ppf(0.975, dof) * math.sqrt(seed_part + image_part)
        mean = correct.mean()
        assert row["test_acc_mean"] == pytest.approx(mean, abs=1e-12)
        assert row["test_acc_ci_low"] == pytest.approx(max(0.0, mean - half), abs=1e-9)
        assert row["test_acc_ci_high"] == pytest.approx(min(1.0, mean + half), abs=1e-9)
        assert math.isnan(row["paired_diff"])  # the tiny study's base does not train: nothing is compared
