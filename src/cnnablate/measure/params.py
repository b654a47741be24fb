"""Parameter counting."""

from __future__ import annotations

from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model``, trainable or not (frozen layers still cost memory).

    Parameters shared between modules are counted once, as :meth:`nn.Module.parameters` yields
    each tensor once; buffers (e.g. BatchNorm running statistics) are not parameters and are not
    counted. This is the convention of torchvision's ``meta["num_params"]``.
    """
    return sum(p.numel() for p in model.parameters())
