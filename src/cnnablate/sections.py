"""An analysis's report section, declared once beside its rule: its title and text, how its numbers are labelled
(units, percentages), and the captions of its figures and tables.

The report renders a section from this declaration alone (``cnnablate.report`` holds nothing about any one
analysis), and Snakemake's own report takes its captions from the same words: ``common.smk`` writes each
caption as the ``.rst`` file Snakemake's ``report(caption=...)`` reads. Standard library only, so the Snakefile
imports it without pandas or torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FIGURES, TABLES = "figures", "tables"  # the study folders a section's .png and .csv outputs live in


@dataclass(frozen=True)
class Column:
    """How one number of the section's tables is shown.

    ``name`` is a column name or a pattern whose ``{fields}`` match any text (``"shift_acc_{pixels}px"``); the
    ``label`` may use the same fields. ``percent``: the number is a fraction of 1, shown times 100 with "(%)";
    otherwise ``unit`` (e.g. ``"px"``) follows the label in brackets. ``hidden``: left out of the page (a number
    another column already writes out).
    """

    name: str
    label: str = ""
    unit: str = ""
    percent: bool = False
    hidden: bool = False

    def match(self, column: str) -> dict[str, str] | None:
        """The pattern's fields when ``column`` is one of this declaration's columns, else None."""
        parts = re.split(r"\{(\w+)\}", self.name)
        regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>.+?)" for i, part in enumerate(parts))
        found = re.fullmatch(regex, column)
        return found.groupdict() if found else None

    def heading(self, fields: Mapping[str, str]) -> str:
        label = self.label.format(**fields) if self.label else self.name.format(**fields).replace("_", " ")
        unit = "%" if self.percent else self.unit
        return f"{label} ({unit})" if unit else label


@dataclass(frozen=True)
class Output:
    """A study-level figure (``.png``, written under figures/) or table (``.csv``, under tables/) and its caption."""

    file: str
    caption: str

    @property
    def folder(self) -> str:
        return FIGURES if self.file.endswith(".png") else TABLES


@dataclass(frozen=True)
class Section:
    """One analysis in the report: ``name`` is the analysis (its per-run ``RUN/<name>.json``), ``title`` the
    section's heading in words, ``text`` a paragraph under it.

    ``columns`` label the numbers of the per-run table (mean over seeds) and of the study-level tables. The
    per-run table shows every number of the analysis's JSON, or, where ``per_run`` names columns of results.csv
    (names or patterns, as ``Column.name``), those, in that order; ``per_run=()``: no per-run table. ``outputs``
    are the study-level files by the name of the rule output that writes them; ``run_figures`` caption the
    figures a job writes into each run's folder, by file name.
    """

    name: str
    title: str
    text: str = ""
    columns: tuple[Column, ...] = ()
    outputs: Mapping[str, Output] = field(default_factory=dict)
    run_figures: Mapping[str, str] = field(default_factory=dict)
    per_run: tuple[str, ...] | None = None

    def column(self, column: str) -> tuple[Column | None, str]:
        """The declaration that covers ``column`` and the heading it gives; an undeclared one keeps its name in
        words."""
        for declared in self.columns:
            fields = declared.match(column)
            if fields is not None:
                return declared, declared.heading(fields)
        return None, column.replace("_", " ")

    def caption(self, path: str | Path) -> str:
        """The caption of a study-level output or a run figure, by its file name."""
        name = Path(path).name
        for output in self.outputs.values():
            if output.file == name:
                return output.caption
        return self.run_figures.get(name, f"{self.title}: {Path(path).stem.replace('_', ' ')}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Section:
        return cls(
            **{
                **data,
                "columns": tuple(Column(**column) for column in data.get("columns", ())),
                "outputs": {key: Output(**output) for key, output in data.get("outputs", {}).items()},
                "per_run": None if data.get("per_run") is None else tuple(data["per_run"]),
            }
        )

    @classmethod
    def undeclared(cls, name: str) -> Section:
        """The section of an analysis registered without a declaration: its name as title, every number shown."""
        return cls(name, title=name.replace("_", " "))
