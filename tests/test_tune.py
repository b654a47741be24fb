"""Learning-rate selection on the validation split with the final run's own loop, the search past the grid's
edges, and adaptive gradient clipping for norm-free networks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnablate.agc import adaptive_clip_grad_
from cnnablate.config import Study, validate_config
from cnnablate.data import make_synthetic, split_validation
from cnnablate.train import train
from cnnablate.tune import GridPoint, next_rate_past_edge, select_lr, try_learning_rate, tune_variant
from cnnablate.vocabulary import accuracy_past_chance
from conftest import tiny_config
from test_train import make_job


def point(lr: float, acc: float | None, loss: float | None = 1.0, diverged: bool = False) -> GridPoint:
    return GridPoint(lr, acc, loss, [] if acc is None else [acc], diverged)


def test_selection_picks_the_best_validation_accuracy() -> None:
    grid = [point(0.01, 0.40), point(0.03, 0.72), point(0.1, 0.65), point(0.3, None, None, diverged=True)]
    assert select_lr(grid).lr == 0.03


def test_selection_breaks_ties_by_validation_loss_then_by_the_smaller_rate() -> None:
    assert select_lr([point(0.01, 0.5, 0.9), point(0.1, 0.5, 0.7)]).lr == 0.1
    assert select_lr([point(0.1, 0.5, 0.7), point(0.01, 0.5, 0.7)]).lr == 0.01


def test_a_diverged_point_never_wins() -> None:
    assert select_lr([point(1.0, None, None, diverged=True), point(0.01, 0.1, 2.3)]).lr == 0.01


def _tune_setup(tmp_path):
    config = validate_config(tiny_config(tune={"lrs": [0.01, 0.1], "max_steps": 3, "train_subset": 0.5, "extend": 0}))
    dataset = tmp_path / "data.npz"
    split_validation(make_synthetic(256, 64, contrast=1.0, seed=0), 0.25, seed=0).save(dataset)
    spec = Study.from_config(config).variants["base"].spec
    return config, spec, dataset


def test_tuning_never_reads_the_test_split(tmp_path, monkeypatch) -> None:
    config, spec, dataset = _tune_setup(tmp_path)
    read: list[str] = []
    original = np.lib.npyio.NpzFile.__getitem__

    def spy(self, key):  # type: ignore[no-untyped-def]
        read.append(key)
        return original(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", spy)
    result = tune_variant(
        "base", spec, config["train"], config["tune"], dataset, tmp_path / "t.json", tmp_path / "r.pt"
    )
    assert {"x_train", "x_val", "y_val"} <= set(read), "the guard must see the splits tuning does read"
    assert not [key for key in read if "test" in key], f"tuning read the test split: {read}"
    assert result["chosen_lr"] in (0.01, 0.1)
    assert len(result["grid"]) == 2
    assert result["validation_images"] == 64
    assert result["tuning_images"] == 96
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved == result
    assert not (tmp_path / "r.pt").exists()


def test_an_interrupted_sweep_keeps_its_finished_learning_rates(tmp_path, monkeypatch) -> None:
    import cnnablate.tune as tuning

    config, spec, dataset = _tune_setup(tmp_path)
    original, tried = tuning.try_learning_rate, []

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        tried.append((args[-1], kwargs["budget"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(tuning, "try_learning_rate", recording)
    reference = tune_variant(
        "base", spec, config["train"], config["tune"], dataset, tmp_path / "a.json", tmp_path / "a.pt"
    )
    reference_points, tried[:] = list(tried), []

    def fail_on_second(*args, **kwargs):  # type: ignore[no-untyped-def]
        tried.append((args[-1], kwargs["budget"]))
        if len(tried) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(tuning, "try_learning_rate", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        tune_variant("base", spec, config["train"], config["tune"], dataset, tmp_path / "b.json", tmp_path / "b.pt")
    tried[:] = []
    monkeypatch.setattr(tuning, "try_learning_rate", recording)
    resumed = tune_variant(
        "base", spec, config["train"], config["tune"], dataset, tmp_path / "b.json", tmp_path / "b.pt"
    )
    assert tried == reference_points[1:], "only the unfinished points are trained again"
    assert resumed["grid"] == reference["grid"]
    assert resumed["chosen_lr"] == reference["chosen_lr"]


def test_no_rate_is_chosen_before_it_learned_the_budget_doubles_instead(tmp_path, monkeypatch) -> None:
    """At 150 steps both rates are at chance (noise decides their order); the search trains both on to 300 and
    chooses among the rates that learned, not the one that was luckier at chance."""
    import cnnablate.tune as tuning

    config, spec, dataset = _tune_setup(tmp_path)
    accuracy = {(0.01, 150): 0.14, (0.1, 150): 0.11, (0.01, 300): 0.30, (0.1, 300): 0.80}
    tried: list[tuple[float, int]] = []

    def fake(spec, arrays, recipe, tune, lr, extended=False, budget=None, live=None):  # type: ignore[no-untyped-def]
        tried.append((lr, budget))
        acc = accuracy[(lr, budget)]
        learned = acc >= accuracy_past_chance(0.1, tune["learned"])
        return GridPoint(lr, acc, 1.0, [acc], False, learned, budget, "budget", extended, learned, budget)

    monkeypatch.setattr(tuning, "try_learning_rate", fake)
    tune = {**config["tune"], "max_steps": 150, "extend": 0, "learned": 0.25}
    recipe = {**config["train"], "max_steps": 1000}
    result = tune_variant("base", spec, recipe, tune, dataset, tmp_path / "t.json", tmp_path / "r.pt")
    assert tried == [(0.01, 150), (0.1, 150), (0.01, 300), (0.1, 300)]
    assert result["chosen_lr"] == 0.1  # 0.01 would have won at 150 steps, on noise
    assert result["budgets"] == [150, 300]
    assert result["trained"]
    assert [p["learned"] for p in result["grid"]] == [False, True]  # 30% < 32.5%: 0.01 had not learned


def test_a_variant_with_no_learning_rate_that_learned_by_the_cap_did_not_train(tmp_path, monkeypatch) -> None:
    import cnnablate.tune as tuning

    config, spec, dataset = _tune_setup(tmp_path)
    budgets: list[int] = []

    def fake(spec, arrays, recipe, tune, lr, extended=False, budget=None, live=None):  # type: ignore[no-untyped-def]
        budgets.append(budget)
        return GridPoint(lr, 0.1, 2.3, [0.1], False, False, budget, "budget", extended, False, budget)

    monkeypatch.setattr(tuning, "try_learning_rate", fake)
    tune = {**config["tune"], "max_steps": 100, "extend": 0}
    result = tune_variant(
        "base", spec, {**config["train"], "max_steps": 300}, tune, dataset, tmp_path / "t.json", tmp_path / "r.pt"
    )
    assert sorted(set(budgets)) == [100, 200, 300]  # doubled, then capped at the final run's cap
    assert not result["trained"]


def test_agc_clips_each_unit_as_the_nfnet_formula_says() -> None:
    # Brock et al. 2021, eq. 3: G_i <- lambda * max(||W_i||, eps) / ||G_i|| * G_i when the ratio exceeds lambda.
    weight = nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]))  # unit norms 5, 0 (-> eps), 1
    weight.grad = torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.001, 0.0]])  # gradient norms 1, 0.5, 0.001
    adaptive_clip_grad_([weight], clipping=0.1)
    # unit 0: 1 / 5 = 0.2 > 0.1 -> scaled to norm 0.1 * 5 = 0.5; unit 1: 0.5 / 1e-3 > 0.1 -> norm 0.1 * 1e-3;
    # unit 2: 0.001 / 1 = 0.001 <= 0.1 -> unchanged.
    expected = torch.tensor([[0.3, 0.4], [0.3 * 1e-4 / 0.5, 0.4 * 1e-4 / 0.5], [0.001, 0.0]])
    assert torch.allclose(weight.grad, expected, rtol=1e-5, atol=1e-9)
    assert math.isclose(float(weight.grad[0].norm()), 0.5, rel_tol=1e-6)


def test_agc_clips_convolution_filters_one_output_channel_at_a_time() -> None:
    weight = nn.Parameter(torch.ones(2, 3, 3, 3))  # each filter has norm sqrt(27)
    weight.grad = torch.stack([torch.full((3, 3, 3), 10.0), torch.full((3, 3, 3), 1e-4)])
    adaptive_clip_grad_([weight], clipping=0.01)
    assert math.isclose(float(weight.grad[0].norm()), 0.01 * math.sqrt(27), rel_tol=1e-5)  # clipped
    assert torch.equal(weight.grad[1], torch.full((3, 3, 3), 1e-4))  # ratio 1e-4 * sqrt(27) / sqrt(27) < 0.01


def test_an_nf_network_trains_with_agc(tmp_path) -> None:
    from cnnablate.devices import choose_device
    from cnnablate.train import prepare_fit, run_to_convergence

    config = validate_config(tiny_config(ablations={"norm": {"norm": ["nf"]}}))
    arrays = split_validation(make_synthetic(256, 64, contrast=1.0, seed=0), 0.25, seed=0)
    fit = prepare_fit(
        Study.from_config(config).variants["norm-nf"].spec,
        arrays,
        0,
        config["train"],
        0.05,
        choose_device("fp32", "off", 1, force_cpu=True),
        max_steps=3,
    )
    progress = run_to_convergence(fit, fit.new_progress())
    assert not progress.diverged
    assert progress.step == 3
    assert math.isfinite(progress.history[-1]["train_loss"])
    assert math.isfinite(progress.history[-1]["val_loss"])


def test_tuning_runs_the_final_runs_loop_so_the_same_budget_gives_the_same_validation_accuracy(tmp_path) -> None:
    job = make_job(tmp_path, "final", max_steps=9, patience=3, min_steps=0)
    final = train(job)
    from cnnablate.data import load_prepared

    tune = {"seed": job.seed, "max_steps": 9, "learned": 0.25}
    tuned = try_learning_rate(job.spec, load_prepared(job.dataset, test=False), job.recipe, tune, job.peak_lr)
    assert tuned.val_acc == final["val_acc"]
    assert tuned.steps == final["steps"]
    assert tuned.stop_reason == final["stop_reason"]
    assert tuned.trained == final["trained"]


def test_the_search_steps_past_the_edge_holding_the_best_rate_within_its_bounds() -> None:
    tune = {"extend": 2, "lr_range": [1e-4, 4.0]}
    assert next_rate_past_edge([point(0.01, 0.4), point(0.1, 0.6)], tune) == pytest.approx(1.0)
    assert next_rate_past_edge([point(0.01, 0.6), point(0.1, 0.4)], tune) == pytest.approx(0.001)
    assert next_rate_past_edge([point(0.01, 0.4), point(0.03, 0.7), point(0.1, 0.6)], tune) is None
    assert next_rate_past_edge([point(1.0, 0.4), point(3.0, 0.6)], tune) is None  # 3.0 -> 9.0 > 4.0
    extended = GridPoint(1.0, 0.7, 1.0, [0.7], False, extended=True)
    assert next_rate_past_edge([point(0.01, 0.4), point(0.1, 0.6), extended], {**tune, "extend": 1}) is None


def test_tuning_extends_the_grid_while_the_best_rate_sits_at_its_edge(tmp_path, monkeypatch) -> None:
    import cnnablate.tune as tuning

    config, spec, dataset = _tune_setup(tmp_path)
    accuracy = {0.01: 0.2, 0.1: 0.5, 1.0: 0.6, 10.0: 0.1}
    tried: list[tuple[float, bool]] = []

    def fake(spec, arrays, recipe, tune, lr, extended=False, budget=None, live=None):  # type: ignore[no-untyped-def]
        tried.append((lr, extended))
        return GridPoint(lr, accuracy[lr], 1.0, [accuracy[lr]], False, True, 3, "cap", extended, True, budget)

    monkeypatch.setattr(tuning, "try_learning_rate", fake)
    tune = {**config["tune"], "extend": 2, "lr_range": [1e-4, 20.0]}
    result = tune_variant("base", spec, config["train"], tune, dataset, tmp_path / "t.json", tmp_path / "r.pt")
    assert tried == [(0.01, False), (0.1, False), (1.0, True), (10.0, True)]
    assert result["chosen_lr"] == 1.0
    assert [p["lr"] for p in result["grid"]] == [0.01, 0.1, 1.0, 10.0]
    assert [p["extended"] for p in result["grid"]] == [False, False, True, True]
