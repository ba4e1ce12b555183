"""The report pages' session cookie and the throttle on their login form.

A browser cannot send the bearer header, so ``POST /reports/login`` checks the API key and sets a
cookie ``<expiry>.<nonce>.<mac>``: the mac is an HMAC-SHA256 over expiry and nonce under a key
derived from the API key. So the cookie is not the key and tells nothing about it; every login
gets another one; the server itself refuses it after its expiry (a browser's Max-Age is only a
request to the browser) and after the API key changed; and every replica accepts the cookie that
another one set.

Guessing the key through the form is throttled per client address (``LoginThrottle``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

Clock = Callable[[], float]

SESSION_COOKIE = "zthumb_reports"
SESSION_SECONDS = 12 * 3600
COOKIE_FORMAT = re.compile(r"(?P<payload>(?P<expiry>[0-9]{1,12})\.[A-Za-z0-9_-]{22})\.(?P<mac>[0-9a-f]{64})")
# Versioned, so a change of the cookie's meaning can never accept an older cookie.
KEY_DERIVATION_LABEL = b"zthumb reports session v2"

LOGIN_FAILURES = 5
LOGIN_WINDOW_S = 300
LOGIN_ADDRESSES = 4096


class SessionCookies:
    """Issues and checks the session cookies of one API key."""

    def __init__(self, api_key: str, clock: Clock = time.time, lifetime_s: int = SESSION_SECONDS) -> None:
        self._key = hmac.new(api_key.encode(), KEY_DERIVATION_LABEL, hashlib.sha256).digest()
        self.clock = clock
        self.lifetime_s = lifetime_s

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        expiry = int(self.clock()) + self.lifetime_s
        payload = f"{expiry}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._mac(payload)}"

    def valid(self, cookie: str) -> bool:
        """Issued under this key (constant-time comparison) and not expired."""
        found = COOKIE_FORMAT.fullmatch(cookie)
        if found is None or not hmac.compare_digest(found["mac"], self._mac(found["payload"])):
            return False
        return self.clock() < int(found["expiry"])


class LoginThrottle:
    """At most ``failures`` wrong keys per client address within ``window_s`` seconds of the first;
    after that, every login from that address is refused until the window closes (a right key too,
    so the throttle cannot be probed). A right key clears the address's count.

    Memory stays bounded: ``max_addresses`` entries, the one that failed longest ago dropped
    first. A client with that many addresses gets ``failures`` tries on each, which it would have
    anyway. Behind a proxy that hides client addresses, all clients share one budget.
    """

    def __init__(
        self,
        clock: Clock = time.time,
        failures: int = LOGIN_FAILURES,
        window_s: float = LOGIN_WINDOW_S,
        max_addresses: int = LOGIN_ADDRESSES,
    ) -> None:
        self.clock = clock
        self.failures = failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        # address -> (start of its window, wrong keys in it); touched only on the event loop.
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None when it may try now."""
        window = self._windows.get(address)
        if window is None:
            return None
        started, count = window
        left = started + self.window_s - self.clock()
        if left <= 0:
            del self._windows[address]
            return None
        return math.ceil(left) if count >= self.failures else None

    def failed(self, address: str) -> None:
        now = self.clock()
        started, count = self._windows.pop(address, (now, 0))
        if now - started >= self.window_s:
            started, count = now, 0
        self._windows[address] = (started, count + 1)
        while len(self._windows) > self.max_addresses:
            self._windows.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._windows.pop(address, None)

    def __len__(self) -> int:
        return len(self._windows)
