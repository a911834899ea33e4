"""Flow fields and flow types beyond HTTP headers and bodies, through a real gateway: a
service's other egress (a WebSocket, a raw TCP stream) and HTTP fields a person sees (the
method, the reason phrase, header and cookie names). The peers get the real bytes; mitmdump's
console at flow_detail=4, saved flows and HAR hold none of the planted secrets."""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from conftest import GatewayFactory, Planted, proxied_session
from unit_gateway.testing import harness


def _token() -> str:
    return "v2.public." + secrets.token_urlsafe(60)


def _card_number() -> str:
    """A random Luhn-valid 16-digit number (a method must be a token: no dots)."""
    digits = [4, *(secrets.randbelow(10) for _ in range(14))]
    total = sum(d if i % 2 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits))
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


class Peers:
    """A WebSocket echo server (aiohttp), an HTTP/1 server that takes any method (raw: a
    parser would refuse odd ones) and a TCP echo server, on loopback."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.http_port = harness.free_port()
        self.tcp_port = harness.free_port()
        self.tcp_chunks_port = harness.free_port()
        self.raw_http_port = harness.free_port()
        self.seen: list[tuple[str, str, dict[str, str]]] = []
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
def peers() -> Iterator[Peers]:
    found = Peers()
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
            "--set",
            f"save_stream_file={run_dir / 'flows.mitm'}",
            "--set",
            f"hardump={run_dir / 'flows.har'}",
            "--set",
            "flow_detail=4",
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
