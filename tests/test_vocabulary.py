"""The vocabulary of the results: importable without the analysis stack, the exact strings metrics.json holds,
and prose built from the thresholds rather than restating them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cnnablate import layout, tune
from cnnablate.train import train
from cnnablate.vocabulary import (
    RETRY_GAP,
    TRAINED_LOSS_FRACTION,
    TRAINED_OUTCOMES,
    Outcome,
    accuracy_past_chance,
    trained_accuracy,
)
from test_train import make_job


def test_a_training_job_imports_the_vocabulary_without_pandas_scipy_numpy_or_torch() -> None:
    heavy = ("pandas", "scipy", "numpy", "torch")
    code = f"import cnnablate.vocabulary, sys; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_outcomes_are_the_strings_metrics_json_holds_and_two_of_them_trained() -> None:
    assert [str(outcome) for outcome in Outcome] == ["converged", "not_converged", "did_not_train", "diverged"]
    assert sorted(TRAINED_OUTCOMES) == ["converged", "not_converged"]
    assert json.dumps(list(Outcome)) == '["converged", "not_converged", "did_not_train", "diverged"]'
    assert Outcome.DID_NOT_TRAIN.words == "did not train"
    assert Outcome.NOT_CONVERGED.words == "not converged within the budget"
    assert len({outcome.words for outcome in Outcome}) == len(Outcome)


def test_the_thresholds() -> None:
    assert trained_accuracy(0.1) == pytest.approx(0.325)  # 25% of the way from 10% to 100%
    assert trained_accuracy(0.01) == pytest.approx(0.2575)
    assert accuracy_past_chance(0.5, 0.5) == 0.75
    assert (TRAINED_LOSS_FRACTION, RETRY_GAP) == (0.9, 0.05)


def test_a_training_run_writes_an_outcome_of_the_vocabulary(tmp_path) -> None:
    train(make_job(tmp_path, "words", max_steps=3))
    saved = json.loads((tmp_path / "words" / "run" / layout.METRICS).read_text())
    assert saved["outcome"] in list(Outcome)
    assert saved["trained"] == (saved["outcome"] in TRAINED_OUTCOMES)
    assert saved["converged"] == (saved["outcome"] == Outcome.CONVERGED)


def test_the_selection_rule_states_the_loss_threshold_from_its_constant(monkeypatch) -> None:
    assert "training loss below 90% of ln C" in tune.selection_rule(0.25)
    monkeypatch.setattr(tune, "TRAINED_LOSS_FRACTION", 0.8)
    rule = tune.selection_rule(0.3)
    assert "at least 30% of the way" in rule
    assert "training loss below 80% of ln C" in rule
    assert f"a variant '{Outcome.DID_NOT_TRAIN.words}' when no rate had learned" in rule
