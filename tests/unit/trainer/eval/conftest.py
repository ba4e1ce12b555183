"""Fixtures of the eval step's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """The tiny CLIP's folder (served by the tests as spec.eval.clip's URL), the model, its SHA256."""
    from zthumb_trainer.fetch.verified import sha256_of
    from zthumb_trainer.tiny.tiny_clip import build_tiny_clip

    root = tmp_path_factory.mktemp("clip-source")
    clip = build_tiny_clip(root)
    return root, clip, sha256_of(clip.weights)
