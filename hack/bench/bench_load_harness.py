"""hack/bench/bench_load.py's harness: ``zthumb serve`` in a subprocess, its metrics, and the clients
that load it over loopback (some of which cancel by closing their connection)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # loopback only


# --- helpers -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def make_adapters(unet_dir: Path, root: Path, count: int, rank: int) -> list[str]:
    from zthumb.testing import write_random_adapters

    names = [f"load_{index:02d}" for index in range(count)]
    return write_random_adapters(unet_dir, root, names, first_seed=1000, rank=rank)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{label="v",...}': value} (sample names, labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def status_sum(metrics: dict[str, float], prefix: str) -> float:
    """zthumb_requests_total summed over statuses starting with ``prefix``."""
    total = 0.0
    for key, value in metrics.items():
        if key.startswith("zthumb_requests_total{") and f'status="{prefix}' in key:
            total += value
    return total


# --- the server ----------------------------------------------------------------------------------
class Server:
    """``zthumb serve`` in a subprocess, its JSON log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int) -> None:
        self.port = port
        self.base = f"http://{HOST}:{port}"
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zthumb.cli", "serve", "--host", HOST, "--port", str(port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> float:
        import httpx

        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the server was not ready within {timeout:g}s; see {self.log_path}")

    def rss(self) -> int:
        import psutil

        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (robust to other load on the machine)."""
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def log_lines(self) -> int:
        return len(self.log_path.read_text(errors="replace").splitlines())

    def log_records(self, start: int = 0) -> list[dict[str, Any]]:
        """The JSON log records from line ``start`` on."""
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines()[start:]:
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records


# --- the clients ---------------------------------------------------------------------------------
@dataclass
class Planned:
    index: int
    adapter: str
    seed: int
    cancel_after: float | None  # seconds after sending; None: a normal request


@dataclass
class Outcome:
    index: int
    adapter: str
    status: int | None  # None: cancelled by the client before a response
    seconds: float
    retry_after: str | None = None
    planned_cancel: bool = False
    error: str | None = None


def request_body(plan: Planned, size: int, steps: int) -> dict[str, Any]:
    return {
        "prompt": "a photo of z",
        "lora_path": plan.adapter,
        "lora_scale": 0.8,
        "seed": plan.seed,
        "width": size,
        "height": size,
        "steps": steps,
        "output_format": "png",
    }


async def cancelled_request(port: int, body: dict[str, Any], delay: float) -> tuple[int | None, str | None]:
    """Send POST /generate on a raw connection, close it after ``delay`` unless answered sooner."""
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        b"POST /generate HTTP/1.1\r\n"
        + f"Host: {HOST}:{port}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=delay)
    except (TimeoutError, asyncio.IncompleteReadError):
        writer.close()  # the client gives up: the server sees the disconnect
        return None, None
    writer.close()
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    retry_after = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "retry-after":
            retry_after = value.strip()
    return status, retry_after


async def run_clients(
    port: int, plans: list[Planned], *, clients: int, size: int, steps: int, timeout: float
) -> list[Outcome]:
    import httpx

    pending: asyncio.Queue[Planned] = asyncio.Queue()
    for plan in plans:
        pending.put_nowait(plan)
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=timeout, limits=limits) as http:

        async def client() -> None:
            while True:
                try:
                    plan = pending.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = request_body(plan, size, steps)
                started = time.perf_counter()
                outcome = Outcome(
                    plan.index, plan.adapter, None, 0.0, planned_cancel=plan.cancel_after is not None
                )
                try:
                    if plan.cancel_after is not None:
                        outcome.status, outcome.retry_after = await cancelled_request(
                            port, body, plan.cancel_after
                        )
                    else:
                        response = await http.post("/generate", json=body)
                        outcome.status = response.status_code
                        outcome.retry_after = response.headers.get("retry-after")
                except (httpx.HTTPError, OSError) as exc:
                    outcome.status = -1
                    outcome.error = f"{type(exc).__name__}: {exc}"
                outcome.seconds = time.perf_counter() - started
                outcomes.append(outcome)
                if outcome.status == 429:  # a polite client: wait as told before its next request
                    try:
                        await asyncio.sleep(min(float(outcome.retry_after or 1), 30.0))
                    except ValueError:
                        await asyncio.sleep(1.0)

        await asyncio.gather(*(client() for _ in range(clients)))
    return sorted(outcomes, key=lambda o: o.index)
