"""The job server: a job run through it gives the same files as one run in its own process; failures surface."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cnnablate.jobs import SERVER_ENV, run
from cnnablate.jobserver import JobServer


class FakeNamedlist(list):
    def __init__(self, items: list, names: dict) -> None:
        super().__init__(items)
        self.names = names
        for key, value in names.items():
            setattr(self, key, value)

    def items(self):
        return self.names.items()


def fake_snakemake(output: Path, log: Path, data: dict) -> SimpleNamespace:
    return SimpleNamespace(
        input=FakeNamedlist([], {}),
        output=FakeNamedlist([str(output)], {}),
        params=FakeNamedlist([data], {"data": data}),
        wildcards=FakeNamedlist([], {}),
        log=FakeNamedlist([str(log)], {}),
        threads=1,
    )


DATA = {
    "dataset": "synthetic",
    "seed": 0,
    "train_size": None,
    "test_size": None,
    "synthetic": {"train_size": 50, "test_size": 20, "num_classes": 10, "pattern_size": 5, "contrast": 1.0},
}


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    job_server = JobServer()
    job_server.start()
    assert os.environ.get(SERVER_ENV) == job_server.path and Path(job_server.path).exists()
    yield job_server
    job_server.stop()
    assert not Path(job_server.path).exists()


def test_a_job_through_the_server_matches_a_local_one(server, tmp_path, monkeypatch) -> None:
    run("prepare_data", fake_snakemake(tmp_path / "served.npz", tmp_path / "served.log", DATA))
    monkeypatch.setenv(SERVER_ENV, "off")
    run("prepare_data", fake_snakemake(tmp_path / "local.npz", tmp_path / "local.log", DATA))
    served, local = np.load(tmp_path / "served.npz"), np.load(tmp_path / "local.npz")
    assert all(np.array_equal(served[key], local[key]) for key in local.files)
    assert "prepare_data job function took" in (tmp_path / "served.log").read_text()


def test_a_failing_job_fails_its_client(server, tmp_path) -> None:
    bad = {**DATA, "dataset": "npz", "path": str(tmp_path / "missing.npz")}
    with pytest.raises(SystemExit) as failure:
        run("prepare_data", fake_snakemake(tmp_path / "out.npz", tmp_path / "bad.log", bad))
    assert failure.value.code == 1
    assert not (tmp_path / "out.npz").exists()
    assert "missing.npz does not exist" in (tmp_path / "bad.log").read_text()
