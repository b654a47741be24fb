"""Multiply-accumulate counting with PyTorch's own FLOP counter, and the shared input conventions.

Two gaps of ``FlopCounterMode`` on attention models are closed here (measured on torchvision's ViTs):

* In eval mode under ``no_grad``, ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` take
  PyTorch's fused fast path (``torch._native_multi_head_attention``), whose input and output projections
  the counter does not see. Counting runs with the fast path switched off
  (``torch.backends.mha.set_fastpath_enabled``), so the same module runs as unfused ``addmm`` calls.
* The CPU kernel of ``scaled_dot_product_attention`` (``aten._scaled_dot_product_flash_attention_for_cpu``)
  has no FLOP formula in PyTorch (the CUDA kernels have), so the attention product QK^T and AV counted 0.
  :func:`_sdpa_flops` supplies it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

InputSize = int | tuple[int, int] | tuple[int, int, int]


class InputSizeError(ValueError):
    """The model's forward pass failed on an input of the requested size (a model built for another size)."""


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


def _sdpa_flops(
    query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *args: Any, **kwargs: Any
) -> int:
    """FLOPs of ``softmax(Q K^T / sqrt(E)) V`` (Vaswani et al. 2017, "Attention Is All You Need", eq. 1).

    Per batch and head, with query length L, key length S, query/key width E and value width Ev:
    ``Q K^T`` is an (L x E) by (E x S) product, L*S*E multiply-accumulates, and the weighted sum of the
    values an (L x S) by (S x Ev) product, L*S*Ev. FLOPs = 2 x MACs; softmax and scaling count 0, like
    every elementwise op. The same formula as PyTorch's ``sdpa_flop_count`` for the CUDA attention
    kernels (``torch/utils/flop_counter.py``); the leading axes of the query (batch, heads) multiply,
    and key/value heads shared by several query heads (grouped-query attention) count per query head.
    """
    *batch, length, width = query_shape
    keys, value_width = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * length * keys * (width + value_width)


_UNCOUNTED_KERNELS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


@contextmanager
def unfused_attention() -> Iterator[None]:
    """Switch off the fused fast path of ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer``.

    The fast path computes the projections inside one native kernel that ``FlopCounterMode`` does not
    see; with it off, the modules run their ordinary (unfused) code, same result, every product visible.
    """
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _count_without_importing_the_compiler() -> None:
    """Let ``FlopCounterMode`` count without importing ``torch._dynamo`` (0.8 s of a 4 s measure job here).

    PyTorch wraps every dispatch mode's handler in ``torch._disable_dynamo``, whose first call imports the
    compiler to build a guard that keeps ``torch.compile`` out of the handler. Counting never runs under
    ``torch.compile``, so the guard is recorded as built: the handler itself. Should PyTorch rename the wrapper's
    attributes, this does nothing and the compiler is imported as before (slower, same counts).
    """
    handler = getattr(_FlopCounterMode.__torch_dispatch__, "__wrapped__", None)
    if handler is not None and "torch._dynamo" not in sys.modules:
        setattr(handler, "__dynamo_disable", handler)  # the name torch._compile._disable_dynamo caches under


def count_flops(model: nn.Module, input_size: InputSize, device: torch.device | str | None = None) -> int:
    """FLOPs of one forward pass on a batch of one image, as counted by ``FlopCounterMode``.

    PyTorch counts 2 FLOPs per multiply-accumulate of convolutions and matrix products (``mm``,
    ``addmm``, ``bmm``, ``convolution``, attention kernels: QK^T and AV) and nothing for anything else:
    BatchNorm, pooling, activations, softmax, bias additions and residual additions all count 0.
    Attention is counted unfused and with the CPU attention kernel's formula (see the module docstring).
    The model runs in eval mode under ``no_grad``; its training flags are restored afterwards.
    Raises :class:`InputSizeError` if the forward pass fails.
    """
    with evaluation(model), placed(model, device) as (dev, dtype), torch.no_grad(), unfused_attention():
        x = torch.zeros((1, *input_shape(input_size)), device=dev, dtype=dtype)
        _count_without_importing_the_compiler()
        counter = FlopCounterMode(display=False, custom_mapping=_UNCOUNTED_KERNELS)
        try:
            with counter:
                model(x)
        except Exception as error:  # whatever the model raises: shape assertions, size mismatches
            raise InputSizeError(
                f"the model failed on a {tuple(x.shape)} input: {type(error).__name__}: {error}"
            ) from error
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, input_size: InputSize, device: torch.device | str | None = None) -> int:
    """Multiply-accumulates of one forward pass on one image: FLOPs / 2 (see :func:`count_flops`).

    Only convolutions and matrix products (so ``nn.Linear`` too) are counted; this is the quantity
    torchvision publishes as ``meta["_ops"]`` (in GMACs, although its docs call it GFLOPS).
    """
    return count_flops(model, input_size, device) // 2
