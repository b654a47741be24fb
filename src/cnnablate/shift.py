"""Shift robustness: accuracy and prediction stability when test images are translated (zero fill).

The chapter's weight-sharing argument, measured: a convolution with global pooling responds to a pattern
wherever it is, so small translations barely change its predictions; a dense layer sees a new input.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from cnnablate.devices import autocast as autocast_context
from cnnablate.loader import DeviceDataset

DIRECTIONS = ((0, 1), (1, 0))  # right and down: two forward passes per shift keep the analysis cheap


def translate(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift a batch of images by (dy, dx) pixels, filling the uncovered border with zeros."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[..., dst_y, dst_x] = images[..., src_y, src_x]
    return out


@torch.no_grad()
def predict(
    model: nn.Module, data: DeviceDataset, images: torch.Tensor, autocast: torch.dtype | None, batch_size: int = 500
) -> torch.Tensor:
    """Predicted classes, in the precision the run was trained in."""
    with autocast_context(data.device, autocast):
        return torch.cat(
            [model(data.normalize(images[i : i + batch_size])).argmax(1) for i in range(0, len(images), batch_size)]
        )


@torch.no_grad()
def shift_robustness(
    model: nn.Module, data: DeviceDataset, shifts: Iterable[int], autocast: torch.dtype | None = None
) -> dict[str, float]:
    """For each shift s: accuracy and the fraction of unchanged predictions, averaged over two directions; and
    the share of the most frequent predicted class (1.0: a constant predictor, whose predictions never change)."""
    model.eval()
    reference = predict(model, data, data.images, autocast)
    results: dict[str, float] = {"majority_class_fraction": torch.bincount(reference).max().item() / len(reference)}
    for shift in shifts:
        accs, same = [], []
        for dy, dx in DIRECTIONS if shift else ((0, 0),):
            predictions = predict(model, data, translate(data.images, dy * shift, dx * shift), autocast)
            accs.append((predictions == data.labels).float().mean().item())
            same.append((predictions == reference).float().mean().item())
        results[f"shift_acc_{shift}px"] = sum(accs) / len(accs)
        results[f"shift_consistency_{shift}px"] = sum(same) / len(same)
    return results
