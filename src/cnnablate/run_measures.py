"""The measure rule's work for one run: cost, receptive fields and first-layer filters, before and after training.

It runs where the run was opened (a GPU slot, else the CPU): the ERF's images go through the model in one batch
on a GPU, in small batches on a CPU (``ERF_BATCH``). ERFs are input gradients measured in float32 (TF32 on CUDA),
whatever precision the run trained in: a measurement, not a prediction, and a few dozen images.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnablate.filters import edge_match_score, first_conv_weight
from cnnablate.measure import ERFResult, count_macs, count_params, effective_rf, theoretical_rf
from cnnablate.models import block_outputs
from cnnablate.runs import LoadedRun, build_for_dataset
from cnnablate.train import kill_point

log = logging.getLogger(__name__)

# Images per backward pass: all of them at once on a GPU; on a CPU small batches, as the canvas may be several
# times the image.
ERF_BATCH = {"cpu": 16, "cuda": 1024}


def _erf_or_none(model: torch.nn.Module, **kwargs: Any) -> ERFResult | None:
    """The ERF, or None where it is undefined: the input gradient is zero everywhere (every unit dead)."""
    device = next(model.parameters()).device
    try:
        return effective_rf(model, batch_size=ERF_BATCH.get(device.type, ERF_BATCH["cpu"]), **kwargs)
    except RuntimeError as exc:
        if "zero everywhere" not in str(exc):
            raise
        log.warning("no ERF: %s", exc)
        return None


def _rf_summary(
    model: torch.nn.Module,
    input_size: tuple[int, int, int],
    images: torch.Tensor | None,
    erf_canvas: int | None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """TRF and ERF of the last spatial feature map; (None, None) for networks without one (fc)."""
    try:
        trf = theoretical_rf(model, input_size)
    except ValueError as exc:  # no spatial feature map: the MLP
        log.info("no receptive field: %s", exc)
        return {"trf": None, "erf": None}, None
    erf = _erf_or_none(model, images=images, input_size=input_size, canvas=erf_canvas)
    return {"trf": trf.to_dict(), "erf": erf.to_dict() if erf else None}, erf.map if erf else None


def erf_by_depth(
    trained: torch.nn.Module | None,
    initial: torch.nn.Module,
    input_size: tuple[int, int, int],
    images: torch.Tensor,
    erf_canvas: int | None,
) -> list[dict[str, Any]]:
    """TRF and ERF after every block (depth 1, 2, ...), trained (unless None) and at initialisation."""
    rows = []
    for depth, layer in enumerate(block_outputs(initial), start=1):
        trf = theoretical_rf(initial, input_size, layer=layer)
        row: dict[str, Any] = {"depth": depth, "layer": layer, "trf_size": trf.size[0]}
        stages = [("trained", trained, images), ("init", initial, None)] if trained else [("init", initial, None)]
        for stage, model, inputs in stages:
            erf = _erf_or_none(model, images=inputs, input_size=input_size, layer=layer, canvas=erf_canvas)
            row[f"erf_std_{stage}"] = erf.std_mean if erf else None
            row[f"erf_trf_ratio_{stage}"] = erf.erf_trf_ratio if erf else None
        rows.append(row)
    return rows


def measure_run(
    trained: LoadedRun,
    outputs: Mapping[str, str],
    erf_images: int,
    erf_canvas: int | None,
) -> dict[str, Any]:
    """Write measures.json, the ERF maps (init, trained) and their figure for one finished run, on the device the
    run was opened on (``load_run(..., device)``)."""
    device = trained.test.device
    initial_model = build_for_dataset(trained.metrics["spec"], trained.arrays, trained.metrics["seed"])
    initial_model = initial_model.to(device).eval()
    input_size = tuple(trained.test.images.shape[1:])
    images = trained.test.normalize(trained.test.images[:erf_images])
    result: dict[str, Any] = {
        "params": count_params(trained.model),
        "macs": count_macs(trained.model, input_size),
    }
    result["flops"] = 2 * result["macs"]
    # A diverged run's weights are NaN: its trained ERF and filters are undefined, its geometry is not.
    usable = not trained.metrics.get("diverged")
    at_init, map_init = _rf_summary(initial_model, input_size, None, erf_canvas)
    after, map_trained = (
        _rf_summary(trained.model, input_size, images, erf_canvas)
        if usable
        else ({"trf": at_init["trf"], "erf": None}, None)
    )
    result["trf"] = after["trf"]
    result["erf_by_depth"] = erf_by_depth(
        trained.model if usable else None, initial_model, input_size, images, erf_canvas
    )
    result["erf_init"] = at_init["erf"]
    result["erf"] = after["erf"]
    if after["erf"] and at_init["erf"]:
        result["erf_growth"] = after["erf"]["std_mean"] / at_init["erf"]["std_mean"]
    weights_init, weights_trained = first_conv_weight(initial_model), first_conv_weight(trained.model)
    result["edge_match_init"] = edge_match_score(weights_init) if weights_init is not None else None
    result["edge_match_trained"] = edge_match_score(weights_trained) if weights_trained is not None and usable else None
    empty = np.zeros((1, 1))
    np.save(outputs["erf_init"], map_init if map_init is not None else empty)
    np.save(outputs["erf_trained"], map_trained if map_trained is not None else empty)
    from cnnablate.heatmaps import erf_pair_figure

    erf_pair_figure(map_init, map_trained, trained.metrics["variant"], outputs["figure"])
    kill_point("measure")
    Path(outputs["measures"]).write_text(json.dumps(result, indent=2) + "\n")
    return result
