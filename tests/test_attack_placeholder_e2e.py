"""Attack probes on the placeholder promise (branch attack-a): a caller that used a
placeholder never obtains a real Unit token, and no real token (or placeholder turned into
one) goes to a host that is not a configured Unit upstream.

Response side: a Unit upstream of the test's own (``ScriptedUnit``) answers each path with
scripted bytes, as a buggy or hostile Unit would; a raw HTTP/1.1 caller goes through the
gateway in regular mode and everything it receives is read every way a client may read it
(transfer codings undone, content codings undone, JSON escapes and percent-encoding
resolved, folded header lines joined). No reading may hold a token's secret part.

Request side: a recorder of the test's own plays "another host" and keeps every byte it
receives; no placeholder and no real token may reach it, and the sandbox (Unit) must get the
token only on requests really sent to it.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import secrets
import socket
import socketserver
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import brotli
import pytest
import zstandard

from conftest import GatewayFactory, Planted, address_of
from scripted_unit import ScriptedUnit, http_answer
from test_token_path_e2e import CARD, CUSTOMER, unit_token
from unit_gateway.testing import harness

pytestmark = pytest.mark.timeout(120)

MARK = b"v2.public."
ORG = "Authorization: Bearer unitgw:org\r\n"


# --- a scripted Unit ------------------------------------------------------------------------


def chunked(body: bytes, trailers: bytes = b"") -> bytes:
    return b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, trailers)


# --- what a caller can read ------------------------------------------------------------------


def _undo(data: bytes, codings: list[str]) -> list[bytes]:
    """Every reading of ``data`` a lenient client gets undoing ``codings`` (outermost last),
    including what follows the first compressed member."""
    out = [data]
    for coding in reversed(codings):
        nxt = []
        for d in out:
            nxt.append(d)
            if coding in ("gzip", "x-gzip", "deflate"):
                for wbits in (16 + zlib.MAX_WBITS, zlib.MAX_WBITS, -zlib.MAX_WBITS):
                    rest = d
                    while rest:
                        try:
                            dec = zlib.decompressobj(wbits)
                            nxt.append(dec.decompress(rest) + dec.flush())
                            nxt.append(dec.unused_data)
                            rest = dec.unused_data.lstrip(b"\x00X")
                        except zlib.error:
                            break
        out = nxt
    return out


def readings(raw: bytes) -> list[bytes]:
    """What a caller can make of the bytes the gateway sent it."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", head)
    squashed = re.sub(rb"\r\n[ \t]+", b"", head)
    fields = [line.partition(b":") for line in lines[1:]]
    te = b",".join(v for n, _, v in fields if n.strip().lower() == b"transfer-encoding")
    ce = b",".join(v for n, _, v in fields if n.strip().lower() == b"content-encoding")
    if b"chunked" in te.lower():
        plain, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0:
                break
            plain, rest = plain + rest[:size], rest[size + 2 :]
        body = plain + b"\n" + rest  # trailers after
    te_codings = [
        c.strip().decode() for c in te.lower().split(b",") if c.strip() not in (b"", b"chunked")
    ]
    ce_codings = [c.strip().decode() for c in ce.lower().split(b",") if c.strip()]
    bodies = _undo(body, ce_codings + te_codings)
    more = []
    for coding in ("br", "zstd"):
        for b in list(bodies):
            try:
                more.append(brotli.decompress(b) if coding == "br" else zstandard.decompress(b))
            except Exception:
                pass
    found = [raw, head, unfolded, squashed, *bodies, *more]
    for item in list(found):
        found.append(unquote_to_bytes(item))
        try:
            found.append(item.decode("utf-7").encode("utf-8", "replace"))
        except UnicodeError:
            pass
        found.append(
            re.sub(rb"\\u([0-9A-Fa-f]{4})", lambda m: chr(int(m.group(1), 16)).encode(), item)
        )
        for run in re.findall(rb"[A-Za-z0-9+/_-]{20,}", item):  # base64, either alphabet
            for altchars in (None, b"-_"):
                try:
                    found.append(base64.b64decode(run + b"==", altchars=altchars))
                except ValueError:
                    pass
    return found


def secret_parts(token: str) -> list[bytes]:
    """What of a token a caller must never see: its payload and signature (the part after
    ``v2.public.``, which is the whole of its secret)."""
    return [token.split(".")[2].encode()]


def exchange(proxy_url: str, request: bytes, planted: Planted, label: str) -> bytes:
    received = b""
    with socket.create_connection(address_of(proxy_url), timeout=20) as conn:
        conn.sendall(request)
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    planted.blobs.append((label, received))
    return received


def get_raw(
    proxy_url: str,
    url: str,
    path: str,
    planted: Planted,
    *,
    method: str = "GET",
    headers: str = ORG,
) -> bytes:
    host = url.split("://", 1)[1]
    request = (
        f"{method} {url}{path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
        "Accept-Encoding: gzip, deflate, br, zstd\r\nTE: trailers, gzip\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return exchange(proxy_url, request, planted, f"{method} {path}")


def leaked(raw: bytes, tokens: dict[str, str]) -> list[str]:
    """The kinds of token whose secret part a caller can read in ``raw``."""
    got = readings(raw)
    return [
        kind
        for kind, token in tokens.items()
        if any(part in r for part in secret_parts(token) for r in got)
    ]


@pytest.fixture
def tokens(planted: Planted) -> dict[str, str]:
    key = secrets.token_bytes(32)
    made = {
        "org": unit_token(key, role="org", userId="1"),
        "customer": unit_token(key, role="customer", customerId=CUSTOMER),
        "cardholder": unit_token(key, role="cardholder", cardId=CARD),
    }
    for kind, token in made.items():
        planted.add(f"scripted Unit's {kind} token", token)
        # its secret part on its own too: the leak scan must find it however it is framed
        planted.add(f"scripted Unit's {kind} token (secret part)", token.split(".")[2])
    return made


def _body(token: str) -> bytes:
    return json.dumps({"data": {"attributes": {"note": token}}}).encode()


# Answers where the gateway is expected to keep its promise today (and does).
def holding_answers(t: dict[str, str]) -> dict[str, bytes | Callable[[bytes], bytes]]:
    c, o, h = t["customer"], t["org"], t["cardholder"]
    body = _body(c)
    return {
        "/ce-gzip-gzip": http_answer(
            gzip.compress(gzip.compress(body)), headers=("Content-Encoding: gzip, gzip",)
        ),
        "/ce-two-fields": http_answer(
            gzip.compress(gzip.compress(body)),
            headers=("Content-Encoding: gzip", "Content-Encoding: gzip"),
        ),
        "/ce-upper": http_answer(gzip.compress(body), headers=("Content-Encoding: GZIP",)),
        "/ce-identity-gzip": http_answer(
            gzip.compress(body), headers=("Content-Encoding: identity, gzip",)
        ),
        "/ce-x-gzip": http_answer(gzip.compress(body), headers=("Content-Encoding: x-gzip",)),
        "/ce-deflate-zlib": http_answer(
            zlib.compress(body), headers=("Content-Encoding: deflate",)
        ),
        "/ce-deflate-raw": http_answer(
            _raw_deflate(body),
            headers=("Content-Encoding: deflate",),
        ),
        "/ce-br": http_answer(brotli.compress(body), headers=("Content-Encoding: br",)),
        "/ce-zstd": http_answer(zstandard.compress(body), headers=("Content-Encoding: zstd",)),
        "/ce-gzip-multimember": http_answer(
            gzip.compress(b'{"a":"') + gzip.compress(c.encode() + b'"}'),
            headers=("Content-Encoding: gzip",),
        ),
        "/set-cookie": http_answer(headers=(f"Set-Cookie: unit={c}; Path=/; HttpOnly",)),
        "/location": http_answer(
            status="302 Found", headers=(f"Location: https://x.test/cb?token={o}",)
        ),
        "/link": http_answer(headers=(f'Link: <https://x.test/{h}>; rel="next"',)),
        "/json-slash-escape": http_answer(json.dumps({"t": c + "/x"}).replace("/", "\\/").encode()),
        "/chunked-trailer": http_answer(
            chunked(b"{}", f"X-Token: {c}\r\n".encode()),
            headers=("Transfer-Encoding: chunked", "Trailer: X-Token"),
            length=False,
        ),
        "/chunked-gzip": http_answer(
            chunked(gzip.compress(body)),
            headers=("Transfer-Encoding: chunked", "Content-Encoding: gzip"),
            length=False,
        ),
        "/early-hints": (
            f"HTTP/1.1 103 Early Hints\r\nLink: <https://x.test/{c}>\r\n\r\n".encode()
            + http_answer(body)
        ),
        "/no-content-with-body": http_answer(body, status="204 No Content"),
        "/not-modified": http_answer(
            status="304 Not Modified", headers=(f'ETag: "{c}"',), length=False
        ),
        "/head": http_answer(headers=(f"X-Token: {c}",)),
        "/close-delimited": http_answer(body, length=False),
        "/multipart": http_answer(
            b"--b\r\nContent-Type: text/plain\r\n\r\n" + c.encode() + b"\r\n--b--\r\n",
            headers=(),
        ).replace(b"application/vnd.api+json", b"multipart/mixed; boundary=b"),
        "/large-plain": http_answer(b'{"x":"' + b"a" * (3 << 20) + b'","t":"' + c.encode() + b'"}'),
        "/over-limit-gzip": http_answer(
            gzip.compress(b'{"x":"' + b"a" * (3 << 20) + b'","t":"' + c.encode() + b'"}'),
            headers=("Content-Encoding: gzip",),
        ),
        "/ce-in-mixed-case-name": http_answer(
            gzip.compress(body), headers=("cOnTeNt-EnCoDiNg: gzip",)
        ),
    }


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.fixture
def scripted(tokens: dict[str, str]) -> Iterator[ScriptedUnit]:
    c = tokens["customer"]
    payload = c.split(".", 2)[2]
    body = _body(c)
    answers = holding_answers(tokens) | {
        # Transfer codings other than chunked: mitmproxy undoes only the chunking.
        "/te-gzip-chunked": http_answer(
            chunked(gzip.compress(body)),
            headers=("Transfer-Encoding: gzip, chunked",),
            length=False,
        ),
        "/te-gzip-close": http_answer(
            gzip.compress(body), headers=("Transfer-Encoding: gzip",), length=False
        ),
        "/te-deflate-chunked": http_answer(
            chunked(zlib.compress(body)),
            headers=("Transfer-Encoding: deflate, chunked",),
            length=False,
        ),
        # Bytes after the compressed stream: the gateway decodes the stream only.
        "/gzip-then-plain": http_answer(
            gzip.compress(b"{}") + c.encode(), headers=("Content-Encoding: gzip",)
        ),
        "/deflate-then-plain": http_answer(
            zlib.compress(b"{}") + c.encode(), headers=("Content-Encoding: deflate",)
        ),
        "/gzip-then-junk-then-gzip": http_answer(
            gzip.compress(b"{}") + b"X" + gzip.compress(body), headers=("Content-Encoding: gzip",)
        ),
        # The prefix in plain bytes, the rest of the token escaped: the plain prefix is
        # replaced, and the escape check then no longer sees a prefix.
        "/json-escape-after-prefix": http_answer(
            b'{"t": "v2.public.\\u00'
            + f"{ord(payload[0]):02x}".encode()
            + payload[1:].encode()
            + b'"}'
        ),
        "/percent-after-prefix": http_answer(
            headers=(f"Link: <https://x.test/?t=v2.public.%{ord(payload[0]):02X}{payload[1:]}>",)
        ),
        # UTF-7 spells the prefix in ASCII too, so the charset check skipped it; but "+AHY-"
        # is a "v" to any client that decodes the declared charset (httpx's .text does).
        "/utf-7": http_answer(b'{"t": "+AHY-' + c[1:].encode() + b'"}').replace(
            b"application/vnd.api+json", b"application/json; charset=utf-7"
        ),
        # A header line folded right after the prefix.
        "/folded-after-prefix": http_answer(headers=(f"X-Token: v2.public.\r\n {payload}",)),
        # The token base64-encoded: a caller decodes it in a line.
        "/base64": http_answer(b'{"blob": "%s"}' % base64.b64encode(c.encode())),
    }
    box = ScriptedUnit(answers, tokens["org"])
    yield box
    box.close()


HOLDING = [
    "/ce-gzip-gzip",
    "/ce-two-fields",
    "/ce-upper",
    "/ce-identity-gzip",
    "/ce-x-gzip",
    "/ce-deflate-zlib",
    "/ce-deflate-raw",
    "/ce-br",
    "/ce-zstd",
    "/ce-gzip-multimember",
    "/set-cookie",
    "/location",
    "/link",
    "/json-slash-escape",
    "/chunked-trailer",
    "/chunked-gzip",
    "/early-hints",
    "/no-content-with-body",
    "/not-modified",
    "/close-delimited",
    "/multipart",
    "/large-plain",
    "/over-limit-gzip",
    "/ce-in-mixed-case-name",
]


@pytest.fixture
def scripted_gateway(gateway_factory: GatewayFactory, scripted: ScriptedUnit) -> harness.Gateway:
    return gateway_factory(scripted, overrides={"redaction": {"max_body_bytes": 1 << 20}})


def test_answers_the_guard_handles(
    scripted_gateway: harness.Gateway,
    scripted: ScriptedUnit,
    tokens: dict[str, str],
    planted: Planted,
) -> None:
    outcomes = {}
    for path in HOLDING:
        raw = get_raw(scripted_gateway.proxy_url, scripted.url, path, planted)
        outcomes[path] = (raw.split(b"\r\n", 1)[0].decode(), leaked(raw, tokens))
    raw = get_raw(scripted_gateway.proxy_url, scripted.url, "/head", planted, method="HEAD")
    outcomes["HEAD /head"] = (raw.split(b"\r\n", 1)[0].decode(), leaked(raw, tokens))
    print(json.dumps(outcomes, indent=1))
    assert {p: o for p, o in outcomes.items() if o[1]} == {}


@pytest.mark.parametrize(
    "path",
    [
        "/te-gzip-chunked",
        "/te-gzip-close",
        "/te-deflate-chunked",
        "/gzip-then-plain",
        "/deflate-then-plain",
        "/gzip-then-junk-then-gzip",
        "/json-escape-after-prefix",
        "/percent-after-prefix",
        "/folded-after-prefix",
        "/utf-7",
        "/base64",
    ],
)
def test_a_token_the_guard_does_not_see_is_not_passed_on(
    scripted_gateway: harness.Gateway,
    scripted: ScriptedUnit,
    tokens: dict[str, str],
    planted: Planted,
    path: str,
) -> None:
    raw = get_raw(scripted_gateway.proxy_url, scripted.url, path, planted)
    status = raw.split(b"\r\n", 1)[0]
    assert leaked(raw, tokens) == [], f"{path}: the caller can read a Unit token ({status!r})"


# --- request side: another host that records what it gets --------------------------------


class Recorder:
    """Another host: keeps every byte it receives, answers each request head with 200 {}."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.received = bytearray()
        box = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                pending = b""
                while chunk := self.request.recv(65536):
                    box.received += chunk
                    pending += chunk
                    while b"\r\n\r\n" in pending:
                        _, _, pending = pending.partition(b"\r\n\r\n")
                        self.request.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 2\r\n\r\n{}"
                        )

        self.server = socketserver.ThreadingTCPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    box = Recorder()
    yield box
    box.close()


def status_of(raw: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def codes_of(raw: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb'"code": ?"([a-z_]+)"', raw)]


def test_where_a_placeholder_request_goes_in_regular_mode(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    recorder: Recorder,
    planted: Planted,
) -> None:
    gateway = gateway_factory(sandbox)
    proxy = gateway.proxy_url
    unit = urlsplit(sandbox.url)
    unit_hostport = unit.netloc
    outcomes: dict[str, object] = {}

    def send(label: str, request: bytes) -> bytes:
        raw = exchange(proxy, request, planted, label)
        outcomes[label] = (status_of(raw), codes_of(raw))
        assert MARK not in raw, label
        return raw

    # Unit's address spelled otherwise: never matched as Unit, so no token.
    for spelling in (
        f"localhost:{unit.port}",
        f"127.0.0.1.:{unit.port}",
        f"[::ffff:127.0.0.1]:{unit.port}",
        f"2130706433:{unit.port}",
        f"127.1:{unit.port}",
        f"user:pw@127.0.0.1:{unit.port}",
        f"127.0.0.1:{unit.port}:{unit.port}",
    ):
        send(
            f"absolute-form http://{spelling}",
            f"GET http://{spelling}/cards HTTP/1.1\r\nHost: {unit_hostport}\r\n{ORG}"
            "Connection: close\r\n\r\n".encode(),
        )

    # The other host, with Unit named in Host; placeholders in headers other than
    # Authorization, in a cookie, in the query.
    other = recorder.url
    send(
        "other host, Host names Unit",
        f"GET {other}/cards HTTP/1.1\r\nHost: {unit_hostport}\r\n{ORG}"
        "Connection: close\r\n\r\n".encode(),
    )
    for label, extra, query in (
        ("Proxy-Authorization placeholder", "Proxy-Authorization: Bearer unitgw:org\r\n", ""),
        ("X-Authorization placeholder", "X-Authorization: Bearer unitgw:org\r\n", ""),
        ("Cookie placeholder", "Cookie: auth=unitgw:org\r\n", ""),
        ("query placeholder", "", "?access_token=unitgw:org"),
        ("Authorization: Token placeholder", "Authorization: Token unitgw:org\r\n", ""),
        ("Authorization: Bearer%20 placeholder", "Authorization: Bearer%20unitgw:org\r\n", ""),
        ('Authorization: Bearer "quoted"', 'Authorization: Bearer "unitgw:org"\r\n', ""),
        ("Authorization: Bearer unitgw%3Aorg", "Authorization: Bearer unitgw%3Aorg\r\n", ""),
        ("Authorization: Bearer base64", "Authorization: Basic dW5pdGd3Om9yZw==\r\n", ""),
    ):
        send(
            label,
            f"GET {other}/cards{query} HTTP/1.1\r\nHost: {unit_hostport}\r\n{extra}"
            "Connection: close\r\n\r\n".encode(),
        )

    # CONNECT to the other host, then requests naming Unit inside the tunnel.
    send(
        "CONNECT other; inside absolute-form to Unit",
        f"CONNECT 127.0.0.1:{recorder.port} HTTP/1.1\r\nHost: 127.0.0.1:{recorder.port}\r\n\r\n"
        f"GET {sandbox.url}/cards HTTP/1.1\r\nHost: {unit_hostport}\r\n{ORG}"
        "Connection: close\r\n\r\n".encode(),
    )
    send(
        "CONNECT other; inside origin-form, Host: Unit",
        f"CONNECT 127.0.0.1:{recorder.port} HTTP/1.1\r\nHost: {unit_hostport}\r\n\r\n"
        f"GET /cards HTTP/1.1\r\nHost: {unit_hostport}\r\n{ORG}Connection: close\r\n\r\n".encode(),
    )
    # CONNECT to Unit, then a request naming the other host inside the tunnel.
    send(
        "CONNECT Unit; inside absolute-form to other",
        f"CONNECT {unit_hostport} HTTP/1.1\r\nHost: {unit_hostport}\r\n\r\n"
        f"GET /cards HTTP/1.1\r\nHost: {unit_hostport}\r\n{ORG}\r\n"
        f"GET {other}/cards HTTP/1.1\r\nHost: 127.0.0.1:{recorder.port}\r\n{ORG}"
        "Connection: close\r\n\r\n".encode(),
    )
    # A CONNECT inside a tunnel.
    send(
        "CONNECT Unit; CONNECT other inside",
        f"CONNECT {unit_hostport} HTTP/1.1\r\nHost: {unit_hostport}\r\n\r\n"
        f"CONNECT 127.0.0.1:{recorder.port} HTTP/1.1\r\nHost: 127.0.0.1:{recorder.port}\r\n\r\n"
        f"GET /cards HTTP/1.1\r\nHost: {unit_hostport}\r\n{ORG}Connection: close\r\n\r\n".encode(),
    )
    # Pipelining: Unit, then the other host, in one packet.
    send(
        "pipelined Unit then other",
        f"GET {sandbox.url}/cards HTTP/1.1\r\nHost: {unit_hostport}\r\n{ORG}\r\n"
        f"GET {other}/cards HTTP/1.1\r\nHost: {unit_hostport}\r\n{ORG}"
        "Connection: close\r\n\r\n".encode(),
    )
    # Smuggling: CL and TE on a request to Unit whose body is a request to the other host.
    inner = f"GET {other}/cards HTTP/1.1\r\nHost: x\r\n{ORG}\r\n".encode()
    send(
        "CL+TE smuggling",
        f"POST {sandbox.url}/cards HTTP/1.1\r\nHost: {unit_hostport}\r\n{ORG}"
        f"Content-Length: {len(inner) + 5}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode()
        + inner,
    )
    send(
        "TE chunked with a second request after the body",
        f"POST {sandbox.url}/cards HTTP/1.1\r\nHost: {unit_hostport}\r\n{ORG}"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode()
        + inner.replace(b"\r\n\r\n", b"Connection: close\r\n\r\n"),
    )
    # Upgrade / WebSocket to the other host and to Unit.
    ws = (
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    send(
        "WebSocket to other",
        f"GET {other}/ws HTTP/1.1\r\nHost: 127.0.0.1:{recorder.port}\r\n{ORG}{ws}\r\n".encode(),
    )
    send(
        "h2c upgrade to Unit",
        f"GET {sandbox.url}/cards HTTP/1.1\r\nHost: {unit_hostport}\r\n{ORG}"
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
        "\r\n".encode(),
    )
    # Callers without a placeholder.
    send(
        "no Authorization to Unit",
        f"GET {sandbox.url}/cards HTTP/1.1\r\nHost: {unit_hostport}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    send(
        "real-looking invalid token to Unit",
        f"GET {sandbox.url}/cards HTTP/1.1\r\nHost: {unit_hostport}\r\n"
        "Authorization: Bearer v2.public.bm90IGEgdG9rZW4\r\nConnection: close\r\n\r\n".encode(),
    )
    # A customer's placeholder on another customer's token endpoint.
    body = json.dumps(
        {"data": {"type": "customerToken", "attributes": {"scope": "customers"}}}
    ).encode()
    send(
        "customer 10001 placeholder on /customers/10002/token",
        f"POST {sandbox.url}/customers/10002/token HTTP/1.1\r\nHost: {unit_hostport}\r\n"
        "Authorization: Bearer unitgw:customer:10001\r\nContent-Type: application/vnd.api+json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body,
    )
    print(json.dumps(outcomes, indent=1))
    got = bytes(recorder.received)
    print("other host received:", got)
    unit_stats = sandbox.stats()
    print("Unit stats:", json.dumps(unit_stats))
    assert MARK not in got, "a real Unit token reached the other host"
    assert sandbox.org_token.encode() not in got
    # Placeholders in Authorization never reach the other host (in other headers they are
    # just text: see the report).
    auth_lines = re.findall(rb"(?im)^authorization:[^\r\n]*unitgw[^\r\n]*$", got)
    assert auth_lines == [], auth_lines


def test_reverse_mode_sends_every_request_to_unit_and_checks_its_answers(
    gateway_factory: GatewayFactory,
    scripted: ScriptedUnit,
    tokens: dict[str, str],
    recorder: Recorder,
    planted: Planted,
) -> None:
    gateway = gateway_factory(
        scripted,
        mode=f"reverse:{scripted.url}",
        name="reverse",
        overrides={"redaction": {"max_body_bytes": 1 << 20}},
    )
    other = f"127.0.0.1:{recorder.port}"
    outcomes = {}
    for label, target, host in (
        ("absolute-form to other", f"http://{other}/te-gzip-chunked", other),
        ("origin-form, Host other", "/gzip-then-plain", other),
        ("origin-form", "/json-escape-after-prefix", "x"),
        ("origin-form", "/folded-after-prefix", "x"),
        ("origin-form", "/ce-gzip-gzip", "x"),
    ):
        raw = exchange(
            gateway.proxy_url,
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{ORG}Connection: close\r\n\r\n".encode(),
            planted,
            f"reverse {target}",
        )
        outcomes[f"{label} {target}"] = (status_of(raw), codes_of(raw), leaked(raw, tokens))
    print(json.dumps(outcomes, indent=1))
    assert bytes(recorder.received) == b"", "nothing reached the other host"
    assert [o for o in outcomes.values() if o[2]] == []
    # Each went to the scripted Unit, with the org token it was given.
    assert len(scripted.seen) == 5
    assert all(tokens["org"].encode() in head for head in scripted.seen)


def test_http2_over_tls_authority_naming_the_other_host(
    gateway_factory: GatewayFactory,
    tls_sandbox: harness.Sandbox,
    run_dir: Path,
    planted: Planted,
) -> None:
    from conftest import planted_sandbox
    from test_http2_e2e import http2_client

    gateway = gateway_factory(tls_sandbox)
    unit = urlsplit(tls_sandbox.url).netloc
    with planted_sandbox(
        run_dir, planted, "org token (other tls)", tls=True, name="other-tls"
    ) as other:
        other_netloc = urlsplit(other.url).netloc
        with http2_client(gateway) as client:
            to_other = client.get(
                f"{other.url}/cards",
                headers={"Host": unit, "Authorization": "Bearer unitgw:org"},
            )
            to_unit = client.get(
                f"{tls_sandbox.url}/cards",
                headers={"Host": other_netloc, "Authorization": "Bearer unitgw:org"},
            )
        print(to_other.http_version, to_other.status_code, to_other.text[:200])
        print(to_unit.http_version, to_unit.status_code, to_unit.text[:100])
        assert to_other.status_code == 403
        assert "v2.public." not in to_other.text + to_unit.text
        assert other.stats()["total_requests"] == 0
    assert tls_sandbox.stats()["unauthenticated"] == {}


def test_the_retry_after_a_401_follows_no_redirect_elsewhere(
    gateway_factory: GatewayFactory,
    tokens: dict[str, str],
    recorder: Recorder,
    planted: Planted,
) -> None:
    """Unit refuses the injected customer token (401); the gateway mints another and sends
    the request again itself (aiohttp). Unit then answers with a redirect to another host."""
    customer = tokens["customer"]
    minted = json.dumps(
        {
            "data": {
                "type": "customerBearerToken",
                "attributes": {"token": customer, "expiresIn": 3600},
            }
        }
    ).encode()
    calls: list[int] = []

    def accounts(head: bytes) -> bytes:
        calls.append(1)
        if len(calls) == 1:
            return http_answer(status="401 Unauthorized")
        return http_answer(
            status="307 Temporary Redirect",
            headers=(f"Location: {recorder.url}/stolen",),
        )

    box = ScriptedUnit(
        {
            f"/customers/{CUSTOMER}/token": http_answer(minted, status="201 Created"),
            "/accounts": accounts,
        },
        tokens["org"],
    )
    try:
        gateway = gateway_factory(box)
        body = b'{"data": {"type": "x", "attributes": {"note": "caller data"}}}'
        raw = exchange(
            gateway.proxy_url,
            f"POST {box.url}/accounts HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer unitgw:customer:{CUSTOMER}\r\n"
            f"Content-Type: application/vnd.api+json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body,
            planted,
            "retry",
        )
    finally:
        box.close()
    got = bytes(recorder.received)
    print("caller got:", raw[:300])
    print("other host received:", got)
    assert MARK not in raw
    assert MARK not in got and tokens["org"].encode() not in got
    # The caller gets Unit's redirect; the gateway does not take its request elsewhere.
    assert got == b"", "the gateway's retry followed Unit's redirect to another host"


@pytest.mark.parametrize(
    "second",
    ["te-gzip", "gzip-then-plain", "folded", "header"],
)
def test_the_answer_to_the_resend_after_a_401_is_checked(
    gateway_factory: GatewayFactory, tokens: dict[str, str], planted: Planted, second: str
) -> None:
    """The resend's answer comes through the gateway's own client (aiohttp), not mitmproxy:
    it must be checked as strictly as the first answer."""
    customer = tokens["customer"]
    payload = customer.split(".", 2)[2]
    minted = json.dumps(
        {
            "data": {
                "type": "customerBearerToken",
                "attributes": {"token": customer, "expiresIn": 3600},
            }
        }
    ).encode()
    body = _body(customer)
    answers = {
        "te-gzip": http_answer(
            chunked(gzip.compress(body)),
            headers=("Transfer-Encoding: gzip, chunked",),
            length=False,
        ),
        "gzip-then-plain": http_answer(
            gzip.compress(b"{}") + customer.encode(), headers=("Content-Encoding: gzip",)
        ),
        "folded": http_answer(headers=(f"X-Token: v2.public.\r\n {payload}",)),
        "header": http_answer(headers=(f"X-Token: {customer}",)),
    }
    calls: list[int] = []

    def accounts(head: bytes) -> bytes:
        calls.append(1)
        return http_answer(status="401 Unauthorized") if len(calls) == 1 else answers[second]

    box = ScriptedUnit(
        {
            f"/customers/{CUSTOMER}/token": http_answer(minted, status="201 Created"),
            "/accounts": accounts,
        },
        tokens["org"],
    )
    try:
        gateway = gateway_factory(box)
        raw = get_raw(
            gateway.proxy_url,
            box.url,
            "/accounts",
            planted,
            headers=f"Authorization: Bearer unitgw:customer:{CUSTOMER}\r\n",
        )
    finally:
        box.close()
    print("caller got:", raw[:400])
    assert len(calls) == 2, "the gateway resent the request"
    bodies = [raw.partition(b"\r\n\r\n")[2]]
    # What a caller that sniffs a gzip stream gets (no header may declare it any more).
    try:
        bodies.append(gzip.decompress(bodies[0]))
    except Exception:
        pass
    assert leaked(raw, tokens) == []
    assert not any(payload.encode() in b for b in bodies)


@pytest.fixture
def whole_tokens(planted: Planted) -> dict[str, str]:
    """Like ``tokens``, but only whole tokens go to the leak scan: a test that looks for a
    token's secret part in one output itself (the others are checked by the scan)."""
    key = secrets.token_bytes(32)
    made = {"customer": unit_token(key, role="customer", customerId=CUSTOMER)}
    made["org"] = unit_token(key, role="org", userId="1")
    for kind, token in made.items():
        planted.add(f"scripted Unit's {kind} token", token)
    return made


def _unreadable_answers(
    gateway_factory: GatewayFactory, tokens: dict[str, str], planted: Planted
) -> tuple[dict[str, tuple[bytes, list[str]]], str]:
    c = tokens["customer"]
    payload = c.split(".", 2)[2]
    box = ScriptedUnit(
        {
            "/partial-head": f"HTTP/1.1 200 OK\r\nX-Token: {c}\r\n".encode(),
            "/bad-header-line": f"HTTP/1.1 200 OK\r\n{c}\r\n\r\n".encode(),
            "/bad-header-line-escaped": (
                f"HTTP/1.1 200 OK\r\nv2.public.\\u00{ord(payload[0]):02x}{payload[1:]}\r\n\r\n"
            ).encode(),
            "/bad-status": f"HTTP/1.1 2x0 {c}\r\n\r\n".encode(),
            "/short-body": f"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n{c}".encode(),
            "/bad-chunk": (
                f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz{c}\r\n".encode()
            ),
        },
        tokens["org"],
    )
    outcomes = {}
    try:
        gateway = gateway_factory(box)
        for path in box.answers:
            raw = get_raw(gateway.proxy_url, box.url, path, planted)
            outcomes[path] = (raw[:1200], leaked(raw, tokens))
    finally:
        box.close()
    for path, (raw, kinds) in outcomes.items():
        print(path, kinds, raw)
    return outcomes, gateway.process.output()


def test_mitmproxys_errors_about_units_answer_hold_no_token(
    gateway_factory: GatewayFactory, whole_tokens: dict[str, str], planted: Planted
) -> None:
    """mitmproxy quotes the bytes it could not read in its error ("unexpected server
    response: b'...'", "Invalid header line: b'...'"), and that error is the caller's answer."""
    outcomes, _ = _unreadable_answers(gateway_factory, whole_tokens, planted)
    assert {p: o[1] for p, o in outcomes.items() if o[1]} == {}


def test_the_log_of_an_unreadable_answer_holds_no_token(
    gateway_factory: GatewayFactory, whole_tokens: dict[str, str], planted: Planted
) -> None:
    """The same error in the gateway's own log (the "nothing shown holds a secret" promise,
    not the caller's): the redactor takes a token that goes on escaped (``v2.public.\\\\u0065``
    in the repr of an escape just after the prefix) as a token up to the next white space."""
    _, output = _unreadable_answers(gateway_factory, whole_tokens, planted)
    secret = whole_tokens["customer"].split(".", 2)[2]
    assert secret[1:] not in output, "the gateway's log holds the token's secret part"
