"""What the readiness and liveness probes report (``/healthz`` and ``/readyz`` on the metrics
port): written by the gateway's addons in the proxy's event loop, read from the metrics
thread."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

#: The event loop counts as stalled when it has not beaten for this long.
STALLED_AFTER_SECONDS = 30.0


async def waited(event: asyncio.Event, seconds: float) -> bool:
    """True once ``event`` is set, False after ``seconds``."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


class Health:
    """What the probes report. Written in the proxy's event loop, read from the metrics
    thread (single attribute reads and writes)."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.beat_at = time.monotonic()
        #: environment -> "reachable" | "unreachable", from the last exchange with it
        self.unit: dict[str, str] = {}
        #: "none" without a shared store, else "up" | "down"
        self.store = "none"
        self._ready_event: asyncio.Event | None = None

    def beat(self) -> None:
        self.beat_at = time.monotonic()

    def alive(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) - self.beat_at < STALLED_AFTER_SECONDS

    def mark_ready(self) -> None:
        self.ready = True
        self.beat()
        if self._ready_event is not None:
            self._ready_event.set()

    async def wait_ready(self, seconds: float) -> bool:
        """True once ready (at once if it is), False after ``seconds``. In the event loop."""
        if self.ready:
            return True
        if self._ready_event is None:
            self._ready_event = asyncio.Event()
        return await waited(self._ready_event, seconds)

    def serving(self) -> bool:
        return self.ready and not self.draining

    def report(self) -> dict[str, Any]:
        return {
            "ready": self.serving(),
            "started": self.ready,
            "draining": self.draining,
            "unit": dict(self.unit),
            "store": self.store,
        }


def probe_answer(health: Health, path: str) -> tuple[str, bytes] | None:
    """(status line, JSON body) for ``/healthz`` and ``/readyz``; None for any other path."""
    if path == "/healthz":
        alive = health.alive()
        body = {"alive": alive} if alive else {"alive": False, "problem": "event loop stalled"}
        return ("200 OK" if alive else "503 Service Unavailable"), json.dumps(body).encode()
    if path == "/readyz":
        report = health.report()
        status = "200 OK" if report["ready"] else "503 Service Unavailable"
        return status, json.dumps(report).encode()
    return None
