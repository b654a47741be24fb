"""Shift robustness: accuracy and prediction stability when test images are translated (zero fill).

The chapter's weight-sharing argument, measured: a convolution with global pooling responds to a pattern
wherever it is, so small translations barely change its predictions; a dense layer sees a new input.

Every translated copy of a batch goes through the model in one forward pass (the batch, then each shift in
each direction), so a GPU sees few large batches instead of one pass over the test set per shift; the images
are normalised once per batch, and the translation fills with the normalised value of a black pixel, which is
exactly what normalising a zero-filled uint8 image gives.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from cnnablate.devices import autocast as autocast_context
from cnnablate.loader import DeviceDataset

DIRECTIONS = ((0, 1), (1, 0))  # right and down: two forward passes per shift keep the analysis cheap
# Images per forward pass, all translated copies counted: a CPU runs small batches fastest (cache), a GPU
# needs large ones to be busy.
FORWARD_BATCH = {"cpu": 512, "cuda": 8192}


def translate(images: torch.Tensor, dy: int, dx: int, fill: torch.Tensor | float = 0) -> torch.Tensor:
    """Shift a batch of images by (dy, dx) pixels, filling the uncovered border with ``fill`` (a number, or a
    per-channel value broadcastable to the images)."""
    out = torch.empty_like(images)
    out[...] = fill
    h, w = images.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[..., dst_y, dst_x] = images[..., src_y, src_x]
    return out


def offsets(shifts: Iterable[int]) -> list[tuple[int, int]]:
    """The translations to predict: the unshifted images first, then each non-zero shift in each direction."""
    return [(0, 0)] + [(dy * shift, dx * shift) for shift in shifts if shift for dy, dx in DIRECTIONS]


@torch.inference_mode()
def shifted_predictions(
    model: nn.Module,
    data: DeviceDataset,
    translations: list[tuple[int, int]],
    autocast: torch.dtype | None,
    forward_batch: int | None = None,
) -> torch.Tensor:
    """Predicted classes of every test image under every translation: ``len(translations) x N``, computed in the
    precision the run was trained in, all translations of a batch of images in one forward pass."""
    forward_batch = forward_batch or FORWARD_BATCH.get(data.device.type, FORWARD_BATCH["cpu"])
    per_pass = max(1, forward_batch // len(translations))
    black = data.normalize(torch.zeros((1, data.images.shape[1], 1, 1), dtype=torch.uint8, device=data.device))
    predictions = []
    with autocast_context(data.device, autocast):
        for start in range(0, len(data), per_pass):
            images = data.normalize(data.images[start : start + per_pass])
            views = torch.cat([translate(images, dy, dx, black) for dy, dx in translations])
            predictions.append(model(views).argmax(1).view(len(translations), -1))
    return torch.cat(predictions, dim=1)


def shift_robustness(
    model: nn.Module,
    data: DeviceDataset,
    shifts: Iterable[int],
    autocast: torch.dtype | None = None,
    forward_batch: int | None = None,
) -> dict[str, float]:
    """For each shift s: accuracy and the fraction of unchanged predictions, averaged over two directions; and
    the share of the most frequent predicted class (1.0: a constant predictor, whose predictions never change)."""
    model.eval()
    shifts = list(shifts)
    translations = offsets(shifts)
    predicted = shifted_predictions(model, data, translations, autocast, forward_batch)
    correct = (predicted == data.labels).sum(dim=1).tolist()
    unchanged = (predicted == predicted[0]).sum(dim=1).tolist()
    count = len(data)
    results: dict[str, float] = {"majority_class_fraction": torch.bincount(predicted[0]).max().item() / count}
    for shift in shifts:
        rows = [translations.index((dy * shift, dx * shift)) for dy, dx in (DIRECTIONS if shift else ((0, 0),))]
        results[f"shift_acc_{shift}px"] = sum(correct[row] for row in rows) / (len(rows) * count)
        results[f"shift_consistency_{shift}px"] = sum(unchanged[row] for row in rows) / (len(rows) * count)
    return results
