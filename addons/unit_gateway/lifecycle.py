"""Ready before it serves, drained before it exits: what a load balancer and a rolling deploy
expect of a replica.

mitmproxy listens before its addons' ``running`` hooks finish (the embedded sandbox, the token
service), so a request can arrive before the gateway can serve it: it waits for the core's
:class:`~unit_gateway.config.health.Health` to say ready, for a bounded time. On SIGTERM the
gateway stops listening, finishes the requests in flight within a deadline, then exits; a
second SIGTERM exits at once. ``/healthz`` and ``/readyz`` on the metrics port read that
:class:`~unit_gateway.config.health.Health`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from mitmproxy import ctx, http

from unit_gateway.config.health import waited

if TYPE_CHECKING:
    from unit_gateway.config.core import GatewayCore

logger = logging.getLogger(__name__)


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
        return await waited(self._empty, seconds)


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
