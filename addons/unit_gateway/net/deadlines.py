"""How long the gateway waits for Unit's answer to a request it forwards.

mitmproxy waits for a server as long as the connection is not idle for ``tcp_timeout`` (10
minutes by default): a hung Unit keeps the caller waiting that long, or until its own
timeout, with nothing that says why. The gateway gives each forwarded request to Unit a
deadline, counted from when the request was sent: Unit's documented 5 s
(``unit.token_timeout_seconds``) for its token endpoints, ``unit.response_timeout_seconds``
(60 s, Unit's longest documented endpoint timeout) for everything else.

Nothing runs per request beyond noting when it was sent. A sweep every
:data:`SWEEP_SECONDS` looks at the flows in flight; each overdue one gets a
:class:`ResponseOverdue` event through mitmproxy's ``inject_event``, which routes it to the
flow's HTTP stream: the one way an addon reaches a stream that waits for its server. There the
patch point (:mod:`unit_gateway.mitm.patch_point`) cancels the request upstream (an HTTP/1
connection is closed) and the stream ends with :class:`UpstreamTimedOut`, which the caller gets
as a JSON:API 504 ``upstream_timeout`` and mitmweb shows as the flow's error.

The patch point also hands the event to the stream of its flow where mitmproxy's own routing
cannot find it (an HTTP/2 connection to Unit carries many streams; only the overdue one is
cancelled). Requests to Unit over HTTP/3 or through an upstream proxy are not routed: they keep
mitmproxy's own timeouts (logged once each).
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
