"""Parameter and multiply-accumulate counts on hand-computable models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnablate.measure import count_flops, count_macs, count_params, input_shape


def small() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8 * 16 * 16 outputs x 27 MACs
        nn.BatchNorm2d(8),  # BN, activation, pooling: 0
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),  # 512 x 10 MACs
    )


CONV_MACS = 8 * 16 * 16 * 27
LINEAR_MACS = 512 * 10


def test_count_params_includes_frozen_and_counts_shared_once() -> None:
    model = small()
    model[0].requires_grad_(False)
    assert count_params(model) == (8 * 27 + 8) + (8 + 8) + (512 * 10 + 10)
    shared = nn.Linear(4, 4)
    assert count_params(nn.Sequential(shared, nn.ReLU(), shared)) == 20


@pytest.mark.parametrize("size", [16, (16, 16), (3, 16, 16), torch.Size([3, 16, 16])])
def test_count_macs_counts_convolutions_and_linear_layers_only(size: object) -> None:
    model = small()
    assert count_macs(model, size) == CONV_MACS + LINEAR_MACS  # type: ignore[arg-type]
    assert count_flops(model, size) == 2 * (CONV_MACS + LINEAR_MACS)  # type: ignore[arg-type]


def test_count_macs_restores_training_flags_and_statistics() -> None:
    model = small()
    model.train()
    model[1].eval()
    before = model[1].running_mean.clone()
    count_macs(model, 16)
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True, True]
    assert torch.equal(model[1].running_mean, before)


def test_input_shape_conventions() -> None:
    assert input_shape(32) == (3, 32, 32)
    assert input_shape((28, 30)) == (3, 28, 30)
    assert input_shape((1, 28, 28)) == (1, 28, 28)
    with pytest.raises(ValueError, match="input_size"):
        input_shape((1, 2, 3, 4))  # type: ignore[arg-type]


def test_float64_models_are_measured_in_float64() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3)).double()
    assert count_macs(model, (1, 5, 5)) == 2 * 3 * 3 * 9


class PatchAttention(nn.Module):
    """A 4x4/4 patch embedding (16 tokens of width 8 at 16x16) and one attention layer over the tokens."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.patch = nn.Conv2d(3, 8, 4, stride=4)  # 16 positions x 8 channels x 48 MACs
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        if not self.functional:
            return self.attn(x, x, x, need_weights=False)[0]
        heads = x.view(1, 16, 2, 4).transpose(1, 2)  # 2 heads of width 4, no projections
        return F.scaled_dot_product_attention(heads, heads, heads)


PATCH_MACS = 16 * 8 * 48
PRODUCT_MACS = 2 * 16 * 16 * 4 * 2  # QK^T and AV: heads x L x S x (E + Ev), E = Ev = 4 per head
PROJECTION_MACS = 3 * 16 * 8 * 8 + 16 * 8 * 8  # q, k, v and output projections of 16 tokens


def test_attention_products_are_counted() -> None:
    assert count_macs(PatchAttention(functional=True), 16) == PATCH_MACS + PRODUCT_MACS


@pytest.mark.parametrize("training", [False, True])
def test_multihead_attention_is_counted_without_the_fused_fast_path(training: bool) -> None:
    model = PatchAttention(functional=False).train(training)
    assert count_macs(model, 16) == PATCH_MACS + PROJECTION_MACS + PRODUCT_MACS
    assert torch.backends.mha.get_fastpath_enabled()  # switched back on for everything else
