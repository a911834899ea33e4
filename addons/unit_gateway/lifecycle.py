"""Ready before it serves, drained before it exits: what a load balancer and a rolling deploy
expect of a replica.

mitmproxy listens before its addons' ``running`` hooks finish (the embedded sandbox, the token
service), so a request can arrive before the gateway can serve it: it waits for
:class:`Health` to say ready, for a bounded time. On SIGTERM the gateway stops listening,
finishes the requests in flight within a deadline, then exits; a second SIGTERM exits at once.
``/healthz`` and ``/readyz`` on the metrics port read :class:`Health`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, http

if TYPE_CHECKING:
    from unit_gateway.core import GatewayCore

logger = logging.getLogger(__name__)

#: The event loop counts as stalled when it has not beaten for this long.
STALLED_AFTER_SECONDS = 30.0


async def _waited(event: asyncio.Event, seconds: float) -> bool:
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
        return await _waited(self._ready_event, seconds)

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


class InFlight:
    """The requests in flight, which a drain waits for. An addon early in the chain: a
    request counts from its first hook, before a token is minted for it."""

    def __init__(self) -> None:
        self._flows: set[str] = set()
        self._empty: asyncio.Event | None = None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._flows.add(flow.id)

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        self._flows.discard(flow.id)
        if not self._flows and self._empty is not None:
            self._empty.set()

    def __len__(self) -> int:
        return len(self._flows)

    async def wait_empty(self, seconds: float) -> bool:
        """True once no request is in flight, False after ``seconds``."""
        if not self._flows:
            return True
        self._empty = asyncio.Event()
        return await _waited(self._empty, seconds)


class Lifecycle:
    """The addon: last in the gateway's chain, so its ``running`` follows every other one's
    and the gateway is ready when it has run."""

    def __init__(self, core: GatewayCore, in_flight: InFlight) -> None:
        self.core = core
        self.health = core.health
        self.in_flight = in_flight
        self._drainer: asyncio.Task[None] | None = None

    def running(self) -> None:
        if self.core.config is None:
            return
        try:
            # Replaces mitmproxy's handler, which exits at once.
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.drain)
        except (NotImplementedError, RuntimeError):  # no signals here (Windows, a thread)
            pass
        self.health.mark_ready()

    def drain(self) -> None:
        """Stop accepting, let what is in flight finish (up to the configured deadline),
        exit. Called again while draining: exit now."""
        if self.health.draining:
            logger.warning("unit-gateway: second SIGTERM, exiting without waiting")
            ctx.master.shutdown()
            return
        self.health.draining = True
        config = self.core.config
        seconds = config.model.lifecycle.drain_seconds if config is not None else 0.0
        logger.info(
            "unit-gateway: draining: no new connections, %d request(s) in flight, up to %.0f s",
            len(self.in_flight),
            seconds,
        )
        ctx.options.update(server=False)  # closes the listening sockets; connections stay
        self._drainer = asyncio.ensure_future(self._exit_when_drained(seconds))

    async def _exit_when_drained(self, seconds: float) -> None:
        if await self.in_flight.wait_empty(seconds):
            logger.info("unit-gateway: drained; exiting")
        else:
            logger.warning(
                "unit-gateway: drain deadline passed with %d request(s) in flight; exiting",
                len(self.in_flight),
            )
        ctx.master.shutdown()
