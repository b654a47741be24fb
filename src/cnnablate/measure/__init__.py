"""Measurements of a model: parameters, multiply-accumulates, theoretical and effective receptive fields.

Everything runs on CPU (or a given device), in eval mode, deterministically; results have ``to_dict``
methods for JSON. :func:`measure_model` bundles them for the CLI and the workflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnablate.measure.erf import AREA_THRESHOLDS, ERFResult, effective_rf
from cnnablate.measure.macs import InputSize, InputSizeError, count_flops, count_macs, input_shape
from cnnablate.measure.params import count_params
from cnnablate.measure.receptive_field import (
    NoSpatialMapError,
    RFLayer,
    RFResult,
    positive_linear_copy,
    theoretical_rf,
)

__all__ = [
    "AREA_THRESHOLDS",
    "ERFResult",
    "InputSizeError",
    "NoSpatialMapError",
    "RFLayer",
    "RFResult",
    "count_flops",
    "count_macs",
    "count_params",
    "effective_rf",
    "input_shape",
    "measure_model",
    "positive_linear_copy",
    "theoretical_rf",
]


def measure_model(
    model: nn.Module,
    input_size: InputSize,
    erf: bool = False,
    images: torch.Tensor | None = None,
    *,
    layer: str | None = None,
    n_random: int = 16,
    seed: int = 0,
    erf_map_path: str | Path | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """All measurements of ``model`` at ``input_size`` as one JSON-ready dict.

    Keys: ``input_size`` ([C, H, W]), ``params``, ``macs``, ``flops`` (= 2 x macs), ``trf``
    (:meth:`RFResult.to_dict`) and ``erf`` (:meth:`ERFResult.to_dict`, or ``None`` unless ``erf``).
    ``trf`` and ``erf`` are ``None`` for a model without a spatial feature map (an MLP on the pixels).
    A model that fails on an input of ``input_size`` raises :class:`InputSizeError` before anything else runs.
    The ERF uses ``images`` if given (real test images for a trained model), else ``n_random`` random
    inputs of ``input_size`` seeded by ``seed``; it is measured at ``layer`` (default: the last spatial
    feature map, the TRF's layer). ``erf_map_path`` saves the normalised ERF map with ``np.save`` and is
    recorded as ``erf["map_path"]``.
    """
    shape = input_shape(input_size)
    flops = count_flops(model, shape, device)
    result: dict[str, Any] = {
        "input_size": list(shape),
        "params": count_params(model),
        "macs": flops // 2,
        "flops": flops,
        "trf": None,
        "erf": None,
    }
    try:
        result["trf"] = theoretical_rf(model, shape, layer, device=device).to_dict()
    except NoSpatialMapError:
        return result
    if erf:
        measured = effective_rf(
            model,
            images,
            None if images is not None else shape,
            layer,
            n_random=n_random,
            seed=seed,
            device=device,
        )
        result["erf"] = measured.to_dict()
        if erf_map_path is not None:
            np.save(erf_map_path, measured.map)
            result["erf"]["map_path"] = str(erf_map_path)
    return result
