"""Adaptive gradient clipping (AGC) for normaliser-free networks (Brock et al. 2021, arXiv:2102.06171, eq. 3).

Unit-wise: for every output unit i of a weight (a row of a linear layer, an output filter of a convolution),
if ||G_i|| / max(||W_i||, eps) > lambda, then G_i <- lambda * max(||W_i||, eps) / ||G_i|| * G_i, with
eps = 1e-3 as in the paper. The final classifier is not clipped (section 4.1). Vectors (biases, gains) are
one unit, as in timm's ``adaptive_clip_grad`` (timm/utils/agc.py), which this follows.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

AGC_EPS = 1e-3


def unitwise_norm(tensor: torch.Tensor) -> torch.Tensor:
    """L2 norm per output unit (dimension 0) for matrices and filters; the whole norm for vectors and scalars."""
    if tensor.ndim <= 1:
        return torch.linalg.vector_norm(tensor)
    return torch.linalg.vector_norm(tensor, dim=tuple(range(1, tensor.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad_(parameters: Iterable[nn.Parameter], clipping: float, eps: float = AGC_EPS) -> None:
    """Clip gradients in place, unit by unit, to at most ``clipping`` times the unit's weight norm."""
    for param in parameters:
        if param.grad is None:
            continue
        max_norm = unitwise_norm(param).clamp_min(eps) * clipping
        grad_norm = unitwise_norm(param.grad)
        scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp_min(1e-6), torch.ones_like(grad_norm))
        param.grad.mul_(scale)
