"""First-layer filters and how closely they resemble oriented edge detectors (Sobel and Gabor kernels)."""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from cnnablate.models import LocallyConnected2d


def first_conv_weight(model: nn.Module) -> np.ndarray | None:
    """The first spatial layer's filters as out x C x k x k (a locally connected layer: its centre position)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.weight.detach().float().cpu().numpy()
        if isinstance(module, LocallyConnected2d):
            h, w = module.out_size
            centre = (h // 2) * w + w // 2
            k = module.kernel_size
            weight = module.weight[centre].detach().float().cpu()  # out x (C*k*k)
            return weight.reshape(module.out_channels, module.in_channels, k, k).numpy()
    return None


def edge_bank(size: int, orientations: int = 8) -> np.ndarray:
    """Sobel kernels in four directions and odd/even Gabor kernels at several orientations, all size x size."""
    ramp = np.arange(size) - (size - 1) / 2
    yy, xx = np.meshgrid(ramp, ramp, indexing="ij")
    kernels = []
    for angle in np.linspace(0, math.pi, 4, endpoint=False):  # Sobel-like: derivative across, smoothing along
        across = np.cos(angle) * xx + np.sin(angle) * yy
        along = -np.sin(angle) * xx + np.cos(angle) * yy
        kernels.append(np.sign(across) * np.exp(-(along**2) / (2 * max(size / 4, 0.5) ** 2)))
    sigma = max(size / 3, 0.6)
    for wavelength in (size, 2 * size):
        for angle in np.linspace(0, math.pi, orientations, endpoint=False):
            across = np.cos(angle) * xx + np.sin(angle) * yy
            envelope = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
            for phase in (0.0, math.pi / 2):
                kernels.append(envelope * np.cos(2 * math.pi * across / wavelength + phase))
    bank = np.stack(kernels).reshape(len(kernels), -1)
    bank -= bank.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(bank, axis=1, keepdims=True)
    return bank[norms[:, 0] > 1e-8] / norms[norms[:, 0] > 1e-8]


def spatial_component(filters: np.ndarray) -> np.ndarray:
    """Each filter's dominant spatial pattern across colour channels (first singular vector), out x k*k."""
    out, channels, k, _ = filters.shape
    components = []
    for weights in filters.reshape(out, channels, k * k):
        _, _, vt = np.linalg.svd(weights, full_matrices=False)
        components.append(vt[0])
    return np.stack(components)


def edge_match_score(filters: np.ndarray) -> float | None:
    """Mean over filters of the best |correlation| with the edge bank (zero-mean, unit-norm); None for 1x1."""
    k = filters.shape[-1]
    if k < 3:
        return None
    spatial = spatial_component(filters)
    spatial = spatial - spatial.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(spatial, axis=1, keepdims=True)
    spatial = spatial / np.where(norms > 1e-12, norms, 1.0)
    correlation = np.abs(spatial @ edge_bank(k).T)
    return float(correlation.max(axis=1).mean())
