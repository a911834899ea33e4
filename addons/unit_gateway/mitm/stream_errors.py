"""The caller's answer to a protocol error on an HTTP stream: the JSON:API error every Unit
client parses, where mitmproxy would send an HTML page quoting the peer's bytes."""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Any, Protocol

from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers import http as httplayer

from unit_gateway.net import jsonapi
from unit_gateway.net.deadlines import UpstreamTimedOut

Commands = Generator[commands.Command, Any, None]


class TextRedactor(Protocol):
    """What the answers need of the redaction addon."""

    def redact_text(self, text: str) -> str: ...


#: The bytes mitmproxy quotes in its errors (``b'...'``, ``bytearray(b'...')``), as repr spells
#: them.
_QUOTED_BYTES = re.compile(r"""(?:bytearray\()?b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\)?""")

#: Set on a stream once a final response head went to its client.
_RESPONDED = "_unit_gateway_responded"

#: Codes answering the client -> JSON:API code and whose fault it is.
_ERROR_CODES: dict[httplayer.ErrorCode, tuple[str, str]] = {
    httplayer.ErrorCode.CONNECT_FAILED: ("upstream_unreachable", "unit"),
    httplayer.ErrorCode.GENERIC_SERVER_ERROR: ("upstream_failed", "unit"),
    httplayer.ErrorCode.RESPONSE_VALIDATION_FAILED: ("upstream_failed", "unit"),
    httplayer.ErrorCode.RESPONSE_TOO_LARGE: ("upstream_failed", "unit"),
    httplayer.ErrorCode.GENERIC_CLIENT_ERROR: ("invalid_request", "caller"),
    httplayer.ErrorCode.REQUEST_VALIDATION_FAILED: ("invalid_request", "caller"),
    httplayer.ErrorCode.DESTINATION_UNKNOWN: ("invalid_request", "caller"),
    httplayer.ErrorCode.REQUEST_TOO_LARGE: ("request_too_large", "caller"),
}


def _answer_error(
    stream: httplayer.HttpStream,
    command: httplayer.SendHttp,
    flow: http.HTTPFlow,
    redaction: TextRedactor,
    *,
    unit: bool,
) -> Commands:
    """A JSON:API error where mitmproxy sends its HTML page; like mitmproxy, only while no
    final response has begun and the caller is writable, else the stream just ends."""
    event: httplayer.ResponseProtocolError = command.event  # type: ignore[assignment]
    client = command.connection
    response = None
    if not stream.__dict__.get(_RESPONDED) and client.state & ConnectionState.CAN_WRITE:
        response = _json_api_error(event, flow, redaction, unit=unit)
    if response is None:
        yield command
        return
    stream.__dict__[_RESPONDED] = True
    if not (flow.request.is_http2 or flow.request.is_http3):
        # Close at once, as mitmproxy does, even mid-request-body.
        yield commands.SendData(client, http1.assemble_response(response))
        yield commands.CloseConnection(client)
        return
    stream_id = event.stream_id
    yield httplayer.SendHttp(httplayer.ResponseHeaders(stream_id, response, False), client)
    yield httplayer.SendHttp(httplayer.ResponseData(stream_id, response.raw_content or b""), client)
    yield httplayer.SendHttp(httplayer.ResponseEndOfMessage(stream_id), client)


def _json_api_error(
    event: httplayer.ResponseProtocolError,
    flow: http.HTTPFlow,
    redaction: TextRedactor,
    *,
    unit: bool,
) -> http.Response | None:
    """The error document, its message redacted as it can quote the peer's bytes; None for
    codes mitmproxy answers without a response."""
    status = event.code.http_status_code()
    known = _ERROR_CODES.get(event.code)
    note = ""
    if type(event) is UpstreamTimedOut:
        status, known = 504, ("upstream_timeout", "unit")
        note = "; the request was sent, so Unit may have acted on it"
    if status is None or known is None:
        return None
    code, whose = known
    message = event.message
    if whose == "unit" and unit:
        # Unit's own bytes, quoted: a token in them may be spelled so that no redaction
        # finds it (an escape after its prefix), and the caller may have used a placeholder.
        message = _QUOTED_BYTES.sub("[Unit's bytes not shown]", message)
    message = redaction.redact_text(message)
    if whose == "unit":
        server = f"{flow.request.host}:{flow.request.port}" + (" (Unit)" if unit else "")
        detail = f"{server}: {message}{note}"
    else:
        detail = f"the gateway could not take this request: {message}"
    return jsonapi.error_response(status, code, detail, headers={"Connection": "close"})
