"""The FastAPI application: thin routes over ``Engine`` and the device ``Worker``."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zthumb.engine import MIME_TYPES, Engine
from zthumb.errors import UnauthorizedError, ZThumbError, install_error_handlers
from zthumb.metrics import Metrics
from zthumb.protocol import (
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ModelsResponse,
    ReadyResponse,
    Timings,
)
from zthumb.settings import Settings
from zthumb.version import __version__
from zthumb.worker import Worker

log = logging.getLogger("zthumb.app")
access_log = logging.getLogger("zthumb.access")

_bearer = HTTPBearer(auto_error=False)


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
        worker.start()
        # Loading runs on the device worker, off the event loop: /healthz answers at once,
        # /readyz says 503 until the default backend (and its env-default adapter) is loaded.
        app.state.load_job = worker.enqueue(eng.load_all, "load", force=True)
        log.info("starting", extra={"backends": ",".join(settings.backends), "version": __version__})
        try:
            yield
        finally:
            worker.stop()

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

    expected_key = settings.api_key.get_secret_value() if settings.api_key else None

    async def require_api_key(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> None:
        if expected_key is None:
            return
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise UnauthorizedError("missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode(), expected_key.encode()):
            raise UnauthorizedError("invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz", response_model=HealthResponse, tags=["health"])
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get("/readyz", response_model=ReadyResponse, tags=["health"])
    async def readyz(request: Request) -> Any:
        readiness = request.app.state.engine.readiness()
        if readiness.ready:
            return readiness
        return JSONResponse(readiness.model_dump(), status_code=503)

    @app.get("/metrics", tags=["health"])
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/models", response_model=ModelsResponse, dependencies=[Depends(require_api_key)])
    async def models(request: Request) -> ModelsResponse:
        return await run_in_threadpool(request.app.state.engine.models)

    @app.post(
        "/generate",
        response_model=GenerateResponse,
        dependencies=[Depends(require_api_key)],
        responses={200: {"content": {m: {} for m in MIME_TYPES.values()}}},
    )
    async def generate(body: GenerateRequest, request: Request) -> Any:
        eng: Engine = request.app.state.engine
        worker: Worker = request.app.state.worker
        started = time.perf_counter()
        label = body.backend or settings.backend
        if label not in settings.backends:
            label = "unknown"
        status = "500"
        try:
            plan = await run_in_threadpool(eng.prepare, body)
            result, queued = await worker.submit(
                partial(eng.execute, plan),
                timeout=settings.request_timeout_s,
                is_disconnected=request.is_disconnected,
            )
            encode_started = time.perf_counter()
            encoded = await run_in_threadpool(eng.encode, result.images, plan.output_format)
            encode_seconds = time.perf_counter() - encode_started
            adapter = eng.adapter_used(result)
            timings = Timings(
                queue_s=round(queued, 4),
                adapter_s=round(result.adapter_seconds, 4),
                generate_s=round(result.generate_seconds, 4),
                encode_s=round(encode_seconds, 4),
                total_s=round(time.perf_counter() - started, 4),
            )
            log.info(
                "generated",
                extra={
                    "request_id": request.scope.get("state", {}).get("request_id"),
                    "backend": plan.backend,
                    "prompt_chars": len(body.prompt),
                    "size": f"{plan.params.width}x{plan.params.height}",
                    "steps": plan.params.steps,
                    "num_images": plan.params.num_images,
                    "seed": plan.params.seed,
                    "lora_path": adapter.path if adapter else None,
                    "lora_scale": adapter.scale if adapter else None,
                    "seconds": timings.total_s,
                },
            )
            status = "200"
            if plan.response_format == "bytes":
                headers = {
                    "X-ZThumb-Seed": str(plan.params.seed),
                    "X-ZThumb-Backend": plan.backend,
                    "X-ZThumb-Timings": timings.model_dump_json(),
                }
                if adapter is not None:
                    headers |= {
                        "X-ZThumb-Lora-Path": adapter.path,
                        "X-ZThumb-Lora-Scale": f"{adapter.scale:g}",
                        "X-ZThumb-Lora-Sha256": adapter.sha256,
                    }
                return Response(encoded[0], media_type=MIME_TYPES[plan.output_format], headers=headers)
            return GenerateResponse(
                images=eng.images_out(encoded, plan.output_format),
                format=plan.output_format,
                seed=plan.params.seed,
                backend=plan.backend,
                width=plan.params.width,
                height=plan.params.height,
                steps=plan.params.steps,
                guidance_scale=plan.params.guidance_scale,
                adapter=adapter,
                timings=timings,
            )
        except ZThumbError as exc:
            status = str(exc.status)
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.requests.labels(backend=label, status=status).inc()
            metrics.request_seconds.labels(backend=label, status=status).observe(elapsed)

    return app
