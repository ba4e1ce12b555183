"""Worker: what a client that gives up leaves behind (found by hack/bench_load.py)."""

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
        await asyncio.sleep(0.1)  # the job's exception reaches the loop's future

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(run())
        gc.collect()
    worker.stop()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
