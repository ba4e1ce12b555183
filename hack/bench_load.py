#!/usr/bin/env python3
"""Load and soak test of the real ZThumb HTTP server, on loopback (a benchmark, not a test).

Starts ``zthumb serve`` as a subprocess on 127.0.0.1 with the tiny SDXL model (CPU, random
weights) and a LoRA root of random rank-16 adapters, warms it up (every adapter once), then
fires the requests from concurrent clients. Each request picks an adapter; some are cancelled
by their client, which closes the connection after a short random delay. A client that gets a
429 sleeps for its Retry-After before its next request (it does not resend the rejected one).

Checks (the exit status is 1 when one fails):

- no 5xx, neither as the clients saw it nor in the server's access log;
- every 429 carries a valid Retry-After (whole seconds >= 1);
- server RSS after the run within 10% of RSS after warm-up (evicted adapters really free memory);
- cancelled requests cost no generation: every job cancelled while queued was skipped by the
  worker, never run; completed generations (``zthumb_generation_seconds_count``) equal the
  server's 200 responses, plus at most the jobs cancelled while running: those stop at their
  next denoising step, and only one whose cancel arrives after its last step (during the VAE
  decode) completes its generation (answered 499). Requests whose client gave up only after the server had
  finished the generation are counted apart ("finished before the cancel reached the server").

Defaults: 200 requests, 16 clients, 20 adapters, ZTHUMB_LORA_CACHE_SIZE=8, 10% cancelled,
64x64, 2 steps (about 2 minutes on 2 busy CPU cores). ``--tiny``: a run of a few seconds, for CI.
The table is printed last; JSON and Markdown go to ``--out`` (default outputs/bench_load/).

  PYTHONPATH=images/zthumb:images/trainer python hack/bench_load.py
  python hack/bench_load.py --requests 1000 --clients 32     # a longer soak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HOST = "127.0.0.1"  # loopback only
REPO = Path(__file__).resolve().parents[1]


# --- helpers -------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


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


# --- the run -------------------------------------------------------------------------------------
@dataclass
class Report:
    config: dict[str, Any]
    ready_s: float = 0.0
    warmup_s: float = 0.0
    run_s: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    latency_200: dict[str, float] = field(default_factory=dict)
    latency_429_ms_p50: float = 0.0
    retry_after: dict[str, Any] = field(default_factory=dict)
    server_statuses: dict[str, int] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)
    server: dict[str, float] = field(default_factory=dict)
    cancels: dict[str, int] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def evaluate(
    report: Report,
    outcomes: list[Outcome],
    *,
    before: dict[str, float],
    after: dict[str, float],
    records: list[dict[str, Any]],
    rss_warm: int,
    rss_after: int,
    rss_peak: int,
    rss_tolerance: float,
    cpu_seconds: float,
) -> None:
    ok = [o for o in outcomes if o.status == 200]
    rejected = [o for o in outcomes if o.status == 429]
    cancelled = [o for o in outcomes if o.status is None]
    fives = [o for o in outcomes if o.status is not None and o.status >= 500]
    other = [o for o in outcomes if o.status not in (200, 429, None) and not (o.status and o.status >= 500)]
    report.outcomes = {
        "requests": len(outcomes),
        "200": len(ok),
        "429": len(rejected),
        "5xx": len(fives),
        "other": len(other),
        "cancelled_by_client": len(cancelled),
        "planned_cancels": sum(o.planned_cancel for o in outcomes),
    }
    report.errors += [f"request {o.index}: {o.status} {o.error or ''}".strip() for o in fives + other]
    seconds = [o.seconds for o in ok]
    report.latency_200 = {
        "p50_ms": round(percentile(seconds, 50) * 1000, 1),
        "p95_ms": round(percentile(seconds, 95) * 1000, 1),
        "max_ms": round(max(seconds, default=float("nan")) * 1000, 1),
        "mean_ms": round(statistics.fmean(seconds) * 1000, 1) if seconds else float("nan"),
    }
    report.latency_429_ms_p50 = round(percentile([o.seconds for o in rejected], 50) * 1000, 1)

    def valid_retry_after(value: str | None) -> bool:
        return value is not None and value.isdigit() and int(value) >= 1

    values = [int(o.retry_after) for o in rejected if valid_retry_after(o.retry_after)]
    report.retry_after = {
        "with_header": len(values),
        "without": len(rejected) - len(values),
        "min_s": min(values, default=0),
        "max_s": max(values, default=0),
    }

    def delta(name: str, **labels: str) -> int:
        return round(metric_sum(after, name, **labels) - metric_sum(before, name, **labels))

    def mean_of(histogram: str) -> float:
        count = metric_sum(after, f"{histogram}_count") - metric_sum(before, f"{histogram}_count")
        total = metric_sum(after, f"{histogram}_sum") - metric_sum(before, f"{histogram}_sum")
        return round(total / count, 4) if count else float("nan")

    generations = delta("zthumb_generation_seconds_count")
    server_200 = round(status_sum(after, "200") - status_sum(before, "200"))
    server_5xx = round(status_sum(after, "5") - status_sum(before, "5"))
    load = records
    access = [r for r in load if r.get("message") == "request" and r.get("path") == "/generate"]
    access_by_status: dict[str, int] = {}
    for r in access:
        access_by_status[str(r.get("status"))] = access_by_status.get(str(r.get("status")), 0) + 1
    access_5xx = [r for r in load if r.get("message") == "request" and int(r.get("status", 0)) >= 500]
    errors_logged = [r for r in load if r.get("level") in ("ERROR", "CRITICAL")]
    cancel_records = [r for r in load if r.get("message") == "job cancelled"]
    queued = sum(r.get("while") == "queued" for r in cancel_records)
    running = sum(r.get("while") == "running" for r in cancel_records)
    skipped = sum(r.get("message") == "skipped a job cancelled while queued" for r in load)
    report.server = {
        "generations": generations,
        "responses_200": server_200,
        "responses_499": round(status_sum(after, "499") - status_sum(before, "499")),
        "responses_5xx": server_5xx,
        "access_log_5xx": len(access_5xx),
        "error_log_lines": len(errors_logged),
        "queue_rejected": delta("zthumb_queue_rejected_total"),
        "adapter_loads": delta("zthumb_adapter_loads_total"),
        "adapter_evictions": delta("zthumb_adapter_evictions_total"),
        "adapter_hits": delta("zthumb_adapter_cache_hits_total"),
        "generation_s_mean": mean_of("zthumb_generation_seconds"),
        "adapter_load_s_mean": mean_of("zthumb_adapter_load_seconds"),
        "queue_depth_after": metric_sum(after, "zthumb_queue_depth"),
        "cpu_s": round(cpu_seconds, 1),
        "cpu_s_per_generation": round(cpu_seconds / generations, 3) if generations else float("nan"),
    }
    report.server_statuses = dict(sorted(access_by_status.items()))
    server_429 = access_by_status.get("429", 0)
    report.errors += [json.dumps(r)[:400] for r in (access_5xx + errors_logged)[:10]]
    report.cancels = {
        "closed_by_client": len(cancelled),
        "server_cancelled_while_queued": queued,
        "worker_skipped_unrun": skipped,
        "server_cancelled_while_running": running,
        # The client closed, but the server had already generated and answered 200.
        "finished_before_cancel_arrived": max(0, server_200 - len(ok)),
        # Cancelled while running, but after the last step check: generated, answered 499.
        "running_cancel_completed_generation": max(0, generations - server_200),
        # The client closed, but the server had already refused it with 429.
        "rejected_before_cancel_arrived": max(0, server_429 - len(rejected)),
    }
    accounted = (
        access_by_status.get("499", 0)
        + report.cancels["finished_before_cancel_arrived"]
        + report.cancels["rejected_before_cancel_arrived"]
    )
    report.rss = {
        "after_warmup_mib": round(rss_warm / 2**20, 1),
        "after_run_mib": round(rss_after / 2**20, 1),
        "peak_mib": round(rss_peak / 2**20, 1),
        "growth_pct": round((rss_after / rss_warm - 1) * 100, 2),
    }
    report.checks = {
        "no 5xx (clients, metrics, access log)": not fives and server_5xx == 0 and not access_5xx,
        "no ERROR lines in the server log": not errors_logged,
        "every 429 has Retry-After": report.retry_after["without"] == 0,
        f"RSS after run within {rss_tolerance:.0%} of warm": abs(rss_after / rss_warm - 1) <= rss_tolerance,
        "cancelled while queued: never generated": queued == skipped,
        # A job cancelled while running stops at its next denoising step; only one whose cancel
        # came after its last step (during the VAE decode) still completes: the bound is exact.
        "generations == 200s (+ at most the cancels that hit a running job)": (
            server_200 <= generations <= server_200 + running
        ),
        "every request answered or cancelled (no client errors)": not other,
        "server logged every request; each client cancel accounted for": (
            len(access) == len(outcomes) and accounted == len(cancelled)
        ),
        "queue drained": report.server["queue_depth_after"] == 0,
    }


def render_table(report: Report) -> str:
    c = report.config
    o, lat, ra, rss, srv, can = (
        report.outcomes,
        report.latency_200,
        report.retry_after,
        report.rss,
        report.server,
        report.cancels,
    )
    rows = [
        ("requests / clients", f"{o['requests']} / {c['clients']}"),
        ("adapters / cache size", f"{c['adapters']} / {c['cache_size']} (rank {c['rank']})"),
        ("image", f"{c['size']}x{c['size']}, {c['steps']} steps, max_queue {c['max_queue']}"),
        (
            "run wall time",
            f"{report.run_s:.1f} s (server ready {report.ready_s:.1f} s, warm-up {report.warmup_s:.1f} s)",
        ),
        ("200", str(o["200"])),
        ("429", f"{o['429']} (Retry-After on {ra['with_header']}, {ra['min_s']}-{ra['max_s']} s)"),
        ("5xx", str(o["5xx"])),
        ("other", str(o["other"])),
        ("cancelled by client", f"{o['cancelled_by_client']} of {o['planned_cancels']} planned"),
        (
            "latency of 200s p50 / p95",
            f"{lat['p50_ms']:.0f} / {lat['p95_ms']:.0f} ms (max {lat['max_ms']:.0f})",
        ),
        ("latency of 429s p50", f"{report.latency_429_ms_p50:.1f} ms"),
        (
            "RSS after warm-up / after run",
            f"{rss['after_warmup_mib']} / {rss['after_run_mib']} MiB ({rss['growth_pct']:+.2f}%)",
        ),
        ("RSS peak during run", f"{rss['peak_mib']} MiB"),
        (
            "server: generations / 200s / 499s",
            f"{srv['generations']} / {srv['responses_200']} / {srv['responses_499']}",
        ),
        (
            "server: adapter loads / evictions / hits",
            f"{srv['adapter_loads']} / {srv['adapter_evictions']} / {srv['adapter_hits']}",
        ),
        (
            "cancels: while queued / skipped unrun",
            f"{can['server_cancelled_while_queued']} / {can['worker_skipped_unrun']}",
        ),
        (
            "cancels: while running / of which finished anyway",
            f"{can['server_cancelled_while_running']} / {can['running_cancel_completed_generation']}"
            " (cancel after the last step)",
        ),
        (
            "cancels: answered before the cancel arrived",
            f"{can['finished_before_cancel_arrived']} with 200, "
            f"{can['rejected_before_cancel_arrived']} with 429",
        ),
        (
            "server: statuses in its access log",
            ", ".join(f"{k}: {v}" for k, v in report.server_statuses.items()),
        ),
        ("server CPU during run / per generation", f"{srv['cpu_s']} s / {srv['cpu_s_per_generation']} s"),
        (
            "server: mean generation / adapter load",
            f"{srv['generation_s_mean'] * 1000:.0f} ms / {srv['adapter_load_s_mean'] * 1000:.0f} ms (wall)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'measure':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    lines += ["", f"| {'check':<68} | result |", f"|{'-' * 70}|--------|"]
    lines += [f"| {k:<68} | {'PASS' if v else 'FAIL'} |" for k, v in report.checks.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--adapters", type=int, default=20, help="distinct adapters in the LoRA root")
    parser.add_argument("--cache-size", type=int, default=8, help="ZTHUMB_LORA_CACHE_SIZE")
    parser.add_argument("--max-queue", type=int, default=8, help="ZTHUMB_MAX_QUEUE (the server default)")
    parser.add_argument("--cancel-fraction", type=float, default=0.10)
    parser.add_argument(
        "--cancel-delay",
        type=float,
        nargs=2,
        default=(0.05, 1.5),
        metavar=("MIN", "MAX"),
        help="a cancelled request's client closes after a uniform delay in [MIN, MAX] s",
    )
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--warmup-passes", type=int, default=1, help="passes over every adapter before RSS is taken"
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seeds the request plan")
    parser.add_argument("--rss-tolerance", type=float, default=0.10)
    parser.add_argument("--threads", type=int, default=0, help="OMP/torch threads of the server (0: default)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request client timeout, s")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_load")
    parser.add_argument("--tiny", action="store_true", help="a run of seconds for CI (small counts)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.requests, args.clients, args.adapters, args.cache_size = 12, 3, 3, 2
        args.max_queue, args.cancel_fraction, args.rank = 1, 0.25, 4
        args.cancel_delay = (0.05, 0.5)

    import httpx
    import zthumb
    from zthumb_trainer.tiny_model import build_tiny_model

    config = {
        k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
    }
    config["zthumb"] = str(Path(zthumb.__file__).parent)
    report = Report(config=config)
    cache = Path(os.environ.get("ZTHUMB_TEST_CACHE", Path.home() / ".cache" / "zthumb" / "test-models"))
    tiny = build_tiny_model(cache / "tiny-sdxl")
    work = Path(tempfile.mkdtemp(prefix="zthumb-bench-load-"))
    names = make_adapters(tiny.diffusers_dir / "unet", work / "lora", args.adapters, args.rank)

    # The server runs the same code as this script imports.
    paths = [str(Path(m.__file__).resolve().parents[1]) for m in (zthumb, sys.modules["zthumb_trainer"])]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "HF_HUB_OFFLINE": "1",
        "ZTHUMB_MODEL_PATH": str(tiny.diffusers_dir),
        "ZTHUMB_LORA_ROOT": str(work / "lora"),
        "ZTHUMB_LORA_CACHE_SIZE": str(args.cache_size),
        "ZTHUMB_MAX_QUEUE": str(args.max_queue),
        "ZTHUMB_DEVICE": "cpu",
        "ZTHUMB_DTYPE": "float32",
        "ZTHUMB_MIN_SIZE": str(min(64, args.size)),
        "ZTHUMB_LOG_JSON": "true",
        "ZTHUMB_REQUEST_TIMEOUT_S": str(args.timeout),
    }
    for key in ("Z_LORA_PATH", "ZTHUMB_LORA_PATH", "ZTHUMB_API_KEY", "ZTHUMB_ENABLED_BACKENDS"):
        env.pop(key, None)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    server = Server(env, args.out / "server.log", free_port())
    try:
        report.ready_s = server.wait_ready(300)
        base = server.base

        # Warm-up: every adapter once (the cache fills and starts evicting), then one without.
        started = time.perf_counter()
        rng = random.Random(args.seed)
        warm_order = [name for _ in range(args.warmup_passes) for name in rng.sample(names, len(names))]
        with httpx.Client(base_url=base, timeout=args.timeout) as http:
            for i, name in enumerate(warm_order):
                plan = Planned(-1, name, 10_000 + i, None)
                response = http.post("/generate", json=request_body(plan, args.size, args.steps))
                if response.status_code != 200:
                    raise RuntimeError(
                        f"warm-up request failed: {response.status_code} {response.text[:300]}"
                    )
            report.warmup_s = time.perf_counter() - started
            rss_warm = server.rss()
            cpu_before = server.cpu_seconds()
            before = parse_metrics(http.get("/metrics").text)
        log_mark = server.log_lines()

        plans = [
            Planned(
                i,
                rng.choice(names),
                i,
                rng.uniform(*args.cancel_delay) if rng.random() < args.cancel_fraction else None,
            )
            for i in range(args.requests)
        ]
        peak = [rss_warm]
        stop = threading.Event()

        def sample_rss() -> None:
            while not stop.wait(0.5):
                try:
                    peak[0] = max(peak[0], server.rss())
                except Exception:
                    return

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        started = time.perf_counter()
        outcomes = asyncio.run(
            run_clients(
                server.port,
                plans,
                clients=args.clients,
                size=args.size,
                steps=args.steps,
                timeout=args.timeout,
            )
        )
        report.run_s = time.perf_counter() - started
        stop.set()
        sampler.join()

        # Let the worker drain what cancelled clients left behind, then read the server.
        with httpx.Client(base_url=base, timeout=30) as http:
            deadline = time.perf_counter() + 60
            while time.perf_counter() < deadline:
                after = parse_metrics(http.get("/metrics").text)
                if metric_sum(after, "zthumb_queue_depth") == 0 and metric_sum(after, "zthumb_inflight") == 0:
                    break
                time.sleep(0.2)
            time.sleep(0.3)
            after = parse_metrics(http.get("/metrics").text)
        rss_after = server.rss()
        cpu_seconds = server.cpu_seconds() - cpu_before
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    records = server.log_records(start=log_mark)  # the load phase (and the shutdown)
    evaluate(
        report,
        outcomes,
        before=before,
        after=after,
        records=records,
        rss_warm=rss_warm,
        rss_after=rss_after,
        rss_peak=peak[0],
        rss_tolerance=args.rss_tolerance,
        cpu_seconds=cpu_seconds,
    )

    table = render_table(report)
    (args.out / "bench_load.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (args.out / "bench_load.md").write_text(
        f"# bench_load\n\n```\n{' '.join(sys.argv)}\n```\n\n{table}\n"
        + ("\n## errors\n\n" + "\n".join(f"- {e}" for e in report.errors) + "\n" if report.errors else "")
    )
    for error in report.errors[:10]:
        print("error:", error, file=sys.stderr)
    print(f"\nserver log: {server.log_path}; results: {args.out}/bench_load.json, bench_load.md\n")
    print(table)
    return 0 if all(report.checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
