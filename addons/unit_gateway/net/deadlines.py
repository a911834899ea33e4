"""How long the gateway waits for Unit's answer to a request it forwards.

mitmproxy waits for a server until the connection is idle for ``tcp_timeout`` (10 minutes):
a hung Unit would keep the caller waiting with nothing that says why. Each forwarded request
gets a deadline from when it was sent (``unit.token_timeout_seconds`` for token endpoints,
``unit.response_timeout_seconds`` otherwise). A sweep every :data:`SWEEP_SECONDS` injects a
:class:`ResponseOverdue` into each overdue flow's stream, where the patch point cancels the
request upstream and the caller gets a JSON:API 504 ``upstream_timeout``. Requests over HTTP/3
or through an upstream proxy cannot be reached that way and keep mitmproxy's timeouts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mitmproxy import http
from mitmproxy.proxy import events
from mitmproxy.proxy.layers import http as httplayer

logger = logging.getLogger(__name__)

#: How often the flows in flight are looked at: a deadline is kept to within this.
SWEEP_SECONDS = 0.5
#: Protocols to a server that mitmproxy can route an injected event for.
_ROUTABLE_ALPN = (None, b"", b"http/1.1", b"http/1.0", b"h2")


@dataclass
class ResponseOverdue(events.MessageInjected[float]):
    """``flow``'s response is overdue; ``message`` is its deadline in seconds."""


class UpstreamTimedOut(httplayer.ResponseProtocolError):
    """The end of a stream whose server did not answer in time."""


def is_overdue(
    flow: http.HTTPFlow, sent_at: float | None, timeout: float | None, now: float
) -> bool:
    """The request went out more than ``timeout`` seconds ago and its response is not in."""
    if sent_at is None or timeout is None or now - sent_at <= timeout or flow.error is not None:
        return False
    response = flow.response
    # A complete response is the addons' (a retry has its own timeout) or on its way out.
    return response is None or response.timestamp_end is None


def routable(flow: http.HTTPFlow) -> bool:
    """Whether an injected event reaches this flow's stream (see the module docstring)."""
    server = flow.server_conn
    return server.via is None and server.alpn in _ROUTABLE_ALPN and server.connected


def timeout_message(seconds: float) -> str:
    return f"no complete answer within {seconds:g} s"
