"""Dynamic batching: waiting requests that can share one pipeline call run as one batch.

``batch_key`` is the one definition of "can share": two requests with equal keys differ only in
what each image keeps for itself (prompt, negative prompt, seed, ``num_images``) or in what never
reaches the pipeline (output and response format, which API they came through).
``BatchQueue`` is the worker's FIFO: ``take`` hands out the oldest job together with the waiting
jobs of the same key, up to ``ZTHUMB_MAX_BATCH``, waiting at most ``ZTHUMB_BATCH_WAIT_MS`` for
more to arrive. ``run_batch`` runs such a batch on the engine and splits the results back; one
request's failure is its own: anything that fails the shared call makes every request of the
batch run alone, so each gets the answer it would have got alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from zthumb.backends.batched import generate_batch
from zthumb.engine import Result
from zthumb.errors import GenerationCancelledError

if TYPE_CHECKING:
    import concurrent.futures

    from zthumb.backends import Backend
    from zthumb.engine import Engine, Plan

log = logging.getLogger("zthumb.batching")

BatchKey = tuple[Hashable, ...]


def batch_key(plan: Plan, backend: Backend) -> BatchKey | None:
    """Requests with equal keys may share a pipeline call; None: the request always runs alone.

    The key: backend (and with it the model and its scheduler, fixed per backend), width, height,
    steps, guidance scale, the decoder (full VAE or tiny: one call decodes all its images alike),
    and the active adapter set with scales (by resolved file and sha256, order-free, scale-0
    entries left out: exactly what ``apply_adapters`` activates). A compiled UNet runs alone: a
    new batch size would compile a new graph.
    """
    if backend.compiled is not None:
        return None
    params = plan.params
    adapters = tuple(sorted((use.ref.key, use.scale, use.pin) for use in plan.adapters if use.scale > 0))
    return (
        plan.backend,
        params.width,
        params.height,
        params.steps,
        params.guidance_scale,
        params.decoder,
        adapters,
    )


class Batchable(Protocol):
    batch_key: BatchKey | None

    @property
    def future(self) -> concurrent.futures.Future[Any]: ...


J = TypeVar("J", bound=Batchable)


class BatchQueue(Generic[J]):
    """A FIFO of jobs (``None`` stops the taker) from which a batch is taken at once."""

    def __init__(self) -> None:
        self._items: deque[J | None] = deque()
        self._changed = threading.Condition()

    def __len__(self) -> int:
        """Jobs not yet taken."""
        with self._changed:
            return len(self._items)

    def put(self, job: J | None) -> None:
        with self._changed:
            self._items.append(job)
            self._changed.notify_all()

    def take(self, max_batch: int, wait_s: float) -> tuple[list[J], float] | None:
        """Block for the oldest job; return it with same-key jobs, and the seconds spent waiting
        for them once the oldest was there (None when told to stop).

        A job without a key runs alone. Same-key jobs are taken past others in the queue: the
        batch runs when its oldest request would have run, so nobody waits longer for it.
        """
        with self._changed:
            while not self._items:
                self._changed.wait()
            first = self._items.popleft()
            if first is None:
                return None
            batch = [first]
            if first.batch_key is None or max_batch <= 1:
                return batch, 0.0
            taken = time.perf_counter()
            deadline = taken + wait_s
            while True:
                self._gather(batch, first.batch_key, max_batch)
                now = time.perf_counter()
                if len(batch) >= max_batch or now >= deadline:
                    return batch, now - taken
                self._changed.wait(deadline - now)

    def _gather(self, batch: list[J], key: BatchKey, max_batch: int) -> None:
        kept: deque[J | None] = deque()
        for job in self._items:
            if (
                job is not None
                and len(batch) < max_batch
                and job.batch_key == key
                and not job.future.cancelled()  # left for the worker to drop; takes no place
            ):
                batch.append(job)
            else:
                kept.append(job)
        self._items = kept


def run_batch(engine: Engine, plans: Sequence[Plan], cancels: Sequence[threading.Event]) -> list[Any]:
    """Generate same-key plans in one pipeline call: a ``Result`` or an exception per plan."""
    try:
        return _together(engine, plans, cancels)
    except GenerationCancelledError as exc:  # raised only once every request was cancelled
        return [exc] * len(plans)
    except Exception:
        log.exception("a batched generation failed; its %d requests run one by one", len(plans))
        return [_alone(engine, plan, cancel) for plan, cancel in zip(plans, cancels, strict=True)]


def _alone(engine: Engine, plan: Plan, cancel: threading.Event) -> Any:
    if cancel.is_set():
        return GenerationCancelledError("generation cancelled")
    try:
        return engine.execute(plan, cancel)
    except Exception as exc:
        return exc


def _together(engine: Engine, plans: Sequence[Plan], cancels: Sequence[threading.Event]) -> list[Any]:
    backend = engine.backends[plans[0].backend]
    applied, adapter_seconds = engine.activate(plans[0])  # equal keys: the same adapter set
    started = time.perf_counter()
    outcomes = generate_batch(backend, [plan.params for plan in plans], cancels)
    generate_seconds = time.perf_counter() - started
    results: list[Any] = []
    for plan, outcome in zip(plans, outcomes, strict=True):
        if isinstance(outcome, Exception):
            results.append(outcome)
            continue
        # Counted per request, as a request served alone is: one generation each.
        engine.metrics.generation_seconds.labels(backend=backend.name, decoder=plan.params.decoder).observe(
            generate_seconds
        )
        outcomes_of_plan = engine.adapter_outcomes(plan, applied)
        results.append(Result(plan, outcome, applied, adapter_seconds, generate_seconds, outcomes_of_plan))
    return results
