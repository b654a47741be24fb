"""Every figure the report writes is readable: no two text elements (ticks, titles, labels, legends) overlap."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cnnablate import figures, layout
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


@pytest.mark.parametrize("interface", [True, False], ids=["with-tuning", "older-runs"])
def test_no_text_overlaps_in_any_report_figure(
    tmp_path: Path, saved_figures: dict[str, list[tuple[str, str]]], interface: bool
) -> None:
    fixture = write_study(tmp_path, interface=interface)  # writes the shift analysis's figure too
    run = Path(fixture.metrics[0]).parent
    figures.erf_pair_figure(
        np.load(run / layout.ERF_INIT), np.load(run / layout.ERF_TRAINED), "base", tmp_path / "erf.png"
    )
    figures.erf_pair_figure(None, None, "arch-fc", tmp_path / "erf_fc.png")
    fixture.build_report(tmp_path)
    written = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert written <= set(saved_figures) and {"shift_robustness.png", "erf.png"} <= set(saved_figures)
    assert any(name.startswith("lr_") for name in written) == interface
    assert {name: pairs for name, pairs in saved_figures.items() if pairs} == {}


def test_erf_maps_are_a_compact_grid(tmp_path: Path) -> None:
    maps = [(f"variant-{i}", np.ones((9, 9)), np.ones((9, 9))) for i in range(9)]
    captured: list[Figure] = []
    original = figures.save

    def keep(fig: Figure, path: Path) -> Path:
        captured.append(fig)
        return original(fig, path)

    figures.save = keep
    try:
        figures.erf_grid_figure(maps, 0, tmp_path / "grid.png")
    finally:
        figures.save = original
    images = [ax for ax in captured[0].axes if ax.images]
    rows = sorted({round(ax.get_position().y0, 3) for ax in images}, reverse=True)
    columns = {round(ax.get_position().x0, 3) for ax in images}
    assert len(images) == 18 and len(rows) == 4 and len(columns) == 7  # 9 variants: 7 across, then 2; init/trained
    assert len({im.get_clim() for ax in images for im in ax.images}) == 1  # one colour scale
    top = max(ax.get_position().y1 for ax in images)
    assert top > 0.85  # no blank band above the maps


@pytest.mark.parametrize(
    ("interface", "reason"),
    [(True, "constant predictor (one class for 100% of images)"), (False, "did not train")],
    ids=["with-tuning", "older-runs"],
)
def test_shift_table_leaves_out_predictions_that_cannot_move(tmp_path: Path, interface: bool, reason: str) -> None:
    fixture = write_study(tmp_path, interface=interface)
    table = pd.read_csv(fixture.analyses["shift"][1]).set_index("variant")
    consistency = [c for c in table.columns if c.startswith("consistency_")]
    assert table.loc["norm-none", consistency].isna().all() and table.loc["base", consistency].notna().all()
    assert table.loc["norm-none", "note"] == f"consistency not shown: {reason}"
    assert table.loc["norm-none", "acc_0px (%)"] == pytest.approx(10.0)  # its accuracy stays: chance is a number
    assert table.loc["pool-none", "note"] == "consistency without 1 of 3 seeds: did not train"
