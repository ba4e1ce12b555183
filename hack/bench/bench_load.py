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
Then a throughput table (``bench_load_throughput.py``): images/s and p50/p95 latency at 1, 4 and
16 clients with dynamic batching off and on, two servers side by side, cells interleaved.
The table is printed last; JSON and Markdown go to ``--out`` (default outputs/bench_load/).
The server process and the clients live in ``bench_load_harness.py``, the checks and the table in
``bench_load_report.py``.

  PYTHONPATH=images/zthumb:images/trainer python hack/bench/bench_load.py
  python hack/bench/bench_load.py --requests 1000 --clients 32     # a longer soak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, when loaded by path

from bench_load_harness import (
    Planned,
    Server,
    free_port,
    make_adapters,
    metric_sum,
    parse_metrics,
    request_body,
    run_clients,
)
from bench_load_report import Report, evaluate, render_table
from bench_load_throughput import render as render_throughput
from bench_load_throughput import run_throughput

REPO = Path(__file__).resolve().parents[2]


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
    parser.add_argument(
        "--throughput-clients", default="1,4,16", help="client counts of the throughput table (comma list)"
    )
    parser.add_argument("--throughput-rounds", type=int, default=2, help="interleaved rounds per cell")
    parser.add_argument(
        "--throughput-requests",
        type=int,
        default=8,
        help="requests per cell and round (at least 3 per client)",
    )
    parser.add_argument("--tiny", action="store_true", help="a run of seconds for CI (small counts)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.requests, args.clients, args.adapters, args.cache_size = 12, 3, 3, 2
        args.max_queue, args.cancel_fraction, args.rank = 1, 0.25, 4
        args.cancel_delay = (0.05, 0.5)
        args.throughput_clients, args.throughput_rounds, args.throughput_requests = "1,2", 1, 2
    args.levels = [int(level) for level in args.throughput_clients.split(",") if level.strip()]

    import httpx
    import zthumb
    from zthumb_trainer.tiny.tiny_model import build_tiny_model

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
        server.stop()
        report.throughput = run_throughput(env, args.out, args) if args.levels else []
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
    if report.throughput:
        load = os.getloadavg()
        table += (
            "\n\nThroughput, dynamic batching off (ZTHUMB_MAX_BATCH=1) and on (8), interleaved "
            f"(load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}):\n\n"
            + render_throughput(report.throughput)
        )
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
