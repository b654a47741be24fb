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
            low, high, kind = figures.accuracy_interval(row)
            # two seeds: the t interval is uninformative, so the bar is the test set's Wilson interval
            assert kind == figures.TEST_SET_INTERVAL
            assert not row["test_acc_t_informative"]
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


def _half_width(values: np.ndarray) -> float:
    """Half of the 95% Student-t interval of the mean, from scipy's t quantile and standard error."""
    return float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values))


def test_summary_intervals_are_recomputed_from_the_raw_metrics(tiny_study: Path) -> None:
    raw = [json.loads(p.read_text()) for p in (tiny_study / RESULTS).glob("runs/*/seed*/metrics.json")]
    accuracy = {(m["variant"], m["seed"]): m["test_acc"] for m in raw}
    seeds = sorted({seed for _, seed in accuracy})
    summary = pd.read_csv(tiny_study / RESULTS / "summary.csv").set_index("variant")
    assert sorted(summary.index) == sorted({variant for variant, _ in accuracy})
    assert len(seeds) == 2
    for variant, row in summary.iterrows():
        values = np.array([accuracy[variant, seed] for seed in seeds])
        half = _half_width(values)  # cut to [0, 1]: an accuracy cannot leave it
        assert row["test_acc_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert row["test_acc_ci_low"] == pytest.approx(max(0.0, values.mean() - half), abs=1e-12)
        assert row["test_acc_ci_high"] == pytest.approx(min(1.0, values.mean() + half), abs=1e-12)
        images = raw[0]["test_images"]
        wilson = stats.binomtest(round(values.mean() * images), images).proportion_ci(0.95, method="wilson")
        assert (row["test_acc_binomial_low"], row["test_acc_binomial_high"]) == pytest.approx(
            (wilson.low, wilson.high), abs=1e-12
        )
        base_values = np.array([accuracy["base", seed] for seed in seeds])
        differences = values - base_values
        assert row["paired_seeds"] == len(seeds)
        assert row["paired_diff"] == pytest.approx(differences.mean(), abs=1e-12)
        half = _half_width(differences)  # base against itself: no spread, the interval is the point
        low, high = differences.mean() - half, differences.mean() + half
        if variant != "base":  # widened to the test set's own error of the difference: Newcombe's method 10
            mean, base_mean = values.mean(), base_values.mean()
            ours = stats.binomtest(round(mean * images), images).proportion_ci(0.95, method="wilson")
            theirs = stats.binomtest(round(base_mean * images), images).proportion_ci(0.95, method="wilson")
            low = min(low, mean - base_mean - math.hypot(mean - ours.low, theirs.high - base_mean))
            high = max(high, mean - base_mean + math.hypot(ours.high - mean, base_mean - theirs.low))
        assert row["paired_ci_low"] == pytest.approx(max(-1.0, low), abs=1e-12)
        assert row["paired_ci_high"] == pytest.approx(min(1.0, high), abs=1e-12)
