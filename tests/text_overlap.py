"""Which text elements of a matplotlib figure overlap, from the extents the renderer gives them.

Two sources, joined: every text the figure actually draws (titles, labels, legends, annotations) and, read from
each axis itself, every tick label it shows, major and minor. The second does not depend on how an axis draws its
ticks, so crowded log-axis labels ("2×10⁻¹" on top of "3×10⁻¹") are counted even where a drawing hook misses them.
"""

from __future__ import annotations

from itertools import combinations
from unittest import mock

from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

TOLERANCE_PX = 1.0  # boxes that merely touch are not an overlap


def drawn_texts(fig: Figure) -> list[tuple[Text, Bbox]]:
    """Every non-empty text the figure draws (ticks, titles, labels, legends, annotations) and its extent."""
    drawn: list[tuple[Text, Bbox]] = []
    draw = Text.draw

    def record(self: Text, renderer) -> None:  # type: ignore[no-untyped-def]
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self, self.get_window_extent(renderer)))

    with mock.patch.object(Text, "draw", record):
        fig.canvas.draw()
    return drawn


def _shown(axis: Axis, location: float) -> bool:
    """Whether a tick at ``location`` lies inside the axis's view interval (matplotlib hides the others)."""
    low, high = sorted(axis.get_view_interval())
    span = (high - low) * 1e-9
    return low - span <= location <= high + span


def tick_labels(fig: Figure) -> list[tuple[Text, Bbox]]:
    """Every visible, non-empty tick label of every axis (major and minor, both sides) and its extent."""
    renderer = fig.canvas.get_renderer()
    found: list[tuple[Text, Bbox]] = []
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison:
            continue
        for axis in (ax.xaxis, ax.yaxis):
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if not _shown(axis, tick.get_loc()):
                    continue
                for label in (tick.label1, tick.label2):
                    if label.get_visible() and label.get_text().strip():
                        found.append((label, label.get_window_extent(renderer)))
    return found


def overlapping_pairs(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of texts (drawn texts and tick labels) whose boxes share more than a pixel in both directions."""
    texts: dict[int, tuple[Text, Bbox]] = {}
    for text, box in [*drawn_texts(fig), *tick_labels(fig)]:
        texts.setdefault(id(text), (text, box))
    pairs = []
    for (text_a, a), (text_b, b) in combinations(texts.values(), 2):
        width = min(a.x1, b.x1) - max(a.x0, b.x0)
        height = min(a.y1, b.y1) - max(a.y0, b.y0)
        if width > TOLERANCE_PX and height > TOLERANCE_PX:
            pairs.append((text_a.get_text(), text_b.get_text()))
    return pairs
