"""ERF heatmaps on one log colour scale, with matplotlib and numpy alone.

The measure job draws its run's figure from here without the report's seaborn (1.0 s of imports with the pandas
and scipy.stats it loads, against 0.3 s for matplotlib alone, in each of the study's 30-odd measure jobs); the
report's ERF grid (:mod:`cnnablate.figures`) draws its panels with the same :func:`erf_heatmap`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.image import AxesImage

DPI = 110  # every figure of the study
ERF_SCALE = "log10 relative gradient"


def erf_heatmap(ax: Axes, erf: np.ndarray) -> AxesImage:
    """One ERF map, relative to its peak, on a log scale from 1e-4 to 1 shared by every ERF panel."""
    return ax.imshow(np.log10(erf / erf.max() + 1e-4), cmap="magma", vmin=-4, vmax=0)


def erf_pair_figure(map_init: np.ndarray | None, map_trained: np.ndarray | None, title: str, path: str | Path) -> None:
    """ERF heatmaps at initialisation and after training, side by side, on a shared log colour scale."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), layout="constrained")
    image = None
    for ax, erf, label in zip(axes, (map_init, map_trained), ("at initialisation", "after training"), strict=True):
        if erf is None:
            ax.text(0.5, 0.5, "no spatial feature map", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        else:
            image = erf_heatmap(ax, erf)
            ax.set_xlabel("input x (pixels)")
            ax.set_ylabel("input y (pixels)")
        ax.set_title(f"ERF {label}", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label=ERF_SCALE)
    fig.suptitle(f"Effective receptive field: {title}", fontsize=10)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
