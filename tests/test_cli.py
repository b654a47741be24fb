"""``cnnablate measure``: output for a model with attention, and one-line errors for targets it cannot measure."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cnnablate.cli import main

MODELS = """
import torch
from torch import nn

WIDTH = 8


class TinyViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, WIDTH, 4, stride=4)
        self.attn = nn.MultiheadAttention(WIDTH, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        return self.attn(x, x, x, need_weights=False)[0].mean(1)


def tiny_vit() -> nn.Module:
    return TinyViT()


def needs_width(width: int) -> nn.Module:
    return nn.Linear(width, 2)


def fixed_size() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))  # 32 x 32 inputs only


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))


def not_a_model() -> int:
    return WIDTH
"""


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Importable modules ``cli_models`` and ``cli_models_broken`` (which imports a missing package)."""
    (tmp_path / "cli_models.py").write_text(MODELS)
    (tmp_path / "cli_models_broken.py").write_text("import missing_dependency_of_cli_models_broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "cli_models"


def test_attention_model_is_reported_global_after_its_patch_embedding(
    models: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["measure", f"{models}:tiny_vit", "--input-size", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # parameters: 8 x 48 + 8 (patches), 3 x (8 x 8 + 8) (q, k, v), 8 x 8 + 8 (output projection)
    # MACs: 16 tokens x 8 x 48 (patches) + 16 x 8 x 8 x 4 (projections) + 2 x 16 x 16 x 8 (QK^T, AV)
    assert lines[0] == f"{models}:tiny_vit: 680 parameters, 14,336 MACs (28,672 FLOPs) at input [3, 16, 16]"
    assert lines[1] == "theoretical receptive field at patch: size [4, 4], stride [4, 4], padding [0, 0]"
    assert lines[2] == (
        "  global after patch: MultiheadAttention at attn mixes all positions, so every later unit sees the whole input"
    )
    assert main(["measure", f"{models}:tiny_vit", "--input-size", "16", "--json"]) == 0
    trf = json.loads(capsys.readouterr().out)["trf"]
    assert (trf["global_after"], trf["mixing"], trf["size"]) == ("patch", "MultiheadAttention at attn", [4, 4])


def test_a_model_without_spatial_maps_has_no_receptive_field(models: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", f"{models}:mlp", "--input-size", "8"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{models}:mlp: 386 parameters, 384 MACs (768 FLOPs) at input [3, 8, 8]",
        "theoretical receptive field: none, the model has no spatial feature map",
    ]


ERRORS = {
    "unknown module": (["cli_modelz:tiny_vit"], "no module named 'cli_modelz'; check the spelling"),
    "missing dependency": (
        ["cli_models_broken:tiny_vit"],
        "importing module 'cli_models_broken' failed: it needs 'missing_dependency_of_cli_models_broken'",
    ),
    "unknown attribute": (["cli_models:tiny_vt"], "has no attribute 'tiny_vt'; did you mean cli_models:tiny_vit?"),
    "unknown attribute, nothing close": (["cli_models:nonexistent"], "print(dir(cli_models))' lists what it has"),
    "not callable": (["cli_models:WIDTH"], "cli_models:WIDTH is not callable (an int); name a model class"),
    "factory needing arguments": (
        ["cli_models:needs_width"],
        "cli_models:needs_width cannot be called without arguments (missing a required argument: 'width')",
    ),
    "not a model": (["cli_models:not_a_model"], "cli_models:not_a_model returned an int, not a torch.nn.Module"),
    "input size the model rejects": (
        ["cli_models:fixed_size", "--input-size", "24"],
        "cli_models:fixed_size does not accept --input-size 24: the model failed on a (1, 3, 24, 24) input: "
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied",
    ),
    "variant id without a config": (["base"], "'base' is not module:callable; give --config STUDY.yaml"),
    "torchvision name without its module": (["resnet18"], "did you mean torchvision.models:resnet18?"),
    "missing config file": (
        ["base", "--config", "missing.yaml"],
        "missing.yaml: cannot read the study config (No such file or directory)",
    ),
    "config that is not YAML": (["base", "--config", "bad.yaml"], "bad.yaml: not valid YAML (while parsing"),
    "config with a misspelt key": (["base", "--config", "typo.yaml"], "train.batchsize: unknown key; did you mean"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line(
    case: str, models: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("base: [\n")
    (tmp_path / "typo.yaml").write_text(
        "study: s\ndata: {dataset: synthetic}\ntrain: {batchsize: 8}\nseeds: [0]\nbase: {}\n"
    )
    argv, message = ERRORS[case]
    assert main(["measure", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("cnnablate: error: ")
    assert message in captured.err


def test_the_installed_command_prints_no_traceback() -> None:
    command = [sys.executable, "-m", "cnnablate.cli", "measure", "torchvision.models:nonexistent"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr == textwrap.dedent(
        """\
        cnnablate: error: module 'torchvision.models' has no attribute 'nonexistent'; python -c 'import \
torchvision.models; print(dir(torchvision.models))' lists what it has
        """
    )


def test_erf_output_is_rounded_and_help_explains_the_terms(capsys: pytest.CaptureFixture[str]) -> None:
    config = Path(__file__).resolve().parents[1] / ".test" / "config" / "config.yaml"
    assert main(["measure", "base", "--config", str(config), "--erf"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("effective"))
    numbers = [number for number in line.replace(",", " ").replace("[", " ").replace("]", " ").split() if "." in number]
    assert numbers, line
    assert all(len(number.split(".")[1]) <= 3 for number in numbers), line
    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    help_text = capsys.readouterr().out
    assert "theoretical receptive field" in help_text
    assert "95% radius" in help_text
    assert "cnnablate measure torchvision.models:resnet18" in help_text
