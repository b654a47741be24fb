"""Receptive-field laws: the fits, RepLKNet's area ratios and the study table, on cases with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cnnablate.config import Study, load_config, validate_config
from cnnablate.measure import effective_rf
from cnnablate.power_law import PowerLaw, depth_exponents, fit_power_law
from cnnablate.rf_laws import LawSettings, conv_stack, study_rf_laws, training_sentence
from conftest import ROOT, tiny_config

SMALL = LawSettings(depths=(2, 4, 8), channels=4, draws=1, images=4, kernel_sizes=(3, 7, 11), kernel_depth=2, frame=48)


def test_uniform_stack_erf_grows_exactly_like_sqrt_n() -> None:
    depths = [2, 4, 8, 16]
    stds = [
        effective_rf(conv_stack(n, 3, 1, "uniform", False, 0), input_size=(1, 16, 16), n_random=1).std_mean
        for n in depths
    ]
    # n-fold convolution of a 3-box: variance n (3^2 - 1) / 12 per axis, exactly.
    np.testing.assert_allclose(stds, [math.sqrt(n * 8 / 12) for n in depths], rtol=1e-6)  # float32
    fit = fit_power_law(depths, stds)
    assert abs(fit.exponent - 0.5) < 1e-3
    assert fit.verdict(0.5, 1e-3) == "agrees"


def test_power_law_fit_and_its_interval() -> None:
    x = np.array([1.0, 2.0, 4.0, 8.0])
    exact = fit_power_law(x, 3.0 * x**0.7)
    assert exact.exponent == pytest.approx(0.7)
    assert exact.prefactor == pytest.approx(3.0)
    assert exact.high - exact.low == pytest.approx(0.0, abs=1e-9)
    # By hand: log y = log x * 0.5 + noise (+e, -e, -e, +e) on log2-spaced x.
    noise = np.array([0.1, -0.1, -0.1, 0.1])
    fit = fit_power_law(x, x**0.5 * np.exp(noise))
    lx = np.log(x)
    residuals = np.log(x**0.5 * np.exp(noise)) - (fit.exponent * lx + math.log(fit.prefactor))
    stderr = math.sqrt((residuals**2).sum() / 2 / ((lx - lx.mean()) ** 2).sum())
    half = 4.302652729911275 * stderr  # t(0.975, 2 dof)
    assert fit.low == pytest.approx(fit.exponent - half)
    assert fit.high == pytest.approx(fit.exponent + half)
    assert fit.verdict(0.5) == "agrees"
    assert PowerLaw(0.58, 0.55, 0.61, 1.0, 5).verdict(0.5) == "close"
    assert PowerLaw(0.8, 0.75, 0.85, 1.0, 5).verdict(0.5) == "differs"
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1, 2], [1, 2])


def test_depth_exponents_of_one_run() -> None:
    rows = [{"depth": d, "erf_std_init": 2.0 * d**0.5, "erf_std_trained": 1.5 * d**0.25} for d in (1, 2, 3, 4)]
    result = depth_exponents(rows)
    assert result["alpha_init"] == pytest.approx(0.5)
    assert result["alpha_trained"] == pytest.approx(0.25)
    assert depth_exponents(rows[:2]) == dict.fromkeys(
        ["alpha_init", "alpha_init_low", "alpha_init_high", "alpha_trained", "alpha_trained_low", "alpha_trained_high"]
    )


def test_training_sentence_states_the_direction_and_the_pattern() -> None:
    row = {"variant": "base", "erf_std_init": 5.0, "erf_std_trained": 4.0, "growth": 0.8}
    shrank = pd.DataFrame([{**row, "growth_low": 0.7, "growth_high": 0.9}])
    text = training_sentence(shrank, "synthetic", 5)
    assert "training shrank base's ERF std: 5.00 -> 4.00 px (x0.80)" in text
    assert "shrank in 1 and did not change in 0" in text
    assert "5x5 pattern" in text
    assert "1.41 px" in text
    unchanged = pd.DataFrame([{**row, "growth": 0.97, "growth_low": 0.94, "growth_high": 1.01}])
    assert "training did not change base's ERF std" in training_sentence(unchanged, "synthetic", 5)
    grew = pd.DataFrame([{**row, "growth": 1.2, "growth_low": math.nan, "growth_high": math.nan}])
    text = training_sentence(grew, "cifar10", None)
    assert "training grew" in text
    assert "(one seed: no interval)" in text
    assert "pattern" not in text


def _fake_run(directory: Path, variant: str, seed: int, spec: dict, acc: float, growth: float) -> Path:
    run = directory / variant / f"seed{seed}"
    run.mkdir(parents=True)
    metrics = {"variant": variant, "seed": seed, "spec": spec, "test_acc": acc, "diverged": False}
    by_depth = [{"depth": d, "erf_std_init": d**0.5, "erf_std_trained": growth * d**0.5} for d in (1, 2, 3)]
    measures = {"erf": {"std_mean": 2.0 * growth}, "erf_init": {"std_mean": 2.0}, "erf_by_depth": by_depth}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "measures.json").write_text(json.dumps(measures))
    return run


def test_study_table_figures_and_verdicts(tmp_path: Path) -> None:
    config = validate_config(tiny_config())
    base = config["base"]
    runs = [_fake_run(tmp_path, "base", seed, base, 0.6 + 0.01 * seed, 0.8 + 0.02 * seed) for seed in (0, 1)] + [
        _fake_run(tmp_path, "residual-true", 0, {**base, "residual": True}, 0.7, 1.1)
    ]
    outputs = {
        "laws": tmp_path / "laws.csv",
        "measurements": tmp_path / "measurements.csv",
        "trainability": tmp_path / "trainability.csv",
        "depth_figure": tmp_path / "depth.png",
        "kernel_figure": tmp_path / "kernel.png",
        "trainability_figure": tmp_path / "trainability.png",
    }
    laws = study_rf_laws(config, runs, outputs, SMALL).set_index("law")
    for name, path in outputs.items():
        assert Path(path).stat().st_size > 0, name
    differs = laws[laws["verdict"] == "differs"]
    assert not differs.empty
    assert (differs["notes"].str.len() > 0).all()  # every "differs" says why
    uniform = laws.loc["ERF std vs depth: uniform linear stack"]
    assert abs(uniform["value"] - 0.5) < 1e-3
    assert uniform["verdict"] == "agrees"
    assert laws.loc["ERF std vs depth: base network, at initialisation", "value"] == pytest.approx(0.5)
    training = laws.loc["Training: trained / initial ERF std of base"]
    assert training["value"] == pytest.approx(math.sqrt(0.80 * 0.82))  # the geometric mean of two seeds
    assert training["verdict"] == "differs"
    assert "shrank" in training["notes"]
    trainability = pd.read_csv(outputs["trainability"]).set_index("variant")
    assert trainability.loc["base", "test_acc"] == pytest.approx(0.605)
    assert trainability.loc["residual-true", "residual"]
    del outputs["trainability_figure"]  # a study without a depth block (rf_laws.smk leaves the figure out)
    Path(tmp_path / "trainability.png").unlink()
    study_rf_laws(config, runs, outputs, SMALL)
    assert not (tmp_path / "trainability.png").exists()


def test_receptive_fields_study_crosses_depth_residual_and_norm() -> None:
    study = Study.from_config(load_config(ROOT / "config" / "receptive_fields.yaml"))
    depth = study.ablation_variants("depth")
    specs = {
        (s.spec["blocks_per_stage"], s.spec["residual"], s.spec["norm"])
        for v, s in study.variants.items()
        if v in depth
    }
    assert specs == {(d, r, n) for d in (1, 3, 6) for r in (False, True) for n in ("batch", "none")}
