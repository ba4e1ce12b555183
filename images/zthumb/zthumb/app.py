"""The FastAPI application: lifespan (engine, device worker, serving layer), middleware, the routes."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from zthumb.auth import REPORTS_LOGIN_PATH, configured_key, docs_paths, open_paths
from zthumb.engine import Engine
from zthumb.error_responses import install_error_handlers
from zthumb.metrics import Metrics
from zthumb.middleware import AccessLogMiddleware, ApiKeyMiddleware, BodyLimitMiddleware
from zthumb.reports import LOGIN_BODY_BYTES
from zthumb.routes import router
from zthumb.serving import Serving
from zthumb.sessions import Clock, LoginThrottle, SessionCookies
from zthumb.settings import Settings
from zthumb.version import __version__
from zthumb.worker import Worker

log = logging.getLogger("zthumb.app")


def freeze_loaded_objects() -> None:
    """Move every object alive now (the loaded pipelines: modules, parameters, configs) out of the
    cyclic collector's reach, as vLLM does after start-up. Without it a full collection walks the
    whole model graph, and the request running at that moment pauses for it (on the tiny model, one
    request in ~50 by 0.35 s: hack/bench/bench_server.py); frozen, it walks what requests allocate."""
    gc.collect()  # garbage of the loading itself goes first: frozen objects are never collected
    gc.freeze()
    log.info("froze the loaded objects for the collector", extra={"objects": gc.get_freeze_count()})


def build_app(
    settings: Settings | None = None, *, engine: Engine | None = None, clock: Clock = time.time
) -> FastAPI:
    """Create the app; the models load in a background job once the app starts (lifespan).
    ``clock`` (seconds) dates the report session cookies and the login throttle."""
    settings = settings or Settings()
    metrics = engine.metrics if engine is not None else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        eng = engine or Engine(settings, metrics)
        worker = Worker(
            settings.max_queue,
            metrics,
            max_batch=settings.max_batch,
            batch_wait_s=settings.batch_wait_ms / 1000,
        )
        app.state.engine = eng
        app.state.worker = worker
        app.state.serving = Serving(settings, eng, worker, metrics)
        worker.start()

        def load(cancel: threading.Event) -> None:
            eng.load_all(cancel)
            if settings.gc_freeze:
                freeze_loaded_objects()

        # Loading runs on the device worker, off the event loop: /healthz answers at once,
        # /readyz says 503 until the default backend (and its env-default adapter) is loaded.
        app.state.load_job = worker.enqueue(load, "load", force=True)
        log.info("starting", extra={"backends": ",".join(settings.backends), "version": __version__})
        try:
            yield
        finally:
            worker.stop()
            if settings.gc_freeze:
                gc.unfreeze()  # an app stopped inside a longer process (tests) leaves its objects collectable

    app = FastAPI(
        title="ZThumb",
        version=__version__,
        description="SDXL inference with per-request LoRA adapters.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    key = configured_key(settings)
    app.state.report_sessions = None if key is None else SessionCookies(key, clock)
    app.state.login_throttle = LoginThrottle(clock)
    install_error_handlers(app)
    # Added innermost first: the access log sees every answer, the key check runs before the body
    # bound, so a client without the key learns nothing and makes the server read nothing.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        per_path={REPORTS_LOGIN_PATH: LOGIN_BODY_BYTES},
    )
    app.add_middleware(
        ApiKeyMiddleware,
        key=key,
        sessions=app.state.report_sessions,
        open_paths=open_paths(settings, docs_paths(app)),
    )
    app.add_middleware(AccessLogMiddleware)

    app.include_router(router)
    return app
