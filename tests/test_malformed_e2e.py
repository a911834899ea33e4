"""Requests the gateway cannot take, through a real gateway process: each gets a JSON:API
error that names what is wrong, and no secret the caller sent comes back in it. Most of
these fail before mitmproxy holds a flow for them, where mitmproxy's own answer is an HTML
page (HTTP/1), no answer (a broken chunk), unbounded buffering (a head that never ends) or
a GOAWAY's debug text (HTTP/2) quoting the caller's bytes (see unit_gateway.mitm.early_errors).
(test_early_errors.py drives the cases a caller can hardly time.) The sandbox sees none
of them. Every test ends with the leak scan over the run's outputs."""

from __future__ import annotations

import json
import socket
import ssl
import time
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import pytest

from conftest import Planted, address_of
from unit_gateway.testing import harness

pytestmark = pytest.mark.timeout(60)

#: A real token in the caller's request (the caller's own, which the gateway passes on).
TOKEN = "v2.public.eyJyb2xlIjoiY3VzdG9tZXIiLCJ1c2VySWQiOiIxMDAwMSJ9" + "Ab3_x" * 12


@pytest.fixture(autouse=True)
def caller_token(planted: Planted) -> str:
    """The caller's token, planted: the answers and every output are scanned for it."""
    return planted.add("caller's token", TOKEN)


def answer_to(gateway: harness.Gateway, *pieces: bytes, planted: Planted) -> bytes:
    """Everything the gateway sends back on one connection before it closes it, after the
    caller sent ``pieces`` one by one (handed to the leak scan)."""
    received = b""
    with socket.create_connection(address_of(gateway.proxy_url), timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for piece in pieces:
                conn.sendall(piece)
                if len(pieces) > 1:
                    time.sleep(0.005)  # each its own read at the gateway
        except OSError:
            pass  # the gateway closed the connection while the caller still sent
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # closed with unread bytes: the answer came before the reset
    planted.blobs.append(("an answer to the caller", received))
    return received


def json_api_error(answer: bytes) -> tuple[int, dict]:
    head, body = answer.split(b"\r\n\r\n", 1)
    status_line, *fields = head.decode().split("\r\n")
    headers = {name.lower(): value for name, value in (f.split(": ", 1) for f in fields)}
    assert headers["content-type"] == "application/vnd.api+json", answer
    assert headers["connection"] == "close"
    (error,) = json.loads(body)["errors"]
    return int(status_line.split()[1]), error


def test_an_http1_request_that_does_not_parse_gets_a_json_api_error_without_its_secrets(
    gateway: harness.Gateway, sandbox: harness.Sandbox, planted: Planted
) -> None:
    url = sandbox.url
    host = urlsplit(url).netloc
    cases = {
        # before mitmproxy holds a flow
        "Bad HTTP request line": f"GET {url}/cards?t={TOKEN} HTTP/1.1 x\r\nHost: {host}\r\n\r\n",
        "Invalid header line": f"GET {url}/cards HTTP/1.1\r\nHost: {host}\r\n{TOKEN}\r\n\r\n",
        "invalid content-length header": (
            f"GET {url}/cards HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {TOKEN}\r\n\r\n"
        ),
        # the flow exists (its headers parse), mitmproxy refuses them
        "invalid header name": (
            f"GET {url}/cards HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nX Data: {TOKEN}\r\n\r\n"
        ),
        "both transfer-encoding and content-length": (
            f"POST {url}/applications HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: 5\r\n"
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        # the body's framing is broken (mitmproxy closes without an answer)
        "illegal chunk header": (
            f"POST {url}/applications HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"zz{TOKEN}\r\n"
        ),
    }
    #: the reasons whose message quotes the caller's bytes (the token among them)
    quoting = {
        "Bad HTTP request line",
        "Invalid header line",
        "invalid content-length header",
        "illegal chunk header",
    }
    for reason, raw in cases.items():
        answer = answer_to(gateway, raw.encode(), planted=planted)
        status, error = json_api_error(answer)
        assert (status, error["code"]) == (400, "invalid_request"), reason
        assert error["detail"].startswith("the gateway could not take this request: "), reason
        assert reason in error["detail"]
        assert TOKEN.encode() not in answer, f"{reason}: the answer quotes the token"
        if reason in quoting:
            assert "[token " in error["detail"], "the quoted bytes are there, redacted"
    assert sandbox.stats()["requests"] == {}, "none of them reached Unit"


def test_a_request_head_over_64_kib_is_refused_with_431_and_one_under_it_goes_through(
    gateway: harness.Gateway, sandbox: harness.Sandbox, planted: Planted
) -> None:
    url = sandbox.url
    start = f"GET {url}/cards?page[limit]=1 HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n".encode()
    org = b"Authorization: Bearer unitgw:org\r\n"

    # mitmproxy buffers a head until it ends: this one never does, and is sent on and on.
    never_ends = [start + f"X-Data: {TOKEN}".encode()] + [b"a" * 65536] * 64  # 4 MiB
    answer = answer_to(gateway, *never_ends, planted=planted)
    status, error = json_api_error(answer)
    assert (status, error["code"]) == (431, "request_too_large")
    assert error["detail"] == (
        "the gateway could not take this request: its request line and headers are over 65536 bytes"
    )

    # Just under the limit, in one piece or in many, the request is Unit's business.
    padding = b"".join(b"X-Padding-%d: %s\r\n" % (n, b"p" * 6000) for n in range(10))
    raw = start + org + padding + b"Connection: close\r\n\r\n"
    for pieces in (1, 16):
        size = -(-len(raw) // pieces)
        answer = answer_to(
            gateway, *(raw[at : at + size] for at in range(0, len(raw), size)), planted=planted
        )
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert sandbox.stats()["requests"] == {"GET /cards": 2}


def test_an_http2_protocol_error_goaway_does_not_quote_the_callers_token(
    gateway: harness.Gateway, sandbox: harness.Sandbox, planted: Planted
) -> None:
    # hyper-h2 refuses a header value with surrounding whitespace and quotes the value; that
    # text is the GOAWAY's debug data, which the caller's HTTP/2 client may print.
    host = urlsplit(sandbox.url).netloc
    with socket.create_connection(address_of(gateway.proxy_url), timeout=10) as conn:
        conn.sendall(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert conn.recv(4096).startswith(b"HTTP/1.1 200 ")
        tls = ssl.create_default_context(cafile=str(gateway.ca_path))
        tls.set_alpn_protocols(["h2"])
        with tls.wrap_socket(conn, server_hostname=host.split(":")[0]) as tunnel:
            assert tunnel.selected_alpn_protocol() == "h2"
            caller = h2.connection.H2Connection(
                h2.config.H2Configuration(
                    client_side=True,
                    validate_outbound_headers=False,
                    normalize_outbound_headers=False,  # would strip the whitespace
                )
            )
            caller.initiate_connection()
            caller.send_headers(
                1,
                [
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", host),
                    (":path", "/cards"),
                    ("authorization", f" Bearer {TOKEN} "),
                ],
                end_stream=True,
            )
            tunnel.sendall(caller.data_to_send())
            received = b""
            ends: list[h2.events.ConnectionTerminated] = []
            # (mitmproxy sends a GOAWAY without debug data first, then the one with it)
            while not any(e.additional_data for e in ends):
                chunk = tunnel.recv(65536)
                assert chunk, "closed without the GOAWAY that says why"
                received += chunk
                events = caller.receive_data(chunk)
                ends += [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    planted.blobs.append(("the GOAWAYs to the caller", received))
    debug = b"".join(e.additional_data or b"" for e in ends).decode()
    assert "HTTP/2 protocol error: Received header value surrounded by whitespace" in debug
    assert "[token " in debug, "the quoted value is there, redacted"
    assert TOKEN.encode() not in received
    assert sandbox.stats()["requests"] == {}


def test_a_request_mitmproxy_cannot_handle_gets_an_answer_and_the_gateway_stays_up(
    gateway: harness.Gateway, sandbox: harness.Sandbox, planted: Planted
) -> None:
    """mitmproxy raises on a chunked HTTP/1 body with a trailer section (it logs "mitmproxy
    has crashed!", which at start-up ends the process, and the caller gets nothing). A text
    body in a charset that cannot decode with replacement characters (idna) crashed the
    redaction the same way; it is read as a viewer would read it now, and goes to Unit."""
    url = sandbox.url
    host = urlsplit(url).netloc
    cases = {
        "NotImplementedError: HTTP trailers are not implemented yet.": (
            f"POST {url}/applications HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer unitgw:org\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"3\r\nabc\r\n0\r\nX-Checksum: {TOKEN}\r\n\r\n"
        ),
    }
    for failure, raw in cases.items():
        status, error = json_api_error(answer_to(gateway, raw.encode(), planted=planted))
        assert (status, error["code"]) == (400, "invalid_request"), failure
        assert failure in error["detail"]
    idna = (
        f"POST {url}/applications HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        "Authorization: Bearer unitgw:org\r\nContent-Type: text/plain; charset=idna\r\n"
        f"Content-Length: {len(TOKEN)}\r\n\r\n{TOKEN}"
    )
    status, error = json_api_error(answer_to(gateway, idna.encode(), planted=planted))
    assert status == 415, error  # Unit's answer: it takes JSON only
    output = gateway.process.output()
    assert "mitmproxy has crashed" not in output
    assert output.count("the request could not be handled") == len(cases)
    # The gateway still serves.
    ok = f"GET {url}/cards HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer unitgw:org\r\n"
    answer = answer_to(gateway, (ok + "Connection: close\r\n\r\n").encode(), planted=planted)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert gateway.process.proc is not None and gateway.process.proc.poll() is None
