"""The held-out loss trend of the eval report, and the contract's timestamps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from zthumb_contract.crd import TIME_FORMAT, format_time, parse_time, utc_now
from zthumb_contract.eval_report import HOLDOUT_RISE_FRACTION, HoldoutTrend


def test_the_trend_names_the_lowest_and_the_last_pass() -> None:
    trend = HoldoutTrend.of([100, 200, 300, 400], [0.30, 0.20, 0.25, 0.26])
    assert trend == HoldoutTrend(
        passes=4, min_step=200, min_loss=0.20, last_step=400, last_loss=0.26, rising=True
    )
    # Equal losses: the earliest pass is the lowest.
    tie = HoldoutTrend.of([100, 200, 300], [0.2, 0.2, 0.2])
    assert (tie.min_step, tie.rising) == (100, False)


@pytest.mark.parametrize(
    ("losses", "rising"),
    [
        ([0.3], False),  # one pass: nothing to compare
        ([0.3, 0.2], False),  # falling: the lowest is the last
        ([0.2, 0.2 * (1 + HOLDOUT_RISE_FRACTION)], False),  # exactly the noise margin
        ([0.2, 0.2 * (1 + HOLDOUT_RISE_FRACTION) + 1e-6], True),  # just past it
        ([0.2, 0.3, 0.2], False),  # back down at the last pass
    ],
)
def test_rising_means_the_last_pass_is_more_than_the_margin_above_an_earlier_minimum(
    losses: list[float], rising: bool
) -> None:
    trend = HoldoutTrend.of([10 * (i + 1) for i in range(len(losses))], losses)
    assert trend.rising is rising
    assert (trend.passes, trend.last_step, trend.last_loss) == (len(losses), 10 * len(losses), losses[-1])


@pytest.fixture
def local_zone_far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process whose local time is UTC+05:45 (a POSIX TZ string: no tz database needed), so a
    time written in local time instead of UTC cannot pass for it."""
    monkeypatch.setenv("TZ", "XYZ-5:45")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_zone_far_from_utc")
def test_utc_now_is_the_crd_time_format_in_utc() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = utc_now()
    after = datetime.now(UTC)
    parsed = datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=UTC)
    assert stamp.endswith("Z")
    assert before <= parsed <= after


@pytest.mark.usefixtures("local_zone_far_from_utc")
def test_crd_times_are_utc_seconds_both_ways() -> None:
    assert format_time(86400 + 3661.9) == "1970-01-02T01:01:01Z"
    assert parse_time("1970-01-02T01:01:01Z") == 86400 + 3661
    assert parse_time("1970-01-02T02:01:01+01:00") == 86400 + 3661
