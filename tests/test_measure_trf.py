"""Theoretical receptive fields: hand-derived cases, and an autograd check on small models of every kind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnablate.measure import RFResult, positive_linear_copy, theoretical_rf


def rf(result: RFResult) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    return result.size, result.stride, result.padding


def sq(size: int, stride: int, padding: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    return (size, size), (stride, stride), (padding, padding)


def conv_stack(dilations: list[int], kernel: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, d in enumerate(dilations):
        layers += [
            nn.Conv2d(3 if i == 0 else 4, 4, kernel, padding=d * (kernel - 1) // 2, dilation=d),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """ResNet basic block; with ``stride`` 2 the shortcut is a strided 1x1 conv."""

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Conv2d(channels, channels, 1, stride) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x))


class Inception(nn.Module):
    """Branches of different geometry (including a 1x7 kernel) concatenated along channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 5, padding=2)
        self.b1 = nn.Conv2d(4, 2, 1)
        self.b3 = nn.Conv2d(4, 2, 3, padding=1)
        self.b17 = nn.Conv2d(4, 2, (1, 7), padding=(0, 3))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return torch.cat([self.b1(x), self.b3(x), self.b17(x), self.pool(x)], dim=1)


class Functional(nn.Module):
    """Only functional calls, slicing and a concatenation."""

    def __init__(self, pool: str = "max", head: bool = True) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.w2 = nn.Parameter(torch.randn(4, 4, 5, 5))
        self.pool = F.max_pool2d if pool == "max" else F.avg_pool2d
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(x, self.w1, padding=1))  # (3, 1, 1)
        x = self.pool(x, 2)  # (4, 2, 1)
        x = F.pad(x, (2, 2, 2, 2))  # (4, 2, 5)
        x = F.conv2d(x, self.w2)  # (12, 2, 5)
        y = F.avg_pool2d(x, 3, stride=1, padding=1)  # (16, 2, 7)
        x = torch.cat([x, y], dim=1)  # union: (16, 2, 7)
        x = x[:, :, ::2, ::2]  # (16, 4, 7)
        x = torch.relu(x) + 1.0
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1) if self.head else x


class ConvNeXtBlock(nn.Module):
    """Patchify stem and a block computed channels-last (permute, LayerNorm, Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)  # (4, 4, 0)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)  # (28, 4, 12)
        self.norm = nn.LayerNorm(8)
        self.pw1 = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(self.act(self.pw1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + y  # union of (4, 4, 0) and (28, 4, 12): (28, 4, 12)


class CropResidual(nn.Module):
    """Unpadded convolutions with a cropped shortcut (U-Net style)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3))  # (5, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x[:, :, 2:-2, 2:-2]  # the crop has (1, 1, -2): aligned, union (5, 1, 0)


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Conv2d(8, 2, 1)
        self.fc2 = nn.Conv2d(2, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return F.relu(x * scale)


class Dynamic(nn.Module):
    """Shape-dependent control flow: not symbolically traceable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        while x.shape[-1] > 12:
            x = self.pool(x)
        return self.conv2(x)


class LocallyConnected(nn.Module):
    """Unshared filters via unfold + einsum; declares its geometry with nn.Conv2d's attribute names."""

    def __init__(self, cin: int, cout: int, size: tuple[int, int], kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, 1
        self.out_size = tuple((n + 2 * padding - kernel_size) // stride + 1 for n in size)
        positions = self.out_size[0] * self.out_size[1]
        self.weight = nn.Parameter(torch.randn(positions, cout, cin * kernel_size**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        out = torch.einsum("bkl,lok->bol", patches, self.weight)
        return out.reshape(x.shape[0], -1, *self.out_size)


def locally_connected(size: tuple[int, int]) -> nn.Sequential:
    first = LocallyConnected(3, 4, size, 3, 2, 1)  # (3, 2, 1)
    return nn.Sequential(first, nn.ReLU(), LocallyConnected(4, 4, first.out_size, 3, 1, 1))  # (7, 2, 3)


class ChannelsLastPad(nn.Module):
    """``F.pad`` of a channels-last map: its pairs run from the last axis (channels) backwards."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)  # (3, 1, 0)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(self.conv1(x).permute(0, 2, 3, 1), (0, 0, 1, 2, 3, 0))  # width (1, 2), height (3, 0)
        return self.conv2(x.permute(0, 3, 1, 2))  # (5, 2, 3) by (5, 2, 1)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """A 3x3 average that torch.fx does not look into (as torchvision hides Swin's window attention)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1)


torch.fx.wrap("smooth")


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)  # (3, 1, 1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2)  # after smooth (5, 1, 2): (7, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(smooth(self.conv1(x)))


# ----------------------------------------------------------------------------------------------------
# Hand-derived values


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_stack_of_3x3_convs(n: int) -> None:
    assert rf(theoretical_rf(conv_stack([1] * n), 32)) == sq(2 * n + 1, 1, n)


@pytest.mark.parametrize(("kernel", "dilation"), [(3, 1), (3, 2), (3, 5), (5, 3), (7, 2)])
def test_dilation_widens_the_kernel(kernel: int, dilation: int) -> None:
    k_eff = dilation * (kernel - 1) + 1
    assert rf(theoretical_rf(conv_stack([dilation], kernel), 32)) == sq(k_eff, 1, (k_eff - 1) // 2)


def test_dilated_stack() -> None:
    assert rf(theoretical_rf(conv_stack([1, 2, 4]), 32)) == sq(15, 1, 7)


def test_strides_and_pooling_multiply_the_jump() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),  # (3, 2, 1)
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),  # (3 + 2*2, 2*2, 1 + 1*2) = (7, 4, 3)
        nn.Conv2d(4, 4, 3, padding=1),  # (7 + 2*4, 4, 3 + 4) = (15, 4, 7)
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    result = theoretical_rf(model, 64)
    assert rf(result) == sq(15, 4, 7)
    assert (result.module, result.shape) == ("5", (16, 16))
    assert (result.at("0").size, result.at("0").stride, result.at("0").padding) == sq(3, 2, 1)
    assert (result.at("3").size, result.at("3").stride, result.at("3").padding) == sq(7, 4, 3)
    avg = result.at("6")  # global average pooling: the one unit sees all 16 units of the map
    assert (avg.size, avg.stride, avg.shape) == ((15 + 15 * 4,) * 2, (64, 64), (1, 1))


def test_avg_pool_and_non_square_geometry() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, (3, 5), stride=(1, 2), padding=(1, 2)),  # (3, 5), (1, 2), (1, 2)
        nn.AvgPool2d((2, 1)),  # (4, 5), (2, 2), (1, 2)
        nn.Conv2d(4, 4, 3, padding=1),  # (4 + 4, 5 + 4), (2, 2), (1 + 2, 2 + 2)
    )
    result = theoretical_rf(model, (32, 48))
    assert rf(result) == ((8, 9), (2, 2), (3, 4))
    assert result.shape == (16, 24)


def test_residual_block_takes_the_longer_path() -> None:
    # main path: 3x3/2 pad 1 (3, 2, 1), 3x3 pad 1 (7, 2, 3); shortcut 1x1/2 (1, 2, 0)
    assert rf(theoretical_rf(Residual(3, stride=2), 32)) == sq(7, 2, 3)
    # after a 3x3 stem (3, 1, 1): main (7, 1, 3), identity shortcut (3, 1, 1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Residual(4), Residual(4))
    result = theoretical_rf(model, 32)
    assert rf(result) == sq(11, 1, 5)
    assert result.module == "2"
    assert rf(theoretical_rf(model, 32, layer="1")) == sq(7, 1, 3)


def test_concatenation_takes_the_union_per_axis() -> None:
    # stem 5x5: (5, 1, 2); branches: 1x1 (5, 2), 3x3 (7, 3), 1x7 (5, 2) x (11, 5), pool+1x1 (7, 3)
    assert rf(theoretical_rf(Inception(), 32)) == ((7, 11), (1, 1), (3, 5))


def test_functional_ops_slicing_and_padding() -> None:
    result = theoretical_rf(Functional(), 32)
    assert rf(result) == sq(16, 4, 7)
    assert result.shape == (8, 8)
    assert result.module is None


def test_channels_last_block() -> None:
    result = theoretical_rf(ConvNeXtBlock(), 64)
    assert rf(result) == sq(28, 4, 12)
    assert result.at("norm").axes == (1, 2)
    assert rf(theoretical_rf(ConvNeXtBlock(), 64, layer="dw")) == sq(28, 4, 12)


def test_crop_keeps_alignment() -> None:
    result = theoretical_rf(CropResidual(), 32)
    assert rf(result) == sq(5, 1, 0)
    assert result.shape == (28, 28)


def test_channels_last_padding() -> None:
    assert rf(theoretical_rf(ChannelsLastPad(), 32)) == ((5, 5), (2, 2), (3, 1))


def test_functions_hidden_from_fx_are_read_by_the_hook_frontend() -> None:
    result = theoretical_rf(Wrapped(), 32)
    assert (rf(result), result.method) == (sq(7, 2, 2), "hooks")
    with pytest.raises(NotImplementedError, match="smooth is wrapped with torch"):
        theoretical_rf(Wrapped(), 32, method="fx")


def test_squeeze_excitation_is_flagged_not_counted() -> None:
    result = theoretical_rf(SqueezeExcite(), 32)
    assert rf(result) == sq(3, 1, 1)
    assert result.global_context
    assert not result.at("conv").global_context


def test_replicating_adaptive_pool_is_not_a_feature_map() -> None:
    # 32 -> 16 -> 8 -> 4 -> 2 -> 1, then the adaptive pool replicates the single unit onto 3x3 (jump 0)
    model = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, 3, 2, 1) for i in range(5)], nn.AdaptiveAvgPool2d(3))
    result = theoretical_rf(model, 32)
    assert result.module == "3"
    assert result.shape == (2, 2)
    assert result.at("5").stride == (0, 0)


def test_undefined_fields_are_reported() -> None:
    irregular = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(3))  # 5 -> 3: unequal windows
    assert rf(theoretical_rf(irregular, 7)) == sq(3, 1, 0)
    with pytest.raises(ValueError, match="unequal"):
        theoretical_rf(irregular, 7, layer="1")
    upsampling = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Upsample(scale_factor=2), nn.Conv2d(4, 4, 3))
    assert theoretical_rf(upsampling, 16).module == "0"
    with pytest.raises(ValueError, match="Upsample"):
        theoretical_rf(upsampling, 16, layer="2")


def test_self_declared_windows() -> None:
    for method in ("fx", "hooks"):
        result = theoretical_rf(locally_connected((32, 32)), 32, method=method)
        assert rf(result) == sq(7, 2, 3)
        assert result.module == "2"


def test_unsupported_spatial_ops_raise() -> None:
    class Roll(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.roll(F.conv2d(x, torch.ones(1, 3, 3, 3)), 1, dims=-1)

    with pytest.raises(NotImplementedError, match="roll"):
        theoretical_rf(Roll(), 16)


def test_networks_without_spatial_maps_raise() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with pytest.raises(ValueError, match="no spatial feature map"):
        theoretical_rf(mlp, 8)


def test_hook_frontend_for_untraceable_models() -> None:
    result = theoretical_rf(Dynamic(), 32)  # conv (3, 1, 1), two 2x2 pools (6, 4, 1), conv (14, 4, 5)
    assert result.method == "hooks"
    assert rf(result) == sq(14, 4, 5)
    assert result.module == "conv2"
    with pytest.raises(Exception):  # noqa: B017 - whatever fx raises on shape-dependent control flow
        theoretical_rf(Dynamic(), 32, method="fx")


@pytest.mark.parametrize("model", [Functional(pool="avg"), ConvNeXtBlock(), Inception()], ids=type)
def test_hook_frontend_matches_fx(model: nn.Module) -> None:
    fx_result = theoretical_rf(model, 32)
    hooks = theoretical_rf(model, 32, method="hooks")
    assert (rf(hooks), hooks.shape) == (rf(fx_result), fx_result.shape)
    assert [rf_entry(e) for e in hooks.layers] == [rf_entry(e) for e in fx_result.layers]


def rf_entry(entry: object) -> tuple[object, ...]:
    return (entry.size, entry.stride, entry.padding, entry.shape)  # type: ignore[attr-defined]


def test_training_flags_are_restored() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout())
    model.train()
    model[2].eval()
    before = model[1].running_mean.clone()
    theoretical_rf(model, torch.Size([3, 16, 16]))
    assert [m.training for m in model.modules()] == [True, True, True, False]
    assert torch.equal(model[1].running_mean, before)


# ----------------------------------------------------------------------------------------------------
# Independent check by autograd


SMALL_MODELS = {
    "stack": lambda: conv_stack([1, 1, 1]),
    "dilated": lambda: conv_stack([1, 2, 4, 3]),
    "stride_pool": lambda: nn.Sequential(
        nn.Conv2d(3, 4, 3, 2, 1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(4, 4, 3, padding=1),
    ),
    "ceil_mode": lambda: nn.Sequential(nn.Conv2d(3, 4, 5, 2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(4, 4, 3)),
    "residual": lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Residual(4, 2), Residual(4), Residual(4, 2)),
    "inception": Inception,
    "functional": lambda: Functional(pool="avg", head=False),
    "channels_last": ConvNeXtBlock,
    "crop": CropResidual,
    "dynamic": Dynamic,
    "locally_connected": lambda: locally_connected((41, 37)),
    "channels_last_pad": ChannelsLastPad,
    "wrapped": Wrapped,
}


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_gradient_support_equals_trf(name: str) -> None:
    """Units of the output whose field lies inside the canvas have an input-gradient support (in the
    positive linear copy, float64) equal to that field: size, stride and padding, per axis."""
    torch.manual_seed(0)
    model = SMALL_MODELS[name]()
    canvas = (41, 37)
    result = theoretical_rf(model, canvas)
    copy = positive_linear_copy(model, torch.float64)
    x = torch.ones((1, 3, *canvas), dtype=torch.float64, requires_grad=True)
    out = copy(x)
    assert out.shape[-2:] == result.shape
    entry = result.at(result.layer)
    fits = [
        [
            u
            for u in range(result.shape[a])
            if entry.region((u, u))[a][0] >= 0 and entry.region((u, u))[a][1] < canvas[a]
        ]
        for a in (0, 1)
    ]
    assert len(fits[0]) >= 2
    assert len(fits[1]) >= 2
    unit_rows, unit_cols = ({f[0], f[1], f[len(f) // 2], f[-1]} for f in fits)  # first two, middle, last
    for i, j in ((i, j) for i in unit_rows for j in unit_cols):
        (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), x, retain_graph=True)
        nonzero = grad[0].sum(0) > 0
        rows = nonzero.any(1).nonzero().flatten()
        cols = nonzero.any(0).nonzero().flatten()
        assert (
            (rows.min().item(), rows.max().item()),
            (cols.min().item(), cols.max().item()),
        ) == entry.region((i, j))


def test_positive_linear_copy() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU6(),
        nn.MaxPool2d(2),
        nn.GroupNorm(2, 4),
        nn.AdaptiveMaxPool2d(2),
    )
    model.train()
    copy = positive_linear_copy(model, torch.float64)
    kinds = [type(m) for m in copy]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.Identity, nn.AvgPool2d, nn.Identity, nn.AdaptiveAvgPool2d]
    assert isinstance(model[2], nn.ReLU6)  # the original is untouched
    assert model.training
    assert not copy.training
    assert not any(p.requires_grad for p in copy.parameters())
    assert torch.all(copy[0].weight == 1 / 27)
    assert torch.all(copy[0].bias == 0)
    assert copy[0].weight.dtype == torch.float64
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    assert torch.all(copy(x) > 0)
