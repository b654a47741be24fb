"""Figures shared by rules and the report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def erf_pair_figure(map_init: np.ndarray | None, map_trained: np.ndarray | None, title: str, path: str | Path) -> None:
    """ERF heatmaps at initialisation and after training, side by side, on a shared log colour scale."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), constrained_layout=True)
    for ax, erf, label in zip(axes, (map_init, map_trained), ("at initialisation", "after training"), strict=True):
        if erf is None:
            ax.text(0.5, 0.5, "no spatial feature map", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        else:
            image = ax.imshow(np.log10(erf / erf.max() + 1e-4), cmap="magma", vmin=-4, vmax=0)
            ax.set_xlabel("input x (pixels)")
            ax.set_ylabel("input y (pixels)")
            fig.colorbar(image, ax=ax, shrink=0.8, label="log10 relative gradient")
        ax.set_title(f"ERF {label}")
    fig.suptitle(f"Effective receptive field: {title}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
