"""SIGTERM/SIGINT as a request to stop at the next step boundary, with a checkpoint.

The trainer is PID 1 in its container, and PID 1 ignores SIGTERM unless it handles it: without
this a deleted pod trained on for its whole grace period and lost every step since the last
checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger("zthumb_trainer.train")


class StopSignal:
    """Remembers a SIGTERM/SIGINT while installed (main thread only); the loop stops at a step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signal.Signals(signum).name
        log.warning("%s received: stopping after the current step with a checkpoint", self.received)

    def install(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
