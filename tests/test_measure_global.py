"""Receptive fields past the last spatial map: global mixing of positions, and fields that become undefined."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnablate.measure import theoretical_rf

SQ_4_4_0 = ((4, 4), (4, 4), (0, 0))  # the 4x4/4 patch embedding of every model here


def tokens(patch: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W, C), as torchvision's ViT does."""
    return patch(x).flatten(2).transpose(1, 2)


class TinyViT(nn.Module):
    """Patch embedding, class token, one attention layer, class-token head: torchvision's ViT in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tokens(self.patch, x)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(x[:, 0])


class FunctionalAttention(nn.Module):
    """Single-head self-attention written with ``kernel``: the SDPA function, ``@`` or ``einsum``."""

    def __init__(self, kernel: str) -> None:
        super().__init__()
        self.kernel = kernel
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tokens(self.patch, x)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.kernel == "sdpa":
            y = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        elif self.kernel == "matmul":
            y = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
        else:
            y = torch.einsum("nls,nsc->nlc", torch.softmax(torch.einsum("nlc,nsc->nls", q, k), dim=-1), v)
        return (x + y).mean(1)


class TokenMixer(nn.Module):
    """MLP-Mixer's token mixing: a linear layer over the positions axis."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.mix = nn.Linear(64, 64)  # 8 x 8 positions at 32 x 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.patch(x).flatten(2)).mean(-1)


class PerToken(nn.Module):
    """Tokens transformed one by one, then averaged: no unit but the pooled one sees all positions."""

    def __init__(self, summary: bool = False) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.mlp = nn.Linear(8, 8)
        self.summary = summary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(tokens(self.patch, x))
        if self.summary:  # a pooled summary of all positions broadcast back onto each
            x = x + x.mean(1, keepdim=True)
        return x.mean(1)


class WindowAttention(nn.Module):
    """Attention within 4x4 windows of the 8x8 patch map (Swin without the shift), then a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)
        n, c = x.shape[0], x.shape[1]
        windows = x.view(n, c, 2, 4, 2, 4).permute(0, 2, 4, 3, 5, 1).reshape(n * 4, 16, c)
        y = self.attn(windows, windows, windows, need_weights=False)[0]
        y = y.reshape(n, 2, 2, 4, 4, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, 8, 8)
        return self.conv(x + y)


METHODS = ["fx", "hooks"]


@pytest.mark.parametrize("method", METHODS)
def test_attention_after_the_patch_embedding_is_global(method: str) -> None:
    result = theoretical_rf(TinyViT(), 32, method=method)
    assert (result.size, result.stride, result.padding) == SQ_4_4_0  # the last spatial map's field stays
    assert (result.module, result.global_after) == ("patch", "patch")
    assert result.mixing == "MultiheadAttention at attn"
    assert result.undefined_after is None
    assert result.to_dict()["global_after"] == "patch"


@pytest.mark.parametrize("kernel", ["sdpa", "matmul", "einsum"])
@pytest.mark.parametrize("method", METHODS)
def test_functional_attention_is_global(kernel: str, method: str) -> None:
    result = theoretical_rf(FunctionalAttention(kernel), 32, method=method)
    assert (result.size, result.stride, result.padding) == SQ_4_4_0
    assert result.global_after == "patch"
    # the product with the values sums over the positions; QK^T only pairs them
    assert result.mixing.split(" at ")[0] == {"sdpa": "scaled_dot_product_attention"}.get(kernel, kernel)


@pytest.mark.parametrize("method", METHODS)
def test_linear_layers_over_positions_are_global(method: str) -> None:
    result = theoretical_rf(TokenMixer(), 32, method=method)
    assert (result.global_after, result.mixing) == ("patch", "Linear over positions at mix")
    flatten_head = nn.Sequential(nn.Conv2d(3, 4, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 10))
    result = theoretical_rf(flatten_head, 16, method=method)
    assert (result.module, result.global_after, result.mixing) == ("1", "1", "Linear over positions at 3")


@pytest.mark.parametrize("method", METHODS)
def test_per_position_layers_and_global_pooling_are_not_global_mixing(method: str) -> None:
    assert theoretical_rf(PerToken(), 32, method=method).global_after is None
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    result = theoretical_rf(cnn, 16, method=method)
    assert (result.global_after, result.mixing, result.undefined_after) == (None, None, None)


@pytest.mark.parametrize("method", METHODS)
def test_pooled_positions_broadcast_back_are_global(method: str) -> None:
    result = theoretical_rf(PerToken(summary=True), 32, method=method)
    assert result.global_after == "patch"
    assert result.mixing.startswith("add of a summary of all positions")


@pytest.mark.parametrize("method", METHODS)
def test_windows_leave_the_field_undefined(method: str) -> None:
    result = theoretical_rf(WindowAttention(), 32, method=method)
    assert (result.size, result.stride, result.padding) == SQ_4_4_0
    assert result.module == "patch"  # the convolution after the windows has no (r, j, p) description
    assert result.global_after is None
    assert "view rearranges the spatial axes (1, 8, 8, 8)" in result.undefined_after
    with pytest.raises(ValueError, match="rearranges"):
        theoretical_rf(WindowAttention(), 32, layer="conv", method=method)
