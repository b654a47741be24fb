"""The model factory: fc, local and conv networks from one spec, so fc -> local -> conv isolates each prior.

``local`` has exactly the conv network's geometry (kernel, dilation, padding, stride, pooling, norm) but a
separate filter at every output position: locality without weight sharing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
ACTIVATIONS_TYPES = (nn.ReLU, nn.GELU, nn.SiLU)


class LocallyConnected2d(nn.Module):
    """A convolution whose weights are not shared: each output position has its own filter and bias."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        in_size: tuple[int, int],
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.out_size = tuple((n + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1 for n in in_size)
        positions = self.out_size[0] * self.out_size[1]
        fan_in = in_channels * kernel_size * kernel_size
        bound = 1.0 / math.sqrt(fan_in)  # the same scale nn.Conv2d's default init gives
        self.weight = nn.Parameter(torch.empty(positions, out_channels, fan_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels, *self.out_size).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        out = torch.einsum("bkl,lok->bol", patches, self.weight)  # b x out x positions
        return out.reshape(x.shape[0], self.out_channels, *self.out_size) + self.bias

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, out_size={self.out_size}"
        )


def make_norm(kind: str, channels: int, groups: int) -> nn.Module:
    """The normalisation layer after a convolution ('layer' normalises over C, H, W as GroupNorm(1))."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(groups, channels), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm: unknown value {kind!r}; allowed values: none, batch, layer, group, instance")


def scaled_widths(spec: Mapping[str, Any], key: str) -> list[int]:
    """Apply the width multiplier to a list of channel counts."""
    return [max(1, round(w * spec["width"])) for w in spec[key]]


def build_spatial_network(
    spec: Mapping[str, Any], num_classes: int, in_channels: int, image_size: int
) -> nn.Sequential:
    """Stages of (conv or locally connected, norm, activation) blocks, downsampling between stages."""
    if spec["kernel_size"] % 2 == 0:
        raise ValueError(f"kernel_size: {spec['kernel_size']} is even; allowed values: odd integers >= 1")
    k, d = spec["kernel_size"], spec["dilation"]
    padding = d * (k - 1) // 2
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    widths = scaled_widths(spec, "widths")
    for stage, width in enumerate(widths):
        if stage > 0 and spec["pool"] in ("max", "avg"):
            layers.append(nn.MaxPool2d(2) if spec["pool"] == "max" else nn.AvgPool2d(2))
            size //= 2
        for block in range(spec["blocks_per_stage"]):
            stride = 2 if (stage > 0 and block == 0 and spec["pool"] == "stride") else 1
            if spec["arch"] == "local":
                layer: nn.Module = LocallyConnected2d(channels, width, (size, size), k, stride, padding, d)
            else:
                layer = nn.Conv2d(
                    channels,
                    width,
                    k,
                    stride=stride,
                    padding=padding,
                    dilation=d,
                    bias=spec["norm"] == "none",
                )
            size = (size + 2 * padding - d * (k - 1) - 1) // stride + 1
            layers += [
                layer,
                make_norm(spec["norm"], width, spec["norm_groups"]),
                ACTIVATIONS[spec["activation"]](),
            ]
            channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


def build_mlp(spec: Mapping[str, Any], num_classes: int, in_channels: int, image_size: int) -> nn.Sequential:
    """A multilayer perceptron on the flattened pixels: neither locality nor weight sharing."""
    layers: list[nn.Module] = [nn.Flatten()]
    features = in_channels * image_size * image_size
    for hidden in scaled_widths(spec, "fc_hidden"):
        layers += [nn.Linear(features, hidden), ACTIVATIONS[spec["activation"]]()]
        features = hidden
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def build_model(spec: Mapping[str, Any], num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build the network a variant spec describes (see the model schema for every key)."""
    if spec["arch"] == "fc":
        return build_mlp(spec, num_classes, in_channels, image_size)
    if spec["arch"] in ("conv", "local"):
        return build_spatial_network(spec, num_classes, in_channels, image_size)
    raise ValueError(f"arch: unknown value {spec['arch']!r}; allowed values: fc, local, conv")


def stage_outputs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The activation closing each stage: the last activation before each downsampling and the head."""
    children = list(model.named_children()) if isinstance(model, nn.Sequential) else []
    stages, last_activation = [], None
    for name, module in children:
        if isinstance(module, ACTIVATIONS_TYPES):
            last_activation = (name, module)
        elif (isinstance(module, nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d) and last_activation) or (
            isinstance(module, nn.Conv2d | LocallyConnected2d) and module.stride not in (1, (1, 1)) and last_activation
        ):
            stages.append(last_activation)
            last_activation = None
    return stages


def block_outputs(model: nn.Module) -> list[str]:
    """Names of the activations closing every (conv, norm, activation) block, in depth order."""
    if not isinstance(model, nn.Sequential) or not any(
        isinstance(m, nn.Conv2d | LocallyConnected2d) for m in model.children()
    ):
        return []
    return [name for name, module in model.named_children() if isinstance(module, ACTIVATIONS_TYPES)]
