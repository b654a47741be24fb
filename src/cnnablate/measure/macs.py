"""Multiply-accumulate counting with PyTorch's own FLOP counter, and the shared input conventions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

InputSize = int | tuple[int, int] | tuple[int, int, int]


def input_shape(input_size: InputSize) -> tuple[int, int, int]:
    """Normalise an input size to ``(C, H, W)``.

    An int ``n`` means a square ``n x n`` RGB image, ``(H, W)`` an RGB image, ``(C, H, W)`` is taken
    as is. One convention for every measurement keeps the CLI's ``--input-size N`` unambiguous.
    """
    if isinstance(input_size, int):
        return (3, input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        return (3, size[0], size[1])
    if len(size) == 3:
        return (size[0], size[1], size[2])
    raise ValueError(f"input_size must be an int, (H, W) or (C, H, W), got {input_size!r}")


@contextmanager
def evaluation(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's own training flag afterwards.

    Measurements must not update BatchNorm statistics nor depend on dropout; restoring per module
    (not ``model.train(flag)``) keeps deliberately frozen submodules frozen.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextmanager
def placed(model: nn.Module, device: torch.device | str | None = None) -> Iterator[tuple[torch.device, torch.dtype]]:
    """Run on ``device`` (default: where the model lives) and yield ``(device, dtype)`` for inputs.

    A model moved for the measurement is moved back afterwards, so callers keep their placement.
    The dtype is the model's floating-point parameter dtype, so float64 models are measured in float64.
    """
    tensors = [*model.parameters(), *model.buffers()]
    home = tensors[0].device if tensors else torch.device("cpu")
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())
    target = torch.device(device) if device is not None else home
    moved = target != home
    if moved:
        model.to(target)
    try:
        yield target, dtype
    finally:
        if moved:
            model.to(home)


def count_flops(model: nn.Module, input_size: InputSize, device: torch.device | str | None = None) -> int:
    """FLOPs of one forward pass on a batch of one image, as counted by ``FlopCounterMode``.

    PyTorch counts 2 FLOPs per multiply-accumulate of convolutions and matrix products (``mm``,
    ``addmm``, ``bmm``, ``convolution``, attention kernels) and nothing for anything else: BatchNorm,
    pooling, activations, bias additions and residual additions all count 0. The model runs in eval
    mode under ``no_grad``; its training flags are restored afterwards.
    """
    with evaluation(model), placed(model, device) as (dev, dtype), torch.no_grad():
        x = torch.zeros((1, *input_shape(input_size)), device=dev, dtype=dtype)
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, input_size: InputSize, device: torch.device | str | None = None) -> int:
    """Multiply-accumulates of one forward pass on one image: FLOPs / 2 (see :func:`count_flops`).

    Only convolutions and matrix products (so ``nn.Linear`` too) are counted; this is the quantity
    torchvision publishes as ``meta["_ops"]`` (in GMACs, although its docs call it GFLOPS).
    """
    return count_flops(model, input_size, device) // 2
