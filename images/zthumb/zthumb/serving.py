"""Response assembly: one ``POST /generate`` from the request body to the bytes or JSON sent back.

``POST /v1/images/generations`` (OpenAI's images API) is a translation into the same
``GenerateRequest`` (``generate_request_from_openai``) and the same ``_run``: same engine, queue,
limits, metrics and log line; only the response shape differs.

``Engine`` plans and runs a generation (on the device ``Worker``); ``Serving`` adds what
the HTTP answer needs around it: the queue, encoding, timings, the adapter used, the
log line and the request metrics. The routes (``routes.py``) stay a few lines each.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from zthumb.batching import batch_key, run_batch
from zthumb.engine import Engine, Plan, Result
from zthumb.errors import BadRequestError, InvalidRequestError, ZThumbError
from zthumb.metrics import Metrics
from zthumb.protocol import (
    AdapterUsed,
    GenerateRequest,
    GenerateResponse,
    ImageOut,
    OpenAIImage,
    OpenAIImageRequest,
    OpenAIImagesResponse,
    Timings,
)
from zthumb.settings import Settings
from zthumb.worker import Worker

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger("zthumb.app")

MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


# Pillow's format and save options per output format, chosen from hack/bench/bench_server.py's encoding
# table (server README, "Image encoding"): PNG level 1 takes half of level 6's time for 14% more
# bytes, the same pixels; JPEG 90 about half the bytes of 95; WebP 90 with method 0 a quarter of
# the time of Pillow's default (95, method 4) and under half its bytes.
SAVE_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "png": ("PNG", {"compress_level": 1}),
    "jpeg": ("JPEG", {"quality": 90}),
    "webp": ("WEBP", {"quality": 90, "method": 0}),
}


def encode(images: list[Image], fmt: str) -> list[bytes]:
    pillow_format, options = SAVE_OPTIONS[fmt]
    out = []
    for image in images:
        buffer = io.BytesIO()
        (image.convert("RGB") if pillow_format == "JPEG" else image).save(
            buffer, format=pillow_format, **options
        )
        out.append(buffer.getvalue())
    return out


def images_out(encoded: list[bytes], fmt: str) -> list[ImageOut]:
    return [
        ImageOut(index=i, mime_type=MIME_TYPES[fmt], data=base64.b64encode(data).decode("ascii"))
        for i, data in enumerate(encoded)
    ]


def adapters_used(result: Result) -> list[AdapterUsed]:
    """Every adapter of the request with its scale (scale-0 ones included), in request order."""
    if result.plan.adapter_source is None:
        return []
    source: Literal["request", "default"] = (
        "default" if result.plan.adapter_source == "default" else "request"
    )
    return [
        AdapterUsed(path=o.ref.display_path, scale=o.scale, sha256=o.ref.sha256, source=source, rank=o.rank)
        for o in result.adapters
    ]


def header_path(path: str) -> str:
    """An adapter path as a header value: UTF-8, percent-encoded (RFC 3986) but for ``/``; a
    header carries only Latin-1, and an adapter's directory may be named in any script.
    ``urllib.parse.unquote`` gives the path back; a plain ASCII name stays as it is."""
    return quote(path, safe="/")


def adapter_headers(adapters: list[AdapterUsed]) -> dict[str, str]:
    """``X-ZThumb-Lora-*`` for bytes responses.

    ``X-ZThumb-Lora-Path``/``-Scale``/``-Sha256`` describe the first adapter (as they did when a
    request had one); ``X-ZThumb-Loras`` lists all as ``path=scale`` separated by commas, and
    ``X-ZThumb-Lora-Sha256s`` their sha256s in the same order. Paths are percent-encoded
    (``header_path``), so non-ASCII, ``,`` and ``=`` stay unambiguous.
    """
    if not adapters:
        return {}
    first = adapters[0]
    return {
        "X-ZThumb-Lora-Path": header_path(first.path),
        "X-ZThumb-Lora-Scale": f"{first.scale:g}",
        "X-ZThumb-Lora-Sha256": first.sha256,
        "X-ZThumb-Loras": ",".join(f"{header_path(a.path)}={a.scale:g}" for a in adapters),
        "X-ZThumb-Lora-Sha256s": ",".join(a.sha256 for a in adapters),
    }


# Request fields of /generate that have another name in OpenAI's request.
OPENAI_FIELDS = {"width": "size", "height": "size", "num_images": "n", "backend": "model"}


def generate_request_from_openai(body: OpenAIImageRequest, backends: list[str]) -> GenerateRequest:
    """The translation behind ``POST /v1/images/generations``: the same request /generate gets."""
    if body.response_format != "b64_json":
        raise BadRequestError(
            f"response_format {body.response_format!r} is not supported: this server keeps no images to "
            "link to; use 'b64_json'",
            field="response_format",
            code="response_format_unsupported",
        )
    width = height = None
    if body.size is not None:
        width, height = (int(part) for part in body.size.split("x"))
    fields: dict[str, Any] = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "width": width,
        "height": height,
        "steps": body.steps,
        "guidance_scale": body.guidance_scale,
        "seed": body.seed,
        "num_images": body.n,
        "backend": body.model if body.model in backends else None,
        "loras": body.loras,
        "decoder": body.decoder,
        "output_format": "png",
        "response_format": "json",
    }
    try:
        return GenerateRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:  # e.g. a size that is not a multiple of 8
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else None
        field = OPENAI_FIELDS.get(name or "", name)
        raise InvalidRequestError(f"{field}: {error['msg']}", field=field) from exc


@dataclass(frozen=True)
class Generated:
    plan: Plan
    result: Result
    encoded: list[bytes]
    adapters: list[AdapterUsed]
    timings: Timings


class Serving:
    def __init__(self, settings: Settings, engine: Engine, worker: Worker, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.worker = worker
        self.metrics = metrics

    async def generate(self, body: GenerateRequest, request: Request) -> Any:
        """``POST /generate``: JSON with base64 images, or the raw image with ``X-ZThumb-*`` headers."""
        done = await self._run(body, request)
        plan, timings, adapters = done.plan, done.timings, done.adapters
        if plan.response_format == "bytes":
            headers = {
                "X-ZThumb-Seed": str(plan.params.seed),
                "X-ZThumb-Backend": plan.backend,
                "X-ZThumb-Decoder": plan.params.decoder,
                "X-ZThumb-Timings": timings.model_dump_json(),
                **adapter_headers(adapters),
            }
            return Response(done.encoded[0], media_type=MIME_TYPES[plan.output_format], headers=headers)
        return GenerateResponse(
            images=images_out(done.encoded, plan.output_format),
            format=plan.output_format,
            seed=plan.params.seed,
            backend=plan.backend,
            width=plan.params.width,
            height=plan.params.height,
            steps=plan.params.steps,
            guidance_scale=plan.params.guidance_scale,
            decoder=plan.params.decoder,
            adapter=adapters[0] if adapters else None,
            adapters=adapters,
            timings=timings,
        )

    async def openai_images(self, body: OpenAIImageRequest, request: Request) -> OpenAIImagesResponse:
        """``POST /v1/images/generations``: translated, then the same path as /generate."""
        try:
            translated = generate_request_from_openai(body, self.settings.backends)
            done = await self._run(translated, request)
        except ZThumbError as exc:  # name OpenAI's fields, not ours
            exc.field = OPENAI_FIELDS.get(exc.field or "", exc.field)
            raise
        return OpenAIImagesResponse(
            created=int(time.time()),
            data=[OpenAIImage(b64_json=base64.b64encode(data).decode("ascii")) for data in done.encoded],
        )

    async def _run(self, body: GenerateRequest, request: Request) -> Generated:
        """Plan, queue, generate, encode; log and count the request (both APIs alike)."""
        settings, eng, worker, metrics = self.settings, self.engine, self.worker, self.metrics
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
                batch_key=batch_key(plan, eng.backends[plan.backend]),
                item=plan,
                run_batch=partial(run_batch, eng),
            )
            encode_started = time.perf_counter()
            encoded = await run_in_threadpool(encode, result.images, plan.output_format)
            encode_seconds = time.perf_counter() - encode_started
            adapters = adapters_used(result)
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
                    "path": request.url.path,
                    "backend": plan.backend,
                    "prompt_chars": len(body.prompt),
                    "size": f"{plan.params.width}x{plan.params.height}",
                    "steps": plan.params.steps,
                    "num_images": plan.params.num_images,
                    "seed": plan.params.seed,
                    "lora_path": ",".join(a.path for a in adapters) or None,
                    "lora_scale": ",".join(f"{a.scale:g}" for a in adapters) or None,
                    "seconds": timings.total_s,
                },
            )
            status = "200"
            return Generated(plan, result, encoded, adapters, timings)
        except ZThumbError as exc:
            status = str(exc.status)
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.requests.labels(backend=label, status=status).inc()
            metrics.request_seconds.labels(backend=label, status=status).observe(elapsed)
