"""Attack probes (reviewer b): outputs of mitmproxy the other end-to-end tests do not read,
and secrets in shapes they do not send. Each test drives real gateway processes; the
``planted`` fixture's leak scan reads every output of the run (stdout at flow_detail=4,
saved flows, HAR, and every mitmweb answer added to ``planted.blobs``)."""

from __future__ import annotations

import asyncio
import json
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import requests

from conftest import GatewayFactory, Planted, proxied_session
from unit_gateway.testing import harness


def luhn_complete(prefix: str) -> str:
    """``prefix`` and the check digit that makes it Luhn-valid."""
    digits = [int(c) for c in prefix]
    total = 0
    for i, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if i % 2 == 0 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return prefix + str((10 - total % 10) % 10)


def pan16() -> str:
    return luhn_complete("4" + "".join(str(secrets.randbelow(10)) for _ in range(14)))


def pan19() -> str:
    """A 19-digit card number over 2**62: its uint64 has no zero byte in front."""
    return luhn_complete("6" + "".join(str(secrets.randbelow(10)) for _ in range(17)))


def every_output(run_dir: Path, name: str) -> tuple[str, ...]:
    return (
        "--set", "flow_detail=4",
        "--set", f"save_stream_file={run_dir / (name + '.flows')}",
        "--set", f"hardump={run_dir / (name + '.har')}",
    )  # fmt: skip


class _Echo(BaseHTTPRequestHandler):
    """Any method: answers with the request's body and Content-Type."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", self.headers.get("Content-Type") or "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def post_echoed(gateway: harness.Gateway, bodies: dict[str, tuple[str, bytes]]) -> None:
    """POST each body to the echo host through the gateway; the caller gets it back as sent."""
    with echo_server() as host, proxied_session(gateway) as session:
        for label, (content_type, body) in bodies.items():
            answer = session.post(
                f"{host}/notes", data=body, headers={"Content-Type": content_type}, timeout=30
            )
            assert answer.status_code == 200, (label, answer.text[:300])
            assert answer.content == body, label


# --- binary encodings a content view decodes ----------------------------------------------


def msgpack_float(key: str, number: int) -> bytes:
    """A msgpack map {key: float(number)}: the number's digits are in no reading of the
    bytes, mitmproxy's msgpack view prints ``key: <number>.0``."""
    return b"\x81" + bytes([0xA0 | len(key)]) + key.encode() + b"\xcb" + struct.pack(">d", number)


def msgpack_uint64(key: str, number: int) -> bytes:
    return b"\x81" + bytes([0xA0 | len(key)]) + key.encode() + b"\xcf" + struct.pack(">Q", number)


def msgpack_pan_float() -> str:
    """A 16-digit PAN whose double has no zero byte (most do)."""
    while True:
        pan = pan16()
        if b"\x00" not in struct.pack(">d", int(pan)):
            return pan


def msgpack_pan_uint64() -> str:
    while True:
        pan = pan19()
        if int(pan) < 2**64 and b"\x00" not in struct.pack(">Q", int(pan)):
            return pan


@pytest.mark.parametrize("content_type", ["application/msgpack", "text/plain"])
def test_a_msgpack_number_is_shown_by_the_console(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    run_dir: Path,
    planted: Planted,
    content_type: str,
) -> None:
    """FINDING if it fails for application/msgpack: the redactor reads the body as text (no
    NUL, few control bytes) and finds no digits; mitmproxy's auto view picks the msgpack view
    for the type and prints the card number as a float or an integer."""
    gateway = gateway_factory(sandbox, extra_args=every_output(run_dir, "msgpack"))
    pan = planted.add("PAN as a msgpack float64", msgpack_pan_float())
    pan_long = planted.add("19-digit PAN as a msgpack uint64", msgpack_pan_uint64())
    post_echoed(
        gateway,
        {
            "float": (content_type, msgpack_float("card", int(pan))),
            "uint64": (content_type, msgpack_uint64("card", int(pan_long))),
        },
    )
    assert gateway.process.stop() == 0


def varint(number: int) -> bytes:
    out = b""
    while True:
        low, number = number & 0x7F, number >> 7
        if not number:
            return out + bytes([low])
        out += bytes([low | 0x80])


def test_a_protobuf_varint_is_shown_by_the_console(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, run_dir: Path, planted: Planted
) -> None:
    """A protobuf message: field 1 a varint (the card number), field 2 a string long enough
    that the body does not look binary."""
    gateway = gateway_factory(sandbox, extra_args=every_output(run_dir, "protobuf"))
    pan = planted.add("PAN as a protobuf varint", pan16())
    note = b"a note on the account of a customer, nothing secret in it at all."
    body = b"\x08" + varint(int(pan)) + b"\x12" + bytes([len(note)]) + note
    post_echoed(gateway, {"protobuf": ("application/x-protobuf", body)})
    assert gateway.process.stop() == 0


# --- card numbers and SSNs written with other separators ----------------------------------


def grouped(pan: str, separator: str) -> str:
    return separator.join(pan[i : i + 4] for i in range(0, len(pan), 4))


SEPARATORS = {
    "dots": ".",
    "two spaces": "  ",
    "slashes": "/",
    "tabs": "\t",
    "newlines": "\n",
    "CRLF": "\r\n",
    "space dash space": " - ",
    "underscores": "_",
}


@pytest.mark.parametrize("separator", list(SEPARATORS))
def test_a_card_number_grouped_with_other_separators(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    run_dir: Path,
    planted: Planted,
    separator: str,
) -> None:
    """A card number as people write it, in a text body and in a query string."""
    gateway = gateway_factory(sandbox, extra_args=every_output(run_dir, "separators"))
    pan = pan16()
    written = planted.add(f"PAN with {separator}", grouped(pan, SEPARATORS[separator]))
    post_echoed(gateway, {"text": ("text/plain", f"card: {written} exp 12/29".encode())})
    with echo_server() as host, proxied_session(gateway) as session:
        got = session.get(f"{host}/cards?number={quote(written)}", timeout=30)
        assert got.status_code == 200
    assert gateway.process.stop() == 0


# --- mitmweb: every content view, every export, the flow actions ---------------------------

#: mitmproxy 12.3's content views (as mitmweb's URL spells them).
VIEWS = (
    "auto", "raw", "hex-dump", "hex-stream", "json", "xml-html", "javascript", "viewcss",
    "url-encoded", "multipart-form", "msgpack", "protobuf", "grpc", "image", "query",
    "graphql", "socket.io", "wbxml", "zip-archive", "dns", "mqtt", "http-3-frames",
)  # fmt: skip


def web_session(bearer: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    xsrf = secrets.token_hex(16)
    session.headers.update(
        {
            "Authorization": f"Bearer {bearer}",
            "X-XSRFToken": xsrf,
            "Cookie": f"_mitmproxy_xsrf={xsrf}",
        }
    )
    return session


@contextmanager
def updates_of(base: str, bearer: str) -> Iterator[list[bytes]]:
    received: list[bytes] = []
    connected, stop = threading.Event(), threading.Event()

    async def record() -> None:
        headers = {"Authorization": f"Bearer {bearer}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.ws_connect(f"{base}/updates") as ws:
                connected.set()
                while not stop.is_set():
                    try:
                        message = await ws.receive(timeout=0.2)
                    except TimeoutError:
                        continue
                    if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        data = message.data
                        received.append(data.encode() if isinstance(data, str) else data)
                    elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return

    recorder = threading.Thread(target=lambda: asyncio.run(record()), daemon=True)
    recorder.start()
    assert connected.wait(10), "websocket /updates did not connect"
    try:
        yield received
    finally:
        time.sleep(0.5)
        stop.set()
        recorder.join(10)


def web_gateway(
    gateway_factory: GatewayFactory, upstream: harness.Sandbox, name: str, *args: str
) -> tuple[harness.Gateway, str, str]:
    web_port = harness.free_port()
    gateway = gateway_factory(
        upstream,
        name=name,
        web=True,
        extra_args=("--set", f"web_port={web_port}", "--set", "web_open_browser=false", *args),
    )
    bearer = gateway.process.wait_for(r"Web server listening at \S+token=(\w+)").group(1)
    return gateway, f"http://127.0.0.1:{web_port}", bearer


def read_everything(web: requests.Session, base: str, planted: Planted, run_dir: Path) -> None:
    """Every per-flow endpoint and command of mitmweb that returns or writes flow data."""
    listing = web.get(f"{base}/flows", timeout=10)
    planted.blobs.append(("GET /flows", listing.content))
    formats = web.post(f"{base}/commands/export.formats", json={"arguments": []}, timeout=10)
    names = formats.json()["value"]
    for flow in listing.json():
        fid = flow["id"]
        planted.blobs.append((f"GET /flows/{fid}", web.get(f"{base}/flows/{fid}").content))
        for part in ("request", "response", "messages"):
            got = web.get(f"{base}/flows/{fid}/{part}/content.data", timeout=10)
            planted.blobs.append((f"{part} content.data {fid}", got.content))
            for view in VIEWS:
                got = web.get(f"{base}/flows/{fid}/{part}/content/{view}.json", timeout=10)
                planted.blobs.append((f"{part} view {view} {fid}", got.content))
        for fmt in names:
            got = web.post(f"{base}/commands/export", json={"arguments": [fmt, f"@{fid}"]})
            planted.blobs.append((f"export {fmt} {fid}", got.content))
            web.post(
                f"{base}/commands/export.file",
                json={"arguments": [fmt, f"@{fid}", str(run_dir / f"export-{fmt}-{fid}")]},
            )
        for command in ("view.flows.resolve", "flow.decode", "flow.encode.options"):
            got = web.post(f"{base}/commands/{command}", json={"arguments": [f"@{fid}"]})
            planted.blobs.append((f"{command} {fid}", got.content))
        for action in ("duplicate", "revert"):
            got = web.post(f"{base}/flows/{fid}/{action}", timeout=10)
            planted.blobs.append((f"{action} {fid}", got.content))
    for command in ("view.flows.resolve", "flowview.count"):
        got = web.post(f"{base}/commands/{command}", json={"arguments": ["@all"]})
        planted.blobs.append((f"{command} @all", got.content))
    planted.blobs.append(("GET /flows/dump", web.get(f"{base}/flows/dump", timeout=10).content))
    planted.blobs.append(("GET /events", web.get(f"{base}/events", timeout=10).content))
    planted.blobs.append(("GET /flows after", web.get(f"{base}/flows", timeout=10).content))


def test_mitmweb_every_view_and_export_of_bodies_in_odd_shapes(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, run_dir: Path, planted: Planted
) -> None:
    """Bodies to another host whose secrets only a decoding view shows (msgpack under
    text/plain, read with the msgpack view), and the usual ones, read through every view,
    export, and command mitmweb offers."""
    gateway, base, bearer = web_gateway(gateway_factory, sandbox, "web-views")
    pan = planted.add("PAN", pan16())
    float_pan = planted.add("PAN as msgpack float", msgpack_pan_float())
    token = planted.add("token", "v2.public." + secrets.token_urlsafe(40))
    bodies = {
        "msgpack float under text/plain": ("text/plain", msgpack_float("card", int(float_pan))),
        "json": ("application/json", json.dumps({"note": f"card {pan} token {token}"}).encode()),
        "form": ("application/x-www-form-urlencoded", f"card={pan}&t={token}".encode()),
        "xml": ("application/xml", f"<card>{pan}</card><t>{token}</t>".encode()),
        "graphql": (
            "application/json",
            json.dumps({"query": "{ card }", "variables": {"n": pan, "t": token}}).encode(),
        ),
    }
    with web_session(bearer) as web, updates_of(base, bearer) as updates:
        post_echoed(gateway, bodies)
        with echo_server() as host, proxied_session(gateway) as session:
            session.get(f"{host}/cards/{pan}?t={token}#frag", headers={"X-Card": pan}, timeout=30)
        read_everything(web, base, planted, run_dir)
    planted.blobs.append(("/updates", b"\n".join(updates)))
