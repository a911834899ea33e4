"""Attack on "every request gets an answer": malformed requests (HTTP/1, HTTP/2), odd bodies
and a misbehaving upstream, through real gateway processes, with raw sockets. Each case
records what the caller got, whether the connection closed, whether the gateway still serves
an ordinary request, and whether a secret of the request came back."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import pytest

from conftest import GatewayFactory, Planted, address_of, start_embedded_gateway
from unit_gateway.testing import harness

pytestmark = pytest.mark.timeout(300)

#: A secret in the request (the caller's own token, passed on as it is).
TOKEN = "v2.public.eyJyb2xlIjoiY3VzdG9tZXIiLCJ1c2VySWQiOiIxMDAwMSJ9" + "Zq9_y" * 12
ORG = "Authorization: Bearer unitgw:org\r\n"


@pytest.fixture(autouse=True)
def caller_token(planted: Planted) -> str:
    return planted.add("caller's token", TOKEN)


@dataclass
class Answer:
    raw: bytes
    closed: bool

    @property
    def status(self) -> int | None:
        try:
            return int(self.raw.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return None

    @property
    def code(self) -> str | None:
        try:
            body = self.raw.split(b"\r\n\r\n", 1)[1]
            return json.loads(body)["errors"][0]["code"]
        except (IndexError, ValueError, KeyError, TypeError):
            return None

    def line(self) -> str:
        return f"{self.status} {self.code} closed={self.closed} ({len(self.raw)} bytes)"


def _read_all(conn: socket.socket | ssl.SSLSocket, wait: float) -> tuple[bytes, bool]:
    received = b""
    conn.settimeout(wait)
    try:
        while chunk := conn.recv(65536):
            received += chunk
        return received, True
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        return received, True
    except TimeoutError:
        return received, False


def connect(gateway: harness.Gateway, tls_host: str | None = None) -> socket.socket | ssl.SSLSocket:
    conn = socket.create_connection(address_of(gateway.proxy_url), timeout=10)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls_host is None:
        return conn
    conn.sendall(f"CONNECT {tls_host} HTTP/1.1\r\nHost: {tls_host}\r\n\r\n".encode())
    head = conn.recv(4096)
    assert head.startswith(b"HTTP/1.1 200 "), head
    context = ssl.create_default_context(cafile=str(gateway.ca_path))
    context.set_alpn_protocols(["http/1.1"])
    return context.wrap_socket(conn, server_hostname=tls_host.rsplit(":", 1)[0])


def exchange(
    gateway: harness.Gateway,
    *pieces: bytes,
    planted: Planted,
    tls_host: str | None = None,
    wait: float = 10,
    delay: float = 0.005,
) -> Answer:
    conn = connect(gateway, tls_host)
    with conn:
        try:
            for piece in pieces:
                conn.sendall(piece)
                if len(pieces) > 1:
                    time.sleep(delay)
        except OSError:
            pass
        received, closed = _read_all(conn, wait)
    planted.blobs.append(("an answer to the caller", received))
    return Answer(received, closed)


def ordinary_ok(gateway: harness.Gateway, url: str, planted: Planted) -> bool:
    host = urlsplit(url).netloc or "gateway"
    target = f"{url}/cards?page[limit]=1" if url.startswith("http") else url
    raw = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{ORG}Connection: close\r\n\r\n"
    answer = exchange(gateway, raw.encode(), planted=planted)
    alive = gateway.process.proc is not None and gateway.process.proc.poll() is None
    return alive and answer.status == 200


@dataclass
class Outcome:
    name: str
    answer: Answer
    serving: bool
    leaked: bool

    def row(self) -> str:
        return (
            f"| {self.name} | {self.answer.line()} | serving={self.serving} | "
            f"leaked={self.leaked} |"
        )


#: The survey's table of what each case got, for a person reading a run (outside the
#: checkout: a test writes nothing into the repository).
RESULTS = Path(tempfile.gettempdir()) / "unit-gateway-attack-results.md"


def record(outcomes: list[Outcome], title: str) -> None:
    with RESULTS.open("a") as f:
        f.write(f"\n## {title}\n\n")
        for o in outcomes:
            f.write(o.row() + "\n")
    with RESULTS.with_suffix(".raw").open("a") as f:
        f.write(f"\n## {title}\n\n")
        for o in outcomes:
            f.write(f"=== {o.name}\n{o.answer.raw[:1200]!r}\n")


def run_cases(
    gateway: harness.Gateway,
    ok_url: str,
    cases: dict[str, Callable[[], Answer]],
    planted: Planted,
    secrets: tuple[str, ...],
) -> list[Outcome]:
    outcomes = []
    for name, send in cases.items():
        answer = send()
        leaked = any(s.encode() in answer.raw for s in secrets)
        outcomes.append(Outcome(name, answer, ordinary_ok(gateway, ok_url, planted), leaked))
    return outcomes


JSON_CT = "Content-Type: application/json\r\n"


def cl(payload: bytes) -> str:
    return f"Content-Length: {len(payload)}\r\n"


def http1_cases(url: str) -> dict[str, bytes | list[bytes]]:
    host = urlsplit(url).netloc
    app = f"POST {url}/applications HTTP/1.1\r\nHost: {host}\r\n{ORG}"
    get = f"GET {url}/cards HTTP/1.1\r\nHost: {host}\r\n{ORG}"
    sec = f"X-Secret: {TOKEN}\r\n"
    body = json.dumps({"data": {"type": "x", "attributes": {"token": TOKEN}}}).encode()

    def post(headers: str, payload: bytes) -> bytes:
        return (app + sec + headers + "\r\n").encode() + payload

    bomb = gzip.compress(b"0" * (200 * 1024 * 1024), compresslevel=9)
    deflate_bomb = zlib.compress(b"0" * (200 * 1024 * 1024), 9)
    deep = b"[" * 100_000 + b"]" * 100_000
    surrogates = b'{"a": "\\ud800\\udfff\\udc00", "t": "' + TOKEN.encode() + b'"}'
    huge = b'{"n": ' + b"9" * 100_000 + b', "t": "' + TOKEN.encode() + b'"}'
    return {
        "chunk size of 40 hex digits": post("Transfer-Encoding: chunked\r\n", b"f" * 40 + b"\r\n"),
        "chunk size 7fffffffffffffff": post(
            "Transfer-Encoding: chunked\r\n", b"7fffffffffffffff\r\n" + TOKEN.encode()
        ),
        "negative chunk size": post("Transfer-Encoding: chunked\r\n", b"-5\r\nabcde\r\n0\r\n\r\n"),
        "chunk size 0x5": post("Transfer-Encoding: chunked\r\n", b"0x5\r\nabcde\r\n0\r\n\r\n"),
        "chunk extension (valid)": post(
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
            b"%x;ext=1\r\n%s\r\n0\r\n\r\n" % (len(body), body),
        ),
        "chunk extension with token": post(
            "Transfer-Encoding: chunked\r\n",
            b"3;x=" + TOKEN.encode() + b"\r\nabc\r\n0\r\n\r\n",
        ),
        "chunk data longer than size": post(
            "Transfer-Encoding: chunked\r\n", b"3\r\nabcdef" + TOKEN.encode() + b"\r\n0\r\n\r\n"
        ),
        "obs-fold header": (get + sec + "X-Fold: a\r\n b\r\nConnection: close\r\n\r\n").encode(),
        "obs-fold authorization": (
            f"GET {url}/cards HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer\r\n "
            "unitgw:org\r\nConnection: close\r\n\r\n"
        ).encode(),
        "NUL in header value": (
            get + "X-Nul: a\x00not-a-secret\r\nConnection: close\r\n\r\n"
        ).encode(),
        "bare CR in header value": (
            get + "X-CR: a\rnot-a-secret\r\nConnection: close\r\n\r\n"
        ).encode(),
        "bare LF line endings": (
            f"GET {url}/cards HTTP/1.1\nHost: {host}\nAuthorization: Bearer unitgw:org\n"
            f"X-S: {TOKEN}\nConnection: close\n\n"
        ).encode(),
        "header without colon": (get + f"{TOKEN}\r\nConnection: close\r\n\r\n").encode(),
        "space before colon": (get + f"X-S : {TOKEN}\r\nConnection: close\r\n\r\n").encode(),
        "two different Content-Length": post(
            "Content-Length: 3\r\nContent-Length: 5\r\n", b"abcde"
        ),
        "two equal Content-Length": post(
            JSON_CT + cl(body) + cl(body),
            body,
        ),
        "Content-Length list 5, 5": post("Content-Length: 5, 5\r\n", b"abcde"),
        "Content-Length +5": post("Content-Length: +5\r\n", b"abcde"),
        "Content-Length huge": post("Content-Length: 99999999999999999999999\r\n", b"abc"),
        "CL and TE": post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        "TE: gzip, chunked": post("Transfer-Encoding: gzip, chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        "TE: chunked, gzip": post("Transfer-Encoding: chunked, gzip\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        "TE: gzip": post("Transfer-Encoding: gzip\r\n", gzip.compress(TOKEN.encode())),
        "TE: chunked twice": post(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"
        ),
        "TE: xchunked": post("Transfer-Encoding: xchunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        "Expect 100-continue then garbage": [
            post("Expect: 100-continue\r\nContent-Length: 5\r\n", b""),
            b"abcde" + TOKEN.encode() + b"\x00\xff garbage\r\n\r\n",
        ],
        "Expect 100-continue chunked then bad chunk": [
            post("Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n", b""),
            b"zz" + TOKEN.encode() + b"\r\n",
        ],
        "Expect: something-else": (get + "Expect: 42-foo\r\nConnection: close\r\n\r\n").encode(),
        "absolute-form ftp": (
            f"GET ftp://{host}/cards HTTP/1.1\r\nHost: {host}\r\n{ORG}{sec}\r\n"
        ).encode(),
        "absolute-form file": (f"GET file:///etc/passwd HTTP/1.1\r\nHost: x\r\n{sec}\r\n").encode(),
        "absolute-form HTTP uppercase": (
            f"GET HTTP://{host}/cards HTTP/1.1\r\nHost: {host}\r\n{ORG}Connection: close\r\n\r\n"
        ).encode(),
        "absolute-form userinfo": (
            f"GET http://user:{TOKEN}@{host}/cards HTTP/1.1\r\nHost: {host}\r\n{ORG}\r\n"
        ).encode(),
        "absolute-form ws": (
            f"GET ws://{host}/cards HTTP/1.1\r\nHost: {host}\r\n{ORG}\r\n"
        ).encode(),
        "absolute-form no host": (
            f"GET http:///cards HTTP/1.1\r\nHost: {host}\r\n{ORG}\r\n"
        ).encode(),
        "absolute-form port 0": (f"GET http://127.0.0.1:0/cards HTTP/1.1\r\n{ORG}\r\n").encode(),
        "absolute-form port 99999": (
            f"GET http://127.0.0.1:99999/cards HTTP/1.1\r\n{ORG}\r\n"
        ).encode(),
        "origin-form in regular mode": (
            f"GET /cards HTTP/1.1\r\nHost: {host}\r\n{ORG}{sec}\r\n"
        ).encode(),
        "asterisk-form OPTIONS": (f"OPTIONS * HTTP/1.1\r\nHost: {host}\r\n{sec}\r\n").encode(),
        "CONNECT no port": f"CONNECT 127.0.0.1 HTTP/1.1\r\nHost: x\r\n{sec}\r\n".encode(),
        "CONNECT port 0": f"CONNECT 127.0.0.1:0 HTTP/1.1\r\n{sec}\r\n".encode(),
        "CONNECT port 99999": f"CONNECT 127.0.0.1:99999 HTTP/1.1\r\n{sec}\r\n".encode(),
        "CONNECT empty host": f"CONNECT :443 HTTP/1.1\r\n{sec}\r\n".encode(),
        "CONNECT broken ipv6": f"CONNECT [::1:443 HTTP/1.1\r\n{sec}\r\n".encode(),
        "CONNECT path": f"CONNECT /cards HTTP/1.1\r\n{sec}\r\n".encode(),
        "CONNECT with token as host": f"CONNECT {TOKEN}:443 HTTP/1.1\r\n\r\n".encode(),
        "CONNECT then garbage": [
            f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
            b"\x16\x03\x01\x00\x05garbage-no-secret\r\n\r\n",
        ],
        "CONNECT then bad http": [
            f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
            f"GET /cards?x={TOKEN} HTTP/1.1 x\r\n\r\n".encode(),
        ],
        "HTTP/1.0 keep-alive": (
            f"GET {url}/cards?page[limit]=1 HTTP/1.0\r\nHost: {host}\r\n{ORG}"
            "Connection: keep-alive\r\n\r\n"
        ).encode(),
        "HTTP/0.9": f"GET /cards\r\n{sec}\r\n".encode(),
        "HTTP/2.0 in request line": (get.replace("HTTP/1.1", "HTTP/2.0") + "\r\n").encode(),
        "HTTP/1.2 in request line": (get.replace("HTTP/1.1", "HTTP/1.2") + "\r\n").encode(),
        "pipelined, second malformed": (
            get + "\r\n" + f"GET {url}/cards?x={TOKEN} HTTP/1.1 x\r\nHost: {host}\r\n\r\n"
        ).encode(),
        "pipelined, second bad chunk": (
            get + "\r\n" + app + "Transfer-Encoding: chunked\r\n\r\nzz" + TOKEN + "\r\n"
        ).encode(),
        "request line 70k": (f"GET {url}/cards?x={'a' * 70_000}{TOKEN} HTTP/1.1\r\n\r\n").encode(),
        "lowercase method": (get.replace("GET", "get", 1) + "Connection: close\r\n\r\n").encode(),
        "method with token": (
            get.replace("GET", "G" + TOKEN.replace(".", ""), 1) + "\r\n"
        ).encode(),
        "gzip bomb 200MiB": post(JSON_CT + "Content-Encoding: gzip\r\n" + cl(bomb), bomb),
        "deflate bomb 200MiB": post(
            JSON_CT + "Content-Encoding: deflate\r\n" + cl(deflate_bomb), deflate_bomb
        ),
        "stacked gzip, br, zstd (not really)": post(
            JSON_CT + "Content-Encoding: gzip, br, zstd\r\n" + cl(body), body
        ),
        "unknown Content-Encoding": post(
            JSON_CT + "Content-Encoding: x-rot13\r\n" + cl(body), body
        ),
        "bad gzip": post(JSON_CT + "Content-Encoding: gzip\r\n" + cl(body), body),
        "JSON nested 100k deep": post(JSON_CT + cl(deep), deep),
        "JSON 100k-digit number": post(JSON_CT + cl(huge), huge),
        "JSON lone surrogates": post(JSON_CT + cl(surrogates), surrogates),
        "JSON 1e999999": post(
            "Content-Type: application/json\r\nContent-Length: 16\r\n", b'{"n": 1e999999} '
        ),
        "JSON NaN Infinity": post(
            "Content-Type: application/json\r\nContent-Length: 30\r\n",
            b'{"n": NaN, "m": -Infinity, "o"',
        ),
    }


def body_cases(url: str) -> dict[str, bytes | list[bytes]]:
    host = urlsplit(url).netloc
    app = f"POST {url}/applications HTTP/1.1\r\nHost: {host}\r\n{ORG}Connection: close\r\n"

    def post(content_type: str, payload: bytes, extra: str = "") -> bytes:
        return (
            app
            + f"Content-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
            + extra
            + "\r\n"
        ).encode() + payload

    text = f"token={TOKEN} ssn=123-45-6789 card 4111111111111111".encode()
    cases: dict[str, bytes | list[bytes]] = {}
    for charset in (
        "rot13", "utf-7", "idna", "punycode", "unicode_escape", "raw_unicode_escape",
        "hex", "base64", "zlib", "bz2", "uu", "quopri", "utf-16", "utf-32", "cp037",
        "mbcs", "oem", "undefined", "utf_8_sig", "palmos", "charmap", "x-nonexistent",
        "../../etc", "utf-8\u0000",
    ):  # fmt: skip
        cases[f"text/plain charset={charset}"] = post(f"text/plain; charset={charset}", text)
        cases[f"json charset={charset}"] = post(
            f"application/json; charset={charset}",
            json.dumps({"t": TOKEN}).encode(),
        )
    cases["form charset=unicode_escape bad escape"] = post(
        "application/x-www-form-urlencoded; charset=unicode_escape", b"a=\\x&t=" + TOKEN.encode()
    )
    cases["text charset=hex odd"] = post("text/plain; charset=hex", b"abc" + TOKEN.encode())
    cases["text charset=base64 bad"] = post("text/plain; charset=base64", b"!!!" + TOKEN.encode())
    cases["text charset=uu bad"] = post("text/plain; charset=uu", b"begin x\n" + TOKEN.encode())
    cases["text charset=zlib bad"] = post("text/plain; charset=zlib", b"x\x9c" + TOKEN.encode())
    # (a form with 1M fields: test_a_large_form_body_does_not_stall_every_other_caller)
    form = b"&".join(b"f%d=v" % i for i in range(10_000)) + b"&t=" + TOKEN.encode()
    cases["form with 10k fields"] = post("application/x-www-form-urlencoded", form)
    cases["multipart broken boundary"] = post(
        "multipart/form-data; boundary=", b"--\r\n" + TOKEN.encode() + b"\r\n--"
    )
    cases["multipart no boundary"] = post(
        "multipart/form-data",
        b"--x\r\nContent-Disposition: form-data; name=t\r\n\r\n"
        + TOKEN.encode()
        + b"\r\n--x--\r\n",
    )
    cases["multipart huge boundary"] = post(
        "multipart/form-data; boundary=" + "b" * 5000,
        b"--" + b"b" * 5000 + b"\r\n\r\n" + TOKEN.encode(),
    )
    cases["multipart unterminated"] = post(
        "multipart/form-data; boundary=x",
        b"--x\r\nContent-Disposition: form-data; name=t\r\n\r\n" + TOKEN.encode(),
    )
    cases["Content-Type garbage"] = post("\x01\x02;;;=;charset", text)
    cases["Content-Type charset= empty"] = post("text/plain; charset=", text)
    cases["Content-Type charset quoted weird"] = post('text/plain; charset="utf-8', text)
    return cases


def _send(
    gateway: harness.Gateway, raw: bytes | list[bytes], planted: Planted, **kw: object
) -> Answer:
    pieces = raw if isinstance(raw, list) else [raw]
    return exchange(gateway, *pieces, planted=planted, wait=5, **kw)  # type: ignore[arg-type]


def _survey(
    gateway: harness.Gateway,
    ok_url: str,
    cases: dict[str, bytes | list[bytes]],
    planted: Planted,
    org_token: str,
    title: str,
    **kw: object,
) -> list[Outcome]:
    calls = {
        name: (lambda raw=raw: _send(gateway, raw, planted, **kw)) for name, raw in cases.items()
    }
    outcomes = run_cases(gateway, ok_url, calls, planted, (TOKEN, org_token))
    record(outcomes, title)
    return outcomes


def test_survey_http1_regular(
    gateway: harness.Gateway, sandbox: harness.Sandbox, planted: Planted
) -> None:
    outcomes = _survey(
        gateway, sandbox.url, http1_cases(sandbox.url), planted, sandbox.org_token, "http1 regular"
    )
    assert all(o.serving and not o.leaked for o in outcomes)
    assert "has crashed" not in gateway.process.output()


def test_survey_bodies_regular(
    gateway: harness.Gateway, sandbox: harness.Sandbox, planted: Planted
) -> None:
    outcomes = _survey(
        gateway, sandbox.url, body_cases(sandbox.url), planted, sandbox.org_token, "bodies regular"
    )
    assert all(o.serving and not o.leaked for o in outcomes)
    assert "has crashed" not in gateway.process.output()


def _origin_form(cases: dict[str, bytes | list[bytes]], url: str) -> dict:
    prefix = f"{url}/".encode()
    return {
        name: [p.replace(prefix, b"/") for p in raw]
        if isinstance(raw, list)
        else raw.replace(prefix, b"/")
        for name, raw in cases.items()
    }


def test_survey_http1_reverse(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, planted: Planted
) -> None:
    gateway = gateway_factory(sandbox, mode=f"reverse:{sandbox.url}", name="reverse")
    cases = _origin_form(http1_cases(sandbox.url), sandbox.url)
    outcomes = _survey(
        gateway, "/cards?page[limit]=1", cases, planted, sandbox.org_token, "http1 reverse"
    )
    assert all(o.serving and not o.leaked for o in outcomes)
    assert "has crashed" not in gateway.process.output()


# --- HTTP/2 -------------------------------------------------------------------------------

from hyperframe import frame as hf  # noqa: E402


@dataclass
class H2Answer:
    raw: bytes
    status: int | None
    code: str | None
    terminated: bool  # GOAWAY received or the connection closed
    reset: bool
    text: str  # everything decoded: headers, body, GOAWAY debug data

    def line(self) -> str:
        return (
            f"h2 {self.status} {self.code} terminated={self.terminated} reset={self.reset}"
            f" ({len(self.raw)} bytes)"
        )


def h2_tunnel(gateway: harness.Gateway, host: str, reverse: bool) -> ssl.SSLSocket:
    conn = socket.create_connection(address_of(gateway.proxy_url), timeout=10)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not reverse:
        conn.sendall(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = conn.recv(4096)
        assert head.startswith(b"HTTP/1.1 200 "), head
    context = ssl.create_default_context(cafile=str(gateway.ca_path))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    tunnel = context.wrap_socket(conn, server_hostname=host.rsplit(":", 1)[0])
    assert tunnel.selected_alpn_protocol() == "h2"
    return tunnel


H2Script = Callable[[h2.connection.H2Connection, Callable[[bytes], None]], None]


def h2_exchange(
    gateway: harness.Gateway,
    host: str,
    script: H2Script,
    planted: Planted,
    *,
    reverse: bool = False,
    wait: float = 5,
) -> H2Answer:
    tunnel = h2_tunnel(gateway, host, reverse)
    caller = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
    )
    caller.initiate_connection()
    tunnel.sendall(caller.data_to_send())
    raw = b""
    status = code = None
    terminated = reset = False
    texts: list[str] = []
    body = b""

    def send(data: bytes) -> None:
        try:
            tunnel.sendall(data)
        except OSError:
            pass

    with tunnel:
        try:
            script(caller, send)
            send(caller.data_to_send())
        except Exception as e:  # h2 refusing what we do: record it
            texts.append(f"client-side: {e!r}")
        tunnel.settimeout(wait)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                tunnel.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = tunnel.recv(65536)
            except (TimeoutError, ConnectionResetError, ssl.SSLError, OSError):
                terminated = terminated or False
                break
            if not chunk:
                terminated = True
                break
            raw += chunk
            try:
                events = caller.receive_data(chunk)
            except Exception as e:
                texts.append(f"client-side receive: {e!r}")
                terminated = True
                break
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    for name, value in event.headers:
                        texts.append(f"{name!r}: {value!r}")
                        if name in (b":status", ":status"):
                            status = int(value)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    caller.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    reset = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    terminated = True
                    texts.append(f"GOAWAY {event.error_code!r} {event.additional_data!r}")
                    # mitmproxy may send a second GOAWAY with debug data right after
                    deadline = min(deadline, time.monotonic() + 0.3)
                elif isinstance(event, h2.events.StreamEnded):
                    deadline = min(deadline, time.monotonic() + 0.5)
            try:
                send(caller.data_to_send())
            except Exception:
                pass
    texts.append(body.decode("utf-8", "replace"))
    try:
        code = json.loads(body)["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    planted.blobs.append(("an h2 answer", raw))
    planted.blobs.append(("an h2 answer, decoded", "\n".join(texts).encode()))
    return H2Answer(raw, status, code, terminated, reset, "\n".join(texts))


def raw_frame(f: hf.Frame) -> bytes:
    return f.serialize()


def h2_cases(authority: str) -> dict[str, H2Script]:
    base = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", authority),
        (":path", "/applications"),
        ("authorization", "Bearer unitgw:org"),
        ("x-secret", TOKEN),
    ]
    get = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", authority),
        (":path", "/cards?page[limit]=1"),
        ("authorization", "Bearer unitgw:org"),
        ("x-secret", TOKEN),
    ]

    def swap(name: str, value: str | None) -> list[tuple[str, str]]:
        out = [(n, value if n == name else v) for n, v in get]
        return [(n, v) for n, v in out if v is not None]

    def headers_only(headers: list[tuple[str, str]]) -> H2Script:
        def script(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
            c.send_headers(1, headers, end_stream=True)

        return script

    def with_body(headers: list[tuple[str, str]], *data: bytes, end: bool = True) -> H2Script:
        def script(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
            c.send_headers(1, headers)
            for i, d in enumerate(data):
                c.send_data(1, d, end_stream=end and i == len(data) - 1)

        return script

    def rst_mid_body(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        c.send_headers(1, [*base, ("content-length", "100")])
        c.send_data(1, b'{"t": "' + TOKEN.encode())
        send(c.data_to_send())
        time.sleep(0.2)
        c.reset_stream(1)

    def trailers_without_end(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        c.send_headers(1, base)
        c.send_data(1, b"{}")
        send(c.data_to_send())
        # a HEADERS frame without END_STREAM after DATA, then more DATA
        send(raw_frame(_headers_frame(c, 1, [("x-trailer", TOKEN)], end=False)))
        send(raw_frame(hf.DataFrame(1, data=b"more", flags=["END_STREAM"])))

    def trailers_ok(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        c.send_headers(1, [*base, ("content-type", "application/json")])
        c.send_data(1, b"{}")
        c.send_headers(1, [("x-trailer", TOKEN)], end_stream=True)

    def huge_continuation(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        c.send_headers(1, [*get, *[(f"x-pad-{i}", "p" * 4000) for i in range(300)]],
                       end_stream=True)  # fmt: skip

    def endless_continuation(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        first = _headers_frame(c, 1, get, end=True)
        first.flags.discard("END_HEADERS")
        send(raw_frame(first))
        for _ in range(2000):
            send(raw_frame(hf.ContinuationFrame(1, data=b"\x00\x05x-pad\x03abc" * 100)))

    def settings_flood(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        send(b"".join(raw_frame(hf.SettingsFrame(0, settings={4: 65535})) for _ in range(20000)))
        c.send_headers(1, get, end_stream=True)

    def ping_flood(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        send(b"".join(raw_frame(hf.PingFrame(0, opaque_data=b"12345678")) for _ in range(20000)))
        c.send_headers(1, get, end_stream=True)

    def priority_stream0(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        c.send_headers(1, get, end_stream=True)
        send(c.data_to_send())
        send(raw_frame(hf.PriorityFrame(0, depends_on=1, stream_weight=16)))

    def priority_self(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        send(raw_frame(hf.PriorityFrame(3, depends_on=3, stream_weight=16)))
        c.send_headers(1, get, end_stream=True)

    def even_stream(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        send(raw_frame(_headers_frame(c, 2, get, end=True)))

    def stream_reuse(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        c.send_headers(1, get, end_stream=True)
        send(c.data_to_send())
        time.sleep(0.5)
        send(raw_frame(_headers_frame(c, 1, get, end=True)))

    def window_overflow(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        c.send_headers(1, get, end_stream=True)
        send(c.data_to_send())
        send(raw_frame(hf.WindowUpdateFrame(0, window_increment=2**31 - 1)))
        send(raw_frame(hf.WindowUpdateFrame(0, window_increment=2**31 - 1)))

    def data_on_idle(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        send(raw_frame(hf.DataFrame(5, data=TOKEN.encode(), flags=["END_STREAM"])))

    def many_streams(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        for sid in range(1, 2 * 300, 2):
            c.send_headers(sid, base)  # never ended
        send(c.data_to_send())

    def rapid_reset(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        for sid in range(1, 2 * 2000, 2):
            c.send_headers(sid, get, end_stream=True)
            c.reset_stream(sid)
        send(c.data_to_send())
        c.send_headers(4001, get, end_stream=True)

    def goaway_mid_request(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        c.send_headers(1, [*base, ("content-length", "10")])
        c.send_data(1, b"abc")
        send(c.data_to_send())
        c.close_connection()

    def headers_after_end(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        c.send_headers(1, get, end_stream=True)
        send(c.data_to_send())
        send(raw_frame(_headers_frame(c, 1, [("x-late", TOKEN)], end=True)))

    def bad_hpack(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        send(raw_frame(hf.HeadersFrame(1, data=b"\xff\xff\xff\xff\xff\x0f" + TOKEN.encode(),
                                       flags=["END_HEADERS", "END_STREAM"])))  # fmt: skip

    def padded_bad(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        f = hf.DataFrame(1, data=b"x", flags=["PADDED"])
        f.pad_length = 0
        c.send_headers(1, base)
        send(c.data_to_send())
        b = bytearray(f.serialize())
        b[9] = 200  # pad length larger than the frame
        send(bytes(b))

    body = json.dumps({"t": TOKEN}).encode()
    return {
        "invalid pseudo-header :foo": headers_only([*get, (":foo", TOKEN)]),
        "pseudo-header after regular": headers_only(
            [g for g in get if g[0] != ":path"] + [(":path", "/cards")]
        ),
        "pseudo-header :status in request": headers_only([(":status", "200"), *get]),
        "uppercase header name": headers_only([*get, ("X-Upper", TOKEN)]),
        "connection header": headers_only([*get, ("connection", "keep-alive")]),
        "te: gzip": headers_only([*get, ("te", "gzip")]),
        "transfer-encoding chunked": headers_only([*get, ("transfer-encoding", "chunked")]),
        "missing :path": headers_only(swap(":path", None)),
        "missing :method": headers_only(swap(":method", None)),
        "empty :path": headers_only(swap(":path", "")),
        ":path with token and space": headers_only(swap(":path", f"/cards {TOKEN}")),
        ":path absolute URL": headers_only(swap(":path", "https://evil.example/cards")),
        ":path with CRLF": headers_only(swap(":path", "/cards\r\nX-Injected: 1")),
        ":path *": headers_only(swap(":path", "*")),
        ":scheme ftp": headers_only(swap(":scheme", "ftp")),
        ":authority with token userinfo": headers_only(
            swap(":authority", f"u:{TOKEN}@{authority}")
        ),
        ":authority empty": headers_only(swap(":authority", "")),
        ":authority other host, host header Unit": headers_only(
            [*swap(":authority", "evil.example:443"), ("host", authority)]
        ),
        "extended CONNECT": headers_only(
            [
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "https"),
                (":authority", authority),
                (":path", "/cards"),
                ("authorization", "Bearer unitgw:org"),
            ]
        ),
        "plain CONNECT in h2": headers_only(
            [(":method", "CONNECT"), (":authority", "127.0.0.1:1"), ("x-secret", TOKEN)]
        ),
        "duplicate :path": headers_only([*get, (":path", "/customers")]),
        "header value NUL": headers_only([*get, ("x-nul", f"a\x00{TOKEN}")]),
        "header value CRLF": headers_only([*get, ("x-crlf", f"a\r\nX-Injected: {TOKEN}")]),
        "header name with colon": headers_only([*get, ("x:bad", TOKEN)]),
        "two authorization": headers_only([*get, ("authorization", f"Bearer {TOKEN}")]),
        "content-length non-numeric": with_body([*base, ("content-length", TOKEN)], body),
        "DATA longer than content-length": with_body(
            [*base, ("content-length", "2"), ("content-type", "application/json")], body
        ),
        "DATA shorter than content-length": with_body(
            [*base, ("content-length", "999"), ("content-type", "application/json")], body
        ),
        "RST_STREAM mid-body": rst_mid_body,
        "trailers without END_STREAM": trailers_without_end,
        "trailers (valid)": trailers_ok,
        "huge HEADERS via CONTINUATION (1.2MB)": huge_continuation,
        "endless CONTINUATION": endless_continuation,
        "SETTINGS flood": settings_flood,
        "PING flood": ping_flood,
        "PRIORITY on stream 0": priority_stream0,
        "PRIORITY depending on itself": priority_self,
        "HEADERS on even stream": even_stream,
        "stream id reuse": stream_reuse,
        "WINDOW_UPDATE overflow": window_overflow,
        "DATA on idle stream": data_on_idle,
        "300 open streams": many_streams,
        "rapid reset 2000": rapid_reset,
        "GOAWAY mid request": goaway_mid_request,
        "HEADERS after END_STREAM": headers_after_end,
        "bad HPACK": bad_hpack,
        "pad length over frame": padded_bad,
    }


def _headers_frame(
    c: h2.connection.H2Connection, stream_id: int, headers: list[tuple[str, str]], end: bool
) -> hf.HeadersFrame:
    data = c.encoder.encode(headers)
    flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
    return hf.HeadersFrame(stream_id, data=data, flags=flags)


def _h2_survey(
    gateway: harness.Gateway,
    host: str,
    ok_url: str,
    planted: Planted,
    org_token: str,
    title: str,
    reverse: bool,
) -> list[tuple[str, H2Answer, bool, bool]]:
    results = []
    for name, script in h2_cases(host).items():
        answer = h2_exchange(gateway, host, script, planted, reverse=reverse)
        leaked = any(s in answer.text or s.encode() in answer.raw for s in (TOKEN, org_token))
        results.append((name, answer, ordinary_ok_tls(gateway, ok_url, host, planted, reverse),
                        leaked))  # fmt: skip
    with RESULTS.open("a") as f:
        f.write(f"\n## {title}\n\n")
        for name, answer, serving, leaked in results:
            f.write(f"| {name} | {answer.line()} | serving={serving} | leaked={leaked} |\n")
    with RESULTS.with_suffix(".raw").open("a") as f:
        f.write(f"\n## {title}\n\n")
        for name, answer, _, _ in results:
            f.write(f"=== {name}\n{answer.text[:1500]}\n")
    return results


def ordinary_ok_tls(
    gateway: harness.Gateway, path: str, host: str, planted: Planted, reverse: bool
) -> bool:
    def script(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        c.send_headers(
            1,
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", host),
                (":path", path),
                ("authorization", "Bearer unitgw:org"),
            ],
            end_stream=True,
        )

    answer = h2_exchange(gateway, host, script, planted, reverse=reverse, wait=10)
    alive = gateway.process.proc is not None and gateway.process.proc.poll() is None
    return alive and answer.status == 200


def test_survey_http2_regular(
    gateway_factory: GatewayFactory, tls_sandbox: harness.Sandbox, planted: Planted
) -> None:
    gateway = gateway_factory(tls_sandbox)
    host = urlsplit(tls_sandbox.url).netloc
    results = _h2_survey(
        gateway, host, "/cards?page[limit]=1", planted, tls_sandbox.org_token, "h2 regular",
        reverse=False,
    )  # fmt: skip
    assert all(serving and not leaked for _, _, serving, leaked in results)
    assert "has crashed" not in gateway.process.output()


def test_survey_http2_reverse(
    gateway_factory: GatewayFactory, tls_sandbox: harness.Sandbox, planted: Planted
) -> None:
    gateway = gateway_factory(tls_sandbox, mode=f"reverse:{tls_sandbox.url}", name="reverse")
    host = urlsplit(tls_sandbox.url).netloc
    results = _h2_survey(
        gateway, host, "/cards?page[limit]=1", planted, tls_sandbox.org_token, "h2 reverse",
        reverse=True,
    )  # fmt: skip
    assert all(serving and not leaked for _, _, serving, leaked in results)
    assert "has crashed" not in gateway.process.output()


# --- A Unit upstream that misbehaves --------------------------------------------------------


class RawUnit:
    """A tiny raw-socket "Unit": answers ``GET /cards?fault=NAME`` with the bytes of fault
    NAME (a callable of the request head, so it can echo the token it got)."""

    def __init__(self, faults: dict[str, Callable[[bytes, socket.socket], None]]) -> None:
        self.org_token = harness.make_org_token()
        self.cert_path = None
        self.faults = faults
        self.heads: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(20)
            while True:
                head = b""
                try:
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        head += chunk
                except OSError:
                    return
                self.heads.append(head)
                line = head.split(b"\r\n", 1)[0].decode()
                name = line.split("fault=", 1)[1].split()[0] if "fault=" in line else "ok"
                try:
                    self.faults[name](head, conn)
                except OSError:
                    return
                if name != "ok":
                    return

    def close(self) -> None:
        self.server.close()


def _ok(head: bytes, conn: socket.socket) -> None:
    body = b'{"data":[]}'
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.api+json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def _auth_of(head: bytes) -> bytes:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"authorization:"):
            return line.split(b":", 1)[1].strip()
    return b"none"


def _reply(data: bytes | Callable[[bytes], bytes], *, close: bool = True, linger: float = 0.0):
    def fault(head: bytes, conn: socket.socket) -> None:
        payload = data(head) if callable(data) else data
        conn.sendall(payload)
        if linger:
            time.sleep(linger)

    return fault


def upstream_faults() -> dict[str, Callable[[bytes, socket.socket], None]]:
    json_ct = b"Content-Type: application/vnd.api+json\r\n"
    bomb = gzip.compress(b"0" * (300 * 1024 * 1024), compresslevel=9)

    def flood_1xx(head: bytes, conn: socket.socket) -> None:
        for _ in range(200):
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * 100)
        _ok(head, conn)

    def endless_1xx(head: bytes, conn: socket.socket) -> None:
        end = time.monotonic() + 12
        while time.monotonic() < end:
            conn.sendall(b"HTTP/1.1 102 Processing\r\n\r\n" * 50)
            time.sleep(0.01)

    def endless_headers(head: bytes, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        end = time.monotonic() + 12
        while time.monotonic() < end:
            conn.sendall(b"X-Pad: " + b"p" * 60000 + b"\r\n")

    def drip(head: bytes, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + json_ct + b"Content-Length: 1000\r\n\r\n")
        for _ in range(40):
            conn.sendall(b" ")
            time.sleep(0.5)

    return {
        "ok": _ok,
        "garbage-status": _reply(b"HTTP/1.1 abc\r\n\r\n"),
        "not-http": _reply(lambda h: b"NOTHTTP " + _auth_of(h) + b"\r\n\r\n"),
        "bad-header-echo": _reply(
            lambda h: b"HTTP/1.1 200 OK\r\n" + _auth_of(h) + b"\r\nContent-Length: 0\r\n\r\n"
        ),
        "bad-status-echo": _reply(lambda h: b"HTTP/1.1 2x0 " + _auth_of(h) + b"\r\n\r\n"),
        "close-mid-headers": _reply(b"HTTP/1.1 200 OK\r\nContent-Le"),
        "close-at-once": _reply(b""),
        "truncated-body": _reply(
            b"HTTP/1.1 200 OK\r\n" + json_ct + b"Content-Length: 100\r\n\r\n{"
        ),
        "truncated-chunked": _reply(
            b"HTTP/1.1 200 OK\r\n" + json_ct + b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a"'
        ),
        "bad-chunk-echo": _reply(
            lambda h: (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz" + _auth_of(h) + b"\r\n"
            )
        ),
        "chunked-trailers-echo": _reply(
            lambda h: (
                b"HTTP/1.1 200 OK\r\n" + json_ct + b"Transfer-Encoding: chunked\r\n\r\n"
                b"2\r\n{}\r\n0\r\nX-Echo: " + _auth_of(h) + b"\r\n\r\n"
            )
        ),
        "cl-longer-than-body-keepalive": _reply(
            b"HTTP/1.1 200 OK\r\n" + json_ct + b"Content-Length: 2\r\n\r\n{}EXTRA-BYTES", linger=1
        ),
        "two-content-lengths": _reply(
            b"HTTP/1.1 200 OK\r\n" + json_ct + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
        ),
        "cl-and-te": _reply(
            b"HTTP/1.1 200 OK\r\n"
            + json_ct
            + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        ),
        "bad-gzip": _reply(
            b"HTTP/1.1 200 OK\r\n" + json_ct + b"Content-Encoding: gzip\r\nContent-Length: 4\r\n"
            b"\r\nabcd"
        ),
        "gzip-bomb": _reply(
            b"HTTP/1.1 200 OK\r\n"
            + json_ct
            + b"Content-Encoding: gzip\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(bomb)
            + bomb
        ),
        "unknown-encoding": _reply(
            b"HTTP/1.1 200 OK\r\n" + json_ct + b"Content-Encoding: x-foo\r\nContent-Length: 2\r\n"
            b"\r\n{}"
        ),
        "1xx-flood": flood_1xx,
        "endless-1xx": endless_1xx,
        "endless-headers": endless_headers,
        "101-unsolicited": _reply(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            b"\x81\x05hello",
            linger=1,
        ),
        "status-999": _reply(b"HTTP/1.1 999 Weird\r\n" + json_ct + b"Content-Length: 2\r\n\r\n{}"),
        "status-099": _reply(b"HTTP/1.1 099 Weird\r\n" + json_ct + b"Content-Length: 2\r\n\r\n{}"),
        "204-with-body": _reply(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", linger=1
        ),
        "nul-in-header-echo": _reply(
            lambda h: (
                b"HTTP/1.1 200 OK\r\nX-A: a\x00"
                + _auth_of(h)
                + b"\r\n"
                + json_ct
                + b"Content-Length: 2\r\n\r\n{}"
            )
        ),
        "token-in-reason": _reply(
            lambda h: (
                b"HTTP/1.1 200 "
                + _auth_of(h).split()[-1]
                + b"\r\n"
                + json_ct
                + b"Content-Length: 2\r\n\r\n{}"
            )
        ),
        "token-in-header-name": _reply(
            lambda h: (
                b"HTTP/1.1 200 OK\r\nX-"
                + _auth_of(h).split()[-1].replace(b".", b"-")
                + b": 1\r\n"
                + json_ct
                + b"Content-Length: 2\r\n\r\n{}"
            )
        ),
        "http-1.0-until-close": _reply(b"HTTP/1.0 200 OK\r\n" + json_ct + b'\r\n{"data":[]}'),
        "http-0.9-like": _reply(b'{"data": []}'),
        "drip-body": drip,
        "huge-status-line": _reply(b"HTTP/1.1 200 " + b"O" * 200_000 + b"\r\n\r\n"),
    }


def test_survey_upstream_faults_reverse(gateway_factory: GatewayFactory, planted: Planted) -> None:
    unit = RawUnit(upstream_faults())
    planted.add("raw unit's org token", unit.org_token)
    gateway = gateway_factory(
        unit, mode=f"reverse:{unit.url}", name="reverse",
        overrides={"unit": {"response_timeout_seconds": 5}},
    )  # fmt: skip
    try:
        results = []
        for name in upstream_faults():
            raw = (
                f"GET /cards?fault={name} HTTP/1.1\r\nHost: x\r\n{ORG}"
                f"X-Secret: {TOKEN}\r\nConnection: close\r\n\r\n"
            ).encode()
            answer = exchange(gateway, raw, planted=planted, wait=15)
            leaked = any(s.encode() in answer.raw for s in (TOKEN, unit.org_token))
            results.append(Outcome(name, answer, ordinary_ok(gateway, "/cards", planted), leaked))
        record(results, "upstream faults reverse")
        tokens_ok = all(_auth_of(h) == b"Bearer " + unit.org_token.encode() for h in unit.heads)
        assert tokens_ok, [_auth_of(h) for h in unit.heads]
        assert all(o.serving and not o.leaked for o in results)
        assert "has crashed" not in gateway.process.output()
    finally:
        unit.close()


# --- Findings -------------------------------------------------------------------------------


def _timed_exchange(
    gateway: harness.Gateway, raw: bytes, planted: Planted, wait: float = 120
) -> tuple[float, Answer]:
    started = time.monotonic()
    answer = exchange(gateway, raw, planted=planted, wait=wait)
    return time.monotonic() - started, answer


def test_a_large_form_body_does_not_stall_every_other_caller(
    gateway: harness.Gateway, sandbox: harness.Sandbox, planted: Planted
) -> None:
    """One caller's 10 MB form body (1M fields) would take the event loop for seconds to read
    every way a viewer may: text that is not JSON over 512 KiB is shown as its summary, so
    another caller is served meanwhile."""
    url = sandbox.url
    host = urlsplit(url).netloc
    form = b"&".join(b"f%d=v" % i for i in range(1_000_000)) + b"&t=" + TOKEN.encode()
    big = (
        f"POST {url}/applications HTTP/1.1\r\nHost: {host}\r\n{ORG}Connection: close\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(form)}\r\n\r\n"
    ).encode() + form
    ordinary = (
        f"GET {url}/cards?page[limit]=1 HTTP/1.1\r\nHost: {host}\r\n{ORG}Connection: close\r\n\r\n"
    ).encode()
    base, answer = _timed_exchange(gateway, ordinary, planted)
    assert answer.status == 200
    results: dict[str, tuple[float, Answer]] = {}
    big_thread = threading.Thread(
        target=lambda: results.__setitem__("big", _timed_exchange(gateway, big, planted))
    )
    big_thread.start()
    time.sleep(1.0)  # the body is in
    results["ordinary"] = _timed_exchange(gateway, ordinary, planted)
    big_thread.join()
    big_took, big_answer = results["big"]
    took, answer = results["ordinary"]
    with RESULTS.open("a") as f:
        f.write(
            f"\n## stall\n\nordinary alone {base:.2f}s; 10 MB form answered {big_answer.status} "
            f"after {big_took:.2f}s; ordinary sent meanwhile answered {answer.status} after "
            f"{took:.2f}s\n"
        )
    assert answer.status == 200
    assert took < 2.0, f"an ordinary request waited {took:.1f} s behind one caller's body"


def test_malformed_requests_sent_as_the_port_opens_get_answers_and_the_gateway_stays_up(
    run_dir: Path, planted: Planted
) -> None:
    """The embedded sandbox starts inside the gateway's running hook, after mitmproxy has
    begun listening; mitmproxy's ErrorCheck ends the process on any ERROR record until
    running returns."""
    embedded = start_embedded_gateway(run_dir, planted)
    process, proxy_port, upstream = embedded.process, embedded.proxy_port, embedded.upstream
    host, confdir = urlsplit(upstream).netloc, embedded.confdir
    sends = {
        "trailers": (
            f"POST {upstream}/applications HTTP/1.1\r\nHost: {host}\r\n{ORG}"
            f"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Checksum: {TOKEN}\r\n\r\n"
        ).encode(),
        "bad request line": f"GET {upstream}/cards?t={TOKEN} HTTP/1.1 x\r\n\r\n".encode(),
        "bad chunk": (
            f"POST {upstream}/applications HTTP/1.1\r\nHost: {host}\r\n{ORG}"
            f"Transfer-Encoding: chunked\r\n\r\nzz{TOKEN}\r\n"
        ).encode(),
        "CL+TE": (
            f"POST {upstream}/applications HTTP/1.1\r\nHost: {host}\r\n{ORG}"
            f"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ).encode(),
        "idna body": (
            f"POST {upstream}/applications HTTP/1.1\r\nHost: {host}\r\n{ORG}Connection: close\r\n"
            "Content-Type: text/plain; charset=idna\r\n"
            f"Content-Length: {len(TOKEN)}\r\n\r\n{TOKEN}"
        ).encode(),
        "CONNECT then garbage": (
            f"CONNECT {host} HTTP/1.1\r\n\r\n\x16\x03\x01\x00\x05xxxxx".encode()
        ),
        "absolute-form port 99999": f"GET http://127.0.0.1:99999/ HTTP/1.1\r\n{ORG}\r\n".encode(),
    }
    gateway = harness.Gateway(process, f"http://127.0.0.1:{proxy_port}", confdir, confdir, None)
    try:
        embedded.connect_when_open()
        outcomes: dict[str, Answer] = {}

        def one(name: str) -> None:
            outcomes[name] = exchange(gateway, sends[name], planted=planted, wait=15)

        threads = [threading.Thread(target=one, args=(name,)) for name in sends]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        process.wait_for(r"unit-gateway: proxy listening on", timeout=30)
        time.sleep(2)
        alive = process.proc is not None and process.proc.poll() is None
        with RESULTS.open("a") as f:
            f.write("\n## start-up window\n\n")
            for name, a in outcomes.items():
                f.write(f"| {name} | {a.line()} | leaked={TOKEN.encode() in a.raw} |\n")
            f.write(f"alive after start: {alive}\n")
        assert alive, process.output()[-3000:]
        for name, a in outcomes.items():
            assert TOKEN.encode() not in a.raw, name
        assert ordinary_ok(gateway, upstream, planted)
    finally:
        status = process.stop()
        assert status == 0, process.output()[-3000:]


def test_unit_answering_with_http1_trailers_gets_the_caller_a_502(
    gateway_factory: GatewayFactory, planted: Planted
) -> None:
    """mitmproxy raises on a chunked response with a trailer section. The response head is
    in the flow but none of it went to the caller: the caller must still get its answer."""
    unit = RawUnit(upstream_faults())
    planted.add("raw unit's org token", unit.org_token)
    gateway = gateway_factory(unit, mode=f"reverse:{unit.url}", name="reverse")
    try:
        raw = (
            f"GET /cards?fault=chunked-trailers-echo HTTP/1.1\r\nHost: x\r\n{ORG}"
            "Connection: close\r\n\r\n"
        ).encode()
        answer = exchange(gateway, raw, planted=planted, wait=15)
        assert unit.org_token.encode() not in answer.raw
        assert answer.closed
        assert (answer.status, answer.code) == (502, "upstream_failed"), answer.raw
        assert ordinary_ok(gateway, "/cards", planted)
    finally:
        unit.close()


def _h2_trailers(authority: str, stream_id: int = 1) -> H2Script:
    def script(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        c.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", authority),
                (":path", "/applications"),
                ("authorization", "Bearer unitgw:org"),
                ("content-type", "application/json"),
            ],
        )
        c.send_data(stream_id, b"{}")
        c.send_headers(stream_id, [("x-checksum", TOKEN)], end_stream=True)
        send(c.data_to_send())

    return script


@pytest.mark.parametrize("reverse", [False, True], ids=["regular", "reverse"])
def test_an_http2_request_the_http_layer_raises_on_gets_a_json_api_answer(
    gateway_factory: GatewayFactory, tls_sandbox: harness.Sandbox, planted: Planted, reverse: bool
) -> None:
    """HTTP/2 request trailers to an HTTP/1 Unit: mitmproxy raises (AssertionError:
    Unexpected event: RequestTrailers). Over HTTP/1 the caller gets a JSON:API error; over
    HTTP/2 it got a bare TCP close, no response, no GOAWAY."""
    mode = f"reverse:{tls_sandbox.url}" if reverse else None
    gateway = gateway_factory(tls_sandbox, mode=mode)
    host = urlsplit(tls_sandbox.url).netloc
    answer = h2_exchange(gateway, host, _h2_trailers(host), planted, reverse=reverse)
    assert TOKEN not in answer.text
    assert answer.status in (400, 502), answer.text
    assert answer.code in ("invalid_request", "upstream_failed"), answer.text
    assert ordinary_ok_tls(gateway, "/cards?page[limit]=1", host, planted, reverse)
    assert "could not be handled" in gateway.process.output()


def test_a_clienthello_that_does_not_parse_is_not_logged_with_the_callers_secret(
    gateway: harness.Gateway, sandbox: harness.Sandbox, planted: Planted
) -> None:
    """mitmproxy logs a ClientHello it cannot parse as hex ("Cannot parse ClientHello:
    1603..."): the log redaction reads text, so the caller's bytes in it are not redacted.
    The leak scan of the planted fixture finds the token (hex) in the gateway's output."""
    host = urlsplit(sandbox.url).netloc
    answer = exchange(
        gateway,
        f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
        b"\x16\x03\x01\x00\x05" + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode(),
        planted=planted,
    )
    assert answer.closed
    gateway.process.wait_for("Cannot parse ClientHello")
    assert TOKEN.encode().hex() not in gateway.process.output()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_one_callers_large_body_does_not_take_the_gateway_past_its_memory_limit(
    gateway: harness.Gateway, sandbox: harness.Sandbox, planted: Planted
) -> None:
    """With no body_size_limit mitmproxy buffers a body of any size, so the gateway sets one
    unless the operator did. deployment.md gives a replica a 512 MiB memory limit: one
    caller's 600 MiB body (Content-Length 700 MiB) must not take the process past it, where
    the orchestrator would kill the gateway with every request in flight."""
    assert gateway.process.proc is not None
    pid = gateway.process.proc.pid
    url = sandbox.url
    host = urlsplit(url).netloc
    head = (
        f"POST {url}/applications HTTP/1.1\r\nHost: {host}\r\n{ORG}"
        f"Content-Type: application/json\r\nContent-Length: {700 * 2**20}\r\n\r\n"
    ).encode()
    peak = _rss_mib(pid)
    with connect(gateway) as conn:
        conn.sendall(head)
        chunk = b"0" * 2**20
        for i in range(600):
            try:
                conn.sendall(chunk)
            except OSError:
                break  # refused: what a limit would do
            if i % 50 == 0:
                peak = max(peak, _rss_mib(pid))
        time.sleep(1)
        peak = max(peak, _rss_mib(pid))
    with RESULTS.open("a") as f:
        f.write(f"\n## memory\n\npeak RSS {peak:.0f} MiB while one caller sent 600 MiB\n")
    assert ordinary_ok(gateway, url, planted)
    assert peak < 512, f"the gateway's RSS reached {peak:.0f} MiB on one caller's body"


def test_body_size_limit_slow_and_vanishing_callers(
    gateway_factory: GatewayFactory, tls_sandbox: harness.Sandbox, planted: Planted
) -> None:
    """With body_size_limit set: a body over it (Content-Length, chunked, HTTP/2, after
    100-continue) gets 413 request_too_large; a caller that vanishes mid-response or sends
    its head slowly does not stop the gateway."""
    gateway = gateway_factory(tls_sandbox, extra_args=("--set", "body_size_limit=1k"))
    host = urlsplit(tls_sandbox.url).netloc
    app = f"POST /applications HTTP/1.1\r\nHost: {host}\r\n{ORG}X-Secret: {TOKEN}\r\n"
    big = json.dumps({"t": TOKEN, "pad": "x" * 5000}).encode()
    cases: dict[str, Callable[[], Answer]] = {
        "CL over the limit": lambda: exchange(
            gateway, (app + cl(big) + "\r\n").encode() + big, planted=planted, tls_host=host
        ),
        "chunked over the limit": lambda: exchange(
            gateway,
            (app + "Transfer-Encoding: chunked\r\n\r\n").encode()
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big),
            planted=planted,
            tls_host=host,
        ),
        "100-continue over the limit": lambda: exchange(
            gateway,
            (app + "Expect: 100-continue\r\n" + cl(big) + "\r\n").encode(),
            big,
            planted=planted,
            tls_host=host,
            delay=0.3,
        ),
    }
    outcomes = run_cases(gateway, "/cards?page[limit]=1", {}, planted, (TOKEN,))

    def tls_ok() -> bool:
        raw = f"GET /cards?page[limit]=1 HTTP/1.1\r\nHost: {host}\r\n{ORG}Connection: close\r\n\r\n"
        return exchange(gateway, raw.encode(), planted=planted, tls_host=host).status == 200

    for name, send in cases.items():
        answer = send()
        outcomes.append(Outcome(name, answer, tls_ok(), TOKEN.encode() in answer.raw))

    def h2_big(c: h2.connection.H2Connection, send: Callable[[bytes], None]) -> None:
        c.send_headers(
            1,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", host),
                (":path", "/applications"),
                ("authorization", "Bearer unitgw:org"),
            ],
        )
        c.send_data(1, big[:4000])
        send(c.data_to_send())
        c.send_data(1, big[4000:], end_stream=True)

    h2_answer = h2_exchange(gateway, host, h2_big, planted)
    h2_line = h2_answer.line()

    # Vanishing callers: ask for a large answer, read a little, reset.
    for _ in range(30):
        conn = connect(gateway, host)
        conn.sendall(f"GET /cards?page[limit]=100 HTTP/1.1\r\nHost: {host}\r\n{ORG}\r\n".encode())
        conn.recv(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()
    vanishing_ok = tls_ok()

    # A slow head: one byte a second for 12 s; is the connection closed, and do others wait?
    slow = connect(gateway)
    slow.settimeout(0.5)
    started = time.monotonic()
    closed_at = None
    for byte in f"GET {tls_sandbox.url}/cards HTTP/1.1\r\nX-A: ".encode()[:12]:
        try:
            slow.sendall(bytes([byte]))
            if slow.recv(100) == b"":
                closed_at = time.monotonic() - started
                break
        except TimeoutError:
            pass
        except OSError:
            closed_at = time.monotonic() - started
            break
        time.sleep(0.5)
    slow_others_ok = tls_ok()
    slow.close()
    with RESULTS.open("a") as f:
        f.write("\n## body_size_limit=1k, vanishing and slow callers\n\n")
        for o in outcomes:
            f.write(o.row() + "\n")
        f.write(f"| h2 body over the limit | {h2_line} | leaked={TOKEN in h2_answer.text} |\n")
        f.write(f"| 30 callers reset mid-response | serving={vanishing_ok} |\n")
        f.write(
            f"| slow head (1 byte / ~1 s for 12 s) | closed by gateway after {closed_at} | "
            f"others served={slow_others_ok} |\n"
        )
    for o in outcomes:
        assert (o.answer.status, o.answer.code, o.answer.closed) == (
            413,
            "request_too_large",
            True,
        ), (o.name, o.answer.raw[:400])
        assert o.serving and not o.leaked, o.name
    assert h2_answer.status == 413 and h2_answer.code == "request_too_large", h2_answer.text
    assert vanishing_ok and slow_others_ok


def test_a_connect_to_an_odd_authority_then_a_request_gets_an_answer(
    gateway: harness.Gateway, sandbox: harness.Sandbox, planted: Planted
) -> None:
    """mitmproxy accepts ``CONNECT /cards`` (200): what happens to a request in that tunnel."""
    host = urlsplit(sandbox.url).netloc
    results = {}
    for authority in ("/cards", "unit", host.split(":")[0] + ":", f"{host}/x"):
        answer = exchange(
            gateway,
            f"CONNECT {authority} HTTP/1.1\r\n\r\n".encode(),
            f"GET /cards HTTP/1.1\r\nHost: {host}\r\n{ORG}Connection: close\r\n\r\n".encode(),
            planted=planted,
            delay=0.3,
        )
        results[authority] = answer
    with RESULTS.open("a") as f:
        f.write("\n## CONNECT odd authority then a request\n\n")
        for authority, a in results.items():
            f.write(f"| CONNECT {authority} | {a.raw[:60]!r} ... {a.line()} |\n")
    assert sandbox.stats()["requests"] == {}
    assert sandbox.stats()["unauthenticated"] == {}
    for a in results.values():
        assert a.closed and a.raw.count(b"HTTP/1.1 ") >= 1
    assert ordinary_ok(gateway, sandbox.url, planted)


def test_an_http2_failure_answers_every_stream_still_waiting_and_only_those(
    gateway_factory: GatewayFactory, tls_sandbox: harness.Sandbox, planted: Planted
) -> None:
    """Stream 1 is answered; stream 3 waits on a slow Unit; stream 5 makes the layer raise
    (request trailers to an HTTP/1 Unit). Streams 3 and 5 get the JSON:API error, stream 1
    keeps its answer, then the connection closes."""
    gateway = gateway_factory(tls_sandbox)
    host = urlsplit(tls_sandbox.url).netloc
    get = [(":method", "GET"), (":scheme", "https"), (":authority", host),
           (":path", "/cards?page[limit]=1"), ("authorization", "Bearer unitgw:org")]  # fmt: skip
    tunnel = h2_tunnel(gateway, host, reverse=False)
    caller = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    caller.initiate_connection()
    statuses: dict[int, int] = {}
    bodies: dict[int, bytes] = {}
    ended = False

    def pump(until: Callable[[], bool], wait: float = 15) -> None:
        nonlocal ended
        deadline = time.monotonic() + wait
        while not until() and time.monotonic() < deadline and not ended:
            tunnel.sendall(caller.data_to_send())
            tunnel.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = tunnel.recv(65536)
            except (TimeoutError, OSError):
                break
            if not chunk:
                ended = True
                break
            planted.blobs.append(("h2 answer", chunk))
            for event in caller.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                    caller.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    ended = True

    with tunnel:
        caller.send_headers(1, get, end_stream=True)
        pump(lambda: 1 in statuses)
        tls_sandbox.faults(latency_ms=3000)
        try:
            caller.send_headers(3, get, end_stream=True)
            tunnel.sendall(caller.data_to_send())
            time.sleep(0.5)  # stream 3 is at Unit
            _h2_trailers(host, 5)(caller, tunnel.sendall)
        except h2.exceptions.ProtocolError:
            pass
        pump(lambda: False, wait=8)
        tls_sandbox.faults(latency_ms=0)
    codes = {sid: json.loads(b)["errors"][0]["code"] for sid, b in bodies.items() if sid != 1}
    with RESULTS.open("a") as f:
        f.write(f"\n## h2 failure with streams in flight\n\nstatuses {statuses} codes {codes}\n")
    assert statuses.get(1) == 200
    assert statuses.get(3) == 502 and codes.get(3) == "upstream_failed", (statuses, bodies)
    assert statuses.get(5) == 502 and codes.get(5) == "upstream_failed", (statuses, bodies)


def test_three_large_form_bodies_do_not_fail_the_liveness_probe(
    gateway: harness.Gateway, sandbox: harness.Sandbox, planted: Planted
) -> None:
    """/healthz turns 503 once the event loop has not turned for 30 s, and deployment.md
    makes it the liveness probe: three callers' 10 MB form bodies at once stall the loop that
    long, and the orchestrator restarts the gateway with every request in flight."""
    assert gateway.metrics_url is not None
    healthz = gateway.metrics_url.replace("/metrics", "/healthz")
    url = sandbox.url
    host = urlsplit(url).netloc
    form = b"&".join(b"f%d=v" % i for i in range(1_000_000)) + b"&t=" + TOKEN.encode()
    big = (
        f"POST {url}/applications HTTP/1.1\r\nHost: {host}\r\n{ORG}Connection: close\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n\r\n"
    ).encode() + form
    threads = [
        threading.Thread(target=exchange, args=(gateway, big), kwargs={"planted": planted,
                                                                         "wait": 180})
        for _ in range(3)
    ]  # fmt: skip
    for t in threads:
        t.start()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    seen: list[int] = []
    while any(t.is_alive() for t in threads):
        try:
            with opener.open(healthz, timeout=5) as answer:
                seen.append(answer.status)
        except urllib.error.HTTPError as e:
            seen.append(e.code)
        time.sleep(2)
    for t in threads:
        t.join()
    with RESULTS.open("a") as f:
        f.write(f"\n## liveness during three 10 MB forms\n\n/healthz statuses: {seen}\n")
    assert 503 not in seen, f"/healthz said the gateway is dead: {seen}"
