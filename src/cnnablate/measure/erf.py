"""Effective receptive fields (Luo, Li, Urtasun & Zemel, NeurIPS 2016, arXiv:1701.04128).

The ERF of a feature map is the input gradient of its centre unit: put a gradient of one on the centre
position of every channel (i.e. differentiate the channel sum of the centre unit), take the absolute
value of the input gradient, sum it over input channels and average over images. Real test images
measure a trained model; random normal inputs measure a model at initialisation.

The map is measured on a *canvas*: when the theoretical receptive field (TRF) of the centre unit does
not fit in the image, the image is zero-padded centrally into a larger canvas, so that the map is not
truncated by the image border (zero stands for the mean colour of normalised inputs). The returned map
is the window of the canvas covered by the TRF of the centre unit, so it is centred on the unit and
has the TRF's size, whatever the canvas.

Summaries:

* ``std``: per-axis standard deviation of the normalised map about the unit's centre, in pixels;
  ``std_mean`` their mean.
* ``erf_size``: per-axis width ``sqrt(12 std^2 + 1)`` of the discrete uniform distribution with that
  standard deviation; it equals the TRF size when the ERF is flat over the TRF. ``erf_trf_ratio`` is
  the mean over the two axes of ``erf_size / trf_size``.
* ``radius95``: half side ``i`` of the smallest centred ``(2i+1) x (2i+1)`` square (clipped to the map)
  holding at least 95% of the normalised map. A square, as in RepLKNet's analysis; squares are centred
  on pixel ``(h // 2, w // 2)`` like theirs, which is the unit's centre when the TRF size is odd.
* ``area_ratio[t]`` for t in (0.2, 0.3, 0.5, 0.99): RepLKNet's high-contribution area ratio
  (Ding et al., CVPR 2022, ``erf/analyze_erf.py``): on ``log10(raw + 1)`` rescaled to a maximum of 1,
  the smallest centred square of side ``2i+1``, ``i >= 1``, holding *more than* a fraction t of the
  total, reported as its area over the map's area. RepLKNet's map is the whole 1024 px input; ours is
  the TRF window, so the ratio is relative to the TRF. RepLKNet also ReLUs the output unit and the
  gradient where Luo et al. (and we) take the absolute gradient of the raw unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnablate.measure.graph import Graph
from cnnablate.measure.macs import InputSize, evaluation, input_shape, placed
from cnnablate.measure.receptive_field import RFLayer, RFResult, analyse, analyse_at, pair

AREA_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


@dataclass(frozen=True)
class ERFResult:
    """Effective receptive field of the centre unit of one feature map; ``map`` is kept out of ``to_dict``."""

    layer: str
    unit: tuple[int, int]
    canvas: tuple[int, int]
    image_size: tuple[int, int]
    trf: RFLayer
    std: tuple[float, float]
    std_mean: float
    erf_size: tuple[float, float]
    erf_trf_ratio: float
    radius95: int
    area_ratio: dict[float, float]
    n_images: int
    source: str
    seed: int
    truncated: bool
    map: np.ndarray = field(repr=False)
    raw: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (save ``map`` separately, e.g. with ``np.save``)."""
        return {
            "layer": self.layer,
            "unit": list(self.unit),
            "canvas": list(self.canvas),
            "image_size": list(self.image_size),
            "trf": {
                "size": list(self.trf.size),
                "stride": list(self.trf.stride),
                "padding": list(self.trf.padding),
            },
            "std": list(self.std),
            "std_mean": self.std_mean,
            "erf_size": list(self.erf_size),
            "erf_trf_ratio": self.erf_trf_ratio,
            "radius95": self.radius95,
            "area_ratio": {str(t): r for t, r in self.area_ratio.items()},
            "n_images": self.n_images,
            "source": self.source,
            "seed": self.seed,
            "truncated": self.truncated,
        }


def _square_sums(data: np.ndarray) -> list[tuple[int, float, int]]:
    """``(i, sum, area)`` of the centred ``(2i+1)``-squares, clipped to the map, until they cover it."""
    h, w = data.shape
    ch, cw = h // 2, w // 2
    out = []
    for i in range(max(h, w)):
        rows = slice(max(ch - i, 0), min(ch + i + 1, h))
        cols = slice(max(cw - i, 0), min(cw + i + 1, w))
        block = data[rows, cols]
        out.append((i, float(block.sum()), block.size))
        if block.size == data.size:
            break
    return out


def _radius(mass: np.ndarray, fraction: float) -> int:
    return next(i for i, s, _ in _square_sums(mass) if s >= fraction - 1e-12)


def area_ratios(raw: np.ndarray, frame: int | None = None) -> dict[float, float]:
    """RepLKNet's high-contribution area ratio of a raw ERF map for each t in :data:`AREA_THRESHOLDS`.

    As ``erf/analyze_erf.py`` of DingXiaoH/RepLKNet-pytorch: ``log10(map + 1)`` rescaled to a maximum of
    1; for each t, the smallest centred square of side ``2i+1`` (``i >= 1``) holding more than a fraction
    t of the total, as its area over the map's. Without ``frame`` the map is the TRF window, so the ratio
    is relative to the model's own TRF, which grows with the kernel. With ``frame`` the map is first
    centred in a zero ``frame`` x ``frame`` window, the same for every model compared (RepLKNet uses the
    whole 1024 px input); outside its TRF a map is zero, so padding it is exact.
    """
    if frame is not None:
        h, w = raw.shape
        if h > frame or w > frame:
            raise ValueError(f"frame {frame} is smaller than the map {raw.shape}")
        framed = np.zeros((frame, frame))
        top, left = frame // 2 - h // 2, frame // 2 - w // 2
        framed[top : top + h, left : left + w] = raw
        raw = framed
    data = np.log10(raw + 1.0)
    data = data / data.max()
    total = data.sum()
    squares = [sq for sq in _square_sums(data) if sq[0] >= 1 or sq[2] == data.size]
    return {t: next(area for _, s, area in squares if s / total > t) / data.size for t in AREA_THRESHOLDS}


def _crop(raw: np.ndarray, region: tuple[tuple[int, int], tuple[int, int]]) -> tuple[np.ndarray, bool]:
    """The TRF window of the canvas map; parts outside the canvas are zeros (and flag truncation)."""
    (top, bottom), (left, right) = region
    out = np.zeros((bottom - top + 1, right - left + 1))
    h, w = raw.shape
    r0, r1, c0, c1 = max(top, 0), min(bottom + 1, h), max(left, 0), min(right + 1, w)
    out[r0 - top : r1 - top, c0 - left : c1 - left] = raw[r0:r1, c0:c1]
    return out, (top < 0 or left < 0 or bottom >= h or right >= w)


def _fit_canvas(
    graph: Graph,
    trf: RFResult,
    shape: tuple[int, int, int],
    canvas: int | tuple[int, int] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[tuple[int, int], RFLayer]:
    """Smallest canvas (at least the image) holding the TRF of the centre unit, or the given canvas.

    A model that cannot run on a larger input, or whose map does not grow with it (the locally connected
    network: its analysis on a larger canvas gives the image's map again), is measured on the image itself (the
    map is then flagged ``truncated`` if the field does not fit).
    """
    image = (shape[1], shape[2])

    def entry(hw: tuple[int, int]) -> RFLayer:
        if hw == image:
            return trf.at(trf.layer)
        return analyse_at(graph, (shape[0], *hw), device, dtype, trf.layer).at(trf.layer)

    if canvas is not None:
        hw = pair(canvas)
        if hw[0] < image[0] or hw[1] < image[1]:
            raise ValueError(f"canvas {hw} is smaller than the images {image}")
        return hw, entry(hw)
    hw, at_image = image, None
    for _ in range(16):
        try:
            e = entry(hw)
        except (RuntimeError, ValueError):
            if hw == image:
                raise
            return image, entry(image)  # the model only runs at its own input size (locally connected layers)
        if at_image is None:
            at_image = e
        elif e.shape == at_image.shape:  # the map did not grow with the canvas: bound to its input size
            return image, at_image
        region = e.region((e.shape[0] // 2, e.shape[1] // 2))
        fits = [region[a][0] >= 0 and region[a][1] <= hw[a] - 1 for a in (0, 1)]
        if all(fits):
            return hw, e
        hw = tuple(  # type: ignore[assignment]
            hw[a] if fits[a] else max(hw[a] + e.stride[a], e.size[a] + 2 * e.stride[a]) for a in (0, 1)
        )
    raise RuntimeError(f"no canvas found on which the receptive field of {trf.layer!r} fits")


def effective_rf(
    model: nn.Module,
    images: torch.Tensor | None = None,
    input_size: InputSize | None = None,
    layer: str | None = None,
    canvas: int | tuple[int, int] | None = None,
    n_random: int = 16,
    seed: int = 0,
    *,
    batch_size: int = 16,
    method: str = "auto",
    device: torch.device | str | None = None,
) -> ERFResult:
    """Effective receptive field of the centre unit of ``layer`` (see the module docstring).

    ``images``: ``(N, C, H, W)`` inputs, already normalised as the model expects; if ``None``,
    ``n_random`` standard normal images of ``input_size`` drawn from a generator seeded with ``seed``.
    ``layer``: graph node name or module path; default: the last spatial feature map, as in
    :func:`cnnablate.measure.theoretical_rf`. ``canvas``: int or ``(H, W)``; default: the image size,
    enlarged (zero padding around the centred image) until the TRF of the centre unit fits, unless the
    model cannot run on a larger input (then ``truncated`` tells whether the field was cut).
    The model runs in eval mode (BatchNorm uses running statistics) and its flags are restored.
    """
    with evaluation(model), placed(model, device) as (dev, dtype):
        if images is not None:
            images = images.to(device=dev, dtype=dtype)
            if images.dim() == 3:
                images = images.unsqueeze(0)
            shape = (images.shape[1], images.shape[2], images.shape[3])
            n_images, source = images.shape[0], "images"
        elif input_size is not None:
            shape = input_shape(input_size)
            n_images, source = n_random, "random"
        else:
            raise ValueError("give either images or input_size")
        graph, trf = analyse(model, shape, dev, dtype, method, layer)
        hw, entry = _fit_canvas(graph, trf, shape, canvas, dev, dtype)
        feature = graph.feature(trf.layer)
        unit = (entry.shape[0] // 2, entry.shape[1] // 2)
        top, left = (hw[0] - shape[1]) // 2, (hw[1] - shape[2]) // 2
        generator = torch.Generator().manual_seed(seed)
        raw = torch.zeros(hw, dtype=torch.float64)
        for start in range(0, n_images, batch_size):
            count = min(batch_size, n_images - start)
            if images is not None:
                batch = images[start : start + count]
            else:
                batch = torch.randn((count, *shape), generator=generator, dtype=dtype).to(dev)
            x = torch.zeros((count, shape[0], *hw), device=dev, dtype=dtype)
            x[:, :, top : top + shape[1], left : left + shape[2]] = batch
            x.requires_grad_(True)
            out = feature(x)
            index: list[Any] = [slice(None)] * out.dim()  # all images and channels, the centre position
            index[entry.axes[0]], index[entry.axes[1]] = unit
            (grad,) = torch.autograd.grad(out[tuple(index)].sum(), x)
            raw += grad.detach().abs().sum(dim=(0, 1)).to(device="cpu", dtype=torch.float64)
    raw_map, truncated = _crop((raw / n_images).numpy(), entry.region(unit))
    total = raw_map.sum()
    if not total > 0:
        raise RuntimeError(f"the input gradient of {trf.layer!r} is zero everywhere (dead units?)")
    mass = raw_map / total
    std = []
    for axis in (0, 1):
        marginal = mass.sum(axis=1 - axis)
        offsets = np.arange(marginal.size) - (marginal.size - 1) / 2
        std.append(float(math.sqrt((marginal * offsets**2).sum())))
    erf_size = tuple(math.sqrt(12 * s**2 + 1) for s in std)
    return ERFResult(
        layer=trf.layer,
        unit=unit,
        canvas=hw,
        image_size=(shape[1], shape[2]),
        trf=entry,
        std=(std[0], std[1]),
        std_mean=(std[0] + std[1]) / 2,
        erf_size=(erf_size[0], erf_size[1]),
        erf_trf_ratio=float(np.mean([erf_size[a] / entry.size[a] for a in (0, 1)])),
        radius95=_radius(mass, 0.95),
        area_ratio=area_ratios(raw_map),
        n_images=n_images,
        source=source,
        seed=seed,
        truncated=truncated,
        map=mass,
        raw=raw_map,
    )
