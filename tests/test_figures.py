"""Every figure the report writes is readable: no two text elements (ticks, titles, labels, legends) overlap."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cnnablate import figures, heatmaps, layout
from study_fixture import write_study
from text_overlap import overlapping_pairs


def test_the_counter_sees_an_overlap() -> None:
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "one label")
    ax.text(0.52, 0.5, "another label")
    ax.text(0.1, 0.1, "far away")
    assert overlapping_pairs(fig) == [("one label", "another label")]
    plt.close(fig)


@pytest.fixture
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[str, str]]]:
    """Every figure saved while the test runs, by file name, with its overlapping text pairs."""
    found: dict[str, list[tuple[str, str]]] = {}
    save = Figure.savefig

    def counting(self: Figure, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        found[Path(str(path)).name] = overlapping_pairs(self)
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", counting)
    return found


@pytest.fixture
def drawn_figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure handed to ``figures.save`` while the test runs, kept open to read back its axes."""
    drawn: list[Figure] = []
    save = figures.save

    def keep(fig: Figure, path: Path) -> Path:
        drawn.append(fig)
        return save(fig, path)

    monkeypatch.setattr(figures, "save", keep)
    return drawn


def test_no_text_overlaps_in_any_report_figure(tmp_path: Path, saved_figures: dict[str, list[tuple[str, str]]]) -> None:
    fixture = write_study(tmp_path)  # writes the shift analysis's figure too
    run = Path(fixture.metrics[0]).parent
    heatmaps.erf_pair_figure(
        np.load(run / layout.ERF_INIT), np.load(run / layout.ERF_TRAINED), "base", tmp_path / "erf.png"
    )
    heatmaps.erf_pair_figure(None, None, "arch-fc", tmp_path / "erf_fc.png")
    fixture.build_report(tmp_path)
    written = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert written <= set(saved_figures)
    assert {"shift_robustness.png", "erf.png"} <= set(saved_figures)
    assert any(name.startswith("lr_") for name in written), "a tuned study draws its learning-rate figures"
    assert {name: pairs for name, pairs in saved_figures.items() if pairs} == {}


def test_erf_maps_are_a_compact_grid(tmp_path: Path, drawn_figures: list[Figure]) -> None:
    maps = [(f"variant-{i}", np.ones((9, 9)), np.ones((9, 9))) for i in range(9)]
    figures.erf_grid_figure(maps, 0, tmp_path / "grid.png")
    images = [ax for ax in drawn_figures[0].axes if ax.images]
    rows = sorted({round(ax.get_position().y0, 3) for ax in images}, reverse=True)
    columns = {round(ax.get_position().x0, 3) for ax in images}
    # 9 variants: 7 across, then 2; init/trained
    assert len(images) == 18
    assert len(rows) == 4
    assert len(columns) == 7
    assert len({im.get_clim() for ax in images for im in ax.images}) == 1  # one colour scale
    top = max(ax.get_position().y1 for ax in images)
    assert top > 0.85  # no blank band above the maps


def test_shift_table_leaves_out_predictions_that_cannot_move(tmp_path: Path) -> None:
    fixture = write_study(tmp_path)
    reason = "constant predictor (one class for 100% of images)"
    table = pd.read_csv(fixture.analyses["shift"][1]).set_index("variant")
    consistency = [c for c in table.columns if c.startswith("consistency_")]
    assert table.loc["norm-none", consistency].isna().all()
    assert table.loc["base", consistency].notna().all()
    assert table.loc["norm-none", "note"] == f"consistency not shown: {reason}"
    assert table.loc["norm-none", "acc_0px (%)"] == pytest.approx(10.0)  # its accuracy stays: chance is a number
    assert table.loc["pool-none", "note"] == "consistency without 1 of 3 seeds: did not train"


def _search(variant: str, accuracies: tuple[float, ...], rates: tuple[float, ...]) -> dict:
    grid = [{"lr": lr, "val_acc": a, "diverged": False} for lr, a in zip(rates, accuracies, strict=True)]
    return {"variant": variant, "chosen_lr": max(grid, key=lambda p: p["val_acc"])["lr"], "chance": 0.1, "grid": grid}


def test_the_counter_sees_crowded_tick_labels() -> None:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0.05, 0.8], [1, 2])
    ax.set_xscale("log")  # less than two decades: matplotlib labels the minor ticks 2x10^-1, 3x10^-1, ...
    assert any("times10" in a and "times10" in b for a, b in overlapping_pairs(fig)), overlapping_pairs(fig)
    plt.close(fig)


def test_learning_rate_ticks_are_the_rates_tried(
    tmp_path: Path, saved_figures: dict, drawn_figures: list[Figure]
) -> None:
    rates = (0.05, 0.2, 0.8)  # the GPU run's grid: under two decades, where the default log ticks crowd
    variants = ["base", "norm-group", "norm-instance", "norm-nf"]
    searches = {v: _search(v, (0.97, 1.0, 0.99), rates) for v in variants}
    searches["base"]["grid"].append({"lr": 1.6, "val_acc": 0.5, "diverged": False, "extended": True})
    figures.lr_sensitivity_figure(searches, variants, figures.variant_styles(variants), "norm", tmp_path / "lr.png")
    ax = drawn_figures[0].axes[0]
    assert list(ax.get_xticks()) == [*rates, 1.6]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "0.05",
        "0.2",
        "0.8",
        "1.6",
    ]
    assert not ax.xaxis.get_minor_ticks() or all(not t.label1.get_text() for t in ax.xaxis.get_minor_ticks())
    assert ax.get_ylim() == (0, 100)
    assert "added past the grid's edge" in ax.get_legend_handles_labels()[1]
    assert saved_figures["lr.png"] == []


def test_parameter_axis_shows_a_narrow_range(tmp_path: Path, saved_figures: dict, drawn_figures: list[Figure]) -> None:
    summary = pd.DataFrame(
        {
            "variant": ["base", "a", "b"],
            "params_mean": [1_000_000.0, 1_000_448.0, 1_000_896.0],
            "macs_mean": [2e6, 2e7, 2e8],
            "test_acc_mean": [0.9, 0.8, 0.85],
            "trained": [True, True, True],
        }
    )
    figures.cost_figure(summary, figures.variant_styles(["base", "a", "b"]), tmp_path / "cost.png")
    params, macs = drawn_figures[0].axes[:2]
    lo, hi = params.get_xlim()
    labels = [t.get_text() for t in params.get_xticklabels() if lo <= t.get_position()[0] <= hi]
    assert params.get_xscale() == "linear"
    assert len(set(labels)) == len(labels) >= 2, labels
    assert all("," in label for label in labels)
    assert "linear scale" in params.get_xlabel()
    assert macs.get_xscale() == "log"
    assert params.get_ylim() == (0, 100)
    assert saved_figures["cost.png"] == []


def test_the_learning_rate_figure_draws_the_learned_line_and_names_a_later_budget(
    tmp_path: Path, saved_figures: dict, drawn_figures: list[Figure]
) -> None:
    variants = ["base", "norm-none"]
    searches = {v: _search(v, (0.4, 0.7, 0.5), (0.03, 0.1, 0.3)) for v in variants}
    for search in searches.values():
        search["learned_acc"] = 0.325
    searches["norm-none"]["budgets"] = [150, 300, 600]
    figures.lr_sensitivity_figure(searches, variants, figures.variant_styles(variants), "norm", tmp_path / "lr.png")
    ax = drawn_figures[0].axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "learned: rate can be chosen" in labels
    assert "norm-none (at 600 steps)" in labels and "base" in labels
    assert any(list(line.get_ydata()) == [32.5, 32.5] for line in ax.get_lines())
    assert saved_figures["lr.png"] == []
