"""The sandbox's notion of now, which tests can move forward.

Token expiry, verification-token age and every rate-limit window read this clock, so a test
can check a 10-minute rule without sleeping for 10 minutes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class SandboxClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        """Seconds since the epoch, shifted by every advance since the last reset."""
        return time.time() + self.offset

    def now_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        self.offset += seconds

    def reset(self) -> None:
        self.offset = 0.0
