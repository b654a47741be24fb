"""Effective receptive fields: exact values for linear stacks, canvas, normalisation, summaries, JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnablate.measure import AREA_THRESHOLDS, effective_rf, measure_model, positive_linear_copy
from cnnablate.measure.erf import area_ratios


def uniform_stack(n: int, k: int) -> nn.Sequential:
    """n single-channel k x k convolutions with weights 1/k^2: the ERF is the n-fold box convolution."""
    convs = [nn.Conv2d(1, 1, k, bias=False) for _ in range(n)]
    for conv in convs:
        nn.init.constant_(conv.weight, 1.0 / k**2)
    return nn.Sequential(*convs).double()


def dilated_stack() -> nn.Sequential:
    """3x3 convs with dilations 1, 2, 4, 8, 7 and 'same' padding: TRF 1 + 2 * 22 = 45."""
    layers: list[nn.Module] = []
    for i, d in enumerate([1, 2, 4, 8, 7]):
        layers += [nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=d, dilation=d), nn.ReLU()]
    return nn.Sequential(*layers)


@pytest.mark.parametrize(("n", "k"), [(1, 3), (2, 3), (5, 3), (3, 5), (2, 7), (4, 5)])
def test_std_of_uniform_stack_is_exact(n: int, k: int) -> None:
    result = effective_rf(uniform_stack(n, k), input_size=(1, 40, 40), n_random=1)
    expected = math.sqrt(n * (k**2 - 1) / 12)
    assert result.std == pytest.approx((expected, expected), rel=1e-6)
    assert result.trf.size == (n * (k - 1) + 1,) * 2
    assert result.map.shape == result.trf.size
    assert result.erf_size == pytest.approx((math.sqrt(n * (k**2 - 1) + 1),) * 2, rel=1e-6)


def test_flat_field_summaries() -> None:
    result = effective_rf(uniform_stack(1, 5), input_size=(1, 9, 9), n_random=1)
    np.testing.assert_allclose(result.map, np.full((5, 5), 1 / 25))
    assert result.erf_trf_ratio == pytest.approx(1.0)  # a flat ERF is as wide as its TRF
    assert result.radius95 == 2
    # RepLKNet's squares start at 3x3 (9/25 of the map) and need strictly more than t of the total
    assert result.area_ratio == pytest.approx({0.2: 0.36, 0.3: 0.36, 0.5: 1.0, 0.99: 1.0})


def _replknet_get_rectangle(data: np.ndarray, thresh: float) -> float | None:
    """RepLKNet's erf/analyze_erf.py get_rectangle, as published, as the oracle."""
    h, w = data.shape
    all_sum = np.sum(data)
    for i in range(1, h // 2):
        selected = data[h // 2 - i : h // 2 + 1 + i, w // 2 - i : w // 2 + 1 + i]
        if np.sum(selected) / all_sum > thresh:
            return (i * 2 + 1) / h * (i * 2 + 1) / w
    return None


def test_area_ratios_in_a_common_frame_follow_replknet() -> None:
    rng = np.random.default_rng(0)
    raw = np.exp(-((np.arange(21) - 10) ** 2) / 20.0)[:, None] * np.exp(-((np.arange(21) - 10) ** 2) / 30.0) * 50
    raw += rng.uniform(0, 0.1, raw.shape)
    ratios = area_ratios(raw, 40)
    framed = np.zeros((40, 40))
    framed[10:31, 10:31] = raw
    data = np.log10(framed + 1)
    data /= data.max()
    for t, ratio in ratios.items():
        assert ratio == pytest.approx(_replknet_get_rectangle(data, t))
    delta = np.zeros((5, 5))
    delta[2, 2] = 7.0
    assert area_ratios(delta, 30) == {t: 9 / 900 for t in (0.2, 0.3, 0.5, 0.99)}
    with pytest.raises(ValueError, match="frame 4 is smaller"):
        area_ratios(delta, 4)


def test_random_inputs_are_seeded() -> None:
    torch.manual_seed(0)
    model = dilated_stack()
    a = effective_rf(model, input_size=48, n_random=3, seed=1)
    b = effective_rf(model, input_size=48, n_random=3, seed=1)
    c = effective_rf(model, input_size=48, n_random=3, seed=2)
    assert (a.source, a.n_images, a.seed) == ("random", 3, 1)
    np.testing.assert_array_equal(a.map, b.map)
    assert not np.array_equal(a.map, c.map)


def test_images_are_used_and_zero_padded_centrally() -> None:
    squaring = nn.Sequential()
    squaring.add_module("square", Square())
    squaring.add_module("body", positive_linear_copy(dilated_stack()))
    images = torch.ones((2, 3, 32, 32))
    result = effective_rf(squaring, images=images)
    assert (result.source, result.n_images, result.image_size) == ("images", 2, (32, 32))
    assert result.canvas[0] >= 45
    assert not result.truncated
    # d(x^2)/dx = 2x vanishes on the zero padding: the non-zero part of the map is the image, centred
    rows = np.flatnonzero(result.map.any(axis=1))
    assert len(rows) == 32
    assert abs(rows.mean() - (result.map.shape[0] - 1) / 2) <= 1


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def test_canvas_is_enlarged_when_the_trf_exceeds_the_image() -> None:
    model = positive_linear_copy(dilated_stack())
    result = effective_rf(model, input_size=32, n_random=2)
    assert result.trf.size == (45, 45)
    assert min(result.canvas) >= 45
    assert not result.truncated
    support = result.map > 0
    assert support.any(axis=1).all()  # not cut: spans the whole TRF
    assert support.any(axis=0).all()
    cut = effective_rf(model, input_size=32, n_random=2, canvas=32)
    assert cut.truncated
    assert not (cut.map > 0).any(axis=1).all()
    with pytest.raises(ValueError, match="smaller"):
        effective_rf(model, input_size=32, canvas=16)


class FixedSize(nn.Module):
    """Runs only at 16x16 (like a locally connected layer): the ERF falls back to the image."""

    def __init__(self) -> None:
        super().__init__()
        self.body = dilated_stack()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (16, 16):
            raise RuntimeError("this model only runs at 16x16")
        return self.body(x)


def test_models_bound_to_their_input_size_are_measured_on_the_image() -> None:
    result = effective_rf(FixedSize(), input_size=16, n_random=2)
    assert result.canvas == (16, 16)
    assert result.truncated
    assert result.map.shape == (45, 45)
    assert result.map.sum() == pytest.approx(1.0)


def test_a_locally_connected_network_whose_field_exceeds_its_image_is_measured_on_the_image() -> None:
    """The demo's arch-local on 24x24 digits: its last map's field (32 px) exceeds the image, and a larger canvas
    gives the same 6x6 map, so no canvas can hold the field; it is measured on the image, flagged truncated."""
    from cnnablate.config import Study, validate_config
    from cnnablate.models import build_model

    base = {"arch": "local", "widths": [2, 2, 2], "blocks_per_stage": 2, "fc_hidden": [8]}
    config = validate_config({"study": "s", "data": {"dataset": "digits"}, "train": {}, "seeds": [0], "base": base})
    model = build_model(Study.from_config(config).variants["base"].spec, 10, 3, 24).eval()
    result = effective_rf(model, input_size=(3, 24, 24), n_random=2, batch_size=2)
    assert result.canvas == (24, 24)
    assert result.truncated
    assert result.map.sum() == pytest.approx(1.0)


def test_map_is_normalised_centred_and_summaries_are_consistent() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
    )
    model.train()
    before = model[1].running_mean.clone()
    result = effective_rf(model, input_size=24, n_random=4)
    assert model.training  # measured in eval mode, restored
    assert torch.equal(model[1].running_mean, before)
    assert result.map.dtype == np.float64
    assert result.map.min() >= 0
    assert result.map.sum() == pytest.approx(1.0, abs=1e-12)
    assert result.map.shape == result.trf.size == (7, 7)
    assert result.unit == (6, 6)  # centre of the 12x12 map
    rows, cols = np.indices(result.map.shape)
    centre = (result.map.shape[0] - 1) / 2
    assert abs((result.map * rows).sum() - centre) < 1.5
    assert abs((result.map * cols).sum() - centre) < 1.5
    ratios = [result.area_ratio[t] for t in AREA_THRESHOLDS]
    assert ratios == sorted(ratios)
    assert ratios[0] > 0
    assert ratios[-1] <= 1
    assert 0 <= result.radius95 <= 3
    assert result.std_mean == pytest.approx(sum(result.std) / 2)
    assert result.erf_trf_ratio == pytest.approx(np.mean([result.erf_size[a] / 7 for a in (0, 1)]))


def test_layer_selection_and_json() -> None:
    torch.manual_seed(0)
    model = dilated_stack()
    result = effective_rf(model, input_size=32, layer="2", n_random=2)
    assert result.trf.size == (7, 7)
    assert result.trf.modules == ("2",)
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["layer"] == result.layer
    assert "map" not in summary
    assert set(summary["area_ratio"]) == {str(t) for t in AREA_THRESHOLDS}


def test_measure_model(tmp_path: object) -> None:
    torch.manual_seed(0)
    model = dilated_stack()
    path = tmp_path / "erf.npy"  # type: ignore[operator]
    result = measure_model(model, 32, erf=True, n_random=2, erf_map_path=path)
    json.dumps(result)
    assert result["params"] == sum(p.numel() for p in model.parameters())
    assert result["flops"] == 2 * result["macs"] > 0
    assert result["trf"]["size"] == [45, 45]
    assert result["erf"]["canvas"][0] >= 45
    assert result["erf"]["map_path"] == str(path)
    assert np.load(path).shape == (45, 45)
    assert measure_model(model, 32)["erf"] is None
