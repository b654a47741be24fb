"""The dataset on the device as one uint8 tensor, batched and augmented with tensor ops (no per-sample Python)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def random_crop_flip(pixels: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding and random horizontal mirroring of N x H x W x C pixels, in two gathers.

    The column index of the second gather carries both the crop offset and the mirroring, so a flip costs
    nothing extra; the result stays N x H x W x C, which is channels_last for the model without a copy.
    """
    n, h, w, c = pixels.shape
    device = pixels.device
    padded = F.pad(pixels, (0, 0, padding, padding, padding, padding)) if padding else pixels
    offsets = torch.randint(0, 2 * padding + 1, (2, n), device=device, generator=generator)
    columns = torch.arange(w, device=device).expand(n, w)
    if flip:
        mirrored = torch.rand(n, device=device, generator=generator) < 0.5
        columns = torch.where(mirrored[:, None], columns.flip(1), columns)
    rows = (offsets[0, :, None] + torch.arange(h, device=device)).view(n, h, 1, 1).expand(n, h, w + 2 * padding, c)
    columns = (offsets[1, :, None] + columns).view(n, 1, w, 1).expand(n, h, w, c)
    return padded.gather(1, rows).gather(2, columns)


class DeviceDataset:
    """Images and labels resident on the compute device, with per-channel statistics.

    Pixels are kept as stored, uint8 N x H x W x C; ``images`` is their N x C x H x W view (channels_last strides).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        device: torch.device,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        channels_last: bool = False,
    ) -> None:
        self.pixels = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        self.images = self.pixels.permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(y).to(device)
        if mean is None or std is None:
            pixels = self.images.float().div_(255.0)
            mean, std = pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)
        self.mean = mean.to(device).view(1, -1, 1, 1)
        self.std = std.to(device).view(1, -1, 1, 1)
        self._shift = self.mean * 255.0  # normalise uint8 pixels in two in-place ops
        self._scale = 1.0 / (self.std * 255.0)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device = device

    def __len__(self) -> int:
        return self.labels.shape[0]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> standardised float32 in the job's memory format."""
        out = images.float().sub_(self._shift).mul_(self._scale)
        return out.contiguous(memory_format=self.memory_format)

    def train_batches(
        self, batch_size: int, generator: torch.Generator, crop_padding: int = 0, flip: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled epoch of augmented batches; the last incomplete batch is dropped (static shapes)."""
        order = torch.randperm(len(self), device=self.device, generator=generator)
        for start in range(0, len(self) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            pixels = self.pixels[index]
            if crop_padding or flip:
                pixels = random_crop_flip(pixels, crop_padding, flip, generator)
            yield self.normalize(pixels.permute(0, 3, 1, 2)), self.labels[index]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in order, unaugmented."""
        for start in range(0, len(self), batch_size):
            yield (
                self.normalize(self.images[start : start + batch_size]),
                self.labels[start : start + batch_size],
            )

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size
