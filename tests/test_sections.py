"""Report sections as analyses declare them: column patterns, headings and units, percentages, the round trip
through the report rule's params, and the captions."""

from __future__ import annotations

import json

import pandas as pd

from cnnablate.report import labelled
from cnnablate.sections import Column, Output, Section

SHIFT = Section(
    "shift",
    title="Robustness",
    columns=(
        Column("shift_acc_{pixels}px", "accuracy, shift {pixels} px", percent=True),
        Column("trf_size", "TRF", unit="px"),
        Column("value", hidden=True),
    ),
    outputs={"figure": Output("shift.png", "Accuracy against shift."), "table": Output("shift.csv", "Numbers.")},
    run_figures={"filters.png": "first-layer filters."},
)


def test_a_pattern_column_matches_only_its_own_names_and_fills_its_label() -> None:
    pattern = SHIFT.columns[0]
    assert pattern.match("shift_acc_4px") == {"pixels": "4"}
    assert pattern.match("shift_consistency_4px") is None
    assert pattern.match("shift_acc_4px_low") is None
    assert SHIFT.column("shift_acc_12px")[1] == "accuracy, shift 12 px (%)"
    assert SHIFT.column("trf_size")[1] == "TRF (px)"
    assert SHIFT.column("some_number") == (None, "some number")  # undeclared: its name in words


def test_labelled_scales_percentages_joins_intervals_and_hides_declared_columns() -> None:
    frame = pd.DataFrame(
        {
            "variant": ["base"],
            "shift_acc_2px": [0.925],
            "shift_acc_2px_low": [0.9],
            "shift_acc_2px_high": [0.95],
            "trf_size": [32],
            "value": [1.0],
        }
    )
    table = labelled(frame, SHIFT)
    assert list(table.columns) == ["variant", "accuracy, shift 2 px (%) [95% interval]", "TRF (px)"]
    assert table.iloc[0, 1] == "92.5 [90, 95]"
    assert table.iloc[0, 2] == 32


def test_a_section_survives_the_report_rules_json_params_and_captions_its_files() -> None:
    again = Section.from_dict(json.loads(json.dumps(SHIFT.to_dict())))
    assert again == SHIFT
    assert again.caption("results/demo/figures/shift.png") == "Accuracy against shift."
    assert again.caption("runs/base/seed0/interpret/filters.png") == "first-layer filters."
    assert again.caption("elsewhere/erf_map.png") == "Robustness: erf map."
    assert [output.folder for output in again.outputs.values()] == ["figures", "tables"]
