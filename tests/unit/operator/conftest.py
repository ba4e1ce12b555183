"""Fixtures of the operator unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kube_standin
import pytest
from lft_helpers import make_run
from zthumb_operator.api import KubeApi


@pytest.fixture
def run() -> dict[str, Any]:
    return make_run({"dataset": {"triggerWord": "z"}})


@pytest.fixture
def api() -> Iterator[KubeApi]:
    """A KubeApi against a stand-in API server on 127.0.0.1 (``kube_standin.StandIn``)."""
    yield from kube_standin.serve()
