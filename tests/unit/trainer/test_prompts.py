"""The ``{trigger}`` prompt convention the validation samples and the eval share."""

from __future__ import annotations

from zthumb_trainer.prompts import expand_prompt


def test_expand_prompt():
    assert expand_prompt("a photo of {trigger}", "zt") == "a photo of zt"
    assert expand_prompt("a cat", "zt") == "zt, a cat"
