"""Sliding-window limits: Unit's per-IP request limit and per-customer verification limit, as
the local sandbox enforces them and as the gateway keeps within them; and the waits they
announce (``Retry-After``)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    # Seconds until the oldest event in the window leaves it (and a slot frees up).
    reset_after: float


_UNLIMITED = Decision(True, 0, 0, 0.0)


class SlidingWindow:
    """At most ``limit`` events per key in any ``window`` seconds; limit 0 means unlimited."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._events: dict[Hashable, deque[float]] = {}

    def hit(self, key: Hashable, now: float) -> Decision:
        """Record one event for ``key`` unless that would exceed the limit."""
        if self.limit <= 0:
            return _UNLIMITED
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = deque()
        horizon = now - self.window
        while events and events[0] <= horizon:
            events.popleft()
        if len(events) >= self.limit:
            return Decision(False, self.limit, 0, events[0] - horizon)
        events.append(now)
        reset_after = events[0] - horizon
        return Decision(True, self.limit, self.limit - len(events), reset_after)

    def clear(self) -> None:
        self._events.clear()


def whole_seconds(seconds: float) -> int:
    """Seconds for a header: rounded up, never 0 while something is still waiting."""
    return max(math.ceil(seconds), 1) if seconds > 0 else 0


def retry_after_seconds(value: str, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))
