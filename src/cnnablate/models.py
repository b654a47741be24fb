"""The model factory: fc, local and conv networks from one spec, so fc -> local -> conv isolates each prior.

``local`` has exactly the conv network's geometry (kernel, dilation, padding, stride, pooling, norm) but a
separate filter at every output position: locality without weight sharing.

Spatial networks (:class:`SpatialNet`) are named like torchvision's, so analyses find layers by name:
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


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D tensor laid out that way (and not also plainly contiguous), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _PositionPatches(torch.autograd.Function):
    """The input's k x k windows as a ``positions x batch x (C*k*k)`` matrix, ready for one batched matmul.

    ``F.unfold`` then an einsum spent three quarters of a locally connected network's CPU step in
    per-position copies (``bmm`` copies every non-contiguous operand matrix by matrix) and in ``col2im``.
    Here the forward is one ``stack`` of k*k strided slices of the padded input laid out ``H x W x batch x C``,
    and the backward is k*k strided adds into one zeroed gradient; columns keep ``F.unfold``'s (C, i, j)
    order, so a shared filter reshaped from ``nn.Conv2d`` gives the convolution. The input's gradient comes back
    in the input's memory format: a channels_last network otherwise runs its next backward ops on a strided
    ``H x W x batch x C`` view. The demo's arch-local training step (bf16 autocast, batch 64, one thread of the
    2-core CPU): 271 -> 83 ms with unfold replaced, 66 ms with the layouts kept (benchmarks/layers.py: 4.1x).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, windows: list[tuple[slice, slice]], padding: int, out_size: tuple[int, int]
    ) -> torch.Tensor:
        ctx.in_shape, ctx.windows, ctx.padding, ctx.out_size = x.shape, windows, padding, out_size
        ctx.memory_format = memory_format_of(x)
        padded = F.pad(x, (padding,) * 4).permute(2, 3, 0, 1)  # H x W x batch x C
        columns = torch.stack([padded[window] for window in windows], dim=-1)  # H' x W' x batch x C x k*k
        return columns.reshape(out_size[0] * out_size[1], x.shape[0], -1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        (batch, channels, height, width), pad = ctx.in_shape, ctx.padding
        by_offset = grad.reshape(*ctx.out_size, batch, channels, -1).permute(4, 0, 1, 2, 3).contiguous()
        accumulate = torch.promote_types(grad.dtype, torch.float32)  # k*k terms summed once in float, like a conv
        padded = grad.new_zeros(height + 2 * pad, width + 2 * pad, batch, channels, dtype=accumulate)
        for offset, window in enumerate(ctx.windows):
            padded[window] += by_offset[offset]
        grad_input = padded[pad : pad + height, pad : pad + width].permute(2, 3, 0, 1)
        grad_input = grad_input.to(grad.dtype, memory_format=ctx.memory_format)  # a view when the dtype is kept
        return grad_input.contiguous(memory_format=ctx.memory_format), None, None, None


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
        self.out_size = tuple(output_size(n, kernel_size, stride, padding, dilation) for n in in_size)
        positions = self.out_size[0] * self.out_size[1]
        fan_in = in_channels * kernel_size * kernel_size
        bound = 1.0 / math.sqrt(fan_in)  # the same scale nn.Conv2d's default init gives
        self.weight = nn.Parameter(torch.empty(positions, out_channels, fan_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels, *self.out_size).uniform_(-bound, bound))

    def windows(self) -> list[tuple[slice, slice]]:
        """For each kernel offset (i, j), row-major: the padded input's rows and columns it reads."""
        height, width = self.out_size
        return [
            (
                slice(i * self.dilation, i * self.dilation + (height - 1) * self.stride + 1, self.stride),
                slice(j * self.dilation, j * self.dilation + (width - 1) * self.stride + 1, self.stride),
            )
            for i in range(self.kernel_size)
            for j in range(self.kernel_size)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type  # the meta device (cost counting) has no autocast
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            x = x.to(torch.get_autocast_dtype(device_type))  # cast the image, not its k*k times larger patch matrix
        patches = _PositionPatches.apply(x, self.windows(), self.padding, self.out_size)  # positions x batch x C*k*k
        out = torch.bmm(patches, self.weight.transpose(1, 2))  # positions x batch x out
        out = out.view(*self.out_size, x.shape[0], self.out_channels).permute(2, 3, 0, 1)  # batch x out x H' x W'
        return out.contiguous(memory_format=memory_format_of(x)) + self.bias  # laid out as a conv's output would be

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


class _ContiguousOnCPU(nn.Module):
    """A norm layer that normalises a contiguous copy of a channels_last input on the CPU, and hands back
    channels_last.

    PyTorch's CPU kernels for group and instance norm on channels_last tensors are slow, the group norm's in
    proportion to its groups: forward and backward of a 64 x 16 x 32 x 32 bf16 tensor on this project's 2-core CPU
    take 25.7 ms with 16 groups against 1.9 ms contiguous, and 5.0 against 2.5 ms for instance norm. The two copies
    cost less than the difference (the demo's norm-group step: 55 -> 15 ms, benchmarks/layers.py). CUDA kernels are
    left alone.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or memory_format_of(x) != torch.channels_last:
            return super().forward(x)  # type: ignore[misc]
        return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)  # type: ignore[misc]


class GroupNorm(_ContiguousOnCPU, nn.GroupNorm):
    """``nn.GroupNorm``, fast on channels_last CPU tensors (:class:`_ContiguousOnCPU`)."""


class InstanceNorm2d(_ContiguousOnCPU, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d``, fast on channels_last CPU tensors (:class:`_ContiguousOnCPU`)."""


class GlobalAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` computed as one average pool over the whole map: the same numbers, and a
    gradient in the input's memory format.

    Adaptive pooling's CPU backward hands a channels_last network a contiguous gradient, and the ReLU before the
    head then runs its backward on mixed layouts, 16x slower (bf16 64 x 32 x 32 x 32: 10.7 against 0.65 ms): a
    seventh of the demo's pool-none training step, whose last stage keeps the full 32 x 32 map.
    """

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, x.shape[-2:])


NORMS: dict[str, Callable[[int, int], nn.Module]] = {  # kind -> (channels, groups) -> the layer after a conv
    "none": lambda channels, groups: nn.Identity(),
    "batch": lambda channels, groups: nn.BatchNorm2d(channels),
    "layer": lambda channels, groups: GroupNorm(1, channels),  # normalises over C, H, W
    "group": lambda channels, groups: GroupNorm(math.gcd(groups, channels), channels),
    "instance": lambda channels, groups: InstanceNorm2d(channels, affine=True),
    "nf": lambda channels, groups: nn.Identity(),  # scaled weight standardisation in the conv instead
}
POOLING: dict[str, Callable[[int], nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}  # 2x2, between stages


def output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """The side of a convolution's or pooling window's output (the formula of ``nn.Conv2d``'s docs)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def scaled_widths(spec: Mapping[str, Any], key: str) -> list[int]:
    """Apply the width multiplier to a list of channel counts."""
    return [max(1, round(w * spec["width"])) for w in spec[key]]


class SpatialNet(nn.Module):
    """The conv and local networks: ``stages`` of :class:`Block` with downsampling between stages, then ``head``
    (global average pooling and a linear classifier), laid out like torchvision's ``ResNet``."""

    def __init__(self, spec: Mapping[str, Any], num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.spec = dict(spec)
        auto = "separable" if spec["arch"] == "conv" and spec["kernel_size"] > LARGEST_DENSE_DEFAULT else "dense"
        self.separable = (auto if spec["block"] == "auto" else spec["block"]) == "separable"
        stages = []
        channels, size = in_channels, image_size
        for index, width in enumerate(scaled_widths(spec, "widths")):
            stage, size = self._make_stage(index, channels, width, size)
            stages.append(stage)
            channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            OrderedDict(pool=GlobalAvgPool2d(), flatten=nn.Flatten(), fc=nn.Linear(channels, num_classes))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x))

    def _make_stage(self, index: int, channels: int, width: int, size: int) -> tuple[nn.Sequential, int]:
        """Stage ``index`` (``pool`` before every stage but the first, then ``blocks``) and its output side."""
        spec, k = self.spec, self.spec["kernel_size"]
        parts: OrderedDict[str, nn.Module] = OrderedDict()
        if index > 0 and spec["pool"] in POOLING:
            parts["pool"] = POOLING[spec["pool"]](2)
            size = output_size(size, 2, stride=2)
        blocks = []
        for position in range(spec["blocks_per_stage"]):
            stride = 2 if index > 0 and position == 0 and spec["pool"] == "stride" else 1
            after_act = index > 0 or position > 0  # every block but the first reads an activation
            blocks.append(self._make_block(channels, width, stride, size, after_act=after_act))
            channels, size = width, output_size(size, k, stride, *self._window(k))
        parts["blocks"] = nn.Sequential(*blocks)
        return nn.Sequential(parts), size

    def _make_block(self, in_ch: int, out_ch: int, stride: int, size: int, *, after_act: bool) -> Block:
        """One block; with ``residual``, a 1x1 projection (+ norm) shortcut where channels or stride change."""
        spec = self.spec
        conv = self._spatial(in_ch, out_ch, stride, size, after_act=after_act)
        shortcut: nn.Module | None = None
        if spec["residual"]:
            shortcut = nn.Identity()
            if in_ch != out_ch or stride != 1:
                projection = self._conv(in_ch, out_ch, 1, stride, size, after_act=after_act)
                shortcut = nn.Sequential(OrderedDict(conv=projection, norm=self._norm(out_ch)))
        return Block(
            conv,
            self._norm(out_ch),
            ACTIVATIONS[spec["activation"]](),
            shortcut,
            skip_init=spec["norm"] in ("none", "nf"),
            dropout=spec["dropout"],
        )

    def _norm(self, channels: int) -> nn.Module:
        return NORMS[self.spec["norm"]](channels, self.spec["norm_groups"])

    def _window(self, kernel: int) -> tuple[int, int]:
        """(padding, dilation) of a kernel x kernel window: the spec's dilation, padded to keep the size."""
        dilation = self.spec["dilation"] if kernel > 1 else 1
        return dilation * (kernel - 1) // 2, dilation

    def _spatial(self, in_ch: int, out_ch: int, stride: int, size: int, *, after_act: bool) -> nn.Module:
        """The block's k x k layer: dense, or depthwise then pointwise."""
        k = self.spec["kernel_size"]
        if not self.separable:
            return self._conv(in_ch, out_ch, k, stride, size, after_act=after_act)
        # No depthwise bias: the pointwise layer's bias (or norm) follows at once and absorbs it.
        depthwise = self._conv(in_ch, in_ch, k, stride, size, after_act=after_act, groups=in_ch, bias=False)
        return SeparableConv2d(depthwise, self._conv(in_ch, out_ch, 1, 1, size, after_act=False))

    def _conv(
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
        padding, dilation = self._window(kernel)
        if spec["arch"] == "local":
            return LocallyConnected2d(in_ch, out_ch, (size, size), kernel, stride, padding, dilation)
        geometry = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
        bias = spec["norm"] in ("none", "nf") if bias is None else bias
        if spec["norm"] == "nf":
            gamma = NF_GAMMA[spec["activation"]] if after_act else 1.0
            return ScaledStdConv2d(in_ch, out_ch, kernel, bias=bias, gamma=gamma, **geometry)
        return nn.Conv2d(in_ch, out_ch, kernel, bias=bias, **geometry)


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


def check_spec(spec: Mapping[str, Any]) -> None:
    """Refuse a spec the schema's ``$defs/model`` does not allow, or one that lacks a key, in ``validate_config``'s
    words (each key with its allowed values); and the one rule across keys the per-key schema cannot state."""
    import jsonschema

    from cnnablate.config import ConfigError, describe_error, load_schema

    model = load_schema()["$defs"]["model"]
    complete = {**model, "required": list(model["properties"])}
    errors = sorted(
        jsonschema.Draft202012Validator(complete).iter_errors(dict(spec)), key=lambda e: list(map(str, e.absolute_path))
    )
    if errors:
        raise ConfigError("; ".join(describe_error(e) for e in errors))
    if spec["block"] == "separable" and spec["arch"] != "conv":
        raise ConfigError(
            f"block: separable needs arch conv (a depthwise layer shares weights), got arch {spec['arch']!r}"
        )


def build_model(spec: Mapping[str, Any], num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build the network a complete variant spec describes (a validated config fills every default in; see the
    model schema for every key)."""
    check_spec(spec)
    if spec["arch"] == "fc":
        model: nn.Module = build_mlp(spec, num_classes, in_channels, image_size)
    else:
        model = SpatialNet(spec, num_classes, in_channels, image_size)
    kaiming_init(model)
    return model


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
