"""The model factory: every option builds, and local is conv's geometry without weight sharing."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnablate.config import ConfigError, load_schema, validate_config
from cnnablate.models import (
    ACTIVATIONS,
    NORMS,
    POOLING,
    GlobalAvgPool2d,
    LocallyConnected2d,
    block_outputs,
    build_model,
)
from conftest import tiny_config

BASE = validate_config(tiny_config())["base"]


def block_shapes(model: nn.Module, x: torch.Tensor) -> list[torch.Size]:
    """Output shape of every block, in depth order."""
    shapes: list[torch.Size] = []
    hooks = [
        model.get_submodule(name).register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
        for name in block_outputs(model)
    ]
    model(x)
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.mark.parametrize(
    ("arch", "pool", "norm"),
    itertools.product(
        ["fc", "local", "conv"],
        ["max", "avg", "stride", "none"],
        ["none", "batch", "layer", "group", "instance", "nf"],
    ),
)
def test_every_combination_builds_and_runs(arch: str, pool: str, norm: str) -> None:
    model = build_model({**BASE, "arch": arch, "pool": pool, "norm": norm}, num_classes=7)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all(), "non-finite logits"


@pytest.mark.parametrize(("kernel_size", "dilation", "activation"), [(1, 1, "relu"), (5, 2, "gelu"), (7, 4, "silu")])
def test_padding_keeps_the_size(kernel_size: int, dilation: int, activation: str) -> None:
    spec = {
        **BASE,
        "kernel_size": kernel_size,
        "dilation": dilation,
        "activation": activation,
        "pool": "none",
    }
    features = build_model(spec, 10).stages
    assert features(torch.randn(1, 3, 32, 32)).shape[-2:] == (32, 32)


def test_width_multiplier_scales_channels() -> None:
    narrow = build_model({**BASE, "width": 0.5, "widths": [8, 16]}, 10)
    wide = build_model({**BASE, "width": 2.0, "widths": [8, 16]}, 10)
    assert [m.out_channels for m in narrow.modules() if isinstance(m, nn.Conv2d)] == [4, 8]
    assert [m.out_channels for m in wide.modules() if isinstance(m, nn.Conv2d)] == [16, 32]


def test_local_has_conv_geometry_and_one_filter_per_position() -> None:
    spec = {**BASE, "pool": "stride"}
    conv, local = build_model({**spec, "arch": "conv"}, 10), build_model({**spec, "arch": "local"}, 10)
    x = torch.randn(2, 3, 32, 32)
    assert block_shapes(conv, x) == block_shapes(local, x)
    convs = [m for m in conv.modules() if isinstance(m, nn.Conv2d)]
    locals_ = [m for m in local.modules() if isinstance(m, LocallyConnected2d)]
    for c, lc in zip(convs, locals_, strict=True):
        positions = lc.out_size[0] * lc.out_size[1]
        assert lc.weight.numel() == positions * c.weight.numel()


def test_locally_connected_with_shared_weights_equals_a_convolution() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=2, dilation=2)
    local = LocallyConnected2d(3, 5, (9, 9), 3, stride=2, padding=2, dilation=2)
    with torch.no_grad():
        local.weight.copy_(conv.weight.reshape(5, -1).expand(local.weight.shape[0], -1, -1))
        local.bias.copy_(conv.bias.view(5, 1, 1).expand_as(local.bias))
    x = torch.randn(4, 3, 9, 9)
    torch.testing.assert_close(local(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation"),
    [(9, 3, 1, 1, 1), (9, 3, 2, 2, 2), (8, 5, 2, 0, 1), (7, 3, 1, 3, 3), (6, 1, 1, 0, 1)],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_locally_connected_equals_the_unfold_einsum_definition_and_its_gradients(
    size: int, kernel: int, stride: int, padding: int, dilation: int, channels_last: bool
) -> None:
    """The fast patch matrix (one stack forward, k*k strided adds backward) against the textbook definition."""
    torch.manual_seed(0)
    local = LocallyConnected2d(3, 4, (size, size), kernel, stride, padding, dilation).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()

    def definition(image: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(image, kernel, dilation=dilation, padding=padding, stride=stride)  # b x C*k*k x positions
        out = torch.einsum("bkl,lok->bol", patches, local.weight)
        return out.reshape(image.shape[0], 4, *local.out_size) + local.bias

    upstream = torch.randn(2, 4, *local.out_size, dtype=torch.float64)
    expected = torch.autograd.grad((definition(x) * upstream).sum(), [x, local.weight, local.bias])
    got = torch.autograd.grad((local(x) * upstream).sum(), [x, local.weight, local.bias])
    torch.testing.assert_close(local(x), definition(x))
    for name, want, have in zip(("input", "weight", "bias"), expected, got, strict=True):
        torch.testing.assert_close(have, want, msg=lambda m, name=name: f"gradient of {name}: {m}")
    assert torch.autograd.gradcheck(local, (x,))
    # Output and input gradient keep the input's layout, as a convolution's do (the next layers' kernels need it).
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert local(x).is_contiguous(memory_format=layout)
    assert got[0].is_contiguous(memory_format=layout)


def test_locally_connected_under_bf16_autocast_matches_its_float_result() -> None:
    """Under autocast the image is cast before its patches are taken; the result stays a bf16 rounding away."""
    torch.manual_seed(0)
    local = LocallyConnected2d(3, 4, (8, 8), 3, padding=1)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = local(x)
    (grad_low,) = torch.autograd.grad(low.float().sum(), [x])
    (grad_float,) = torch.autograd.grad(local(x).sum(), [x])
    assert grad_low.dtype == torch.float32
    torch.testing.assert_close(low.float(), local(x), rtol=0.05, atol=0.05)
    torch.testing.assert_close(grad_low, grad_float, rtol=0.05, atol=0.05)


def test_locally_connected_runs_on_the_meta_device() -> None:
    """Cost counting (``cnnablate plan``) runs models on the meta device, which has no autocast to ask about."""
    local = LocallyConnected2d(3, 4, (8, 8), 3, padding=1).to("meta")
    assert local(torch.empty(2, 3, 8, 8, device="meta")).shape == (2, 4, 8, 8)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_global_pool_equals_adaptive_pooling_and_keeps_the_layout_of_its_gradient(channels_last: bool) -> None:
    """The head's pool gives nn.AdaptiveAvgPool2d(1)'s values and gradients, the gradient in the input's layout."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 8, 5, 7, dtype=torch.float64).to(memory_format=layout).requires_grad_()
    upstream = torch.randn(3, 8, 1, 1, dtype=torch.float64)
    out = GlobalAvgPool2d()(x)
    torch.testing.assert_close(out, nn.AdaptiveAvgPool2d(1)(x))
    (grad,) = torch.autograd.grad((out * upstream).sum(), [x])
    (expected,) = torch.autograd.grad((nn.AdaptiveAvgPool2d(1)(x) * upstream).sum(), [x])
    torch.testing.assert_close(grad, expected)
    assert grad.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("norm", ["layer", "group", "instance"])
def test_norm_layers_give_torch_results_on_channels_last_cpu_tensors(norm: str) -> None:
    """The contiguous detour of GroupNorm / InstanceNorm2d changes neither values, gradients nor memory format."""
    torch.manual_seed(0)
    ours = NORMS[norm](16, 4)
    reference = {
        "layer": nn.GroupNorm(1, 16),
        "group": nn.GroupNorm(4, 16),
        "instance": nn.InstanceNorm2d(16, affine=True),
    }
    theirs = reference[norm]
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, 5, 5).to(memory_format=torch.channels_last).requires_grad_()
    upstream = torch.randn(2, 16, 5, 5)
    out = ours(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, theirs(x))
    got = torch.autograd.grad((out * upstream).sum(), [x, *ours.parameters()])
    expected = torch.autograd.grad((theirs(x) * upstream).sum(), [x, *theirs.parameters()])
    for have, want in zip(got, expected, strict=True):
        torch.testing.assert_close(have, want)


def test_fc_is_an_mlp_on_pixels() -> None:
    model = build_model({**BASE, "arch": "fc", "fc_hidden": [32]}, 10)
    assert not any(isinstance(m, nn.Conv2d | LocallyConnected2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == 3072 * 32 + 32 + 32 * 10 + 10


@pytest.mark.parametrize("arch", ["fc", "local", "conv"])
def test_dropout_zero_adds_no_layer_and_a_rate_adds_named_layers(arch: str) -> None:
    torch.manual_seed(0)
    zero = build_model({**BASE, "arch": arch, "dropout": 0.0}, num_classes=7)
    torch.manual_seed(0)
    dropped = build_model({**BASE, "arch": arch, "dropout": 0.5}, num_classes=7)
    assert not any(isinstance(module, nn.Dropout) for module in zero.modules())
    # Dropout has no parameters and draws nothing at build: the neutral value is the same model without the layers.
    for (name, value), (other, dropped_value) in zip(
        zero.state_dict().items(), dropped.state_dict().items(), strict=True
    ):
        assert torch.equal(value, dropped_value), name
        if arch != "fc":  # the mlp's Sequential indices shift by its dropout layers
            assert name == other
    names = [name for name, module in dropped.named_modules() if isinstance(module, nn.Dropout)]
    assert names, "no dropout layer at p = 0.5"
    assert [dropped.get_submodule(name).p for name in names] == [0.5] * len(names)
    if arch != "fc":  # the analyses find blocks by name: the dropout sits beside act in every block
        assert names == [name.replace(".act", ".dropout") for name in block_outputs(dropped)]
    dropped.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(dropped(x), dropped(x))  # identity at evaluation


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arch": "transformer"}, "arch: 'transformer' is not allowed; allowed values: fc, local, conv"),
        ({"norm": "weight"}, "norm: 'weight' is not allowed; allowed values: none, batch, layer, group, instance, nf"),
        ({"block": "depthwise"}, "block: 'depthwise' is not allowed; allowed values: auto, dense, separable"),
        ({"kernel_size": 4}, "kernel_size: 4 is not allowed; expected: Kernel size, an odd integer >= 1"),
        ({"arch": "local", "block": "separable"}, "block: separable needs arch conv"),
    ],
)
def test_a_bad_spec_names_the_key_and_the_schemas_allowed_values(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_model({**BASE, **change}, 10)


def test_an_incomplete_spec_names_every_missing_key() -> None:
    recorded_before_the_new_axes = {key: value for key, value in BASE.items() if key not in ("residual", "block")}
    with pytest.raises(ConfigError, match="residual: required, but missing; block: required, but missing"):
        build_model(recorded_before_the_new_axes, 10)


@pytest.mark.parametrize(("axis", "table"), [("activation", ACTIVATIONS), ("norm", NORMS), ("pool", POOLING)])
def test_the_models_tables_build_every_value_the_schema_allows(axis: str, table: dict) -> None:
    allowed = set(load_schema()["$defs"]["model"]["properties"][axis]["enum"])
    downsampling_without_a_layer = {"stride", "none"} if axis == "pool" else set()
    assert set(table) | downsampling_without_a_layer == allowed
