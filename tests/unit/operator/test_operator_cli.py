"""zthumb-operator's command line: --check-config, the log setup, and what it hands to kopf."""

from __future__ import annotations

import logging
import sys
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
    assert "starting (namespaces ml)" in caplog.messages
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


def test_a_liveness_endpoint_reaches_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[str, Any] = {}
    monkeypatch.setattr(cli.kopf, "run", lambda **kwargs: started.update(kwargs))
    monkeypatch.setattr(metrics, "serve", lambda port: None)
    monkeypatch.setenv("ZTHUMB_OPERATOR_LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz")
    assert cli.main([]) == 0
    assert started["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"


def test_the_log_goes_to_stderr_at_the_configured_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a root logger with no handler yet (as in the container), main installs one: stderr,
    time, level, logger name, message."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setenv("ZTHUMB_OPERATOR_LOG_LEVEL", "DEBUG")
    assert cli.main(["--check-config"]) == 0
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
    assert root.level == logging.DEBUG
    record = logging.LogRecord("zthumb_operator", logging.INFO, __file__, 1, "started", None, None)
    assert handler.format(record).endswith(" INFO zthumb_operator: started")
    assert (
        handler.formatter is not None
        and handler.formatter._fmt == "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def test_help_says_how_to_configure_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parse_args(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: zthumb-operator [-h] [--check-config]")
    assert (
        "Configure it with ZTHUMB_OPERATOR_* env vars (see zthumb_operator/config.py); "
        "--check-config only validates them." in text
    )
    assert "--check-config validate the configuration and exit" in text
    assert (
        cli.parse_args([]).check_config is False and cli.parse_args(["--check-config"]).check_config is True
    )
