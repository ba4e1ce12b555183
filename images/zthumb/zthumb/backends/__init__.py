"""Backend registry: ``name -> class``."""

from __future__ import annotations

from zthumb.backends.base import AdapterApplied, Backend, GenerationParams, ModelConfigError
from zthumb.backends.full import FullBackend
from zthumb.backends.gguf import GGUFBackend
from zthumb.backends.turbo import TurboBackend

BACKENDS: dict[str, type[Backend]] = {
    "full": FullBackend,
    "turbo": TurboBackend,
    "gguf": GGUFBackend,
}

__all__ = [
    "BACKENDS",
    "AdapterApplied",
    "Backend",
    "FullBackend",
    "GGUFBackend",
    "GenerationParams",
    "ModelConfigError",
    "TurboBackend",
]
