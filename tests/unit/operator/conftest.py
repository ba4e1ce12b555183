"""Fixtures of the operator unit tests."""

from __future__ import annotations

from typing import Any

import pytest
from lft_helpers import make_run


@pytest.fixture
def run() -> dict[str, Any]:
    return make_run({"dataset": {"triggerWord": "z"}})
