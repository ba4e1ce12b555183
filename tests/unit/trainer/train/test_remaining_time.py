"""status.progress answers "when will it finish": the steady-state estimate and what the loop reports."""

from __future__ import annotations

import pytest
from train_helpers import copy_into_run_dir, prepare_once, tiny_config
from zthumb_contract import crd
from zthumb_trainer.reporting import StatusReporter
from zthumb_trainer.train import loop
from zthumb_trainer.train.measure import RATE_WINDOW_STEPS, StepRate, estimate_remaining_seconds


def test_none_before_two_logging_points_after_the_warm_up():
    assert estimate_remaining_seconds([], 100, warmup_until=2) is None
    # Step 1 (compilation) and the end of step 2 (the warm-up's end): one point only.
    assert estimate_remaining_seconds([(1, 30.0), (2, 31.0)], 100, warmup_until=2) is None
    assert estimate_remaining_seconds(
        [(1, 30.0), (2, 31.0), (3, 32.0)], 100, warmup_until=2
    ) == pytest.approx(97)


def test_the_warm_up_is_left_out():
    # A 60 s first step, then 0.5 s per step: the estimate is 0.5 s per step left, not ~1 s.
    points = [(1, 60.0)] + [(step, 60.0 + 0.5 * (step - 1)) for step in range(2, 11)]
    assert estimate_remaining_seconds(points, 110, warmup_until=2) == pytest.approx(50)


def test_the_rate_is_the_recent_one():
    # 2 s per step until step 100, then 1 s per step: the last window's rate counts.
    points, now = [], 0.0
    for step in range(1, 201):
        now += 2.0 if step <= 100 else 1.0
        points.append((step, now))
    assert estimate_remaining_seconds(points, 300, warmup_until=2) == pytest.approx(100)
    # Points every 10 steps (a GPU's logging points) give the same rate.
    assert estimate_remaining_seconds(points[9::10], 300, warmup_until=2) == pytest.approx(100)


def test_zero_at_the_end():
    assert estimate_remaining_seconds([(100, 5.0)], 100, warmup_until=2) == 0
    assert estimate_remaining_seconds([(1, 5.0), (100, 9.0)], 100, warmup_until=2) == 0


def test_a_resumed_pod_has_its_own_warm_up_and_validation_time_is_left_out(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("zthumb_trainer.train.measure.time.monotonic", lambda: now[0])
    rate = StepRate(first_step=40)
    for step in range(41, 46):
        now[0] += 2.0
        if step == 44:
            rate.exclude(30.0)  # a validation pass before step 44
            now[0] += 30.0
        rate.mark(step)
    assert rate.remaining_seconds(100) == pytest.approx(55 * 2.0)
    assert rate.recent_steps_per_second == pytest.approx(0.5)
    for step in range(46, 46 + 3 * RATE_WINDOW_STEPS):  # bounded memory
        now[0] += 2.0
        rate.mark(step)
    assert len(rate.points) <= RATE_WINDOW_STEPS + 2


class _Api:
    def __init__(self):
        self.progress = []

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body, **kwargs):  # noqa: PLR0917
        self.progress.append(body["status"]["progress"])


def test_the_train_pod_reports_the_remaining_time_and_when(
    synthetic_dataset, tmp_path, tiny_model, monkeypatch
):
    run_dir = copy_into_run_dir(prepare_once(synthetic_dataset, tmp_path / "prepared"), tmp_path)
    api = _Api()
    monkeypatch.setattr(StatusReporter, "from_env", classmethod(lambda cls, interval: cls("r", "ns", api, 0)))
    loop.run_training(tiny_config(run_dir, tiny_model))
    remaining = [report["estimatedRemainingSeconds"] for report in api.progress]
    # A logging point per step on a CPU: none before the first steady interval (steps 2 to 3).
    assert remaining[:2] == [None, None] and all(value >= 0 for value in remaining[2:])
    assert remaining[-1] == 0 and api.progress[-1]["step"] == 6
    for report in api.progress:
        assert crd.format_time(crd.parse_time(report["lastUpdateTime"])) == report["lastUpdateTime"]
