"""Theoretical receptive fields derived from a model's computation graph.

Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks", Distill 2019.
Per spatial axis every tensor carries three integers describing where its units look in the input:

* ``size`` r: how many input pixels one unit depends on;
* ``stride`` j (the *jump*): distance in input pixels between two neighbouring units;
* ``padding`` p (the *effective padding*): unit ``i`` depends on input pixels ``-p + i*j`` to
  ``-p + i*j + r - 1``.

A window operation (convolution, pooling) with kernel k, stride s, left padding q and dilation d maps
``(r, j, p)`` to ``(r + (d(k-1)) j, j s, p + q j)``. Where paths merge (residual additions,
concatenations, any elementwise op) the field of unit 0 is the union of the incoming fields, which
keeps the start offsets consistent across branches: ``p = max p_b`` and ``r = max(r_b - p_b) + p``.
If the branches disagree on the jump (which well-formed CNNs never do) the largest one is reported.

The graph comes from :mod:`cnnablate.measure.graph` (``torch.fx`` symbolic tracing, else one recorded real
forward pass); this module propagates the fields through it. No table of known architectures is involved:
torch.nn layers and torch functions are interpreted by what they do, shapes come from running the model
once on zeros.

Conventions (shared with Araujo et al.):

* BatchNorm, activations, dropout, channel mixing (1x1 convs, linear layers on channels) and all other
  elementwise operations leave the field unchanged. Statistics-based normalisations (GroupNorm,
  LayerNorm, InstanceNorm) and softmax over space are treated the same way although strictly they make
  every unit depend weakly on the whole image.
* A spatially pooled tensor broadcast back onto a feature map (squeeze-and-excitation, global context
  blocks) is not counted in the field either, but the affected layers are flagged ``global_context``.
* Upsampling (interpolation, transposed convolution, pixel shuffle) and adaptive pooling with windows of
  unequal length have no ``(r, j, p)`` description; fields are undefined from there on.
* A module from outside torch with ``nn.Conv2d``'s geometry attributes and no torch window layer inside
  (e.g. a locally connected layer built on ``unfold``) counts as one window with that geometry.

Past the last spatial map. Vision transformers flatten the map into a sequence of positions (tokens) and
then mix all positions at once. The analysis follows such a sequence axis (a reshape merging the two
spatial axes, then permutes, concatenation of extra tokens, slices) and records *global mixing*: attention
along it (``nn.MultiheadAttention`` and the other transformer / recurrent modules, ``scaled_dot_product_attention``,
a matrix product contracting it), a linear map over it, or a pooled summary of it broadcast back onto it.
After global mixing every unit depends on the whole input; the result says "global after <last spatial
map>" (``RFResult.global_after``) and keeps that map's field. A map whose positions were rearranged in
another way (split into windows) and merged back loses its ``(r, j, p)`` description
(``RFResult.undefined_after`` says where and why). Under ``torch.fx`` a function wrapped with
``torch.fx.wrap`` is opaque; applied to a spatial map it sends ``method="auto"`` to the hook frontend,
which records the torch calls inside.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from cnnablate.measure.graph import Graph, Op, Ref, declares_window, op_name, trace
from cnnablate.measure.macs import InputSize, evaluation, input_shape, placed

Pair = tuple[int, int]


# --------------------------------------------------------------------------------------------------
# Public results


class NoSpatialMapError(ValueError):
    """The model has no spatial feature map (an MLP on flattened pixels): it has no receptive field to report."""


@dataclass(frozen=True)
class RFLayer:
    """Receptive field of the units of one graph node's output.

    ``shape`` is the spatial shape of the output, ``axes`` the tensor dimensions holding its height and
    width ((2, 3) for NCHW tensors), ``modules`` the module paths whose output this node is, outermost first.
    """

    name: str
    op: str
    modules: tuple[str, ...]
    size: Pair
    stride: Pair
    padding: Pair
    shape: Pair
    axes: Pair
    global_context: bool

    def region(self, unit: Pair) -> tuple[Pair, Pair]:
        """Inclusive input-pixel ranges ``((top, bottom), (left, right))`` seen by ``unit = (row, col)``."""
        starts = [-self.padding[a] + unit[a] * self.stride[a] for a in (0, 1)]
        return ((starts[0], starts[0] + self.size[0] - 1), (starts[1], starts[1] + self.size[1] - 1))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "op": self.op,
            "modules": list(self.modules),
            "size": list(self.size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "shape": list(self.shape),
            "axes": list(self.axes),
            "global_context": self.global_context,
        }


@dataclass(frozen=True)
class RFResult:
    """Theoretical receptive field at one layer (by default the last spatial feature map), plus all layers.

    ``layer`` is the graph node name (``torch.fx`` naming, e.g. ``layer4_1_relu_1``); ``module`` the
    outermost module whose output that node is (e.g. ``layer4``), if any. ``layers`` lists every node
    that has a spatial field, in execution order.

    What follows the model's last spatial map: ``global_after`` names that map (module path, else node)
    when global mixing follows it, so that every later unit sees the whole input, and ``mixing`` describes
    the first mixing op (e.g. ``MultiheadAttention encoder.layers.encoder_layer_0.self_attention``);
    ``undefined_after`` gives the reason when the field becomes undefined after it instead.
    """

    size: Pair
    stride: Pair
    padding: Pair
    layer: str
    module: str | None
    shape: Pair
    global_context: bool
    input_size: tuple[int, int, int]
    method: str
    layers: list[RFLayer] = field(repr=False)
    global_after: str | None = None
    mixing: str | None = None
    undefined_after: str | None = None

    def at(self, name: str) -> RFLayer:
        """The layer entry for a graph node name or a module path (``"layer3"``, ``"features.28"``)."""
        for entry in self.layers:
            if name == entry.name:
                return entry
        for entry in self.layers:
            if name in entry.modules:
                return entry
        raise KeyError(f"no spatial layer named {name!r}; known: {[e.name for e in self.layers]}")

    def to_dict(self, layers: bool = False) -> dict[str, Any]:
        """JSON-ready summary; ``layers=True`` adds the per-node table."""
        out: dict[str, Any] = {
            "size": list(self.size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "layer": self.layer,
            "module": self.module,
            "shape": list(self.shape),
            "global_context": self.global_context,
            "input_size": list(self.input_size),
            "method": self.method,
            "global_after": self.global_after,
            "mixing": self.mixing,
            "undefined_after": self.undefined_after,
        }
        if layers:
            out["layers"] = [entry.to_dict() for entry in self.layers]
        return out


# --------------------------------------------------------------------------------------------------
# Field propagation


@dataclass(frozen=True)
class _Field:
    dims: Pair  # tensor dimensions holding (height, width)
    size: Pair
    stride: Pair
    padding: Pair
    global_context: bool = False


@dataclass(frozen=True)
class _Undefined:
    reason: str


class _NonSpatial:
    """Depends on the input but has no spatial axes any more (flattened, globally reduced)."""


@dataclass(frozen=True)
class _Positions:
    """The positions of a spatial map merged into tensor dimension ``dim``: a sequence of tokens."""

    dim: int


_NON_SPATIAL = _NonSpatial()
_State = _Field | _Undefined | _NonSpatial | _Positions | None  # None: does not depend on the input at all


def pair(value: Any) -> Pair:
    """``(h, w)`` from an int or a one- or two-element sequence, as torch layers take their geometry."""
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _conv_padding(padding: Any, kernel: Pair, dilation: Pair) -> Pair:
    if padding == "valid":
        return (0, 0)
    if padding == "same":  # PyTorch puts the smaller half of an odd total on the left/top
        return (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
    return pair(padding)


def _arg(op: Op, index: int, name: str, default: Any = None) -> Any:
    return op.args[index] if len(op.args) > index else op.kwargs.get(name, default)


def _single(shape: torch.Size | list[torch.Size]) -> torch.Size:
    return shape if isinstance(shape, torch.Size) else shape[0]


def _match(dims: Pair, shape_in: torch.Size, shape_out: torch.Size) -> Pair | None:
    """Where the spatial axes of ``shape_in`` went in ``shape_out``: same sizes, from the end or the start."""
    sizes = (shape_in[dims[0]], shape_in[dims[1]])
    shift = len(shape_out) - len(shape_in)
    for cand in ((dims[0] + shift, dims[1] + shift), dims):
        if all(0 <= c < len(shape_out) for c in cand) and (shape_out[cand[0]], shape_out[cand[1]]) == sizes:
            return cand
    return None


def _match_dim(dim: int, shape_in: torch.Size, shape_out: torch.Size) -> int | None:
    """:func:`_match` for one axis."""
    shift = len(shape_out) - len(shape_in)
    for cand in (dim + shift, dim):
        if 0 <= cand < len(shape_out) and shape_out[cand] == shape_in[dim]:
            return cand
    return None


def _merged(dims: Pair, shape_in: torch.Size, shape_out: torch.Size) -> int | None:
    """The output axis into which a reshape merged both spatial axes (and any axes between), if it did.

    ``(N, C, H, W) -> (N, C, H*W)`` (tokens) and ``(N, C, H, W) -> (N, C*H*W)`` (a flattening head) merge
    them; splitting them into windows does not.
    """
    first, last = min(dims), max(dims)
    for start in range(first + 1):
        merged = (*shape_in[:start], math.prod(shape_in[start : last + 1]), *shape_in[last + 1 :])
        if tuple(shape_out) == merged:
            return start
    return None


_SEQUENCE_MODULES = (  # modules mixing along a sequence axis: 1 if batch_first (3-d input), else 0
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.Transformer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)
# Matrix products: (left operand, right operand) positions. A product contracts the left operand's last axis
# and the right operand's second-to-last; rows come from the left, columns from the right.
_PRODUCTS = {"matmul": (0, 1), "mm": (0, 1), "bmm": (0, 1), "baddbmm": (1, 2), "addmm": (1, 2)}


def _union(fields: list[_Field], global_context: bool) -> _Field:
    dims = fields[0].dims
    if any(f.dims != dims for f in fields):
        raise NotImplementedError("merging tensors whose spatial axes are in different positions")
    padding = tuple(max(f.padding[a] for f in fields) for a in (0, 1))
    size = tuple(max(f.size[a] - f.padding[a] for f in fields) + padding[a] for a in (0, 1))
    stride = tuple(max(f.stride[a] for f in fields) for a in (0, 1))
    context = global_context or any(f.global_context for f in fields)
    return _Field(dims, size, stride, padding, context)  # type: ignore[arg-type]


_PADS_2D = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)
_UPSAMPLING_MODULES = (
    nn.ConvTranspose2d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.MaxUnpool2d,
    nn.FractionalMaxPool2d,
    nn.Fold,
    nn.Unfold,
)
_OTHER_RANK_MODULES = (
    nn.Conv1d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose3d,
    nn.MaxPool1d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool3d,
)
_UPSAMPLING_FUNCTIONS = {
    "interpolate",
    "upsample",
    "upsample_nearest",
    "upsample_bilinear",
    "conv_transpose2d",
    "pixel_shuffle",
    "max_unpool2d",
    "fractional_max_pool2d",
    "fractional_max_pool2d_with_indices",
    "grid_sample",
    "fold",
    "unfold",
}
_UNSUPPORTED_FUNCTIONS = {  # would need a rule of their own when they touch spatial axes
    "conv1d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose3d",
    "conv_tbc",
    "max_pool1d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool3d",
    "roll",
    "flip",
    "fliplr",
    "flipud",
    "rot90",
    "cumsum",
    "cumprod",
    "cummax",
    "cummin",
    "logcumsumexp",
    "sort",
    "argsort",
    "matmul",
    "mm",
    "bmm",
    "baddbmm",
    "einsum",
    "tensordot",
    "scaled_dot_product_attention",
}
_PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t"}
_RESHAPES = {
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "view_as",
    "reshape_as",
    "expand",
    "expand_as",
    "contiguous",
}
_REDUCTIONS = {
    "mean",
    "sum",
    "nanmean",
    "nansum",
    "amax",
    "amin",
    "max",
    "min",
    "std",
    "var",
    "std_mean",
    "var_mean",
    "norm",
    "logsumexp",
    "prod",
    "median",
    "argmax",
    "argmin",
    "any",
    "all",
    "count_nonzero",
}
_SPLITS = {"split": 2, "split_with_sizes": 2, "chunk": 2, "tensor_split": 2, "unbind": 1}


class _Propagator:
    def __init__(self, ops: list[Op]) -> None:
        self.shapes = {op.name: op.shape for op in ops}
        self.states: dict[str, _State] = {}
        self.mixing: dict[str, str] = {}  # op name -> what mixes all positions there
        for op in ops:
            self.states[op.name] = self._state(op)

    # -- helpers -------------------------------------------------------------------------------

    def _inputs(self, op: Op) -> list[Ref]:
        return [v for v in pytree.tree_leaves((op.args, op.kwargs)) if isinstance(v, Ref)]

    def _source(self, op: Op) -> tuple[_State, torch.Size]:
        ref = op.args[0]
        return self.states[ref.name], _single(self.shapes[ref.name])

    def _spatial_field(self, op: Op, what: str) -> _Field | None:
        """The field of the op's main input if it is spatial; raises if the op needs the last two axes."""
        state, shape = self._source(op)
        if not isinstance(state, _Field):
            return None
        if state.dims != (len(shape) - 2, len(shape) - 1):
            raise NotImplementedError(f"{op.name}: {what} on a tensor whose last two axes are not spatial")
        return state

    def _window(self, op: Op, kernel: Any, stride: Any, padding: Any, dilation: Any) -> _State:
        src = self._spatial_field(op, "window operation")
        if src is None:
            return self._source(op)[0]
        k, s, d = pair(kernel), pair(stride), pair(dilation)
        q = _conv_padding(padding, k, d)
        return _Field(
            src.dims,
            tuple(src.size[a] + d[a] * (k[a] - 1) * src.stride[a] for a in (0, 1)),  # type: ignore[arg-type]
            tuple(src.stride[a] * s[a] for a in (0, 1)),  # type: ignore[arg-type]
            tuple(src.padding[a] + q[a] * src.stride[a] for a in (0, 1)),  # type: ignore[arg-type]
            src.global_context,
        )

    def _adaptive(self, op: Op) -> _State:
        src = self._spatial_field(op, "adaptive pooling")
        if src is None:
            return self._source(op)[0]
        shape_in, shape_out = self._source(op)[1], _single(op.shape)
        kernel, stride = [], []
        for d in src.dims:
            n_in, n_out = shape_in[d], shape_out[d]
            if n_in % n_out == 0:  # equal windows, including global pooling (n_out == 1)
                kernel.append(n_in // n_out)
                stride.append(n_in // n_out)
            elif n_in == 1:  # replication of a single unit: every output unit sees the same field
                kernel.append(1)
                stride.append(0)
            else:
                return _Undefined(f"{op.name}: adaptive pooling {n_in} -> {n_out} has unequal windows")
        return self._window(op, kernel, stride, 0, 1)

    def _pad(self, op: Op, pad: Any) -> _State:
        """``F.pad``: (before, after) pairs from the last axis backwards; only padding before moves the field."""
        state, shape = self._source(op)
        if not isinstance(state, _Field):
            return state
        before = [pad[2 * (len(shape) - 1 - d)] if 2 * (len(shape) - 1 - d) < len(pad) else 0 for d in state.dims]
        padding = (state.padding[0] + before[0] * state.stride[0], state.padding[1] + before[1] * state.stride[1])
        return replace(state, padding=padding)

    def _spatial_inputs(self, op: Op) -> list[_Field]:
        return [s for s in (self.states[r.name] for r in self._inputs(op)) if isinstance(s, _Field)]

    def _refuse(self, op: Op, what: str) -> _State:
        if self._spatial_inputs(op):
            raise NotImplementedError(f"{op.name}: no receptive-field rule for {what} on spatial maps")
        return self._generic(op, may_drop=True)

    def _undefined(self, op: Op, what: str) -> _State:
        if self._spatial_inputs(op):
            return _Undefined(f"{op.name}: {what} has no (size, stride, padding) description")
        return self._generic(op, may_drop=True)

    def _dim_is_spatial(self, op: Op, dim: Any) -> bool:
        if not isinstance(dim, int):
            return False
        for ref in self._inputs(op):
            state = self.states[ref.name]
            if isinstance(state, _Field) and dim % len(_single(self.shapes[ref.name])) in state.dims:
                return True
        return False

    def _on_positions(self, value: Any, dim: int) -> bool:
        """Whether ``value`` is a tensor holding the positions of a spatial map on axis ``dim``."""
        if not isinstance(value, Ref):
            return False
        state = self.states[value.name]
        return isinstance(state, _Positions) and dim % len(_single(self.shapes[value.name])) == state.dim

    def _mix(self, op: Op, what: str) -> None:
        self.mixing[op.name] = what

    def _sequence_module(self, op: Op, m: nn.Module) -> _State:
        """Attention or recurrence: global mixing when the sequence axis is the positions axis."""
        for ref in self._inputs(op):
            ndim = len(_single(self.shapes[ref.name]))
            if self._on_positions(ref, 1 if getattr(m, "batch_first", False) and ndim == 3 else 0):
                self._mix(op, type(m).__name__)
        return self._generic(op, may_drop=True)

    def _product(self, op: Op, name: str) -> _State:
        """A matrix product mixes all positions when it contracts the positions axis (e.g. attention x values)."""
        left, right = (op.args[i] if len(op.args) > i else None for i in _PRODUCTS[name])
        if self._on_positions(left, -1) or self._on_positions(right, -2):
            self._mix(op, name)
        out = len(_single(op.shape))
        if self._on_positions(left, -2):
            return _Positions(out - 2)
        if self._on_positions(right, -1):
            return _Positions(out - 1)
        return self._generic(op, may_drop=True)

    def _einsum(self, op: Op) -> _State:
        """``einsum``: mixing when an index carrying positions is summed over."""
        equation = str(op.args[0]).replace(" ", "")
        operands = [v for v in pytree.tree_leaves(op.args[1:]) if isinstance(v, Ref)]
        if "->" not in equation or "..." in equation:
            return self._generic(op, may_drop=True)
        inputs, output = equation.split("->")
        state: _State = None
        for letters, operand in zip(inputs.split(","), operands, strict=False):
            for dim, letter in enumerate(letters):
                if self._on_positions(operand, dim):
                    if letter not in output:
                        self._mix(op, "einsum")
                    elif state is None:
                        state = _Positions(output.index(letter))
        return state if state is not None else self._generic(op, may_drop=True)

    # -- rules ---------------------------------------------------------------------------------

    def _state(self, op: Op) -> _State:
        if op.kind == "input":
            n = len(_single(op.shape))
            return _Field((n - 2, n - 1), (1, 1), (1, 1), (0, 0))
        if op.kind == "const" or all(self.states[r.name] is None for r in self._inputs(op)):
            return None
        if op.kind == "module":
            return self._module(op, op.target)
        return self._function(op, op_name(op.target))

    def _module(self, op: Op, m: nn.Module) -> _State:
        if isinstance(m, nn.Conv2d):
            return self._window(op, m.kernel_size, m.stride, m.padding, m.dilation)
        if isinstance(m, nn.MaxPool2d):
            return self._window(op, m.kernel_size, m.stride or m.kernel_size, m.padding, m.dilation)
        if isinstance(m, nn.AvgPool2d):
            return self._window(op, m.kernel_size, m.stride or m.kernel_size, m.padding, 1)
        if isinstance(m, nn.LPPool2d):
            return self._window(op, m.kernel_size, m.stride or m.kernel_size, 0, 1)
        if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            return self._adaptive(op)
        if isinstance(m, _PADS_2D):
            return self._pad(op, m.padding)
        if isinstance(m, nn.PixelUnshuffle):
            factor = m.downscale_factor
            return self._window(op, factor, factor, 0, 1)
        if isinstance(m, _UPSAMPLING_MODULES):
            return self._undefined(op, type(m).__name__)
        if isinstance(m, _SEQUENCE_MODULES) and not self._spatial_inputs(op):
            return self._sequence_module(op, m)
        if isinstance(m, nn.Linear) and self._on_positions(op.args[0], -1):
            self._mix(op, "Linear over positions")
            return self._generic(op, may_drop=True)
        if isinstance(m, _OTHER_RANK_MODULES + _SEQUENCE_MODULES):
            return self._refuse(op, type(m).__name__)
        if isinstance(m, nn.Linear | nn.Bilinear) and self._dim_is_spatial(op, -1):
            raise NotImplementedError(f"{op.name}: a linear layer mixing a spatial axis")
        if isinstance(m, nn.Softmax | nn.LogSoftmax | nn.Softmin):
            return self._generic(op, global_context=self._dim_is_spatial(op, m.dim))
        if declares_window(m):
            return self._window(op, m.kernel_size, m.stride, m.padding, m.dilation)
        return self._generic(op, reshape=isinstance(m, nn.Flatten | nn.Unflatten))

    def _function(self, op: Op, name: str) -> _State:
        wrapped = inspect.isfunction(op.target) and op.target.__module__.split(".")[0] != "torch"
        positions = any(isinstance(self.states[r.name], _Positions) for r in self._inputs(op))
        if wrapped and (self._spatial_inputs(op) or positions):
            raise NotImplementedError(f"{op.name}: {name} is wrapped with torch.fx.wrap; fx cannot look inside")
        if name == "conv2d":
            kernel = _single(self.shapes[_arg(op, 1, "weight").name])[-2:]
            return self._window(
                op, kernel, _arg(op, 3, "stride", 1), _arg(op, 4, "padding", 0), _arg(op, 5, "dilation", 1)
            )
        if name in ("max_pool2d", "max_pool2d_with_indices"):
            kernel = _arg(op, 1, "kernel_size")
            stride = _arg(op, 2, "stride") or kernel
            return self._window(op, kernel, stride, _arg(op, 3, "padding", 0), _arg(op, 4, "dilation", 1))
        if name == "avg_pool2d":
            kernel = _arg(op, 1, "kernel_size")
            return self._window(op, kernel, _arg(op, 2, "stride") or kernel, _arg(op, 3, "padding", 0), 1)
        if name == "lp_pool2d":
            kernel = _arg(op, 2, "kernel_size")
            return self._window(op, kernel, _arg(op, 3, "stride") or kernel, 0, 1)
        if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"):
            return self._adaptive(op)
        if name in ("pad", "constant_pad_nd"):
            return self._pad(op, _arg(op, 1, "pad"))
        if name == "pixel_unshuffle":
            factor = _arg(op, 1, "downscale_factor")
            return self._window(op, factor, factor, 0, 1)
        if name in _UPSAMPLING_FUNCTIONS:
            return self._undefined(op, name)
        if name in _PRODUCTS and not self._spatial_inputs(op):
            return self._product(op, name)
        if name == "einsum" and not self._spatial_inputs(op):
            return self._einsum(op)
        if name == "scaled_dot_product_attention" and not self._spatial_inputs(op):
            if any(self._on_positions(_arg(op, i, key), -2) for i, key in enumerate(("query", "key", "value"))):
                self._mix(op, name)
            return self._generic(op, may_drop=True)
        if name in _UNSUPPORTED_FUNCTIONS:
            return self._refuse(op, name)
        if name == "getitem":
            return self._getitem(op)
        if name in _PERMUTES:
            return self._permute(op)
        if name in ("cat", "concat", "concatenate"):
            dim = op.args[1] if len(op.args) > 1 else op.kwargs.get("dim", op.kwargs.get("axis", 0))
            if self._dim_is_spatial(op, dim):
                raise NotImplementedError(f"{op.name}: concatenation along a spatial axis")
            if any(self._on_positions(ref, dim) for ref in self._inputs(op)):
                return _Positions(dim % len(_single(op.shape)))  # extra tokens (a class token) join the sequence
            return self._generic(op)
        if name in _SPLITS:
            if self._dim_is_spatial(op, _arg(op, _SPLITS[name], "dim", 0)):
                raise NotImplementedError(f"{op.name}: {name} along a spatial axis")
            return self._generic(op)
        if name in ("softmax", "log_softmax", "softmin"):
            return self._generic(op, global_context=self._dim_is_spatial(op, _arg(op, 1, "dim")))
        if name in ("linear", "bilinear") and self._dim_is_spatial(op, -1):
            raise NotImplementedError(f"{op.name}: a linear map mixing a spatial axis")
        if name == "linear" and self._on_positions(op.args[0], -1):
            self._mix(op, "linear over positions")
            return self._generic(op, may_drop=True)
        return self._generic(op, may_drop=name in _REDUCTIONS, reshape=name in _RESHAPES)

    def _getitem(self, op: Op) -> _State:
        source, index = op.args[0], op.args[1]
        state = self.states[source.name]
        if not isinstance(self.shapes[source.name], torch.Size) or not isinstance(state, _Field | _Positions):
            return state  # an element of a multi-output op shares its field; other states pass through
        shape = self.shapes[source.name]
        items = index if isinstance(index, tuple) else (index,)
        if not all(it is None or it is Ellipsis or type(it) in (int, slice) for it in items):
            return self._generic(op)  # advanced indexing: follow the axes by their sizes
        used = sum(1 for it in items if it is not None and it is not Ellipsis)
        mapping: dict[int, tuple[int | None, Any]] = {}
        i = o = 0
        for it in items:
            if it is Ellipsis:
                for _ in range(len(shape) - used):
                    mapping[i] = (o, slice(None))
                    i, o = i + 1, o + 1
            elif it is None:
                o += 1
            elif isinstance(it, int):
                mapping[i] = (None, it)
                i += 1
            else:
                mapping[i] = (o, it)
                i, o = i + 1, o + 1
        while i < len(shape):
            mapping[i] = (o, slice(None))
            i, o = i + 1, o + 1
        if isinstance(state, _Positions):  # one token (the class token) has no positions any more
            out_dim = mapping[state.dim][0]
            return _NON_SPATIAL if out_dim is None else _Positions(out_dim)
        dims, stride, padding = [], [], []
        for a, d in enumerate(state.dims):
            out_dim, item = mapping[d]
            if out_dim is None:
                return _NON_SPATIAL
            start, _, step = item.indices(shape[d])
            if step < 1:
                raise NotImplementedError(f"{op.name}: slicing a spatial axis with step {step}")
            dims.append(out_dim)
            stride.append(state.stride[a] * step)
            padding.append(state.padding[a] - start * state.stride[a])
        return replace(state, dims=tuple(dims), stride=tuple(stride), padding=tuple(padding))

    def _permute(self, op: Op) -> _State:
        state, shape = self._source(op)
        if not isinstance(state, _Field | _Positions):
            return state
        # Apply the same permutation to a meta tensor whose axes have distinct sizes and see where they go.
        probe = torch.empty(tuple(range(2, len(shape) + 2)), device="meta")
        fn = getattr(probe, op.target) if op.kind == "method" else functools.partial(op.target, probe)
        moved = list(fn(*op.args[1:], **op.kwargs).shape)
        if isinstance(state, _Positions):
            return _Positions(moved.index(state.dim + 2))
        return replace(state, dims=(moved.index(state.dims[0] + 2), moved.index(state.dims[1] + 2)))

    def _generic(self, op: Op, may_drop: bool = False, global_context: bool = False, reshape: bool = False) -> _State:
        """Elementwise / channel-wise ops and merges: union of the fields that keep their spatial axes.

        ``may_drop``: the op may remove the spatial axes (reductions). ``reshape``: a reshape, which may
        merge the spatial axes into one axis of positions (:class:`_Positions`); any other reshape of them
        (splitting them into windows) leaves the field undefined.
        """
        outputs = [op.shape] if isinstance(op.shape, torch.Size) else op.shape
        fields: list[_Field] = []
        positions: list[int] = []
        for ref in self._inputs(op):
            state = self.states[ref.name]
            if state is None:
                continue
            if isinstance(state, _Undefined):
                return state
            if isinstance(state, _NonSpatial):
                global_context = True  # only matters if it is broadcast onto a spatial map or onto positions
                continue
            shape = _single(self.shapes[ref.name])
            if isinstance(state, _Positions):
                kept = {_match_dim(state.dim, shape, out) for out in outputs}
                if len(kept) == 1 and None not in kept:
                    positions.append(kept.pop())  # otherwise reduced over or reshaped away: no longer followed
                continue
            dims = {_match(state.dims, shape, out) for out in outputs}
            if len(dims) == 1 and None not in dims:
                fields.append(replace(state, dims=dims.pop()))
            elif all(shape[d] == 1 for d in state.dims):
                global_context = True  # a pooled map broadcast onto a larger one
            elif reshape:
                merged = {_merged(state.dims, shape, out) for out in outputs}
                if len(merged) != 1 or None in merged:
                    return _Undefined(f"{op.name}: {op_name(op.target)} rearranges the spatial axes {tuple(shape)}")
                positions.append(merged.pop())
            elif not may_drop:
                raise NotImplementedError(
                    f"{op.name} ({op_name(op.target)}): cannot follow the spatial axes {tuple(shape)} -> "
                    f"{[tuple(o) for o in outputs]}"
                )
        if fields:
            return _union(fields, global_context)
        if positions:
            if global_context:
                self._mix(op, f"{op_name(op.target)} of a summary of all positions")
            return _Positions(positions[0])
        return _NON_SPATIAL


# --------------------------------------------------------------------------------------------------
# Entry points


def _describe(op: Op) -> str:
    if op.kind == "module":
        return type(op.target).__name__
    return op.kind if op.kind in ("input", "const") else op_name(op.target)


def _summarise(
    ops: list[Op], aliases: dict[str, str], shape: tuple[int, int, int], method: str, layer: str | None
) -> RFResult:
    propagator = _Propagator(ops)
    states = propagator.states
    modules: dict[str, list[str]] = {}
    for path, node in aliases.items():
        modules.setdefault(node, []).append(path)
    layers = []
    for op in ops:
        state = states[op.name]
        if isinstance(state, _Field):
            out = _single(op.shape)
            layers.append(
                RFLayer(
                    name=op.name,
                    op=_describe(op),
                    modules=tuple(sorted(modules.get(op.name, []), key=lambda p: (p.count("."), p))),
                    size=state.size,
                    stride=state.stride,
                    padding=state.padding,
                    shape=(out[state.dims[0]], out[state.dims[1]]),
                    axes=state.dims,
                    global_context=state.global_context,
                )
            )
    pointwise = ((1, 1), (1, 1), (0, 0))  # the input, or pointwise functions of it (normalisation)
    candidates = [
        e for e in layers if max(e.shape) > 1 and min(e.stride) > 0 and (e.size, e.stride, e.padding) != pointwise
    ]
    if not candidates:
        raise NoSpatialMapError("the model has no spatial feature map (a window applied, several units)")
    last = candidates[-1]
    order = {op.name: i for i, op in enumerate(ops)}
    later = [op for op in ops if order[op.name] > order[last.name]]
    mixing = next((op.name for op in later if op.name in propagator.mixing), None)
    undefined = next((s for s in (states[op.name] for op in later) if isinstance(s, _Undefined)), None)
    if layer is None:
        chosen = last
    else:
        node = layer if layer in states else aliases.get(layer, layer)  # a node name, else a module path
        state = states.get(node)
        if isinstance(state, _Undefined):
            raise ValueError(f"receptive field of {layer!r} is undefined: {state.reason}")
        if not isinstance(state, _Field):
            raise ValueError(f"{layer!r} is not a spatial feature map of this model")
        chosen = next(e for e in layers if e.name == node)
    return RFResult(
        size=chosen.size,
        stride=chosen.stride,
        padding=chosen.padding,
        layer=chosen.name,
        module=chosen.modules[0] if chosen.modules else None,
        shape=chosen.shape,
        global_context=chosen.global_context,
        input_size=shape,
        method=method,
        layers=layers,
        global_after=None if mixing is None else (last.modules[0] if last.modules else last.name),
        mixing=None if mixing is None else f"{propagator.mixing[mixing]} at {_path_of(mixing, modules)}",
        undefined_after=undefined.reason if undefined is not None and mixing is None else None,
    )


def _path_of(node: str, modules: dict[str, list[str]]) -> str:
    """The deepest module path whose output is ``node`` (the op itself), else the node name."""
    paths = modules.get(node)
    return max(paths, key=lambda p: (p.count("."), p)) if paths else node


def analyse(
    model: nn.Module,
    shape: tuple[int, int, int],
    device: torch.device,
    dtype: torch.dtype,
    method: str,
    layer: str | None,
) -> tuple[Graph, RFResult]:
    """Trace ``model`` (already in eval mode on ``device``) and summarise its fields at ``shape``."""
    x = torch.zeros((1, *shape), device=device, dtype=dtype)
    with torch.no_grad():
        graph, ops, aliases = trace(model, x, method)
        if method == "auto" and graph.method == "fx":
            try:
                return graph, _summarise(ops, aliases, shape, graph.method, layer)
            except NotImplementedError:
                # An op the fx graph shows only from outside (a function wrapped with torch.fx.wrap): the
                # hook frontend records the torch calls inside it.
                graph, ops, aliases = trace(model, x, "hooks")
    return graph, _summarise(ops, aliases, shape, graph.method, layer)


def analyse_at(
    graph: Graph, shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype, layer: str
) -> RFResult:
    """Re-run an existing trace at another input size."""
    with torch.no_grad():
        ops, aliases = graph.run(torch.zeros((1, *shape), device=device, dtype=dtype))
    return _summarise(ops, aliases, shape, graph.method, layer)


def theoretical_rf(
    model: nn.Module,
    input_size: InputSize,
    layer: str | None = None,
    *,
    method: str = "auto",
    device: torch.device | str | None = None,
) -> RFResult:
    """Theoretical receptive field (size, effective stride, effective padding per axis ``(h, w)``).

    By default reported at the last feature map that still has spatial extent (more than one unit along
    some axis, before global pooling / flatten), as in Araujo et al.'s tables; maps that are pointwise
    functions of the input pixels do not count, so a network without any spatial window (an MLP) raises
    ``ValueError``. ``layer`` selects another map by graph node name or module path (``"layer3"``).
    All nodes are in ``result.layers``. Whatever ``layer`` is, ``result.global_after`` says whether global
    mixing (attention, a linear layer over positions) follows the model's last spatial map, and
    ``result.undefined_after`` whether its field becomes undefined there (see the module docstring).
    ``method`` picks the graph frontend: ``"fx"``, ``"hooks"`` or ``"auto"`` (fx, else hooks: when fx cannot
    trace the model or hides an op applied to a spatial map inside a wrapped function). The model
    runs once on zeros, in eval mode, and its training flags are restored.
    """
    shape = input_shape(input_size)
    with evaluation(model), placed(model, device) as (dev, dtype):
        return analyse(model, shape, dev, dtype, method, layer)[1]


# --------------------------------------------------------------------------------------------------
# Validation helper


_ACTIVATIONS = tuple(  # torch.nn activations, except the softmax family, attention and GLU (halves channels)
    cls
    for cls in vars(nn.modules.activation).values()
    if isinstance(cls, type)
    and issubclass(cls, nn.Module)
    and cls.__module__ == nn.modules.activation.__name__
    and cls not in (nn.MultiheadAttention, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.GLU)
)
_STATISTICS_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.modules.instancenorm._InstanceNorm)


def _linear_substitute(module: nn.Module) -> nn.Module:
    if isinstance(module, _ACTIVATIONS):
        return nn.Identity()
    if isinstance(module, _STATISTICS_NORMS):
        return nn.Identity()
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
        return nn.Identity()
    if isinstance(module, nn.MaxPool2d):
        if pair(module.dilation) != (1, 1):
            raise NotImplementedError("dilated max pooling has no average-pooling equivalent")
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode)
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return nn.AdaptiveAvgPool2d(module.output_size)
    return module


def _substitute_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        new = _linear_substitute(child)
        if new is child:
            _substitute_children(child)
        else:
            setattr(module, name, new)


def positive_linear_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` whose input gradients are non-zero exactly on the theoretical receptive field.

    Used to check :func:`theoretical_rf` independently, by autograd: activation modules become
    identities, max pooling becomes average pooling of the same geometry, weights are set to
    ``1 / fan_in`` (positive, and keeping activations of order one however deep the network), biases to
    zero, BatchNorm to a positive affine map in eval mode (unit scale, zero shift and statistics), other
    normalisation layers to identities. With no cancellation possible, every path through the network
    contributes a strictly positive term, so the gradient support is the union of all paths. Feed it a
    positive input: functional nonlinearities (``F.relu``) in forward code cannot be replaced but act as
    identities on positive activations. The copy is in eval mode with gradients off for its parameters.
    """
    clone = copy.deepcopy(model)
    _substitute_children(clone)
    if dtype is not None:
        clone.to(dtype)
    with torch.no_grad():
        for module in clone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                if module.affine:
                    module.weight.fill_(1.0)
                    module.bias.zero_()
                continue
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() > 1:
                weight.fill_(1.0 / weight[0].numel())
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.zero_()
    clone.eval()
    clone.requires_grad_(False)
    return clone
