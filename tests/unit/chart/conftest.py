"""Fixtures of the chart tests: the helm command and an isolated helm home."""

from __future__ import annotations

import os

import pytest
from chart_render import HELM


@pytest.fixture(scope="session")
def helm_bin() -> list[str]:
    """The helm command; outside CI a missing helm skips (needs_helm), in CI it fails."""
    if HELM is None:
        pytest.fail("CI is set but `helm` is not on PATH", pytrace=False)
    return [HELM]


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # Isolated helm home: tests neither read nor write the user's helm config.
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
