"""Depth axes by hand: residual shortcuts, separable (depthwise + pointwise) blocks, norm nf, initialisation."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from cnnablate.config import ConfigError, validate_config
from cnnablate.measure import count_macs, count_params, positive_linear_copy, theoretical_rf
from cnnablate.models import (
    NF_GAMMA,
    Block,
    ScaledStdConv2d,
    SeparableConv2d,
    agc_parameter_groups,
    block_outputs,
    build_model,
)
from conftest import tiny_config

BASE = validate_config(tiny_config())["base"]  # widths [4, 8], 1 block per stage, k 3, max pooling, batch norm


def test_separable_block_params_and_macs_by_hand() -> None:
    # One separable block, C = 4 input channels -> C' = 8, k = 9 on 16 x 16, then the head (8 -> 10).
    spec = {**BASE, "widths": [8], "kernel_size": 9, "block": "auto"}  # auto: separable above k = 7
    model = build_model(spec, 10, in_channels=4, image_size=16)
    conv = model.stages[0].blocks[0].conv
    assert isinstance(conv, SeparableConv2d)
    assert conv.depthwise.groups == 4
    assert conv.depthwise.bias is None
    k, c, c_out, hw = 9, 4, 8, 16 * 16
    head = c_out * 10
    assert count_macs(model, (4, 16, 16)) == k * k * c * hw + c * c_out * hw + head
    batch_norm = 2 * c_out
    assert count_params(model) == k * k * c + c * c_out + batch_norm + head + 10


def test_dense_large_kernel_on_request() -> None:
    model = build_model({**BASE, "kernel_size": 9, "block": "dense"}, 10)
    conv = model.stages[0].blocks[0].conv
    assert isinstance(conv, nn.Conv2d)
    assert conv.kernel_size == (9, 9)
    assert conv.groups == 1
    assert isinstance(build_model({**BASE, "kernel_size": 7}, 10).stages[0].blocks[0].conv, nn.Conv2d)


def test_a_bad_block_in_a_config_names_the_field() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("base.block: 'depthwise' is not allowed; allowed values: auto, dense, separable")
    ):
        validate_config(tiny_config(base={**tiny_config()["base"], "block": "depthwise"}))


def test_residual_param_count_by_hand() -> None:
    # widths [4, 8], 2 blocks per stage, 3x3, batch norm, 3 input channels, 10 classes.
    spec = {**BASE, "blocks_per_stage": 2}
    plain = count_params(build_model(spec, 10))
    residual = count_params(build_model({**spec, "residual": True}, 10))
    convs = 3 * 4 * 9 + 4 * 4 * 9 + 4 * 8 * 9 + 8 * 8 * 9
    norms = 2 * (4 + 4 + 8 + 8)
    head = 8 * 10 + 10
    assert plain == convs + norms + head
    projections = (3 * 4 + 2 * 4) + (4 * 8 + 2 * 8)  # 1x1 conv + its norm where channels change
    assert residual == plain + projections
    # Without norm: biases on every conv and projection, one SkipInit scalar per block, no norm layers.
    no_norm = count_params(build_model({**spec, "residual": True, "norm": "none"}, 10))
    assert no_norm == convs + (4 + 4 + 8 + 8) + (3 * 4 + 4) + (4 * 8 + 8) + 4 + head


def test_projection_shortcuts_where_channels_or_stride_change() -> None:
    model = build_model({**BASE, "widths": [4, 4], "blocks_per_stage": 2, "pool": "stride", "residual": True}, 10)
    shortcuts = [block.shortcut for block in model.modules() if isinstance(block, Block)]
    kinds = [type(s).__name__ for s in shortcuts]
    assert kinds == ["Sequential", "Identity", "Sequential", "Identity"]  # 3 -> 4 channels; stride 2; identities
    assert shortcuts[2].conv.stride == (2, 2)
    assert shortcuts[2].conv.kernel_size == (1, 1)


@pytest.mark.parametrize(("pool", "expected"), [("max", 14), ("stride", 11)])
def test_residual_trf_is_the_longest_path(pool: str, expected: int) -> None:
    # Closed form, 2 blocks of 3x3 per stage. max: 1 + 2*2 (stage 0) + 1 (2x2 pool) + 2*2*2 (jump 2) = 14.
    # stride: 1 + 2*2 + 2 (stride-2 3x3) + 2*2 (jump 2) = 11. The 1x1 shortcuts are shorter paths.
    spec = {**BASE, "blocks_per_stage": 2, "pool": pool}
    plain, residual = build_model(spec, 10), build_model({**spec, "residual": True}, 10)
    assert theoretical_rf(plain, 32).size == (expected, expected)
    assert theoretical_rf(residual, 32).size == (expected, expected)
    # Independently, by autograd: the positive linear copy's gradient support is exactly the TRF.
    copy = positive_linear_copy(residual, torch.float64)
    x = torch.ones(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    out = copy.get_submodule(block_outputs(residual)[-1])
    captured = {}
    hook = out.register_forward_hook(lambda _m, _i, o: captured.setdefault("map", o))
    copy(x)
    hook.remove()
    feature = captured["map"]
    centre = feature.shape[-1] // 2
    (grad,) = torch.autograd.grad(feature[0, :, centre, centre].sum(), x)
    rows = grad[0].sum(0).abs().sum(1).nonzero()
    assert int(rows.max() - rows.min() + 1) == expected


def test_skip_init_starts_residual_blocks_as_their_shortcut() -> None:
    torch.manual_seed(0)
    model = build_model({**BASE, "widths": [4], "blocks_per_stage": 3, "residual": True, "norm": "none"}, 10)
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert [b.skip_gain.item() for b in blocks] == [0.0, 0.0, 0.0]
    x = torch.relu(torch.randn(2, 4, 8, 8))
    torch.testing.assert_close(blocks[1](x), x)  # identity shortcut, zero branch, ReLU of a ReLU output
    assert not hasattr(build_model({**BASE, "residual": True}, 10).stages[0].blocks[0], "skip_gain")


def _preactivation_scale(spec: dict, depth: int) -> list[float]:
    """Mean square of each block's normalised conv output (its pre-activation) on a random batch."""
    torch.manual_seed(0)
    model = build_model({**spec, "widths": [32], "blocks_per_stage": depth, "pool": "none"}, 10, image_size=16)
    values = []
    hooks = [
        b.norm.register_forward_hook(lambda _m, _i, out: values.append(float(out.pow(2).mean())))
        for b in model.modules()
        if isinstance(b, Block)
    ]
    with torch.no_grad():
        model(torch.randn(16, 3, 16, 16))
    for hook in hooks:
        hook.remove()
    return values


def test_kaiming_keeps_the_activation_scale_through_depth_without_norm() -> None:
    scales = _preactivation_scale({**BASE, "norm": "none"}, 12)
    assert 0.4 < scales[-1] / scales[1] < 2.5  # PyTorch's default init would shrink it about 3x per layer


def test_nf_weight_standardisation_and_signal_propagation() -> None:
    conv = ScaledStdConv2d(6, 5, 3, gamma=NF_GAMMA["relu"])
    with torch.no_grad():
        conv.gain.copy_(torch.arange(1.0, 6.0))
    weight = conv.standardized_weight()
    fan_in = 6 * 9
    torch.testing.assert_close(weight.mean(dim=(1, 2, 3)), torch.zeros(5), atol=1e-6, rtol=0)
    expected_var = (torch.arange(1.0, 6.0) * NF_GAMMA["relu"]) ** 2 / fan_in
    # rtol: eps = 1e-6 is added to the weights' variance (about 6e-3 at PyTorch's default init)
    torch.testing.assert_close(weight.var(dim=(1, 2, 3), correction=0), expected_var, rtol=1e-3, atol=0)
    assert NF_GAMMA["relu"] == pytest.approx(1.71286, abs=1e-5)  # 1 / std(relu(N(0, 1))) = sqrt(2 / (1 - 1/pi))
    scales = _preactivation_scale({**BASE, "norm": "nf"}, 10)
    assert all(0.5 < s < 2.0 for s in scales[1:]), scales  # unit variance in every layer, no norm layer


def test_agc_clips_everything_but_the_classifier() -> None:
    model = build_model({**BASE, "norm": "nf"}, 10)
    groups = agc_parameter_groups(model)
    assert groups["unclipped"] == [model.head.fc.weight, model.head.fc.bias]
    assert len(groups["clipped"]) + 2 == len(list(model.parameters()))
    mlp = build_model({**BASE, "arch": "fc"}, 10)
    assert agc_parameter_groups(mlp)["unclipped"] == list(mlp[-1].parameters())


def test_named_parts() -> None:
    model = build_model(BASE, 10)
    names = dict(model.named_modules())
    for name in ("stages.0.blocks.0.conv", "stages.0.blocks.0.norm", "stages.0.blocks.0.act", "stages.1.pool"):
        assert name in names
    assert [n for n in ("head.pool", "head.flatten", "head.fc") if n in names] == [
        "head.pool",
        "head.flatten",
        "head.fc",
    ]
    assert math.isfinite(float(model(torch.randn(1, 3, 32, 32)).sum().detach()))
