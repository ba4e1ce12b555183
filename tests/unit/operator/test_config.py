"""load_config's refusal: one line per bad variable, each named as it is set."""

from __future__ import annotations

import pytest
from zthumb_operator.config import ConfigError, load_config


def test_every_bad_variable_gets_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTHUMB_OPERATOR_METRICS_PORT", "70000")
    monkeypatch.setenv("ZTHUMB_OPERATOR_RESYNC_SECONDS", "0")
    with pytest.raises(ConfigError) as error:
        load_config()
    head, *lines = str(error.value).split("\n  ")
    assert head == "invalid operator configuration:"
    assert sorted(line.split(":")[0] for line in lines) == [
        "ZTHUMB_OPERATOR_METRICS_PORT",
        "ZTHUMB_OPERATOR_RESYNC_SECONDS",
    ]
    assert all(line.split(": ", 1)[1] for line in lines)
