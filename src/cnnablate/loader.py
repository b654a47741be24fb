"""The dataset on the device as one uint8 tensor, batched and augmented with tensor ops (no per-sample Python)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad by ``padding`` (zeros) and cut a random same-size window per image, for the whole batch at once."""
    if padding == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)).permute(0, 2, 3, 1)  # n x H x W x c
    offsets = torch.randint(0, 2 * padding + 1, (2, n), device=images.device, generator=generator)
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch horizontally."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class DeviceDataset:
    """Images (uint8, N x C x H x W) and labels resident on the compute device, with per-channel statistics."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        device: torch.device,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        channels_last: bool = False,
    ) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
        self.labels = torch.from_numpy(y).to(device)
        if mean is None or std is None:
            pixels = self.images.float().div_(255.0)
            mean, std = pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)
        self.mean = mean.to(device).view(1, -1, 1, 1)
        self.std = std.to(device).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device = device

    def __len__(self) -> int:
        return self.labels.shape[0]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> standardised float32 in the job's memory format."""
        out = (images.float().div_(255.0) - self.mean) / self.std
        return out.contiguous(memory_format=self.memory_format)

    def train_batches(
        self, batch_size: int, generator: torch.Generator, crop_padding: int = 0, flip: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled epoch of augmented batches; the last incomplete batch is dropped (static shapes)."""
        order = torch.randperm(len(self), device=self.device, generator=generator)
        for start in range(0, len(self) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            images = random_crop(self.images[index], crop_padding, generator)
            if flip:
                images = random_flip(images, generator)
            yield self.normalize(images), self.labels[index]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in order, unaugmented."""
        for start in range(0, len(self), batch_size):
            yield (
                self.normalize(self.images[start : start + batch_size]),
                self.labels[start : start + batch_size],
            )

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size
