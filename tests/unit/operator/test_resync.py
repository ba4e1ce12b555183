"""The controller's periodic resync, its safety net for a missed watch event: every run that is
not finished gets another look, the finished ones none, the runs-by-phase gauge counts each run
once, and what the admission check remembers forgets the runs that are gone."""

from __future__ import annotations

import copy

from lft_helpers import make_run
from prometheus_client import REGISTRY
from reconcile_harness import Harness


def _run(name: str, uid: str, phase: str | None) -> dict:
    run = make_run({"dataset": {"triggerWord": "z"}}, name=name)
    run["metadata"]["uid"] = uid
    if phase is not None:
        run["status"] = {"phase": phase}
    return run


def _gauge(phase: str) -> float | None:
    return REGISTRY.get_sample_value("zthumb_operator_runs", {"phase": phase})


def test_resync_requests_the_unfinished_runs_only() -> None:
    h = Harness()
    controller = h.controller
    controller.runs.clear()
    runs = [
        _run("new", "u-new", None),
        _run("training", "u-train", "Training"),
        _run("training-2", "u-train-2", "Training"),
        _run("done", "u-done", "Succeeded"),
        _run("broken", "u-broken", "Failed"),
    ]
    for run in runs:
        controller.runs[("ml", run["metadata"]["name"])] = copy.deepcopy(run)
    requested: list[tuple[str, str]] = []
    controller.request = requested.append
    controller.admitted = {"u-train", "u-done", "u-deleted-run"}

    controller.resync()

    assert sorted(requested) == [("ml", "new"), ("ml", "training"), ("ml", "training-2")]
    assert controller.admitted == {"u-train", "u-done"}
    assert (_gauge("Pending"), _gauge("Training"), _gauge("Succeeded"), _gauge("Failed")) == (1, 2, 1, 1)
    assert _gauge("Deploying") == 0


def test_resync_of_no_runs_requests_nothing_and_zeroes_the_gauge() -> None:
    h = Harness()
    h.controller.runs.clear()
    requested: list[tuple[str, str]] = []
    h.controller.request = requested.append
    h.controller.admitted = {"u-gone"}
    h.controller.resync()
    assert requested == [] and h.controller.admitted == set()
    assert _gauge("Training") == 0 and _gauge("Pending") == 0
