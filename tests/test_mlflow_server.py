"""`make mlflow-server` for real: PostgreSQL, MLflow's basic-auth app, the tiny study tracked through it.

Marked ``mlflow_server`` (deselected by default): it needs a PostgreSQL set up by ``sudo bash
scripts/mlflow-postgres.sh``, whose credentials file (``MLFLOW_SERVER_ENV``, default
``~/.config/cnnablate/mlflow-server.env``) it reads. CI runs it from ``.ci/run``. It fails, never skips, when
that file is missing.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, SNAKEMAKE, tiny_config, write_config

ENV_FILE = Path(os.environ.get("MLFLOW_SERVER_ENV", Path.home() / ".config/cnnablate/mlflow-server.env"))


def credentials() -> dict[str, str]:
    if not ENV_FILE.exists():
        pytest.fail(f"{ENV_FILE} is missing: set up PostgreSQL first with `sudo bash scripts/mlflow-postgres.sh`")
    pairs = (line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if "=" in line and line[0] != "#")
    return dict(pairs)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def status_of(url: str, user: str | None = None, password: str | None = None, host: str | None = None) -> int:
    """HTTP status of a GET, with optional basic-auth credentials and Host header."""
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def server(tmp_path: Path):
    """`make mlflow-server` on a free port with its own artifact and auth-state folders; yields the URL."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENV": str(ENV_FILE), "MLFLOW_SERVER_STATE": str(tmp_path / "state")}
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        ["make", "-C", str(ROOT), "mlflow-server", f"MLFLOW_PORT={port}", f"MLFLOW_ARTIFACTS={tmp_path / 'art'}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-4000:]
            assert time.time() < deadline, "server did not answer /health in 180 s"
            try:
                if status_of(f"{url}/health") == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


@pytest.mark.e2e
@pytest.mark.mlflow_server
def test_tiny_study_is_tracked_by_the_authenticated_server(server: str, tmp_path: Path, monkeypatch) -> None:
    secrets = credentials()
    user, password = secrets.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"), secrets["MLFLOW_AUTH_ADMIN_PASSWORD"]
    search = f"{server}/api/2.0/mlflow/experiments/search?max_results=10"
    assert status_of(search) == 401  # no credentials
    assert status_of(search, user, "wrong-password") == 401
    assert status_of(search, user, password) == 200
    assert status_of(search, user, password, host="attacker.example:80") in (400, 403)  # --allowed-hosts
    print(f"unauthenticated: 401; wrong password: 401; with credentials: 200 ({server})")

    study = f"server{int(time.time())}"  # a fresh experiment on a database that outlives the test
    config = write_config(tmp_path, tiny_config(study=study))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server,
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password,
        "CNNABLATE_GPU_LOCK_DIR": str(tmp_path / "locks"),
    }
    command = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--configfile", str(config)]
    result = subprocess.run([*command, "--cores", "2"], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id])
    metrics = sorted(tmp_path.glob(f"results/{study}/runs/*/seed*/metrics.json"))
    jobs = [run for run in runs if run.data.tags["cnnablate.role"] == "job"]
    parent = next(run for run in runs if run.data.tags["cnnablate.role"] == "parent")
    assert len(metrics) == 3
    assert sorted(r.data.tags["cnnablate.job_key"] for r in jobs) == sorted(
        f"{study}/{p.parent.parent.name}/{p.parent.name}" for p in metrics
    )
    assert all(run.info.status == "FINISHED" and "measures.params" in run.data.metrics for run in jobs), [
        (run.info.status, "measures.params" in run.data.metrics) for run in jobs
    ]
    assert parent.info.status == "FINISHED"
    assert "test_acc_mean.base" in parent.data.metrics
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/summary.csv", "study/results.csv", "study/index.html", "study/config.yaml"} <= artifacts
    assert all(run.data.tags["mlflow.source.git.commit"] for run in runs)
    print(f"runs found with credentials: {len(jobs)} job runs FINISHED + parent {parent.info.status}")
