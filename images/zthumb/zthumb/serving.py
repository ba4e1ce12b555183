"""Response assembly: one ``POST /generate`` from the request body to the bytes or JSON sent back.

``Engine`` plans and runs a generation (on the device ``Worker``); ``Serving`` adds what
the HTTP answer needs around it: the queue, encoding, timings, the adapter used, the
log line and the request metrics. The routes (``routes.py``) stay a few lines each.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from zthumb.engine import Engine, Result
from zthumb.errors import ZThumbError
from zthumb.metrics import Metrics
from zthumb.protocol import AdapterUsed, GenerateRequest, GenerateResponse, ImageOut, Timings
from zthumb.settings import Settings
from zthumb.worker import Worker

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger("zthumb.app")

MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode(images: list[Image], fmt: str) -> list[bytes]:
    out = []
    for image in images:
        buffer = io.BytesIO()
        if fmt == "jpeg":
            image.convert("RGB").save(buffer, format="JPEG", quality=95)
        elif fmt == "webp":
            image.save(buffer, format="WEBP", quality=95)
        else:
            image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def images_out(encoded: list[bytes], fmt: str) -> list[ImageOut]:
    return [
        ImageOut(index=i, mime_type=MIME_TYPES[fmt], data=base64.b64encode(data).decode("ascii"))
        for i, data in enumerate(encoded)
    ]


def adapter_used(result: Result) -> AdapterUsed | None:
    applied = result.applied
    plan = result.plan
    ref = applied.adapter or plan.adapter
    if ref is None or plan.adapter_source is None:
        return None
    return AdapterUsed(
        path=ref.display_path,
        scale=plan.scale,
        sha256=ref.sha256,
        source="default" if plan.adapter_source == "default" else "request",
    )


class Serving:
    def __init__(self, settings: Settings, engine: Engine, worker: Worker, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.worker = worker
        self.metrics = metrics

    async def generate(self, body: GenerateRequest, request: Request) -> Any:
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
            )
            encode_started = time.perf_counter()
            encoded = await run_in_threadpool(encode, result.images, plan.output_format)
            encode_seconds = time.perf_counter() - encode_started
            adapter = adapter_used(result)
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
                images=images_out(encoded, plan.output_format),
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
