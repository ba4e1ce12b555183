"""The FastAPI application: lifespan (engine, device worker, serving layer), middleware, the routes."""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zthumb.engine import Engine
from zthumb.errors import install_error_handlers
from zthumb.metrics import Metrics
from zthumb.routes import router
from zthumb.serving import Serving
from zthumb.settings import Settings
from zthumb.version import __version__
from zthumb.worker import Worker

log = logging.getLogger("zthumb.app")
access_log = logging.getLogger("zthumb.access")


class AccessLogMiddleware:
    """Request id + one access-log line per request (method, path, status, seconds; no headers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        for name, value in scope.get("headers", []):
            if name == b"x-request-id" and value and len(value) <= 64:
                request_id = value.decode("latin-1")
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["path"] not in ("/healthz", "/readyz", "/metrics"):
                access_log.info(
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "seconds": round(time.perf_counter() - started, 4),
                    },
                )


def freeze_loaded_objects() -> None:
    """Move every object alive now (the loaded pipelines: modules, parameters, configs) out of the
    cyclic collector's reach, as vLLM does after start-up. Without it a full collection walks the
    whole model graph, and the request running at that moment pauses for it (on the tiny model, one
    request in ~50 by 0.35 s: hack/bench_server.py); frozen, it walks what requests allocate."""
    gc.collect()  # garbage of the loading itself goes first: frozen objects are never collected
    gc.freeze()
    log.info("froze the loaded objects for the collector", extra={"objects": gc.get_freeze_count()})


def build_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """Create the app; the models load in a background job once the app starts (lifespan)."""
    settings = settings or Settings()
    metrics = engine.metrics if engine is not None else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        eng = engine or Engine(settings, metrics)
        worker = Worker(settings.max_queue, metrics)
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
    install_error_handlers(app)
    app.add_middleware(AccessLogMiddleware)

    app.include_router(router)
    return app
