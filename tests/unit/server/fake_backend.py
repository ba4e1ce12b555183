"""A backend without a model, for the server's failure paths (imported by name: this folder is on
sys.path). It has what the engine, the worker and the serving layer use of a backend; its images
are one flat colour. A prompt containing ``BOOM`` makes its generation raise an unexpected error
whose text holds ``SECRET``, which no answer may show."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

BOOM = "BOOM"
SECRET = "secret-detail /opt/weights/unet.safetensors"


class FakeBackend:
    name: ClassVar[str] = "full"
    compiled = None
    supports_lora = True
    max_steps: ClassVar[int | None] = None
    fixed_guidance_scale: ClassVar[float | None] = None
    model_description = "fake"
    tiny_decoder = None
    # Set by a test to hold the loading of this class's backend until it is set.
    load_gate: ClassVar[threading.Event | None] = None
    load_error: ClassVar[Exception | None] = None

    def __init__(self, settings: Any, device: Any, dtype: Any) -> None:
        if self.load_gate is not None:
            assert self.load_gate.wait(30), "the test never released the load"
        if self.load_error is not None:
            raise self.load_error
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.unet_weight_bytes = {"unet": 0, "quantized": 0, "quantized_fp32": 0}
        self.generated: list[str] = []

    def defaults(self) -> dict[str, float | int]:
        return {"width": 16, "height": 16, "steps": 1, "guidance_scale": 1.0}

    def apply_adapters(self, _uses: Any) -> Any:
        from zthumb.backends import AdapterApplied

        return AdapterApplied(active=False, hit=None, load_seconds=0.0)

    def cached_adapters(self) -> list[dict[str, Any]]:
        return []

    def generate(self, params: Any, _cancel: threading.Event | None = None) -> list[Any]:
        from PIL import Image

        if BOOM in params.prompt:
            raise RuntimeError(SECRET)
        self.generated.append(params.prompt)
        return [
            Image.new("RGB", (params.width, params.height), (params.seed % 256, 0, 0))
        ] * params.num_images


def fake_backend_class(name: str, **attributes: Any) -> type[FakeBackend]:
    return type(f"Fake{name.title()}Backend", (FakeBackend,), {"name": name, **attributes})


@contextmanager
def fake_client(
    tmp_path: Path, backends: dict[str, type[FakeBackend]] | None = None, **settings: Any
) -> Iterator[Any]:
    """A started app (lifespan) over fake backends, in a TestClient that answers a route's
    unexpected exception with the app's 500 instead of raising it into the test."""
    from fastapi.testclient import TestClient
    from zthumb.app import build_app
    from zthumb.engine import Engine
    from zthumb.settings import Settings

    backends = backends or {"full": FakeBackend}
    values: dict[str, Any] = {
        "backend": next(iter(backends)),
        "enabled_backends": list(backends),
        "lora_root": tmp_path,
        "device": "cpu",
        "min_size": 8,
        "gc_freeze": False,
        "request_timeout_s": 30,
        **settings,
    }
    config = Settings(**values)
    engine = Engine(config, backends=dict(backends))  # type: ignore[arg-type]
    with TestClient(build_app(config, engine=engine), raise_server_exceptions=False) as client:
        yield client
