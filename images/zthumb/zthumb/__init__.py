"""ZThumb inference server: SDXL backends (full, turbo, gguf) with per-request LoRA adapters."""

from zthumb.version import __version__

__all__ = ["__version__"]
