"""Backend registry: ``name -> class``, by each class's ``name`` (one per ``settings.BackendName``)."""

from __future__ import annotations

from zthumb.backends.adapters import AdapterApplied, AdapterUse
from zthumb.backends.base import Backend, GenerationParams, ModelConfigError
from zthumb.backends.full import FullBackend
from zthumb.backends.gguf import GGUFBackend
from zthumb.backends.turbo import TurboBackend

BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (FullBackend, TurboBackend, GGUFBackend)}

__all__ = [
    "BACKENDS",
    "AdapterApplied",
    "AdapterUse",
    "Backend",
    "FullBackend",
    "GGUFBackend",
    "GenerationParams",
    "ModelConfigError",
    "TurboBackend",
]
