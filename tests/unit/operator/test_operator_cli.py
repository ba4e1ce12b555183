"""zthumb-operator's command line: --check-config, the log setup, and what it hands to kopf."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from zthumb_operator import cli, metrics
from zthumb_operator.config import OperatorConfig


@pytest.fixture(autouse=True)
def _kopf_logger_level():
    logger = logging.getLogger("kopf.objects")
    level = logger.level
    yield
    logger.setLevel(level)


def test_check_config_says_what_it_would_watch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "run", lambda config: pytest.fail("--check-config must not start"))
    monkeypatch.setenv("ZTHUMB_OPERATOR_NAMESPACES", "ml,team")
    assert cli.main(["--check-config"]) == 0
    assert capsys.readouterr().out == "configuration OK (namespaces ml, team)\n"
    monkeypatch.delenv("ZTHUMB_OPERATOR_NAMESPACES")
    assert cli.main(["--check-config"]) == 0
    assert capsys.readouterr().out == "configuration OK (cluster-wide)\n"


def test_kopfs_per_handler_lines_are_quiet_unless_debugging(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("kopf.objects")
    logger.setLevel(logging.NOTSET)
    assert cli.main(["--check-config"]) == 0
    assert logger.level == logging.WARNING
    logger.setLevel(logging.NOTSET)
    monkeypatch.setenv("ZTHUMB_OPERATOR_LOG_LEVEL", "DEBUG")
    assert cli.main(["--check-config"]) == 0
    assert logger.level == logging.NOTSET


def test_a_start_serves_metrics_and_runs_kopf_with_the_configuration(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    started: dict[str, Any] = {}
    served: list[int] = []
    monkeypatch.setattr(cli.kopf, "run", lambda **kwargs: started.update(kwargs))
    monkeypatch.setattr(metrics, "serve", served.append)
    monkeypatch.setenv("ZTHUMB_OPERATOR_NAMESPACES", "ml")
    monkeypatch.setenv("ZTHUMB_OPERATOR_METRICS_PORT", "9191")
    monkeypatch.setenv("ZTHUMB_OPERATOR_LIVENESS_ENDPOINT", "")
    with caplog.at_level(logging.INFO, logger="zthumb_operator"):
        assert cli.main([]) == 0
    assert "starting (namespaces ml)" in caplog.text
    assert served == [9191]
    memo = started.pop("memo")
    assert isinstance(memo.config, OperatorConfig) and memo.config.namespaces == ("ml",)
    # An empty liveness endpoint is none at all (kopf would try to listen on "").
    assert started == {
        "standalone": True,
        "clusterwide": False,
        "namespaces": ["ml"],
        "liveness_endpoint": None,
    }
