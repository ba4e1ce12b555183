"""A real ``mlflow server`` on loopback (sqlite backend, artifacts proxied by the server) for the
tracking tests of the train and eval steps (the fixture ``mlflow_server``: ``conftest.py``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# A cold `mlflow server` start (database migrations, imports) took 50 to 132 s on the shared 2-core
# test machine under load (load average about 20); the wait is bounded well above that.
SERVER_START_SECONDS = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def run_mlflow_server(root: Path) -> Iterator[str]:
    """Start a tracking server keeping its files in ``root``; yield its URL; kill it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with (root / "server.log").open("wb") as server_log:
        quiet = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}  # no usage reports from tests
        process = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT, env=quiet)
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
