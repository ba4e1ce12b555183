"""Worker: what a client that gives up leaves behind (found by hack/bench/bench_load.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

import pytest


def test_cancel_while_running_logs_no_unretrieved_future_error(caplog):
    """A running job cancelled by a disconnect ends with GenerationCancelledError at its next
    step; nobody awaits it any more, and asyncio must not log that as an ERROR with a traceback."""
    from zthumb.errors import GenerationCancelledError
    from zthumb.worker import Worker

    worker = Worker(max_queue=4)
    worker.start()
    started = threading.Event()
    finished = threading.Event()

    def job(cancel: threading.Event) -> None:
        started.set()
        try:
            assert cancel.wait(5)
            raise GenerationCancelledError("generation cancelled")  # what the step callback does
        finally:
            finished.set()

    async def disconnected() -> bool:
        return started.is_set()

    async def run() -> None:
        with pytest.raises(GenerationCancelledError):
            await worker.submit(job, timeout=30, is_disconnected=disconnected)
        assert await asyncio.to_thread(finished.wait, 5)
        # One job at a time, in order: once a later job's result is back on the loop, the cancelled
        # job's exception has reached the loop's future before it.
        await worker.submit(lambda _c: None, timeout=30)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(run())
        gc.collect()
    worker.stop()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_cancel_while_queued_frees_the_queue_slot_at_once():
    """A client that gave up while queued must not hold its slot (others would get 429) nor
    count in zthumb_queue_depth (the autoscaling signal) until the worker reaches the job."""
    from zthumb.errors import GenerationCancelledError
    from zthumb.metrics import Metrics
    from zthumb.worker import Worker

    metrics = Metrics()
    worker = Worker(max_queue=1, metrics=metrics)
    worker.start()
    gate = threading.Event()
    ran: list[str] = []
    busy = threading.Event()
    running = worker.enqueue(lambda _c: busy.set() or gate.wait(5))
    assert busy.wait(5)

    async def gone() -> bool:
        return True

    async def run() -> None:
        with pytest.raises(GenerationCancelledError):
            await worker.submit(lambda _c: ran.append("cancelled"), timeout=30, is_disconnected=gone)

    try:
        asyncio.run(run())
        assert worker.waiting == 0
        assert metrics.registry.get_sample_value("zthumb_queue_depth") == 0
        later = worker.enqueue(lambda _c: ran.append("later"))  # no QueueFullError
        assert metrics.registry.get_sample_value("zthumb_queue_depth") == 1
        gate.set()
        running.future.result(5)
        later.future.result(5)
        assert ran == ["later"]  # the cancelled job never ran
        assert worker.waiting == 0
        assert metrics.registry.get_sample_value("zthumb_queue_depth") == 0
    finally:
        gate.set()
        worker.stop()
