"""Worker: dynamic batching of same-key jobs (no model: fake batch runners)."""

from __future__ import annotations

import asyncio
import threading

import pytest


def _poll(condition, timeout: float = 5.0) -> bool:
    """Wait for a condition by polling, bounded."""
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        done.wait(0.01)
    return condition()


def _blocked_worker(**kwargs):
    """A started worker whose device is busy until the returned gate is set."""
    from zthumb.metrics import Metrics
    from zthumb.worker import Worker

    metrics = Metrics()
    worker = Worker(metrics=metrics, **kwargs)
    worker.start()
    gate, busy = threading.Event(), threading.Event()
    worker.enqueue(lambda _c: busy.set() or gate.wait(10))
    assert busy.wait(5)
    return worker, metrics, gate


def test_same_key_jobs_share_one_call_up_to_max_batch_others_run_alone():
    from zthumb.errors import QueueFullError

    worker, metrics, gate = _blocked_worker(max_queue=6, max_batch=4, batch_wait_s=0.0)
    calls: list[list[str]] = []
    alone: list[str] = []

    def run_batch(items, cancels):
        assert len(items) == len(cancels)
        calls.append(list(items))
        return [f"{item}!" for item in items]

    def enqueue(name: str, key: str):
        return worker.enqueue(
            lambda _c, n=name: alone.append(n) or f"{n}!", batch_key=(key,), item=name, run_batch=run_batch
        )

    try:
        jobs = [enqueue(name, name[0]) for name in ("a1", "a2", "b1", "a3", "a4", "a5")]
        with pytest.raises(QueueFullError) as full:  # the bound holds for batchable jobs too
            enqueue("a6", "a")
        assert full.value.status == 429 and int(full.value.headers["Retry-After"]) >= 1
        gate.set()
        results = [job.future.result(10) for job in jobs]
    finally:
        gate.set()
        worker.stop()
    assert results == ["a1!", "a2!", "b1!", "a3!", "a4!", "a5!"]
    assert calls == [["a1", "a2", "a3", "a4"]]  # the oldest first, taken past b1, at most 4
    assert alone == ["b1", "a5"]  # a batch of one runs the job's own function
    value = metrics.registry.get_sample_value
    assert value("zthumb_batch_size_count") == 3
    assert value("zthumb_batch_size_sum") == 6
    assert value("zthumb_batch_size_bucket", {"le": "1.0"}) == 2
    assert value("zthumb_batch_wait_seconds_count") == 3
    assert value("zthumb_queue_depth") == 0


def test_a_failure_reported_for_one_item_reaches_only_that_request():
    worker, _metrics, gate = _blocked_worker(max_queue=4, max_batch=4)

    def run_batch(items, _cancels):
        return [ValueError(f"bad {item}") if item == "bad" else item for item in items]

    try:
        jobs = [
            worker.enqueue(lambda _c: None, batch_key=("k",), item=item, run_batch=run_batch)
            for item in ("good", "bad", "fine")
        ]
        gate.set()
        assert jobs[0].future.result(10) == "good"
        with pytest.raises(ValueError, match="bad bad"):
            jobs[1].future.result(10)
        assert jobs[2].future.result(10) == "fine"
    finally:
        gate.set()
        worker.stop()


def test_cancel_and_timeout_inside_a_batch_answer_those_requests_and_spare_the_others():
    """A disconnect and a timeout of two requests in a running batch: both are answered at once
    (499, 504) while the batch runs on; their batch-mate gets its result; metrics count both."""
    from zthumb.errors import GenerationCancelledError, GenerationTimeoutError

    worker, metrics, gate = _blocked_worker(max_queue=4, max_batch=4)
    running = threading.Event()
    seen_cancels: list[threading.Event] = []
    both_answered = threading.Event()

    def run_batch(items, cancels):
        seen_cancels.extend(cancels)
        running.set()
        assert both_answered.wait(10)
        return list(items)

    async def run() -> list[object]:
        async def gone_once_running() -> bool:
            return running.is_set()

        def submit(item: str, **kwargs):
            return worker.submit(lambda _c: item, batch_key=("k",), item=item, run_batch=run_batch, **kwargs)

        tasks = [
            asyncio.ensure_future(submit("leaves", timeout=30, is_disconnected=gone_once_running)),
            asyncio.ensure_future(submit("slow", timeout=0.3)),
            asyncio.ensure_future(submit("stays", timeout=30)),
        ]
        assert await asyncio.to_thread(_poll, lambda: worker.waiting == 3)
        gate.set()
        assert await asyncio.to_thread(running.wait, 10)
        first_two = await asyncio.gather(*tasks[:2], return_exceptions=True)
        both_answered.set()
        return [*first_two, await tasks[2]]

    try:
        leaves, slow, stays = asyncio.run(run())
    finally:
        gate.set()
        both_answered.set()
        worker.stop()
    assert isinstance(leaves, GenerationCancelledError)
    assert isinstance(slow, GenerationTimeoutError)
    assert stays[0] == "stays"  # (result, seconds queued)
    assert [event.is_set() for event in seen_cancels] == [True, True, False]
    value = metrics.registry.get_sample_value
    assert value("zthumb_cancelled_total", {"reason": "disconnect"}) == 1
    assert value("zthumb_cancelled_total", {"reason": "timeout"}) == 1
    assert value("zthumb_batch_size_sum") == 3


def test_a_job_cancelled_while_queued_takes_no_place_in_a_batch():
    worker, metrics, gate = _blocked_worker(max_queue=4, max_batch=2)
    calls: list[list[str]] = []

    def run_batch(items, _cancels):
        calls.append(list(items))
        return list(items)

    try:
        jobs = [
            worker.enqueue(lambda _c, i=item: i, batch_key=("k",), item=item, run_batch=run_batch)
            for item in ("first", "gone", "second")
        ]
        assert jobs[1].cancel() is True
        gate.set()
        assert [jobs[0].future.result(10), jobs[2].future.result(10)] == ["first", "second"]
    finally:
        gate.set()
        worker.stop()
    assert calls == [["first", "second"]]
    assert metrics.registry.get_sample_value("zthumb_queue_depth") == 0


def test_the_worker_waits_for_batch_mates_and_closes_a_full_batch_at_once():
    """With ZTHUMB_BATCH_WAIT_MS, a request taken from an empty queue waits for a batch-mate that
    arrives after it; the batch runs as soon as it is full, not at the end of the wait."""
    from zthumb.metrics import Metrics
    from zthumb.worker import Worker

    metrics = Metrics()
    worker = Worker(max_queue=4, metrics=metrics, max_batch=2, batch_wait_s=30.0)
    worker.start()
    calls: list[list[str]] = []

    def run_batch(items, _cancels):
        calls.append(list(items))
        return list(items)

    def enqueue(item: str):
        return worker.enqueue(lambda _c: item, batch_key=("k",), item=item, run_batch=run_batch)

    try:
        first = enqueue("first")
        assert _poll(lambda: len(worker._queue) == 0)  # taken by the worker, which now waits
        second = enqueue("second")
        assert [first.future.result(20), second.future.result(20)] == ["first", "second"]
    finally:
        worker.stop()
    assert calls == [["first", "second"]]
    value = metrics.registry.get_sample_value
    assert value("zthumb_batch_wait_seconds_count") == 1
    assert value("zthumb_batch_wait_seconds_sum") < 30.0  # closed when full, not at the deadline
