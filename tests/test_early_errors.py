"""unit_gateway.mitm.early_errors driven without a proxy: mitmproxy's HTTP/1 server connection fed
bytes directly, for the cases a real caller can hardly time (end to end in
test_malformed_e2e.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.options import Options
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import (
    ReceiveHttp,
    RequestHeaders,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    _http1,
    _http2,
    _http_h3,
)
from mitmproxy.test import tflow

from conftest import ADDONS_ORG_TOKEN
from unit_gateway.config.core import GatewayCore
from unit_gateway.mitm import early_errors
from unit_gateway.mitm.early_errors import MAX_REQUEST_HEAD_BYTES
from unit_gateway.redaction.addon import FlowRedaction

TOKEN = ADDONS_ORG_TOKEN
#: What each replaced name is in mitmproxy itself.
MITMPROXY = {
    "make_error_response": _http1.make_error_response,
    "read_headers": _http1.Http1Server.read_headers,
    "read_body": _http1.Http1Connection.read_body,
    "protocol_error": _http2.Http2Connection.protocol_error,
    "close_connection": _http_h3.LayeredH3Connection.close_connection,
}


@pytest.fixture
def installed() -> Iterator[None]:
    early_errors.install(FlowRedaction(GatewayCore()).redact_text)
    try:
        yield
    finally:
        early_errors.uninstall()


def server() -> _http1.Http1Server:
    connection = _http1.Http1Server(Context(tflow.tclient_conn(), Options()))
    list(connection.handle_event(events.Start()))
    return connection


def feed(connection: _http1.Http1Server, *data: bytes) -> list[Any]:
    out: list[Any] = []
    for chunk in data:
        out += connection.handle_event(events.DataReceived(connection.conn, chunk))
    return out


def answers(out: list[Any]) -> list[tuple[int, dict]]:
    """The error pages sent to the caller: (status, the JSON:API error)."""
    found = []
    for command in out:
        if isinstance(command, commands.SendData):
            head, body = command.data.split(b"\r\n\r\n", 1)
            assert b"Content-Type: application/vnd.api+json" in head
            found.append((int(head.split()[1]), json.loads(body)["errors"][0]))
    return found


def closes(out: list[Any]) -> bool:
    return any(isinstance(c, commands.CloseConnection) for c in out)


def test_a_head_without_its_end_is_read_up_to_the_limit_then_refused(installed: None) -> None:
    connection = server()
    out = feed(connection, b"GET /cards HTTP/1.1\r\nX-Data: ", b"a" * 60_000)
    assert out == [] and len(connection.buf) < MAX_REQUEST_HEAD_BYTES, "still reading"
    out = feed(connection, b"a" * 60_000)
    ((status, error),) = answers(out)
    assert (status, error["code"]) == (431, "request_too_large")
    assert closes(out) and len(connection.buf) == 0, "nothing kept"
    assert feed(connection, b"a" * 60_000) == [], "nothing more read"


def test_blank_lines_before_a_request_do_not_end_a_head(installed: None) -> None:
    # h11 drops one leading blank line per read; they must not pass for a head's end.
    connection = server()
    out = feed(connection, *[b"\r\n" * 32_000] * 3)
    ((status, _),) = answers(out)
    assert status == 431 and closes(out)


def test_a_head_that_ends_within_the_limit_is_read_whatever_follows_it(installed: None) -> None:
    # More than the limit at once (pipelined bytes wait in the buffer): a small head and a
    # large body is a request, not a large head.
    body = b"b" * (2 * MAX_REQUEST_HEAD_BYTES)
    head = b"POST /applications HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
    connection = server()
    out = feed(connection, head + body)
    assert answers(out) == [] and not closes(out)
    assert next(type(c.event) for c in out if isinstance(c, ReceiveHttp)) is RequestHeaders
    # LF-only line endings end a head too, as h11 reads them.
    connection = server()
    out = feed(connection, head.replace(b"\r\n", b"\n") + body)
    assert answers(out) == [] and not closes(out)


BROKEN_CHUNK = (
    b"POST /applications HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz" + TOKEN.encode() + b"\r\n"
)


def test_a_broken_chunk_gets_a_400_quoting_it_redacted(installed: None) -> None:
    out = feed(server(), BROKEN_CHUNK)
    ((status, error),) = answers(out)
    assert (status, error["code"]) == (400, "invalid_request")
    assert "illegal chunk header" in error["detail"] and TOKEN not in error["detail"]
    sent = next(i for i, c in enumerate(out) if isinstance(c, commands.SendData))
    close = next(i for i, c in enumerate(out) if isinstance(c, commands.CloseConnection))
    assert sent < close, "the answer goes out before the connection closes"


def test_a_broken_chunk_after_100_continue_still_gets_its_answer(installed: None) -> None:
    head, chunk = BROKEN_CHUNK.split(b"\r\n\r\n", 1)
    connection = server()
    feed(connection, head + b"\r\nExpect: 100-continue\r\n\r\n")
    list(connection.handle_event(ResponseHeaders(1, http.Response.make(100), False)))
    ((status, _),) = answers(feed(connection, chunk))
    assert status == 400


def test_a_broken_chunk_in_a_pipelined_request_read_by_the_first_gets_one_answer(
    installed: None,
) -> None:
    # The first request was answered while its body still came in (as for a streamed
    # request): the end of its body reads the next request, and its broken chunk, at once.
    connection = server()
    feed(connection, b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
    response = http.Response.make(200, b"ok")
    for event in (
        ResponseHeaders(1, response, False),
        ResponseData(1, b"ok"),
        ResponseEndOfMessage(1),
    ):
        list(connection.handle_event(event))
    out = feed(connection, b"cd" + BROKEN_CHUNK)
    ((status, _),) = answers(out)
    assert status == 400


def test_uninstall_restores_mitmproxy_exactly() -> None:
    owners = {
        "make_error_response": _http1,
        "read_headers": _http1.Http1Server,
        "read_body": _http1.Http1Server,
        "protocol_error": _http2.Http2Connection,
        "close_connection": _http_h3.LayeredH3Connection,
    }
    early_errors.install(str)
    for name, owner in owners.items():
        assert getattr(owner, name) is not MITMPROXY[name], f"{name} not replaced"
    early_errors.uninstall()
    for name, owner in owners.items():
        assert getattr(owner, name) is MITMPROXY[name], name
    assert "read_body" not in _http1.Http1Server.__dict__, "inherited, as in mitmproxy"
    assert b"Content-Type: text/html" in _http1.make_error_response(400, "a reason")


def test_http3_close_reason_is_redacted(installed: None) -> None:
    closed: list[tuple[Any, ...]] = []
    h3 = SimpleNamespace(_quic=SimpleNamespace(close=lambda *args: closed.append(args)))
    _http_h3.LayeredH3Connection.close_connection(
        h3,  # type: ignore[arg-type]
        error_code=1,
        reason_phrase=f"Invalid HTTP/3 request headers: {{b':x': b'{TOKEN}'}}",
    )
    ((code, frame, reason),) = closed
    assert (code, frame) == (1, None)
    assert reason.startswith("Invalid HTTP/3 request headers") and TOKEN not in reason
