"""The HTTP routes: thin, over the ``Engine`` and the ``Serving`` layer that ``build_app`` puts in
``app.state`` when the app starts. Which of them need the API key is ``auth``'s business (checked
by a middleware before any route runs)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from zthumb import reports
from zthumb.auth import openapi_bearer
from zthumb.engine import Engine
from zthumb.protocol import (
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ModelsResponse,
    OpenAIImageRequest,
    OpenAIImagesResponse,
    ReadyResponse,
)
from zthumb.serving import MIME_TYPES, Serving


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


EngineDep = Annotated[Engine, Depends(get_engine)]
ServingDep = Annotated[Serving, Depends(get_serving)]

router = APIRouter()
# The API behind the key: its OpenAPI document shows the bearer scheme.
protected = APIRouter(dependencies=[Depends(openapi_bearer)])


@router.get("/healthz", response_model=HealthResponse, tags=["health"])
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse, tags=["health"])
async def readyz(engine: EngineDep) -> Any:
    readiness = engine.readiness()
    if readiness.ready:
        return readiness
    return JSONResponse(readiness.model_dump(), status_code=503)


@router.get("/metrics", tags=["health"])
async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@protected.get("/models", response_model=ModelsResponse)
async def models(engine: EngineDep) -> ModelsResponse:
    return await run_in_threadpool(engine.models)


@protected.post(
    "/generate",
    response_model=GenerateResponse,
    responses={200: {"content": {m: {} for m in MIME_TYPES.values()}}},
)
async def generate(body: GenerateRequest, request: Request, serving: ServingDep) -> Any:
    return await serving.generate(body, request)


@protected.post("/v1/images/generations", response_model=OpenAIImagesResponse, tags=["openai"])
async def openai_images(
    body: OpenAIImageRequest, request: Request, serving: ServingDep
) -> OpenAIImagesResponse:
    """OpenAI's images API on the same engine, queue, limits and metrics as /generate."""
    return await serving.openai_images(body, request)


router.include_router(protected)
router.include_router(reports.router)
