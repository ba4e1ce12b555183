"""One device, one pipeline call at a time: a worker thread fed by a bounded queue.

Jobs wait in FIFO order. A job with a batch key (``zthumb.batching``) runs together with the
waiting jobs of the same key, up to ``max_batch`` of them, in one call of its ``run_batch``.
``enqueue`` refuses with ``QueueFullError`` when ``max_queue`` jobs are already waiting. A job
whose client disconnects, or whose deadline passes, while it waits is cancelled, never runs and
frees its queue slot at once; one that is already running gets its cancel event set, which the
backend checks after every denoising step (in a batch, the call stops once all are cancelled).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from zthumb.batching import BatchKey, BatchQueue
from zthumb.errors import GenerationCancelledError, GenerationTimeoutError, QueueFullError
from zthumb.metrics import Metrics

log = logging.getLogger("zthumb.worker")
T = TypeVar("T")
POLL_S = 0.05
# Runs the items of a batch: one result or exception per item, in order.
BatchRunner = Callable[[Sequence[Any], Sequence[threading.Event]], list[Any]]


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Job:
    def __init__(
        self,
        fn: Callable[[threading.Event], Any],
        name: str,
        batch_key: BatchKey | None = None,
        item: Any = None,
        run_batch: BatchRunner | None = None,
    ) -> None:
        self.fn = fn  # run alone (also a batch of one)
        self.name = name
        self.batch_key = batch_key if run_batch is not None else None
        self.item = item  # what run_batch gets for this job
        self.run_batch = run_batch
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
    def __init__(
        self,
        max_queue: int,
        metrics: Metrics | None = None,
        *,
        max_batch: int = 1,
        batch_wait_s: float = 0.0,
    ) -> None:
        self.max_queue = max_queue
        self.metrics = metrics
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._queue: BatchQueue[Job] = BatchQueue()
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

    def enqueue(
        self,
        fn: Callable[[threading.Event], Any],
        name: str = "job",
        *,
        force: bool = False,
        batch_key: BatchKey | None = None,
        item: Any = None,
        run_batch: BatchRunner | None = None,
    ) -> Job:
        """Queue ``fn(cancel_event)``; thread-safe. ``force`` skips the bound (startup jobs).

        With ``batch_key`` and ``run_batch``, same-key jobs may run as ``run_batch(items, cancels)``."""
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
        job = Job(fn, name, batch_key, item, run_batch)
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
            taken = self._queue.take(self.max_batch, self.batch_wait_s)
            if taken is None:
                return
            jobs, waited = taken
            live = []
            for job in jobs:
                self._release_slot(job)
                if job.future.set_running_or_notify_cancel():
                    live.append(job)
                else:
                    log.info("skipped a job cancelled while queued", extra={"job": job.name})
            if live:
                self._run_jobs(live, waited if jobs[0].batch_key is not None else None)

    def _run_jobs(self, jobs: list[Job], batch_wait_s: float | None) -> None:
        started = time.perf_counter()
        for job in jobs:
            job.started_at = started
        self.started_jobs += len(jobs)
        if self.metrics:
            self.metrics.inflight.set(len(jobs))
            if batch_wait_s is not None:
                self.metrics.batch_size.observe(len(jobs))
                self.metrics.batch_wait_seconds.observe(batch_wait_s)
        try:
            outcomes = self._outcomes(jobs)
            for job, outcome in zip(jobs, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)
        finally:
            elapsed = (time.perf_counter() - started) / len(jobs)  # per request, for Retry-After
            self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * elapsed
            if self.metrics:
                self.metrics.inflight.set(0)

    @staticmethod
    def _outcomes(jobs: list[Job]) -> list[Any]:
        """A result or an exception per job; never raises (each job's future gets its own)."""
        try:
            if len(jobs) == 1:  # a batch of one runs exactly as an unbatched request
                return [jobs[0].fn(jobs[0].cancel_event)]
            run_batch = jobs[0].run_batch
            assert run_batch is not None  # only keyed jobs are batched
            return run_batch([job.item for job in jobs], [job.cancel_event for job in jobs])
        except BaseException as exc:
            return [exc] * len(jobs)

    async def submit(
        self,
        fn: Callable[[threading.Event], T],
        *,
        timeout: float,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
        name: str = "generate",
        batch_key: BatchKey | None = None,
        item: Any = None,
        run_batch: BatchRunner | None = None,
    ) -> tuple[T, float]:
        """Run ``fn`` on the worker (or ``item`` in a batch); returns (result, seconds queued)."""
        job = self.enqueue(fn, name, batch_key=batch_key, item=item, run_batch=run_batch)
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
