"""Fixtures of the trainer's tests: a real MLflow tracking server (``mlflow_helpers.py``)."""

from __future__ import annotations

import pytest
from mlflow_helpers import run_mlflow_server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One real tracking server per test module (it takes seconds to start), killed at teardown."""
    yield from run_mlflow_server(tmp_path_factory.mktemp("mlflow"))
