"""WorkQueue: the retry delays of a failing reconcile, coalesced and delayed requests, and stop."""

from __future__ import annotations

import asyncio
import time

import kopf
import pytest
from zthumb_operator import metrics
from zthumb_operator.workqueue import WorkQueue

KEY = ("ml", "r")


def errors(kind: str) -> float:
    return metrics.RECONCILE_ERRORS.labels(kind=kind)._value.get()


def seconds_observed() -> tuple[float, float]:
    """The reconcile-duration histogram's (count, sum)."""
    samples = {s.name: s.value for m in metrics.RECONCILE_SECONDS.collect() for s in m.samples}
    return samples["zthumb_operator_reconcile_duration_seconds_count"], samples[
        "zthumb_operator_reconcile_duration_seconds_sum"
    ]


async def until(condition, limit: int = 2000) -> None:
    """Bounded polling of the event loop (timers of a few milliseconds)."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def test_an_unexpected_failure_backs_off_exponentially_up_to_a_minute() -> None:
    outcomes: list[object] = []

    async def reconcile(key):
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    queue = WorkQueue(reconcile)
    before = errors("unexpected")
    outcomes.extend([RuntimeError("boom")] * 8)
    delays = [asyncio.run(queue.reconcile_safely(KEY)) for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert errors("unexpected") == before + 8
    # Another run's failures are its own.
    outcomes.append(RuntimeError("boom"))
    assert asyncio.run(queue.reconcile_safely(("ml", "other"))) == 1.0
    # A success resets the count, and returns the reconcile's own delay.
    outcomes.extend([30.0, RuntimeError("boom")])
    assert asyncio.run(queue.reconcile_safely(KEY)) == 30.0
    assert asyncio.run(queue.reconcile_safely(KEY)) == 1.0
    # A run that is gone starts again from the first delay.
    outcomes.append(RuntimeError("boom"))
    assert asyncio.run(queue.reconcile_safely(KEY)) == 2.0
    queue.forget(KEY)
    outcomes.append(RuntimeError("boom"))
    assert asyncio.run(queue.reconcile_safely(KEY)) == 1.0


def test_a_temporary_error_is_retried_after_its_own_delay_without_counting_a_failure() -> None:
    outcomes: list[BaseException] = []

    async def reconcile(key):
        raise outcomes.pop(0)

    queue = WorkQueue(reconcile)
    before = errors("temporary")
    outcomes.extend([kopf.TemporaryError("wait", delay=7), kopf.TemporaryError("wait", delay=0)])
    assert asyncio.run(queue.reconcile_safely(KEY)) == 7.0
    # No delay given: five seconds.
    assert asyncio.run(queue.reconcile_safely(KEY)) == 5.0
    assert errors("temporary") == before + 2
    outcomes.append(RuntimeError("boom"))
    assert asyncio.run(queue.reconcile_safely(KEY)) == 1.0


def test_every_reconcile_is_counted_and_timed() -> None:
    async def reconcile(key):
        return None

    queue = WorkQueue(reconcile)
    reconciles = metrics.RECONCILES._value.get()
    count, total = seconds_observed()
    started = time.monotonic()
    assert asyncio.run(queue.reconcile_safely(KEY)) is None
    elapsed = time.monotonic() - started
    assert metrics.RECONCILES._value.get() == reconciles + 1
    new_count, new_total = seconds_observed()
    assert new_count == count + 1
    # The observed duration lies within the call.
    assert 0 <= new_total - total <= elapsed


def test_requests_coalesce_and_a_returned_delay_brings_the_run_back() -> None:
    calls: list[tuple[str, str]] = []

    async def reconcile(key):
        calls.append(key)
        # The first reconcile asks for another look shortly.
        return 0.01 if len(calls) == 1 else None

    async def scenario() -> None:
        queue = WorkQueue(reconcile)
        queue.request(KEY)
        queue.request(KEY)  # coalesced with the first: one worker
        await until(lambda: len(calls) == 2 and not queue._workers)
        await queue.idle()
        assert calls == [KEY, KEY]

    asyncio.run(scenario())


def test_a_delayed_request_keeps_the_earliest_due_time() -> None:
    async def reconcile(key):
        return None

    async def scenario() -> None:
        queue = WorkQueue(reconcile)
        loop = asyncio.get_running_loop()
        queue.request(KEY, 100)
        first = queue._timers[KEY].when()
        assert first == pytest.approx(loop.time() + 100, abs=5)
        queue.request(KEY, 200)  # later: the earlier timer stays
        assert queue._timers[KEY].when() == first
        queue.request(KEY, 50)  # earlier: replaces it
        assert queue._timers[KEY].when() < first
        queue.stop()

    asyncio.run(scenario())


def test_a_delayed_request_fires() -> None:
    calls: list[tuple[str, str]] = []

    async def reconcile(key):
        calls.append(key)

    async def scenario() -> None:
        queue = WorkQueue(reconcile)
        queue.request(KEY, 0.01)
        assert calls == []
        await until(lambda: calls == [KEY])
        assert KEY not in queue._timers

    asyncio.run(scenario())


def test_idle_returns_after_stop_cancelled_the_running_reconcile() -> None:
    async def scenario() -> None:
        running = asyncio.Event()
        release = asyncio.Event()

        async def reconcile(key):
            running.set()
            await release.wait()

        queue = WorkQueue(reconcile)
        queue.request(KEY)
        await asyncio.wait_for(running.wait(), 10)
        queue.stop()
        # A cancelled reconcile is not an error of idle().
        await asyncio.wait_for(queue.idle(), 10)
        assert not queue._workers

    asyncio.run(scenario())


def test_forgetting_a_run_that_never_failed_is_no_error() -> None:
    async def reconcile(key):
        return None

    WorkQueue(reconcile).forget(KEY)


def test_a_returned_delay_is_a_timer_not_an_immediate_rerun() -> None:
    calls: list[tuple[str, str]] = []

    async def reconcile(key):
        calls.append(key)
        return 60.0

    async def scenario() -> None:
        queue = WorkQueue(reconcile)
        loop = asyncio.get_running_loop()
        queue.request(KEY)
        await until(lambda: KEY in queue._timers and not queue._workers)
        assert calls == [KEY]
        assert queue._timers[KEY].when() == pytest.approx(loop.time() + 60, abs=5)
        # Any positive delay waits, even under a second.
        queue.request(("ml", "soon"), 0.5)
        assert ("ml", "soon") in queue._timers and ("ml", "soon") not in queue._workers
        queue.stop()

    asyncio.run(scenario())


def test_each_retry_is_logged_with_the_run_and_its_delay(caplog: pytest.LogCaptureFixture) -> None:
    outcomes: list[BaseException] = [
        kopf.TemporaryError("Job not created yet", delay=7),
        RuntimeError("boom"),
    ]

    async def reconcile(key):
        raise outcomes.pop(0)

    queue = WorkQueue(reconcile)
    with caplog.at_level("INFO", logger="zthumb_operator"):
        asyncio.run(queue.reconcile_safely(KEY))
        asyncio.run(queue.reconcile_safely(KEY))
    assert caplog.messages == [
        "run ml/r: Job not created yet (retry in 7s)",
        "run ml/r: reconcile failed (attempt 1, retry in 1.0s)",
    ]
    assert caplog.records[1].exc_info is not None and "boom" in caplog.text
