"""One device, one generation at a time: a worker thread fed by a bounded queue.

Jobs wait in FIFO order. ``enqueue`` refuses with ``QueueFullError`` when ``max_queue`` jobs are
already waiting. A job whose client disconnects, or whose deadline passes, while it waits is
cancelled, never runs and frees its queue slot at once; one that is already running gets its
cancel event set, which the backend checks after every denoising step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from zthumb.errors import GenerationCancelledError, GenerationTimeoutError, QueueFullError
from zthumb.metrics import Metrics

log = logging.getLogger("zthumb.worker")
T = TypeVar("T")
POLL_S = 0.05


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Job:
    def __init__(self, fn: Callable[[threading.Event], Any], name: str) -> None:
        self.fn = fn
        self.name = name
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.cancel_event = threading.Event()
        self.enqueued_at = time.perf_counter()
        self.started_at: float | None = None
        self.counted = True  # holds a slot of the bounded queue (and of zthumb_queue_depth)

    def cancel(self) -> bool:
        """Cancel; True if the job had not started (it will never run)."""
        self.cancel_event.set()
        return self.future.cancel()


class Worker:
    def __init__(self, max_queue: int, metrics: Metrics | None = None) -> None:
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="zthumb-worker", daemon=True)
        self._avg_seconds = 1.0
        self.started_jobs = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        return self._waiting

    def retry_after(self) -> int:
        return max(1, math.ceil((self._waiting + 1) * self._avg_seconds))

    def enqueue(self, fn: Callable[[threading.Event], Any], name: str = "job", *, force: bool = False) -> Job:
        """Queue ``fn(cancel_event)``; thread-safe. ``force`` skips the bound (startup jobs)."""
        with self._lock:
            if not force and self._waiting >= self.max_queue:
                if self.metrics:
                    self.metrics.queue_rejected.inc()
                raise QueueFullError(
                    f"the queue is full ({self._waiting} waiting); retry later",
                    headers={"Retry-After": str(self.retry_after())},
                )
            self._waiting += 1
            self._set_depth()
        job = Job(fn, name)
        self._queue.put(job)
        return job

    def _set_depth(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(self._waiting)

    def _release_slot(self, job: Job) -> None:
        """The job no longer waits: dequeued by the worker, or cancelled while queued (once)."""
        with self._lock:
            if job.counted:
                job.counted = False
                self._waiting -= 1
                self._set_depth()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._release_slot(job)
            if not job.future.set_running_or_notify_cancel():
                log.info("skipped a job cancelled while queued", extra={"job": job.name})
                continue
            job.started_at = time.perf_counter()
            self.started_jobs += 1
            if self.metrics:
                self.metrics.inflight.set(1)
            try:
                result = job.fn(job.cancel_event)
            except BaseException as exc:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
            finally:
                elapsed = time.perf_counter() - job.started_at
                self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * elapsed
                if self.metrics:
                    self.metrics.inflight.set(0)

    async def submit(
        self,
        fn: Callable[[threading.Event], T],
        *,
        timeout: float,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
        name: str = "generate",
    ) -> tuple[T, float]:
        """Run ``fn`` on the worker; returns (result, seconds waited in the queue)."""
        job = self.enqueue(fn, name)
        wrapped = asyncio.wrap_future(job.future)
        # A job abandoned while running still ends (it stops at its next step); its outcome is
        # nobody's then: retrieve it, or asyncio logs "Future exception was never retrieved".
        wrapped.add_done_callback(_retrieve)
        deadline = job.enqueued_at + timeout
        try:
            while True:
                done, _ = await asyncio.wait({wrapped}, timeout=POLL_S)
                if done:
                    result = wrapped.result()
                    started = job.started_at or job.enqueued_at
                    return result, started - job.enqueued_at
                if is_disconnected is not None and await is_disconnected():
                    self._cancel(job, "disconnect")
                    raise GenerationCancelledError("the client disconnected")
                if time.perf_counter() > deadline:
                    self._cancel(job, "timeout")
                    raise GenerationTimeoutError(
                        f"the request did not finish within ZTHUMB_REQUEST_TIMEOUT_S={timeout:g}s"
                    )
        except asyncio.CancelledError:
            self._cancel(job, "disconnect")
            raise

    def _cancel(self, job: Job, reason: str) -> None:
        never_ran = job.cancel()
        if never_ran:  # free its slot now, not when the worker reaches it
            self._release_slot(job)
        if self.metrics:
            self.metrics.cancelled.labels(reason=reason).inc()
        log.info("job cancelled", extra={"reason": reason, "while": "queued" if never_ran else "running"})
