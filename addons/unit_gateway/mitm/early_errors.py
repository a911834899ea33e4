"""What a caller gets when mitmproxy cannot take its request: a JSON:API error, redacted.

mitmproxy refuses some requests before (or without) a flow the redaction addon could guard,
and its answers quote the caller's bytes: an HTTP/1 request that does not parse (now
``400 invalid_request``), a body with broken framing (no answer at all: now a ``400``), a
request head that never ends (buffered without bound: now ``431`` past
``MAX_REQUEST_HEAD_BYTES``, HTTP/2's own limit), HTTP/2 and HTTP/3 protocol errors (the
message quotes header values: redacted). The redaction addon installs these while it runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import (
    ReceiveHttp,
    RequestProtocolError,
    _http1,
    _http2,
    _http_h3,
)
from mitmproxy.utils import human

from unit_gateway.mitm import gate, patches
from unit_gateway.net import jsonapi

#: The most bytes of a request line and headers the gateway reads; a head whose end is not
#: within them is refused (HTTP/2's limit on a header list is the same).
MAX_REQUEST_HEAD_BYTES = 64 * 1024
#: Where an HTTP/1 head ends: the blank line after its last line (h11's ReceiveBuffer ends
#: it at the same blank line). Blank lines before a request are not its end: h11 drops one
#: per read, and a client sending nothing else must not be read without bound.
_HEAD_END = re.compile(rb"[^\r\n]\r?\n\r?\n")

Commands = Generator[commands.Command, Any, None]


_original_error_page: Callable[[int, str], bytes] = patches.original(_http1, "make_error_response")
_original_read_headers: Callable[..., Commands] = patches.original(
    _http1.Http1Server, "read_headers"
)
_original_read_body: Callable[..., Commands] = patches.original(_http1.Http1Server, "read_body")
_original_protocol_error: Callable[..., Commands] = patches.original(
    _http2.Http2Connection, "protocol_error"
)
_original_h3_close: Callable[..., None] = patches.original(
    _http_h3.LayeredH3Connection, "close_connection"
)

#: Redacts the text of an error; None while no gateway runs (mitmproxy's own answers then).
_redact: Callable[[str], str] | None = None


def install(redact_text: Callable[[str], str]) -> bool:
    """The gateway's answers, if the gate let it start (then True)."""
    global _redact
    if not gate.approved():
        return False
    patches.install(_PATCHES)
    _redact = redact_text
    return True


def uninstall() -> None:
    """mitmproxy's own behaviour again, exactly as it was before install."""
    global _redact
    _redact = None
    patches.uninstall(_PATCHES)


def error_page(status_code: int, message: str = "") -> bytes:
    """The HTTP/1 answer to a request mitmproxy could not take: the JSON:API error every
    answer of the gateway is, its message redacted (mitmproxy's is an HTML page quoting the
    caller's bytes)."""
    redact = _redact
    if redact is None:
        return _original_error_page(status_code, message)
    message = redact(message)
    if status_code < 500:
        code = "request_too_large" if status_code in (413, 431) else "invalid_request"
        detail = f"the gateway could not take this request: {message}"
    else:  # only for a flow the patch point does not hold (patch_point._json_api_error)
        code, detail = "upstream_failed", message
    response = jsonapi.error_response(status_code, code, detail, headers={"Connection": "close"})
    return http1.assemble_response(response)


def _read_headers(self: _http1.Http1Server, event: events.Event) -> Commands:
    """mitmproxy's reading of a request head, except that it stops at MAX_REQUEST_HEAD_BYTES
    without the head's end (mitmproxy would buffer until memory runs out)."""
    if (
        type(event) is events.DataReceived
        and len(self.buf) > MAX_REQUEST_HEAD_BYTES
        and _redact is not None
        # (h11's buffer: a copy of its first bytes only, not of a pipelined body after them)
        and _HEAD_END.search(self.buf._data[:MAX_REQUEST_HEAD_BYTES]) is None
    ):
        message = f"its request line and headers are over {MAX_REQUEST_HEAD_BYTES} bytes"
        yield commands.Log(f"{human.format_address(self.conn.peername)}: {message}: refused")
        yield commands.SendData(self.conn, error_page(431, message))
        yield commands.CloseConnection(self.conn)
        self.buf = type(self.buf)()  # its bytes are not needed any more
        self.state = self.done
        return
    yield from _original_read_headers(self, event)


def _read_body(self: _http1.Http1Server, event: events.Event) -> Commands:
    """mitmproxy's reading of a request body, except that a body that cannot be read (its
    HTTP/1 framing is broken, or the caller stopped sending it) gets a 400 saying so before
    the connection closes (mitmproxy just closes it)."""
    stream = self.stream_id
    read = _original_read_body(self, event)
    for command in read:
        if type(command) is commands.CloseConnection and command.connection is self.conn:
            # read_body closes only on a protocol error, and says which in the next command
            failure = next(read, None)
            if (
                _redact is not None
                and isinstance(failure, ReceiveHttp)
                and isinstance(failure.event, RequestProtocolError)
                # this call's own request: the end of one body can read the next request's
                # body (pipelined) in a nested call, which answered it already
                and failure.event.stream_id == stream
                # no answer begun (a 100 Continue is not one)
                and (self.response is None or self.response.status_code < 200)
                and self.conn.state & ConnectionState.CAN_WRITE
            ):
                yield commands.SendData(self.conn, error_page(400, failure.event.message))
            yield command
            if failure is not None:
                yield failure
            continue
        yield command


def _protocol_error(
    self: _http2.Http2Connection, message: str, *args: Any, **kwargs: Any
) -> Commands:
    """HTTP/2's end of a connection that broke the protocol: hyper-h2's message (it quotes
    header values) goes into the GOAWAY the peer gets, so it is redacted first."""
    redact = _redact
    if redact is not None:
        message = redact(message)
    return _original_protocol_error(self, message, *args, **kwargs)


def _h3_close(
    self: _http_h3.LayeredH3Connection,
    error_code: int = 0,
    frame_type: int | None = None,
    reason_phrase: str = "",
) -> None:
    """HTTP/3's end of a connection whose request headers do not parse: the message (it
    quotes pseudo-header values) is QUIC's close reason the peer gets, so it is redacted."""
    redact = _redact
    if redact is not None and reason_phrase:
        reason_phrase = redact(reason_phrase)
    _original_h3_close(self, error_code, frame_type, reason_phrase)


#: What install replaces in mitmproxy.
_PATCHES: tuple[patches.Patch, ...] = (
    (_http1, "make_error_response", error_page),
    (_http1.Http1Server, "read_headers", _read_headers),
    (_http1.Http1Server, "read_body", _read_body),
    (_http2.Http2Connection, "protocol_error", _protocol_error),
    (_http_h3.LayeredH3Connection, "close_connection", _h3_close),
)
