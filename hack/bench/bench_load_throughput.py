"""hack/bench/bench_load.py's throughput table: dynamic batching on and off, at 1, 4 and 16 clients.

Two servers alike but for ``ZTHUMB_MAX_BATCH`` (1: batching off; 8: on) run side by side and idle
in turn: the cells (clients x batching) are interleaved round by round, so a change in the load of
the machine hits both alike. Every request has the same batch key (no adapter, same size, steps
and guidance) and its own prompt and seed; each client sends its next request when the last one
is answered. A cell: images/s (requests answered 200 / the cell's wall time) and the latency
percentiles of its requests.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # bench_stats (hack/lib)
from bench_load_harness import HOST
from bench_stats import percentile

BATCHING = {"off": 1, "on": 8}  # ZTHUMB_MAX_BATCH of the two servers


@dataclass
class Cell:
    clients: int
    batching: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failed: int = 0


def requests_per_cell(clients: int, minimum: int) -> int:
    """Enough for every client to send a few (and at least ``minimum``)."""
    return max(minimum, 3 * clients)


async def run_cell(port: int, cell: Cell, *, requests: int, size: int, steps: int, timeout: float) -> None:
    import httpx

    pending = list(range(requests))
    limits = httpx.Limits(max_connections=cell.clients, max_keepalive_connections=cell.clients)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=timeout, limits=limits) as http:

        async def client() -> None:
            while pending:
                index = pending.pop()
                body = {
                    "prompt": f"a photo of thing {index}",
                    "seed": 1000 + index,
                    "width": size,
                    "height": size,
                    "steps": steps,
                    "loras": [],
                }
                started = time.perf_counter()
                try:
                    ok = (await http.post("/generate", json=body)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    cell.latencies.append(time.perf_counter() - started)
                else:
                    cell.failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(cell.clients)))
        cell.seconds += time.perf_counter() - started


def measure(
    ports: dict[str, int],
    levels: list[int],
    *,
    rounds: int,
    min_requests: int,
    size: int,
    steps: int,
    timeout: float,
) -> list[Cell]:
    """Every (clients, batching) cell, interleaved: round by round, level by level, off then on."""
    cells = {(c, b): Cell(c, b) for c in levels for b in BATCHING}
    for _ in range(rounds):
        for clients in levels:
            for batching, port in ports.items():
                requests = requests_per_cell(clients, min_requests)
                asyncio.run(
                    run_cell(
                        port,
                        cells[(clients, batching)],
                        requests=requests,
                        size=size,
                        steps=steps,
                        timeout=timeout,
                    )
                )
    return list(cells.values())


def summarize(cells: list[Cell]) -> list[dict[str, Any]]:
    """One row per client count: images/s and p50/p95 latency off and on, and their ratios."""
    rows = []
    for clients in sorted({cell.clients for cell in cells}):
        row: dict[str, Any] = {"clients": clients}
        for cell in (c for c in cells if c.clients == clients):
            b = cell.batching
            row[f"images_per_s_{b}"] = len(cell.latencies) / cell.seconds if cell.seconds else 0.0
            row[f"p50_ms_{b}"] = percentile(cell.latencies, 50) * 1000
            row[f"p95_ms_{b}"] = percentile(cell.latencies, 95) * 1000
            row[f"requests_{b}"] = len(cell.latencies)
            row[f"failed_{b}"] = cell.failed
        for measure_name in ("images_per_s", "p50_ms", "p95_ms"):
            off = row.get(f"{measure_name}_off") or 0.0
            row[f"{measure_name}_ratio"] = row.get(f"{measure_name}_on", 0.0) / off if off else float("nan")
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| clients | images/s off | images/s on | ratio | p50 off | p50 on | ratio "
        "| p95 off | p95 on | ratio | requests off / on (failed) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['images_per_s_off']:.2f} | {r['images_per_s_on']:.2f} "
            f"| {r['images_per_s_ratio']:.2f}x | {r['p50_ms_off']:.0f} ms | {r['p50_ms_on']:.0f} ms "
            f"| {r['p50_ms_ratio']:.2f}x | {r['p95_ms_off']:.0f} ms | {r['p95_ms_on']:.0f} ms "
            f"| {r['p95_ms_ratio']:.2f}x | {r['requests_off']} / {r['requests_on']} "
            f"({r['failed_off']} / {r['failed_on']}) |"
        )
    return "\n".join(lines)


def run_throughput(env: dict[str, str], out: Any, args: Any) -> list[dict[str, Any]]:
    """Start the two servers, warm both, measure every cell, stop them; the summary rows."""
    from bench_load_harness import Server, free_port

    servers: dict[str, Server] = {}
    try:
        for batching, max_batch in BATCHING.items():
            variant = {
                **env,
                "ZTHUMB_MAX_BATCH": str(max_batch),
                "ZTHUMB_MAX_QUEUE": str(4 * max(args.levels)),
            }
            servers[batching] = Server(variant, out / f"server-batching-{batching}.log", free_port())
        for server in servers.values():
            server.wait_ready(300)
            warm = Cell(max(args.levels), "warm-up")  # one full burst: warms every batch path
            asyncio.run(
                run_cell(
                    server.port,
                    warm,
                    requests=max(args.levels),
                    size=args.size,
                    steps=args.steps,
                    timeout=args.timeout,
                )
            )
        cells = measure(
            {batching: server.port for batching, server in servers.items()},
            args.levels,
            rounds=args.throughput_rounds,
            min_requests=args.throughput_requests,
            size=args.size,
            steps=args.steps,
            timeout=args.timeout,
        )
    finally:
        for server in servers.values():
            server.stop()
    return summarize(cells)
