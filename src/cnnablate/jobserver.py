"""A fork server for workflow jobs: import torch, MLflow and the package once, fork one process per job.

A grid of small models is many short jobs; each fresh Python process spends seconds importing torch and MLflow
before its first step. Snakemake still schedules every job and runs its script; the script (a client) sends
the job and its stdout/stderr descriptors over a Unix socket, and waits. The server forks; the child takes over
the client's output, working directory and environment, runs the job and reports its exit status. If the client
dies (a kill, a cancelled run), the child stops too, so Snakemake's view of the job stays the truth.

Started by the workflow's ``onstart`` handler for local runs (``CNNABLATE_JOB_SERVER=off`` disables it); never
used inside SLURM jobs, which must stay within their allocation.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from cnnablate.jobs import SERVER_ENV, Job, execute

PREFIX_ENV = "CNNABLATE_JOB_SERVER_PREFIX"  # the server's Python environment; other environments run jobs themselves
PRELOAD = (
    "torch",
    "torch._dynamo",
    "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store",
    "cnnablate.train",
    "cnnablate.run_measures",
    "cnnablate.shift",
    "cnnablate.interpret",
    "cnnablate.report",
    "cnnablate.analysis_figures",
    "cnnablate.tracking",
)


def submit(path: str, job: Job) -> bool:
    """Run ``job`` in the server and wait; False if no server answers (the caller then runs it itself)."""
    if os.environ.get("SLURM_JOB_ID") or os.environ.get(PREFIX_ENV) != sys.prefix:
        return False  # inside a SLURM allocation, or a rule's own (conda) environment: run here
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
    except OSError:
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    payload = json.dumps({"job": job.to_json(), "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(client, [struct.pack("!I", len(payload))], [1, 2])
    client.sendall(payload)
    reply = client.recv(16)  # blocks until the job ends
    if not reply:
        raise SystemExit(f"job server at {path} stopped while running the {job.kind} job")
    code = int(reply.decode())
    if code:
        raise SystemExit(code)
    return True


def _receive(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    header, fds, _, _ = socket.recv_fds(connection, 4, 2)
    length = struct.unpack("!I", header)[0]
    data = b""
    while len(data) < length:
        chunk = connection.recv(length - len(data))
        if not chunk:
            raise ConnectionError("client went away before sending the job")
        data += chunk
    return json.loads(data), fds


def _exit_when_client_leaves(connection: socket.socket) -> None:
    """The client sends nothing after the job: end of stream means it was killed, so the job stops too."""
    with contextlib.suppress(OSError):
        connection.recv(1)
    os._exit(137)


def _run_child(connection: socket.socket) -> None:
    """In the forked child: become the client's job, run it, report the exit status, exit."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # jobs wait for their own subprocesses (git)
    request, fds = _receive(connection)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    threading.Thread(target=_exit_when_client_leaves, args=(connection,), daemon=True).start()
    import cnnablate.train

    cnnablate.train.IMPORTED_AT = time.time()  # the child starts with everything imported
    code = 0
    try:
        execute(Job.from_json(request["job"]))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        connection.sendall(str(code).encode())
    finally:
        os._exit(code)


def serve(path: str, parent_pid: int) -> None:
    """Preload, then fork one child per connection until the parent (Snakemake) is gone."""
    for module in PRELOAD:
        importlib.import_module(module)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    Path(path).unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".tmp")
    server.listen(128)
    os.replace(path + ".tmp", path)  # the socket appears only once the server is ready
    server.settimeout(1.0)
    while os.getppid() == parent_pid:
        try:
            connection, _ = server.accept()
        except TimeoutError:
            continue
        connection.settimeout(None)
        if os.fork() == 0:
            server.close()
            _run_child(connection)
        connection.close()
    Path(path).unlink(missing_ok=True)


class JobServer:
    """Start and stop the server from the workflow's onstart / onsuccess / onerror handlers."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.path = ""

    def start(self, timeout: float = 120.0) -> None:
        if os.environ.get(SERVER_ENV, "auto") == "off" or os.environ.get("SLURM_JOB_ID"):
            return
        self.path = os.path.join(tempfile.gettempdir(), f"cnnablate-jobs-{os.getpid()}.sock")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cnnablate.jobserver", self.path, str(os.getpid())], start_new_session=True
        )
        deadline = time.time() + timeout
        while not os.path.exists(self.path):
            if self.process.poll() is not None or time.time() > deadline:
                print("cnnablate: job server did not start; jobs run in their own processes", file=sys.stderr)
                return
            time.sleep(0.1)
        os.environ[SERVER_ENV] = self.path
        os.environ[PREFIX_ENV] = sys.prefix

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        if self.path:
            Path(self.path).unlink(missing_ok=True)
            os.environ.pop(SERVER_ENV, None)
            os.environ.pop(PREFIX_ENV, None)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
