"""Unit's deadline for a flow (see :mod:`unit_gateway.net.deadlines`): the redaction addon
sweeps its secret store, which knows when each request went out, for flows Unit has not
answered in time."""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import ctx

from unit_gateway.net.deadlines import (
    SWEEP_SECONDS,
    ResponseOverdue,
    is_overdue,
    routable,
    timeout_message,
)
from unit_gateway.redaction.secrets import _SECRETS

logger = logging.getLogger(__name__)


async def sweep() -> None:
    """Checks the deadlines every ``SWEEP_SECONDS`` while the addon runs."""
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        try:
            time_out_overdue(time.monotonic())
        except Exception:  # a bug must not end the sweep: later deadlines still count
            logger.exception("unit-gateway: checking deadlines failed")


def time_out_overdue(now: float) -> None:
    """Each flow past its deadline at ``now``, once: its stream is sent a
    :class:`ResponseOverdue` (a 504 to the caller), or, where it cannot be, a warning logged."""
    for flow, secrets in list(_SECRETS.items()):
        if secrets.timed_out or not is_overdue(
            flow, secrets.sent_at, secrets.response_timeout, now
        ):
            continue
        secrets.timed_out = True
        assert secrets.response_timeout is not None
        request = flow.request
        late = f"{request.method} {request.pretty_host}{request.path}: " + timeout_message(
            secrets.response_timeout
        )
        if not routable(flow):
            logger.warning(
                "unit-gateway: %s; the gateway cannot time out a request over HTTP/3 or "
                "through an upstream proxy: mitmproxy's timeouts apply",
                late,
            )
            continue
        proxyserver = ctx.master.addons.get("proxyserver")
        try:
            proxyserver.inject_event(ResponseOverdue(flow, secrets.response_timeout))
        except ValueError:
            continue  # not from a live connection (a replay): nobody waits for it
        logger.warning("unit-gateway: %s; answered 504 upstream_timeout", late)
