"""What a caller gets when mitmproxy cannot take its request: a JSON:API error, redacted.

mitmproxy refuses some requests before any flow the redaction addon could guard, and its
answers quote the caller's bytes unredacted. The redaction addon installs these while it runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy import http
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

MAX_REQUEST_HEAD_BYTES = 64 * 1024
#: A head's end as h11 sees it; leading blank lines could come forever.
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

#: None: mitmproxy's own answers.
_redact: Callable[[str], str] | None = None


def install(redact_text: Callable[[str], str]) -> bool:
    """Install the gateway's answers, if the gate let it start (then True)."""
    global _redact
    if not gate.approved():
        return False
    patches.install(_PATCHES)
    _redact = redact_text
    return True


def uninstall() -> None:
    """Restore mitmproxy's own behaviour exactly."""
    global _redact
    _redact = None
    patches.uninstall(_PATCHES)


def error_page(status_code: int, message: str = "") -> bytes:
    """The HTTP/1 answer to a request mitmproxy could not take, as a redacted JSON:API error."""
    redact = _redact
    if redact is None:
        return _original_error_page(status_code, message)
    return http1.assemble_response(error_response(status_code, redact(message)))


def error_response(status_code: int, message: str) -> http.Response:
    """The JSON:API error for a request that could not be handled; ``message`` is redacted."""
    if status_code < 500:
        code = "request_too_large" if status_code in (413, 431) else "invalid_request"
        detail = f"the gateway could not take this request: {message}"
    else:  # a flow the patch point does not hold
        code, detail = "upstream_failed", message
    return jsonapi.error_response(status_code, code, detail, headers={"Connection": "close"})


def _read_headers(self: _http1.Http1Server, event: events.Event) -> Commands:
    """mitmproxy's, but refuses (431) a head over MAX_REQUEST_HEAD_BYTES that mitmproxy would
    buffer until memory runs out."""
    if (
        type(event) is events.DataReceived
        and len(self.buf) > MAX_REQUEST_HEAD_BYTES
        and _redact is not None
        # the first bytes: a pipelined body may follow
        and _HEAD_END.search(self.buf._data[:MAX_REQUEST_HEAD_BYTES]) is None
    ):
        message = f"its request line and headers are over {MAX_REQUEST_HEAD_BYTES} bytes"
        yield commands.Log(f"{human.format_address(self.conn.peername)}: {message}: refused")
        yield commands.SendData(self.conn, error_page(431, message))
        yield commands.CloseConnection(self.conn)
        self.buf = type(self.buf)()
        self.state = self.done
        return
    yield from _original_read_headers(self, event)


def _read_body(self: _http1.Http1Server, event: events.Event) -> Commands:
    """mitmproxy's, but an unreadable body gets a 400 before the close (mitmproxy sends none)."""
    stream = self.stream_id
    read = _original_read_body(self, event)
    for command in read:
        if type(command) is commands.CloseConnection and command.connection is self.conn:
            # only on a protocol error, which the next command names
            failure = next(read, None)
            if (
                _redact is not None
                and isinstance(failure, ReceiveHttp)
                and isinstance(failure.event, RequestProtocolError)
                # a pipelined request's error was answered by its own nested call
                and failure.event.stream_id == stream
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
    """Redact h2's message, which quotes header values, before it goes into the GOAWAY."""
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
    """Redact the QUIC close reason, which quotes pseudo-header values."""
    redact = _redact
    if redact is not None and reason_phrase:
        reason_phrase = redact(reason_phrase)
    _original_h3_close(self, error_code, frame_type, reason_phrase)


_PATCHES: tuple[patches.Patch, ...] = (
    (_http1, "make_error_response", error_page),
    (_http1.Http1Server, "read_headers", _read_headers),
    (_http1.Http1Server, "read_body", _read_body),
    (_http2.Http2Connection, "protocol_error", _protocol_error),
    (_http_h3.LayeredH3Connection, "close_connection", _h3_close),
)
