"""Reading a finished run back: its model (trained or at initialisation) and the study's test images."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnablate.config import with_neutral
from cnnablate.data import ArrayDataset, load_prepared
from cnnablate.loader import DeviceDataset
from cnnablate.models import build_model


@dataclass
class LoadedRun:
    """A run's model with the data it was trained on, ready for analyses."""

    model: nn.Module
    test: DeviceDataset
    arrays: ArrayDataset
    metrics: dict[str, Any]

    @property
    def autocast(self) -> torch.dtype | None:
        """The autocast dtype the run trained with (None: float32), for analyses that only run forward."""
        return torch.bfloat16 if self.metrics.get("precision") == "torch.bfloat16" else None


def build_for_dataset(spec: Mapping[str, Any], arrays: ArrayDataset, seed: int) -> nn.Module:
    """The variant's model exactly as training initialised it (same seed, same construction order)."""
    torch.manual_seed(seed)
    _, height, _, channels = arrays.x_train.shape
    return build_model(spec, arrays.num_classes, channels, height)


def load_run(run_dir: str | Path, dataset: str | Path, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild a trained run's model from metrics.json (spec, seed) and load model.pt safely."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    arrays = load_prepared(dataset)
    model = build_for_dataset(with_neutral("model", metrics["spec"]), arrays, metrics["seed"])
    model.load_state_dict(torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True))
    model = model.to(device).eval()
    train = DeviceDataset(arrays.x_train, arrays.y_train, torch.device(device))
    test = DeviceDataset(arrays.x_test, arrays.y_test, torch.device(device), train.mean, train.std)
    return LoadedRun(model, test, arrays, metrics)
