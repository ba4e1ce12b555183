"""The per-run work queue: a run is never reconciled twice at once.

Requests for one run coalesce while its reconcile runs; a delayed request keeps the
earliest due time. A failing reconcile is retried: after ``kopf.TemporaryError.delay``,
or with exponential backoff (capped at a minute) for anything unexpected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import kopf

from zthumb_operator import metrics
from zthumb_operator.status import Key

log = logging.getLogger("zthumb_operator")

# One reconcile of a run: seconds until it wants another look, or None.
Reconcile = Callable[[Key], Awaitable[float | None]]


class WorkQueue:
    def __init__(self, reconcile: Reconcile) -> None:
        self.reconcile = reconcile
        self._dirty: set[Key] = set()
        self._workers: dict[Key, asyncio.Task[None]] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}

    def request(self, key: Key, delay: float = 0.0) -> None:
        """Reconcile ``key`` now (coalesced) or after ``delay`` seconds (earliest wins)."""
        loop = asyncio.get_running_loop()
        if delay > 0:
            due = loop.time() + delay
            timer = self._timers.get(key)
            if timer is not None and timer.when() <= due:
                return
            if timer is not None:
                timer.cancel()
            self._timers[key] = loop.call_at(due, self._fire, key)
            return
        self._dirty.add(key)
        if key not in self._workers:
            self._workers[key] = loop.create_task(self._work(key))

    def forget(self, key: Key) -> None:
        """The run is gone: drop its failure count."""
        self._failures.pop(key, None)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.request(key)

    async def _work(self, key: Key) -> None:
        try:
            while key in self._dirty:
                self._dirty.discard(key)
                delay = await self.reconcile_safely(key)
                if delay is not None:
                    self.request(key, delay)
        finally:
            self._workers.pop(key, None)

    async def idle(self) -> None:
        """Wait until no reconcile is running (tests)."""
        while self._workers:
            await asyncio.gather(*list(self._workers.values()), return_exceptions=True)

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._workers.values():
            task.cancel()

    async def reconcile_safely(self, key: Key) -> float | None:
        metrics.RECONCILES.inc()
        started = time.monotonic()
        try:
            delay = await self.reconcile(key)
            self._failures.pop(key, None)
            return delay
        except kopf.TemporaryError as exc:
            metrics.RECONCILE_ERRORS.labels(kind="temporary").inc()
            log.info("run %s/%s: %s (retry in %ss)", *key, exc, exc.delay)
            return float(exc.delay or 5)
        except Exception:
            metrics.RECONCILE_ERRORS.labels(kind="unexpected").inc()
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = min(60.0, 0.5 * 2**failures)
            log.exception("run %s/%s: reconcile failed (attempt %d, retry in %.1fs)", *key, failures, delay)
            return delay
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
