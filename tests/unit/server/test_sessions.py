"""The report pages' session cookie and login throttle (zthumb.sessions), through the login form
and on their own. Time is a fake clock: nothing here waits."""

from __future__ import annotations

import pytest
from asgi_helpers import KEY
from fastapi.testclient import TestClient
from report_helpers import write_report
from zthumb.sessions import (
    LOGIN_FAILURES,
    LOGIN_WINDOW_S,
    SESSION_COOKIE,
    SESSION_SECONDS,
    LoginThrottle,
    SessionCookies,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(tmp_path, clock):
    from zthumb.app import build_app
    from zthumb.settings import Settings

    write_report(tmp_path, "run-a")
    settings = Settings(api_key=KEY, reports_dir=tmp_path, lora_root=tmp_path)
    return TestClient(build_app(settings, clock=clock))


def log_in(client, key: str = KEY):
    return client.post("/reports/login", data={"api_key": key, "next": "/reports/"}, follow_redirects=False)


def test_the_server_refuses_a_cookie_after_its_expiry(client, clock):
    assert log_in(client).status_code == 303
    assert client.get("/reports/run-a/").status_code == 200
    clock.now += SESSION_SECONDS - 1
    assert client.get("/reports/run-a/").status_code == 200
    clock.now += 1
    expired = client.get("/reports/run-a/")  # the browser still sends it: the server says no
    assert expired.status_code == 401 and 'action="/reports/login"' in expired.text


def test_every_login_sets_another_cookie(client):
    first = log_in(client).cookies[SESSION_COOKIE]
    second = log_in(client).cookies[SESSION_COOKIE]
    assert first != second
    assert KEY not in first and KEY not in second


def test_a_forged_or_foreign_cookie_is_refused(client, clock):
    cookie = log_in(client).cookies[SESSION_COOKIE]
    expiry, nonce, mac = cookie.split(".")
    later = f"{int(expiry) + 10**6}.{nonce}.{mac}"  # a longer life, under the old mac
    for forged in (later, SessionCookies("another key", clock).issue(), "", "x" * 5000):
        client.cookies.clear()
        client.cookies.set(SESSION_COOKIE, forged, path="/reports")
        assert client.get("/reports/").status_code == 401, forged[:40]


def test_wrong_keys_from_one_address_are_throttled(client, clock):
    for _ in range(LOGIN_FAILURES):
        assert log_in(client, "wrong").status_code == 401
    throttled = log_in(client, "wrong")
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == str(LOGIN_WINDOW_S)
    assert log_in(client).status_code == 429  # the right key waits too: the throttle says nothing
    assert SESSION_COOKIE not in client.cookies
    other = TestClient(client.app, client=("198.51.100.9", 40000))
    assert log_in(other).status_code == 303  # another address has its own budget
    clock.now += LOGIN_WINDOW_S
    assert log_in(client).status_code == 303


def test_the_throttle_window_and_a_right_key_reset_the_count(clock):
    throttle = LoginThrottle(clock, failures=2, window_s=60)
    throttle.failed("a")
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.retry_after("a") is None  # one failure since the right key
    clock.now += 59
    throttle.failed("a")
    assert throttle.retry_after("a") == 1
    clock.now += 1
    assert throttle.retry_after("a") is None
    throttle.failed("a")
    assert throttle.retry_after("a") is None  # a new window


def test_the_throttle_holds_a_bounded_number_of_addresses(clock):
    throttle = LoginThrottle(clock, failures=1, window_s=60, max_addresses=3)
    for index in range(100):
        throttle.failed(f"10.0.0.{index}")
    assert len(throttle) == 3
    assert throttle.retry_after("10.0.0.99") == 60 and throttle.retry_after("10.0.0.0") is None
