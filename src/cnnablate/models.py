"""The model factory: fc, local and conv networks from one spec, so fc -> local -> conv isolates each prior.

``local`` has exactly the conv network's geometry (kernel, dilation, padding, stride, pooling, norm) but a
separate filter at every output position: locality without weight sharing.

Spatial networks are named like torchvision's, so analyses find layers by name:
``stages.<i>.pool`` (downsampling before stage i > 0), ``stages.<i>.blocks.<j>.conv`` / ``.norm`` / ``.act``
(``.shortcut`` and ``.skip_gain`` in residual blocks) and ``head.pool`` / ``head.flatten`` / ``head.fc``.
There is no separate stem: the first block of stage 0 reads the image, so ``blocks_per_stage`` counts
every convolution.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
ACTIVATIONS_TYPES = (nn.ReLU, nn.GELU, nn.SiLU)

# Brock, De, Smith & Simonyan (2021), "Characterizing signal propagation to close the performance gap in
# unnormalized ResNets" (arXiv:2101.08692), and NFNets (arXiv:2102.06171): gamma makes g(x) of a unit
# Gaussian x unit-variance again, for ReLU analytically sqrt(2 / (1 - 1/pi)) = 1.71286 (DeepMind's code
# uses its Monte Carlo estimate 1.71396); GELU and SiLU: the estimates of DeepMind's nfnets code
# (deepmind-research/nfnets/base.py, `nonlinearities`) and timm's `_nonlin_gamma`.
NF_GAMMA = {"relu": math.sqrt(2.0 / (1.0 - 1.0 / math.pi)), "gelu": 1.7015043497085571, "silu": 1.7881293296813965}
LARGEST_DENSE_DEFAULT = 7  # block: auto builds dense kernels up to 7x7 and separable ones above


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


class ScaledStdConv2d(nn.Conv2d):
    """A convolution with scaled weight standardisation (NFNets, Brock et al. 2021, arXiv:2102.06171, eq. 2).

    ``W_hat = gain * gamma * (W - mean(W)) / (std(W) * sqrt(fan_in))`` per output channel, with the
    population std (timm's ``ScaledStdConv2d`` computes the same through ``F.batch_norm``). ``gamma`` is
    the gain of the nonlinearity feeding this convolution (``NF_GAMMA``; 1 for the image or a linear
    input), so a unit-variance input gives unit-variance outputs without any normalisation layer.
    The learnable ``gain`` is one number per output channel, stored 1-D so that weight decay on tensors
    of rank >= 2 leaves it alone, like a norm layer's scale.
    """

    def __init__(self, *args: Any, gamma: float = 1.0, eps: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels))
        self.gamma, self.eps = gamma, eps

    def standardized_weight(self) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, correction=0)
        fan_in = self.weight[0].numel()
        scale = self.gain.view(-1, 1, 1, 1) * (self.gamma / math.sqrt(fan_in))
        return (self.weight - mean) * torch.rsqrt(var + self.eps) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma:.4f}"


class SeparableConv2d(nn.Sequential):
    """Depthwise k x k convolution followed by a pointwise 1 x 1 one (Xception, MobileNet, RepLKNet, ConvNeXt).

    No norm or nonlinearity between the two, as in Chollet's Xception (2017) separable convolution: the
    pair replaces one dense convolution and the block's norm and activation follow it.
    """

    def __init__(self, depthwise: nn.Conv2d, pointwise: nn.Conv2d) -> None:
        super().__init__(OrderedDict(depthwise=depthwise, pointwise=pointwise))


class Block(nn.Module):
    """``act(norm(conv(x)))``, or with ``residual``: ``act(shortcut(x) + skip_gain * norm(conv(x)))``; then
    ``dropout`` when its probability is above 0 (after ``act``, so the analyses' hooks on ``act`` see it unchanged).

    The residual form is He et al.'s original ResNet (2016) with one convolution per block: the plain
    block plus an identity shortcut, a 1x1 projection (+ norm) where channels or stride change, and the
    activation after the addition, so ``act`` closes the block in both forms. Without a normalisation
    layer (norm none or nf) the residual branch is multiplied by a learnable scalar initialised to zero
    (SkipInit, De & Smith 2020, arXiv:2002.10444; NFNets use the same zero-initialised gain), so a
    deep residual network starts as its shortcut path and its activations do not grow with depth.
    """

    def __init__(
        self,
        conv: nn.Module,
        norm: nn.Module,
        act: nn.Module,
        shortcut: nn.Module | None = None,
        skip_init: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv, self.norm, self.act = conv, norm, act
        self.residual = shortcut is not None
        if shortcut is not None:
            self.shortcut = shortcut
            if skip_init:
                self.skip_gain = nn.Parameter(torch.zeros(()))
        if dropout > 0:  # no layer at 0: the model (and its state dict) stays what it was before the axis
            self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.conv(x))
        if self.residual:
            if hasattr(self, "skip_gain"):
                out = out * self.skip_gain
            out = self.shortcut(x) + out
        out = self.act(out)
        return self.dropout(out) if hasattr(self, "dropout") else out


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
    if kind in ("none", "nf"):
        return nn.Identity()
    raise ValueError(f"norm: unknown value {kind!r}; allowed values: none, batch, layer, group, instance, nf")


def scaled_widths(spec: Mapping[str, Any], key: str) -> list[int]:
    """Apply the width multiplier to a list of channel counts."""
    return [max(1, round(w * spec["width"])) for w in spec[key]]


def block_type(spec: Mapping[str, Any]) -> str:
    """'dense' or 'separable': the spec's ``block``, with ``auto`` resolved (separable for conv with k > 7)."""
    block, k = spec["block"], spec["kernel_size"]
    if block not in ("auto", "dense", "separable"):
        raise ValueError(f"block: unknown value {block!r}; allowed values: auto, dense, separable")
    if block == "auto":
        return "separable" if spec["arch"] == "conv" and k > LARGEST_DENSE_DEFAULT else "dense"
    if block == "separable" and spec["arch"] != "conv":
        raise ValueError(
            f"block: separable needs arch conv (a depthwise layer shares weights), got arch {spec['arch']!r}"
        )
    return block


class _Layers:
    """Builds the convolutions of one spatial network: arch, block type, norm and activation decide their kind."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec
        self.block = block_type(spec)
        self.gamma = NF_GAMMA[spec["activation"]]

    def conv(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        size: int,
        *,
        after_act: bool,
        groups: int = 1,
        bias: bool | None = None,
    ) -> nn.Module:
        """One (dense or depthwise) convolution; by default biased only where no norm layer follows (none, nf)."""
        spec = self.spec
        dilation = spec["dilation"] if kernel > 1 else 1
        padding = dilation * (kernel - 1) // 2
        if spec["arch"] == "local":
            return LocallyConnected2d(in_ch, out_ch, (size, size), kernel, stride, padding, dilation)
        geometry = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
        bias = spec["norm"] in ("none", "nf") if bias is None else bias
        if spec["norm"] == "nf":
            return ScaledStdConv2d(in_ch, out_ch, kernel, bias=bias, gamma=self.gamma if after_act else 1.0, **geometry)
        return nn.Conv2d(in_ch, out_ch, kernel, bias=bias, **geometry)

    def spatial(self, in_ch: int, out_ch: int, stride: int, size: int, *, after_act: bool) -> nn.Module:
        """The block's k x k layer: dense, or depthwise then pointwise."""
        k = self.spec["kernel_size"]
        if self.block == "dense":
            return self.conv(in_ch, out_ch, k, stride, size, after_act=after_act)
        # No depthwise bias: the pointwise layer's bias (or norm) follows at once and absorbs it.
        depthwise = self.conv(in_ch, in_ch, k, stride, size, after_act=after_act, groups=in_ch, bias=False)
        return SeparableConv2d(depthwise, self.conv(in_ch, out_ch, 1, 1, size, after_act=False))


def build_spatial_network(
    spec: Mapping[str, Any], num_classes: int, in_channels: int, image_size: int
) -> nn.Sequential:
    """Stages of blocks (see :class:`Block`), downsampling between stages, then global pooling and a linear head."""
    if spec["kernel_size"] % 2 == 0:
        raise ValueError(f"kernel_size: {spec['kernel_size']} is even; allowed values: odd integers >= 1")
    layers = _Layers(spec)
    k, d = spec["kernel_size"], spec["dilation"]
    padding = d * (k - 1) // 2
    channels, size = in_channels, image_size
    stages = []
    for stage, width in enumerate(scaled_widths(spec, "widths")):
        parts: OrderedDict[str, nn.Module] = OrderedDict()
        if stage > 0 and spec["pool"] in ("max", "avg"):
            parts["pool"] = nn.MaxPool2d(2) if spec["pool"] == "max" else nn.AvgPool2d(2)
            size //= 2
        blocks = []
        for index in range(spec["blocks_per_stage"]):
            stride = 2 if (stage > 0 and index == 0 and spec["pool"] == "stride") else 1
            after_act = not (stage == 0 and index == 0)  # every block but the first reads an activation
            conv = layers.spatial(channels, width, stride, size, after_act=after_act)
            out_size = (size + 2 * padding - d * (k - 1) - 1) // stride + 1
            shortcut = None
            if spec["residual"]:
                shortcut = nn.Identity()
                if channels != width or stride != 1:
                    projection = layers.conv(channels, width, 1, stride, size, after_act=after_act)
                    shortcut = nn.Sequential(
                        OrderedDict(conv=projection, norm=make_norm(spec["norm"], width, spec["norm_groups"]))
                    )
            blocks.append(
                Block(
                    conv,
                    make_norm(spec["norm"], width, spec["norm_groups"]),
                    ACTIVATIONS[spec["activation"]](),
                    shortcut,
                    skip_init=spec["norm"] in ("none", "nf"),
                    dropout=spec["dropout"],
                )
            )
            channels, size = width, out_size
        parts["blocks"] = nn.Sequential(*blocks)
        stages.append(nn.Sequential(parts))
    head = nn.Sequential(
        OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(channels, num_classes))
    )
    return nn.Sequential(OrderedDict(stages=nn.Sequential(*stages), head=head))


def build_mlp(spec: Mapping[str, Any], num_classes: int, in_channels: int, image_size: int) -> nn.Sequential:
    """A multilayer perceptron on the flattened pixels: neither locality nor weight sharing."""
    layers: list[nn.Module] = [nn.Flatten()]
    features = in_channels * image_size * image_size
    for hidden in scaled_widths(spec, "fc_hidden"):
        layers += [nn.Linear(features, hidden), ACTIVATIONS[spec["activation"]]()]
        if spec["dropout"] > 0:
            layers.append(nn.Dropout(spec["dropout"]))
        features = hidden
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def classifier(model: nn.Module) -> nn.Linear:
    """The final linear layer (``head.fc``, or the MLP's last layer)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("model has no linear classifier")
    return last[-1]


@torch.no_grad()
def kaiming_init(model: nn.Module) -> None:
    """He et al. (2015) fan-in normal init of every conv and linear weight, biases zero.

    std = gain / sqrt(fan_in), gain sqrt(2) for weights feeding a ReLU-family activation (ReLU's gain is
    used for GELU and SiLU too), 1 for the classifier and for a depthwise convolution (its pointwise
    partner follows without a nonlinearity). It keeps the activation scale through depth without
    normalisation layers; PyTorch's default (uniform, variance 1 / (3 fan_in)) shrinks it by about 3x
    per ReLU layer. One rule for every variant, so that norm none and norm batch differ only in the norm.
    Scaled weight-standardised convolutions (norm nf) standardise their weights, so their init scale is moot.
    """
    head = classifier(model)
    depthwise = {id(m.depthwise) for m in model.modules() if isinstance(m, SeparableConv2d)}
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            gain = 1.0 if module is head or id(module) in depthwise else math.sqrt(2.0)
            fan_in = module.weight[0].numel()
            module.weight.normal_(0.0, gain / math.sqrt(fan_in))
        elif isinstance(module, LocallyConnected2d):
            module.weight.normal_(0.0, math.sqrt(2.0 / module.weight.shape[-1]))
        else:
            continue
        if module.bias is not None:
            module.bias.zero_()


def build_model(spec: Mapping[str, Any], num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build the network a variant spec describes (see the model schema for every key).

    Keys missing from ``spec`` (a run recorded before an axis existed) take their schema defaults.
    """
    spec = {**model_defaults(), **spec}
    if spec["arch"] == "fc":
        model = build_mlp(spec, num_classes, in_channels, image_size)
    elif spec["arch"] in ("conv", "local"):
        model = build_spatial_network(spec, num_classes, in_channels, image_size)
    else:
        raise ValueError(f"arch: unknown value {spec['arch']!r}; allowed values: fc, local, conv")
    kaiming_init(model)
    return model


def model_defaults() -> dict[str, Any]:
    """Every model axis with its schema default."""
    from cnnablate.config import load_schema

    return {axis: s["default"] for axis, s in load_schema()["$defs"]["model"]["properties"].items()}


def agc_parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters adaptive gradient clipping applies to, and the rest (NFNets, Brock et al. 2021, sec. 4.1).

    ``{"clipped": [...], "unclipped": [...]}``: every parameter is clipped except the final linear
    classifier's weight and bias, which the paper found better left unclipped.
    """
    head = {id(p) for p in classifier(model).parameters()}
    params = list(model.parameters())
    return {
        "clipped": [p for p in params if id(p) not in head],
        "unclipped": [p for p in params if id(p) in head],
    }


def _blocks(model: nn.Module) -> list[tuple[str, Block]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, Block)]


def block_outputs(model: nn.Module) -> list[str]:
    """Module paths of the activations closing every block, in depth order (``stages.0.blocks.0.act``, ...)."""
    return [f"{name}.act" for name, _ in _blocks(model)]


def stage_outputs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The activation closing each stage (its last block's ``act``), as (module path, module)."""
    last: dict[str, tuple[str, nn.Module]] = {}
    for name, block in _blocks(model):
        last[name.rsplit(".blocks.", 1)[0]] = (f"{name}.act", block.act)
    return list(last.values())
