"""Flow fields and flow types beyond HTTP headers and bodies, through a real gateway: a
service's other egress (a WebSocket, a raw TCP stream, UDP datagrams, DNS) and HTTP fields a
person sees (the method, the reason phrase, header and cookie names, HTTP/2 trailers). The
peers get the real bytes; mitmdump's console at flow_detail=4, saved flows and HAR hold none
of the planted secrets."""

from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.events
import pytest
from aiohttp import web
from mitmproxy import dns, http, udp

from conftest import (
    UDP_FLOW_EXIT_STATUSES,
    GatewayFactory,
    Planted,
    port_of,
    proxied_session,
    saved_flows_of,
)
from unit_gateway.sandbox.tls import CertificateFiles, write_certificates
from unit_gateway.testing import harness


def _token() -> str:
    return "v2.public." + secrets.token_urlsafe(60)


def _card_number() -> str:
    """A random Luhn-valid 16-digit number (a method must be a token: no dots)."""
    digits = [4, *(secrets.randbelow(10) for _ in range(14))]
    total = sum(d if i % 2 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits))
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


#: DNS record type TXT and class IN (RFC 1035)
_TXT, _IN = 16, 1


def _read_name(message: bytes, offset: int) -> tuple[str, int]:
    """The domain name at ``offset`` of a DNS message (following compression pointers) and
    the offset after it."""
    labels: list[str] = []
    end = None
    while size := message[offset]:
        if size >= 0xC0:  # a pointer: the name goes on elsewhere, this one ends after it
            end = end or offset + 2
            offset = struct.unpack_from("!H", message, offset)[0] & 0x3FFF
            continue
        labels.append(message[offset + 1 : offset + 1 + size].decode("ascii"))
        offset += 1 + size
    return ".".join(labels), end or offset + 1


def _txt_query(name: str, ident: int) -> bytes:
    """A DNS query (stdlib only: no part of mitmproxy builds what the test sends)."""
    labels = b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))
    header = struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0)  # recursion desired, 1 question
    return header + labels + b"\0" + struct.pack("!HH", _TXT, _IN)


def _txt_answers(message: bytes) -> tuple[int, list[tuple[str, bytes]]]:
    """The id of a DNS answer and its TXT records as (name, text)."""
    ident, _, questions, answers = struct.unpack_from("!4H", message)
    offset = 12
    for _ in range(questions):
        offset = _read_name(message, offset)[1] + 4
    found = []
    for _ in range(answers):
        name, offset = _read_name(message, offset)
        kind, _, _, length = struct.unpack_from("!HHIH", message, offset)
        data = message[offset + 10 : offset + 10 + length]
        offset += 10 + length
        if kind == _TXT:  # one or more <length><text> strings
            text, at = b"", 0
            while at < len(data):
                text += data[at + 1 : at + 1 + data[at]]
                at += 1 + data[at]
            found.append((name, text))
    return ident, found


class _UdpEcho(asyncio.DatagramProtocol):
    """Each datagram back with ``echo `` before it."""

    def __init__(self, seen: list[bytes]) -> None:
        self.seen = seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.seen.append(data)
        self.transport.sendto(b"echo " + data, addr)


class _TxtServer(asyncio.DatagramProtocol):
    """A DNS server that answers every question with one TXT record, ``peers.txt_answer``,
    and notes the names asked."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        ident = struct.unpack_from("!H", data)[0]
        name, end = _read_name(data, 12)
        self.peers.dns_asked.append(name)
        text = self.peers.txt_answer.encode()
        answer = (
            b"\xc0\x0c"  # the question's name
            + struct.pack("!HHIH", _TXT, _IN, 60, len(text) + 1)
            + bytes([len(text)])
            + text
        )
        header = struct.pack("!6H", ident, 0x8180, 1, 1, 0, 0)  # a recursive answer, no error
        self.transport.sendto(header + data[12 : end + 4] + answer, addr)


@dataclass
class _Http2Request:
    """What the HTTP/2 peer got of one request."""

    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)


class _Http2Trailers(asyncio.Protocol):
    """HTTP/2 (over TLS): notes each request's headers, body and trailers in
    ``peers.h2_seen`` and answers ``ok`` with ``peers.response_trailers``."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.requests: dict[int, _Http2Request] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.requests[event.stream_id] = _Http2Request(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.requests[event.stream_id].body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.requests[event.stream_id].trailers = event.headers
            elif isinstance(event, h2.events.StreamEnded):
                self.peers.h2_seen.append(self.requests.pop(event.stream_id))
                self.conn.send_headers(event.stream_id, [(":status", "200")])
                self.conn.send_data(event.stream_id, b"ok")
                self.conn.send_headers(
                    event.stream_id, self.peers.response_trailers, end_stream=True
                )
        self.transport.write(self.conn.data_to_send())


class Peers:
    """A WebSocket echo server (aiohttp), an HTTP/1 server that takes any method (raw: a
    parser would refuse odd ones), a TCP and a UDP echo server, a DNS server and an HTTP/2
    server with trailers (TLS, its CA in ``tls.ca_cert``), on loopback."""

    def __init__(self, cert_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.http_port = harness.free_port()
        self.tcp_port = harness.free_port()
        self.tcp_chunks_port = harness.free_port()
        self.raw_http_port = harness.free_port()
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.udp_seen: list[bytes] = []
        self.dns_asked: list[str] = []
        self.txt_answer = ""
        self.h2_seen: list[_Http2Request] = []
        self.response_trailers: list[tuple[str, str]] = []
        self.tls: CertificateFiles = write_certificates(cert_dir, "127.0.0.1")
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.http_port)
        self.loop.run_until_complete(site.start())
        self.tcp = self.loop.run_until_complete(
            asyncio.start_server(self._tcp_echo, "127.0.0.1", self.tcp_port)
        )
        self.tcp_chunks = self.loop.run_until_complete(
            asyncio.start_server(self._tcp_chunk_echo, "127.0.0.1", self.tcp_chunks_port)
        )
        self.raw_http = self.loop.run_until_complete(
            asyncio.start_server(self._raw_http, "127.0.0.1", self.raw_http_port)
        )
        # Datagram and TLS servers take a port the system picks: no race for a free one.
        self.udp, _ = self.loop.run_until_complete(
            self.loop.create_datagram_endpoint(
                lambda: _UdpEcho(self.udp_seen), local_addr=("127.0.0.1", 0)
            )
        )
        self.udp_port = self.udp.get_extra_info("sockname")[1]
        self.dns, _ = self.loop.run_until_complete(
            self.loop.create_datagram_endpoint(
                lambda: _TxtServer(self), local_addr=("127.0.0.1", 0)
            )
        )
        self.dns_port = self.dns.get_extra_info("sockname")[1]
        tls = self.tls.server_context()
        tls.set_alpn_protocols(["h2"])
        self.h2 = self.loop.run_until_complete(
            self.loop.create_server(lambda: _Http2Trailers(self), "127.0.0.1", 0, ssl=tls)
        )
        self.h2_port = self.h2.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(f"echo {message.data}")
        return ws

    async def _raw_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request: answers with the reason phrase in X-Reason and a cookie named in
        X-Cookie-Name."""
        head = await reader.readuntil(b"\r\n\r\n")
        line, *fields = head.decode("latin-1").split("\r\n")[:-2]
        method, target, _ = line.split(" ")
        headers = dict(field.split(": ", 1) for field in fields)
        self.seen.append((method, target, headers))
        writer.write(
            f"HTTP/1.1 200 {headers.get('X-Reason', 'OK')}\r\n"
            f"Set-Cookie: {headers.get('X-Cookie-Name', 'plain')}=1\r\n"
            "Content-Length: 2\r\nConnection: close\r\n\r\nok".encode()
        )
        await writer.drain()
        writer.close()

    async def _tcp_echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(b"echo " + line)
            await writer.drain()
        writer.close()

    async def _tcp_chunk_echo(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Each piece back as it came: the answer is cut where the request was."""
        while piece := await reader.read(65536):
            writer.write(piece)
            await writer.drain()
        writer.close()

    def stop(self) -> None:
        async def close() -> None:
            self.tcp.close()
            self.tcp_chunks.close()
            self.raw_http.close()
            self.udp.close()
            self.dns.close()
            self.h2.close()
            await self.runner.cleanup()
            # Handlers of connections still open end here, not as tasks destroyed pending.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    found = Peers(tmp_path / "peer-tls")
    yield found
    found.stop()


def _tunnel(gateway: harness.Gateway, port: int) -> socket.socket:
    host, _, proxy_port = gateway.proxy_url.removeprefix("http://").rpartition(":")
    conn = socket.create_connection((host, int(proxy_port)), timeout=10)
    conn.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return conn


def _every_output(run_dir: Path) -> tuple[str, ...]:
    """mitmproxy options for every output a person may read: the console at its most
    detailed, saved flows and HAR, all in the run directory the leak scan reads."""
    return (
        "--set",
        f"save_stream_file={run_dir / 'flows.mitm'}",
        "--set",
        f"hardump={run_dir / 'flows.har'}",
        "--set",
        "flow_detail=4",
    )


@pytest.fixture
def outputs_gateway(
    run_dir: Path, sandbox: harness.Sandbox, gateway_factory: GatewayFactory
) -> harness.Gateway:
    return gateway_factory(
        sandbox,
        extra_args=(
            # a raw TCP stream (mitmproxy expects HTTP in a tunnel unless told otherwise)
            "--set",
            r"tcp_hosts=^127\.0\.0\.1$",
            *_every_output(run_dir),
        ),
    )


def test_tcp_messages_are_redacted_and_the_peer_gets_them(
    outputs_gateway: harness.Gateway, peers: Peers, planted: Planted
) -> None:
    secret = planted.add("token in a TCP stream", _token())
    with _tunnel(outputs_gateway, peers.tcp_port) as conn:
        conn.sendall(f"hello {secret}\n".encode())
        answer = b""
        while not answer.endswith(b"\n"):
            answer += conn.recv(4096)
    assert answer == f"echo hello {secret}\n".encode()
    outputs_gateway.process.wait_for(r"TCP|tcp")  # the stream was shown


def test_a_secret_split_across_tcp_messages_is_shown_in_none_of_them(
    outputs_gateway: harness.Gateway, peers: Peers, planted: Planted
) -> None:
    """Each part of a token and of a card number goes in its own TCP segment, both ways: no
    part shows, as printed when it arrived or as kept once the stream ended."""
    token, card = _token(), _card_number()
    spaced = " ".join(card[i : i + 4] for i in range(0, 16, 4))
    pieces = [
        f"hello {token[:24]}",
        token[24:60],
        f"{token[60:]} pay {spaced[:9]}",
        f"{spaced[9:]} bye\n",
    ]
    planted.add("token split across messages", token)
    planted.add("middle of the split token", token[24:60])
    planted.add("end of the split token", token[60:])
    planted.add("card split across messages", card)
    planted.add("start of the split card", spaced[:9])
    planted.add("end of the split card", spaced[9:])
    sent = "".join(pieces).encode()
    with _tunnel(outputs_gateway, peers.tcp_chunks_port) as conn:
        answer = b""
        for piece in pieces:
            conn.sendall(piece.encode())
            goal = len(answer) + len(piece)
            while len(answer) < goal:  # its echo came back: the next one is a new message
                answer += conn.recv(65536)
    assert answer == sent
    outputs_gateway.process.wait_for(r"bye")  # the last message was shown


def test_websocket_messages_are_redacted_and_the_peer_gets_them(
    outputs_gateway: harness.Gateway, peers: Peers, planted: Planted
) -> None:
    secret = planted.add("token in a WebSocket message", _token())

    async def talk() -> str:
        async with aiohttp.ClientSession(trust_env=False) as session:
            async with session.ws_connect(
                f"http://127.0.0.1:{peers.http_port}/ws", proxy=outputs_gateway.proxy_url
            ) as ws:
                await ws.send_str(f'{{"token": "{secret}"}}')
                answer = await ws.receive(timeout=10)
                await ws.close()
                return str(answer.data)

    assert asyncio.run(talk()) == f'echo {{"token": "{secret}"}}'


def test_a_secret_split_across_websocket_messages_is_shown_in_none_of_them(
    outputs_gateway: harness.Gateway, peers: Peers, planted: Planted
) -> None:
    token = _token()
    planted.add("token split across WebSocket messages", token)
    planted.add("end of the split token", token[30:])

    async def talk() -> list[str]:
        async with aiohttp.ClientSession(trust_env=False) as session:
            async with session.ws_connect(
                f"http://127.0.0.1:{peers.http_port}/ws", proxy=outputs_gateway.proxy_url
            ) as ws:
                answers = []
                for part in (f"token {token[:30]}", token[30:]):
                    await ws.send_str(part)
                    answers.append(str((await ws.receive(timeout=10)).data))
                await ws.close()
                return answers

    assert asyncio.run(talk()) == [f"echo token {token[:30]}", f"echo {token[30:]}"]


def test_method_reason_and_names_are_redacted_and_the_peers_get_them(
    outputs_gateway: harness.Gateway, peers: Peers, planted: Planted
) -> None:
    method = planted.add("card number as a method", _card_number())
    reason = planted.add("token as a reason phrase", _token())
    header_name = planted.add("token as a header name", _token())
    cookie_name = planted.add("token as a cookie name", _token())
    with proxied_session(outputs_gateway) as session:
        answer = session.request(
            method,
            f"http://127.0.0.1:{peers.raw_http_port}/echo",
            headers={
                "X-Reason": reason,
                header_name: "1",
                "Cookie": f"{cookie_name}=1",
                "X-Cookie-Name": cookie_name,
            },
        )
    assert answer.status_code == 200
    assert answer.reason == reason
    assert cookie_name in answer.headers["Set-Cookie"]
    (seen,) = peers.seen
    assert seen[0] == method
    assert seen[2][header_name] == "1"
    assert seen[2]["Cookie"] == f"{cookie_name}=1"


def test_udp_datagrams_are_redacted_and_the_peer_gets_them(
    run_dir: Path,
    sandbox: harness.Sandbox,
    gateway_factory: GatewayFactory,
    peers: Peers,
    planted: Planted,
) -> None:
    """A reverse UDP listener (the mode that proxies raw UDP on loopback without root): the
    token goes out in one datagram and comes back in the echo. It is inside the datagram, not
    at its end, which the gateway would hold back anyway while the stream may continue it:
    here the token itself must be found."""
    secret = planted.add("token in a UDP datagram", _token())
    sent = f'{{"token": "{secret}"}}'.encode()
    gateway = gateway_factory(
        sandbox,
        mode=f"reverse:udp://127.0.0.1:{peers.udp_port}",
        extra_args=_every_output(run_dir),
        exit_statuses=UDP_FLOW_EXIT_STATUSES,
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as conn:
        conn.settimeout(10)
        conn.sendto(sent, ("127.0.0.1", port_of(gateway.proxy_url)))
        answer, _ = conn.recvfrom(65536)
    assert answer == b"echo " + sent
    assert peers.udp_seen == [sent]
    gateway.process.wait_for(r"<- udp <-")  # the answer was shown
    # A UDP flow has no end but an idle timeout: it is saved when the gateway stops.
    assert gateway.process.stop() in UDP_FLOW_EXIT_STATUSES
    (saved,) = saved_flows_of(run_dir / "flows.mitm", udp.UDPFlow)
    assert [m.from_client for m in saved.messages] == [True, False]
    # Read to their ends, not held back: the token was found (and the scan proves it hidden).
    assert all(m.content.endswith(b'"}') for m in saved.messages), saved.messages


def test_dns_names_and_answers_are_redacted_and_the_client_gets_them(
    run_dir: Path,
    sandbox: harness.Sandbox,
    gateway_factory: GatewayFactory,
    peers: Peers,
    planted: Planted,
) -> None:
    """A reverse DNS listener in front of a loopback DNS server: a card number and a token
    (its body in one label, at most 63 bytes) in the name asked, a token in the TXT answer."""
    card = planted.add("card number as a DNS label", _card_number())
    body = secrets.token_urlsafe(45)  # 60 characters: one label
    asked_token = planted.add("token in a DNS name", f"v2.public.{body}")
    planted.add("body of the token in a DNS name", body)
    answer_token = planted.add("token in a TXT answer", _token())
    peers.txt_answer = answer_token
    name = f"{card}.{asked_token}.example"
    gateway = gateway_factory(
        sandbox,
        mode=f"reverse:dns://127.0.0.1:{peers.dns_port}",
        extra_args=_every_output(run_dir),
        exit_statuses=UDP_FLOW_EXIT_STATUSES,  # DNS over UDP: a UDP flow
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as conn:
        conn.settimeout(10)
        conn.sendto(_txt_query(name, 0x5EC), ("127.0.0.1", port_of(gateway.proxy_url)))
        reply, _ = conn.recvfrom(65536)
    assert _txt_answers(reply) == (0x5EC, [(name, answer_token.encode())])
    assert peers.dns_asked == [name]
    gateway.process.wait_for(r"DNS QUERY \(TXT\)")  # the query and its answer were shown
    assert gateway.process.stop() in UDP_FLOW_EXIT_STATUSES
    (saved,) = saved_flows_of(run_dir / "flows.mitm", dns.DNSFlow)
    assert saved.response is not None and len(saved.response.answers) == 1


def _h2_exchange(
    gateway: harness.Gateway,
    port: int,
    trailers: list[tuple[str, str]],
) -> tuple[list[tuple[str, str]], bytes, list[tuple[str, str]]]:
    """POST ``hello`` with ``trailers`` over HTTP/2 (TLS through a CONNECT tunnel) to the
    peer at ``port``; returns the response's headers, body and trailers. h2 directly: httpx
    can send no request trailers."""
    tls = ssl.create_default_context(cafile=gateway.ca_path)
    tls.set_alpn_protocols(["h2"])
    with tls.wrap_socket(_tunnel(gateway, port), server_hostname="127.0.0.1") as conn:
        assert conn.selected_alpn_protocol() == "h2"
        h2conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        h2conn.initiate_connection()
        stream = h2conn.get_next_available_stream_id()
        h2conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", f"127.0.0.1:{port}"),
                (":path", "/trailers"),
            ],
        )
        h2conn.send_data(stream, b"hello")
        h2conn.send_headers(stream, trailers, end_stream=True)
        conn.sendall(h2conn.data_to_send())
        headers: list[tuple[str, str]] = []
        body, answer_trailers = b"", []
        ended = False
        while not ended:
            data = conn.recv(65536)
            assert data, "the connection closed before the answer ended"
            for event in h2conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = event.headers
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    h2conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.TrailersReceived):
                    answer_trailers = event.headers
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            conn.sendall(h2conn.data_to_send())
    return headers, body, answer_trailers


def test_http2_trailers_are_redacted_and_both_ends_get_them(
    run_dir: Path,
    sandbox: harness.Sandbox,
    gateway_factory: GatewayFactory,
    peers: Peers,
    planted: Planted,
) -> None:
    """Request and response trailers over HTTP/2 on both sides of the gateway, with a token
    as a trailer's value and another as a trailer's name, each way (HTTP/2 names are lower
    case: a lower-cased token is still a token)."""
    request_trailers = [
        ("x-checksum", planted.add("token as a request trailer value", _token())),
        (planted.add("token as a request trailer name", _token().lower()), "1"),
    ]
    peers.response_trailers = [
        ("x-checksum", planted.add("token as a response trailer value", _token())),
        (planted.add("token as a response trailer name", _token().lower()), "1"),
    ]
    gateway = gateway_factory(
        sandbox,
        extra_args=(
            *_every_output(run_dir),
            "--set",
            f"ssl_verify_upstream_trusted_ca={peers.tls.ca_cert}",
        ),
    )
    headers, body, trailers = _h2_exchange(gateway, peers.h2_port, request_trailers)
    assert (dict(headers)[":status"], body) == ("200", b"ok")
    assert trailers == peers.response_trailers
    (seen,) = peers.h2_seen
    assert (seen.body, seen.trailers) == (b"hello", request_trailers)
    assert gateway.process.stop() == 0
    (saved,) = saved_flows_of(run_dir / "flows.mitm", http.HTTPFlow)
    assert saved.request.http_version == "HTTP/2.0"
    assert saved.request.trailers is not None and saved.response is not None
    assert saved.response.trailers is not None, "the flow kept both trailers, redacted"


def test_a_secret_in_a_connection_is_shown_nowhere_and_the_request_is_answered(
    run_dir: Path,
    sandbox: harness.Sandbox,
    gateway_factory: GatewayFactory,
    peers: Peers,
    planted: Planted,
) -> None:
    """A client names a card number as its TLS server name and offers a token as an ALPN
    protocol. mitmproxy keeps both with the flow's connections and passes the name on to the
    server; the console, saved flows and HAR show neither, and the caller gets the answer it
    would get without the redaction: the server's certificate is not for that name."""
    card = planted.add("card number as a TLS server name", _card_number())
    alpn = planted.add("token as an ALPN protocol offered", _token()[:60])
    gateway = gateway_factory(
        sandbox,
        extra_args=(
            *_every_output(run_dir),
            "--set",
            f"ssl_verify_upstream_trusted_ca={peers.tls.ca_cert}",
        ),
    )
    tls = ssl.create_default_context(cafile=gateway.ca_path)
    tls.set_alpn_protocols(["http/1.1", alpn])
    tunnel = _tunnel(gateway, peers.h2_port)
    with tls.wrap_socket(tunnel, server_hostname=f"{card}.example") as conn:
        conn.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{peers.h2_port}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer and (data := conn.recv(65536)):
            answer += data
    assert answer.startswith(b"HTTP/1.1 502"), answer[:200]
    assert gateway.process.stop() == 0
    (saved,) = saved_flows_of(run_dir / "flows.mitm", http.HTTPFlow)
    assert saved.client_conn.sni is not None and card not in saved.client_conn.sni
