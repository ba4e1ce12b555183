"""Bounded polling, the one implementation for every e2e test (tests/e2e and tests/e2e/real).

A plain module, not a conftest: both folders' conftest.py would clash as a module name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, description: str, interval: float = 0.5) -> T:
    """Poll ``predicate`` every ``interval`` seconds until it returns something truthy; return it.

    Exceptions raised by the predicate count as "not yet" (predicates call kubectl and read
    objects still being made); after ``timeout`` seconds an AssertionError names ``description``
    and the last value or exception.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as exc:  # retried; the last one is reported on timeout
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {description}; last: {last!r}")
        time.sleep(interval)
