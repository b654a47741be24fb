"""Which text elements of a matplotlib figure overlap, from the extents the renderer gives them."""

from __future__ import annotations

from itertools import combinations
from unittest import mock

from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

TOLERANCE_PX = 1.0  # boxes that merely touch are not an overlap


def drawn_texts(fig: Figure) -> list[tuple[str, Bbox]]:
    """Every non-empty text the figure draws (ticks, titles, labels, legends, annotations) and its extent."""
    drawn: list[tuple[str, Bbox]] = []
    draw = Text.draw

    def record(self: Text, renderer) -> None:  # type: ignore[no-untyped-def]
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self.get_text(), self.get_window_extent(renderer)))

    with mock.patch.object(Text, "draw", record):
        fig.canvas.draw()
    return drawn


def overlapping_pairs(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes share more than a pixel in both directions."""
    pairs = []
    for (text_a, a), (text_b, b) in combinations(drawn_texts(fig), 2):
        width = min(a.x1, b.x1) - max(a.x0, b.x0)
        height = min(a.y1, b.y1) - max(a.y0, b.y0)
        if width > TOLERANCE_PX and height > TOLERANCE_PX:
            pairs.append((text_a, text_b))
    return pairs
