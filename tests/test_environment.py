"""environment.yml (conda) and uv.lock hold the same pins: the file is generated from the lock."""

from __future__ import annotations

import re
import subprocess
import tomllib

import yaml

from conftest import ROOT


def test_environment_yml_is_what_the_lock_generates(tmp_path) -> None:
    generated = tmp_path / "environment.yml"
    subprocess.run(
        ["make", "-s", "-C", str(ROOT), f"ENVIRONMENT_YML={generated}", str(generated)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    committed = (ROOT / "environment.yml").read_text()
    assert committed == generated.read_text(), "environment.yml is stale: run `make environment.yml` after `uv lock`"
    pins = dict(
        line.split(" ;")[0].split("==") for line in yaml.safe_load(committed)["dependencies"][2]["pip"] if "==" in line
    )
    lock = {package["name"]: package["version"] for package in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    assert pins["torch"] == lock["torch"]
    assert pins["mlflow"] == lock["mlflow"]
    assert pins["scipy"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9_.-]+", dependency).group(0) for dependency in project}
    assert names <= set(pins), names - set(pins)  # every declared dependency is pinned
