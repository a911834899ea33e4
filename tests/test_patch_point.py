"""mitmproxy's HTTP layer driven with the gateway's patch point and early errors installed, as
mitmproxy's own tests drive it (events in, commands out): a protocol error gets the gateway's
JSON:API answer exactly where mitmproxy would send its HTML page, and the connection or stream
then ends as mitmproxy ends it. (The answer's content is in test_addon_parts.py.)"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from mitmproxy import http, options
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.connection import Client, Connection, ConnectionState, Server
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import http as httplayer

from unit_gateway.config.core import GatewayCore
from unit_gateway.mitm import early_errors, patch_point
from unit_gateway.redaction.addon import FlowRedaction
from unit_gateway.redaction.secrets import _SECRETS

Hooks = dict[str, Callable[[http.HTTPFlow], None]]


@pytest.fixture(autouse=True)
def installed() -> Iterator[None]:
    """The patch point and early errors as a running gateway has them (no configuration: no
    flow here is to Unit)."""
    guard = FlowRedaction(GatewayCore())
    assert patch_point.install(guard, _SECRETS)
    early_errors.install(guard.redact_text)
    try:
        yield
    finally:
        patch_point.uninstall(guard)
        early_errors.uninstall()


class Proxy:
    """An HttpLayer as mitmproxy's proxy server runs it: each hook is answered (after
    ``hooks[name]`` ran on its flow), each server connection opens, and a closed connection
    is closed at once, before the layer goes on. Bytes written are kept per connection."""

    def __init__(
        self,
        hooks: Hooks | None = None,
        *,
        alpn: bytes | None = None,
        connect_error: str | None = None,
        **opts: Any,
    ):
        self.options = options.Options()
        Proxyserver().load(self.options)
        self.options.update(**opts)
        self.client = Client(
            peername=("client", 1234),
            sockname=("127.0.0.1", 8080),
            timestamp_start=1605699329,
            state=ConnectionState.OPEN,
            alpn=alpn,
        )
        self.hooks = hooks or {}
        self.connect_error = connect_error
        self.server: Server | None = None
        self.written: dict[Connection, bytearray] = {}
        self.layer = httplayer.HttpLayer(
            Context(self.client, self.options), httplayer.HTTPMode.regular
        )
        self(events.Start())

    def __call__(self, *sent: events.Event) -> list[commands.Command]:
        out: list[commands.Command] = []
        pending = deque(sent)
        while pending:
            event = pending.popleft()
            if isinstance(event, events.ConnectionClosed):
                event.connection.state &= ~ConnectionState.CAN_READ
            for command in self.layer.handle_event(event):
                out.append(command)
                if isinstance(command, commands.SendData):
                    self.written.setdefault(command.connection, bytearray()).extend(command.data)
                elif isinstance(command, commands.CloseConnection):
                    command.connection.state = ConnectionState.CLOSED
                elif isinstance(command, commands.OpenConnection):
                    self.server = command.connection  # type: ignore[assignment]
                    if self.connect_error is None:
                        command.connection.state = ConnectionState.OPEN
                    reply = events.OpenConnectionCompleted(command, self.connect_error)
                    pending.append(reply)
                elif isinstance(command, commands.StartHook):
                    flow = getattr(command, "flow", None)
                    if command.name in self.hooks and flow is not None:
                        self.hooks[command.name](flow)
                    pending.append(events.HookCompleted(command))
        return out

    def from_client(self, data: bytes) -> list[commands.Command]:
        return self(events.DataReceived(self.client, data))

    def from_server(self, data: bytes) -> list[commands.Command]:
        assert self.server is not None
        return self(events.DataReceived(self.server, data))

    def server_closes(self) -> list[commands.Command]:
        assert self.server is not None
        return self(events.ConnectionClosed(self.server))

    def to_client(self) -> bytes:
        return bytes(self.written.get(self.client, b""))

    @property
    def client_closed(self) -> bool:
        return self.client.state is ConnectionState.CLOSED


def json_api(answer: bytes) -> tuple[int, dict]:
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"Content-Type: application/vnd.api+json" in head, answer
    return int(head.split()[1]), json.loads(body)["errors"][0]


def stream_request(flow: http.HTTPFlow) -> None:
    flow.request.stream = True


def stream_response(flow: http.HTTPFlow) -> None:
    assert flow.response is not None
    flow.response.stream = True


POST = b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"


def test_a_body_over_the_limit_is_refused_and_the_connection_closed_at_once() -> None:
    # 413 for body_size_limit while the chunked body is still arriving.
    proxy = Proxy(body_size_limit="3")
    proxy.from_client(POST + b"Transfer-Encoding: chunked\r\n\r\n6\r\nabcdef")
    status, error = json_api(proxy.to_client())
    assert (status, error["code"]) == (413, "request_too_large")
    assert proxy.client_closed, "mitmproxy closes the connection after the answer"
    assert proxy.server is None


def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed() -> None:
    proxy = Proxy()
    proxy.from_client(POST + b"Content-Length: 42\r\nTransfer-Encoding: chunked\r\n\r\n")
    status, error = json_api(proxy.to_client())
    assert (status, error["code"]) == (400, "invalid_request")
    assert "request smuggling" in error["detail"]
    assert proxy.client_closed, "the body still to come is not read"


def test_a_server_gone_while_the_request_streams_up_closes_the_callers_connection() -> None:
    # 502 mid-upload: the caller is still sending its body.
    proxy = Proxy({"requestheaders": stream_request})
    proxy.from_client(POST + b"Content-Length: 9\r\n\r\nabc")
    assert proxy.server is not None and proxy.to_client() == b""
    proxy.server_closes()
    status, error = json_api(proxy.to_client())
    assert (status, error["code"]) == (502, "upstream_failed")
    assert proxy.client_closed
    assert proxy.from_client(b"def") == [], "nothing more is read from it"


def test_no_error_answer_follows_a_response_that_has_begun() -> None:
    # The response streams to the caller; the server stops half way through its body.
    proxy = Proxy({"responseheaders": stream_response})
    proxy.from_client(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    proxy.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    proxy.server_closes()
    assert proxy.to_client() == b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc"
    assert proxy.client_closed, "the caller sees a body cut short, not a second response"


def test_no_error_answer_follows_a_complete_response() -> None:
    # The server answers a request still streaming up, then closes before reading it all.
    early = b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\n\r\n"
    proxy = Proxy({"requestheaders": stream_request})
    proxy.from_client(POST + b"Content-Length: 9\r\n\r\nabc")
    proxy.from_server(early)
    assert proxy.to_client() == early
    proxy.server_closes()
    assert proxy.to_client() == early
    assert proxy.client_closed


def test_an_error_after_100_continue_is_still_answered() -> None:
    # 100 Continue is an interim response: the caller still waits for the final one.
    proxy = Proxy(connect_error="Connection refused")
    proxy.from_client(POST + b"Content-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert proxy.to_client() == b"HTTP/1.1 100 Continue\r\n\r\n"
    proxy.from_client(b"abc")
    interim, final = proxy.to_client().split(b"\r\n\r\n", 1)
    assert interim == b"HTTP/1.1 100 Continue"
    status, error = json_api(final)
    assert (status, error["code"]) == (502, "upstream_unreachable")
    assert proxy.client_closed


def h2_client() -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    return client


H2_REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"example.com"),
    (b":path", b"/"),
]


#: What the caller receives of a response (not the connection's settings and windows).
ANSWER_EVENTS = (
    h2.events.ResponseReceived,
    h2.events.DataReceived,
    h2.events.TrailersReceived,
    h2.events.StreamEnded,
    h2.events.StreamReset,
    h2.events.ConnectionTerminated,
)


def h2_answer(client: h2.connection.H2Connection, proxy: Proxy) -> list[h2.events.Event]:
    return [
        event
        for event in client.receive_data(proxy.to_client())
        if isinstance(event, ANSWER_EVENTS)
    ]


def test_http2_no_error_answer_follows_a_response_that_has_begun() -> None:
    client = h2_client()
    proxy = Proxy({"responseheaders": stream_response}, alpn=b"h2")
    client.send_headers(1, H2_REQUEST, end_stream=True)
    proxy.from_client(client.data_to_send())
    proxy.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    proxy.server_closes()
    received = h2_answer(client, proxy)
    assert [type(event) for event in received] == [
        h2.events.ResponseReceived,
        h2.events.DataReceived,
        h2.events.StreamReset,
    ], "the stream is reset, as mitmproxy resets it: no second response on it"
    assert received[1].data == b"abc"


def test_http2_an_error_before_any_response_gets_the_json_api_answer() -> None:
    client = h2_client()
    proxy = Proxy(alpn=b"h2")
    client.send_headers(1, H2_REQUEST, end_stream=True)
    proxy.from_client(client.data_to_send())
    proxy.server_closes()
    response, *data, end = h2_answer(client, proxy)
    assert isinstance(response, h2.events.ResponseReceived)
    assert dict(response.headers)[b"content-type"] == b"application/vnd.api+json"
    assert all(isinstance(event, h2.events.DataReceived) for event in data)
    body = b"".join(event.data for event in data)  # type: ignore[attr-defined]
    assert json.loads(body)["errors"][0]["code"] == "upstream_failed"
    assert isinstance(end, h2.events.StreamEnded)
