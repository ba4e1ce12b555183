"""Prometheus metrics of the operator (served on ZTHUMB_OPERATOR_METRICS_PORT)."""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from zthumb_contract.stages import PHASES

RUNS = Gauge("zthumb_operator_runs", "LoRAFinetunes known to the operator, by phase", ["phase"])
STEP_DURATION = Histogram(
    "zthumb_operator_step_duration_seconds",
    "Duration of a pipeline step (Job start to completion; deploy: patch to rollout complete)",
    ["step"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
)
RECONCILES = Counter("zthumb_operator_reconciles_total", "Reconciliations of a LoRAFinetune")
RECONCILE_ERRORS = Counter(
    "zthumb_operator_reconcile_errors_total", "Reconciliations that raised an error", ["kind"]
)
RECONCILE_SECONDS = Histogram(
    "zthumb_operator_reconcile_duration_seconds",
    "Time spent in one reconciliation",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_REQUESTS = Counter(
    "zthumb_operator_api_requests_total",
    "Kubernetes API requests made by the reconciler (watches are kopf's and not counted)",
    ["verb", "resource"],
)
TRANSITIONS = Counter("zthumb_operator_phase_transitions_total", "Phase transitions", ["phase"])


def set_run_phases(phases: Iterable[str | None]) -> None:
    tally = _Tally(p or "Pending" for p in phases)
    for phase in PHASES:
        RUNS.labels(phase=phase).set(tally.get(phase, 0))


def serve(port: int) -> None:
    if port:
        start_http_server(port)
