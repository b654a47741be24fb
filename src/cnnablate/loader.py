"""The dataset on the device, normalised once in the compute dtype, batched and augmented by indexing (no
per-sample Python, no per-batch normalisation)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def random_crop_flip(
    padded: torch.Tensor,
    padding: int,
    flip: bool,
    generator: torch.Generator,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random crops of the images ``index`` of ``padded`` (all when None; N x H+2p x W+2p x C, padded by
    ``padding`` on every side) back to H x W, each mirrored horizontally with probability 1/2 when ``flip``: one
    gather selects, crops and flips.

    The column index carries both the crop offset and the mirroring, so a flip costs nothing extra; the result
    stays N x H x W x C, which is channels_last for the model without a copy.
    """
    device = padded.device
    index = torch.arange(padded.shape[0], device=device) if index is None else index
    n, h, w = index.shape[0], padded.shape[1] - 2 * padding, padded.shape[2] - 2 * padding
    offsets = torch.randint(0, 2 * padding + 1, (2, n), device=device, generator=generator)
    columns = torch.arange(w, device=device).expand(n, w)
    if flip:
        mirrored = torch.rand(n, device=device, generator=generator) < 0.5
        columns = torch.where(mirrored[:, None], columns.flip(1), columns)
    rows = offsets[0, :, None] + torch.arange(h, device=device)
    columns = offsets[1, :, None] + columns
    return padded[index[:, None, None], rows[:, :, None], columns[:, None, :]]


class DeviceDataset:
    """Images and labels resident on the compute device, with per-channel statistics.

    Pixels are kept as stored, uint8 N x H x W x C; ``images`` is their N x C x H x W view (channels_last strides).
    Training and evaluation read ``prepared(padding)``: the whole split standardised once, black-padded for random
    crops, in ``dtype`` (bf16 when the run computes in bf16: autocast would cast every batch to it anyway), as
    airbench does; a batch is then one gather.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        device: torch.device,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
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
        self.device, self.dtype = device, dtype
        self._prepared: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x H x W -> standardised float32 in the job's memory format."""
        out = images.float().sub_(self._shift).mul_(self._scale)
        return out.contiguous(memory_format=self.memory_format)

    def prepared(self, padding: int) -> torch.Tensor:
        """The split standardised once, black-padded by ``padding`` pixels, in ``dtype``: N x H+2p x W+2p x C."""
        if self._prepared is None or self._prepared[0] != padding:
            pixels = F.pad(self.pixels, (0, 0, padding, padding, padding, padding)) if padding else self.pixels
            shift, scale = self._shift.view(1, 1, 1, -1), self._scale.view(1, 1, 1, -1)
            self._prepared = (padding, pixels.float().sub_(shift).mul_(scale).to(self.dtype))
        return self._prepared[1]

    def _as_input(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)

    def train_batches(
        self, batch_size: int, generator: torch.Generator, crop_padding: int = 0, flip: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled epoch of augmented batches; the last incomplete batch is dropped (static shapes)."""
        source = self.prepared(crop_padding)
        order = torch.randperm(len(self), device=self.device, generator=generator)
        for start in range(0, len(self) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            augmented = crop_padding or flip
            batch = random_crop_flip(source, crop_padding, flip, generator, index) if augmented else source[index]
            yield self._as_input(batch), self.labels[index]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in order, unaugmented."""
        source = self.prepared(0)
        for start in range(0, len(self), batch_size):
            yield self._as_input(source[start : start + batch_size]), self.labels[start : start + batch_size]

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size
