"""Session-wide fixtures: the tiny SDXL model and a synthetic dataset, built once, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach the Hugging Face Hub: everything is built from config.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CACHE_ROOT = Path(os.environ.get("ZTHUMB_TEST_CACHE", Path.home() / ".cache" / "zthumb" / "test-models"))


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny SDXL model in its three layouts (diffusers dir, single file, turbo)."""
    from zthumb_trainer.tiny.tiny_model import build_tiny_model

    return build_tiny_model(CACHE_ROOT / "tiny-sdxl")


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """Eight 96x96 images with same-name captions."""
    from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset

    directory = tmp_path_factory.mktemp("dataset")
    write_synthetic_dataset(directory, count=8)
    return directory
