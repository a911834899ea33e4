"""Header values that mitmproxy's own addons set after the gateway's redaction (see
:class:`LateHeaders`)."""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from mitmproxy import http

from unit_gateway.redaction.secrets import _SECRETS, HeaderSubstitutions


class HeaderRedactor(Protocol):
    """The redaction addon, as LateHeaders calls it."""

    def redact_headers(self, headers: http.Headers, substitutions: HeaderSubstitutions) -> None: ...


class LateHeaders:
    """Header values that mitmproxy's own addons set after the gateway's redaction
    (``upstream_auth``'s ``Proxy-Authorization`` for an upstream proxy, ``modify_headers``,
    ``stickyauth``, ``stickycookie``) are redacted before any output sees them, and kept for
    the wire like any other. It runs after mitmproxy's default addons and before the tool's
    outputs (:mod:`unit_gateway.mitm.addon_order` puts it there), for every event that can
    change a flow's headers."""

    name = "unit_gateway_late_headers"  # its name in mitmproxy's addon lookup

    def __init__(self, redaction: HeaderRedactor) -> None:
        self.redaction = redaction
        #: flow -> [request, response] header fields as last seen redacted. Every change to
        #: a message's headers makes a new fields tuple, so a look at headers nobody changed
        #: since (most looks) is one identity test, not a redaction pass.
        self._seen: weakref.WeakKeyDictionary[http.HTTPFlow, list[Any]] = (
            weakref.WeakKeyDictionary()
        )

    def seen(self, flow: http.HTTPFlow, message: http.Message) -> None:
        """``message`` of ``flow`` is redacted as it is now (the gateway's own hooks say so)."""
        index = 0 if message is flow.request else 1
        self._seen.setdefault(flow, [None, None])[index] = message.data.headers.fields

    def _look(self, flow: http.HTTPFlow, message: http.Message, index: int) -> None:
        seen = self._seen.get(flow)
        headers = message.data.headers
        if seen is not None and seen[index] is headers.fields:
            return
        secrets = _SECRETS.get(flow)
        if secrets is None:
            substitutions: HeaderSubstitutions = {}  # the flow has ended: nothing goes out
        elif index == 0:
            substitutions = secrets.request_headers
        else:
            substitutions = secrets.response_headers
        self.redaction.redact_headers(headers, substitutions)
        if seen is None:
            seen = self._seen[flow] = [None, None]
        seen[index] = headers.fields

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._look(flow, flow.request, 0)

    request = requestheaders

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        seen = self._seen.get(flow)
        if (
            seen is not None
            and seen[0] is flow.request.data.headers.fields
            and (response is None or seen[1] is response.data.headers.fields)
        ):
            return  # the usual case, in one look up
        self._look(flow, flow.request, 0)
        if response is not None:
            self._look(flow, response, 1)

    response = error = responseheaders
