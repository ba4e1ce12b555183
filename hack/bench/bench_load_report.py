"""hack/bench/bench_load.py's verdict: the checks over the clients' outcomes, the server's metrics and
its access log, and the table."""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # bench_stats (hack/lib)
from bench_load_harness import Outcome, metric_sum, status_sum
from bench_stats import percentile


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
    throughput: list[dict[str, Any]] = field(default_factory=list)


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
