"""Reviewer r's probes of the changes after fd31c64: connection copies, base64 and grouped
card detection, the text cap, and the answer check."""

from __future__ import annotations

import base64
import gc
import json
import time
import weakref
from typing import Any

import pytest
from mitmproxy.test import tflow

from unit_gateway.config.core import GatewayCore
from unit_gateway.redaction.addon import FlowRedaction
from unit_gateway.redaction.engine import Redactor

KEY = b"test fingerprint key"
TOKEN = "v2.public.eyJyb2xlIjoiY3VzdG9tZXIiLCJ1c2VySWQiOiIxMjMifQ" + "A" * 86
CARD = "4111111111111111"


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(key=KEY)


# --- connections ----------------------------------------------------------------------------


@pytest.mark.parametrize("sni", ["api.s.unit.sh", f"{CARD}.example"])
def test_a_connection_is_freed_with_its_flow(sni: str) -> None:
    """The vault's cache of how a connection is shown must not keep the connection alive:
    an entry that named the connection itself (a clean one) did, for every connection."""
    redaction = FlowRedaction(GatewayCore())
    flow = tflow.tflow(resp=True)
    flow.client_conn.sni = sni
    redaction.conceal(flow)
    redaction.reveal(flow)
    client = weakref.ref(flow.client_conn)
    del flow
    gc.collect()
    assert client() is None, "the vault keeps the connection alive"
    assert not redaction.vault._connections


def test_a_list_mutated_in_place_is_read_again() -> None:
    """The cache compared attribute values by identity only: a list an addon appends a
    secret to is the same list, and the stale clean verdict showed the token."""
    redaction = FlowRedaction(GatewayCore())
    flow = tflow.tflow(resp=True)
    flow.client_conn.alpn_offers = [b"h2"]
    redaction.conceal(flow)
    redaction.reveal(flow)
    flow.client_conn.alpn_offers.append(TOKEN.encode())
    redaction.conceal(flow)
    assert TOKEN.encode() not in flow.client_conn.alpn_offers


# --- base64 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_mime_base64_with_line_breaks(redactor: Redactor, newline: str) -> None:
    """MIME (76 a line) and PEM (64) base64: a card number across two lines was in neither
    line's reading."""
    secret = b"x" * 50 + b"card " + CARD.encode() + b" on file, and more text after it"
    text = base64.encodebytes(secret).decode().replace("\n", newline)  # 76 characters a line
    assert "\n" in text.strip()
    shown = redactor.redact_text(f"attachment:\n{text}end")
    assert shown == f"attachment:\n[redacted:base64]{newline}end", shown


@pytest.mark.parametrize(
    "join",
    [
        pytest.param("\\n", id="escaped line breaks (a JSON string quoted in a log)"),
        pytest.param("\\r\\n", id="escaped CRLF"),
        pytest.param("\n\t", id="indented lines (a folded header)"),
        pytest.param("\r\n ", id="CRLF and a space"),
    ],
)
def test_base64_lines_joined_otherwise(redactor: Redactor, join: str) -> None:
    secret = b"x" * 50 + b"card " + CARD.encode() + b" on file, and more text after it"
    encoded = base64.b64encode(secret).decode()
    text = join.join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert redactor.redact_text(f'body="{text}"') == 'body="[redacted:base64]"'


def test_lines_that_are_not_one_base64_text_are_read_each(redactor: Redactor) -> None:
    encoded = base64.b64encode(b"ssn=123-45-6789").decode()  # 20 characters
    text = f"internationalizations\n{encoded}\nthe end of it all, in words"
    assert redactor.redact_text(text) == (
        "internationalizations\n[redacted:base64]\nthe end of it all, in words"
    )


@pytest.mark.parametrize("prefix", ["/v1/files/", "id_", "ref-", "x", "ab"])
def test_base64_after_a_word(redactor: Redactor, prefix: str) -> None:
    """A run that starts before the base64 (a path, a word joined by _ or -) was decoded off
    its groups of four; one with both alphabets (a path's / and url-safe's -) was skipped."""
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = encode(b"svc:" + TOKEN.encode() + b"?").decode()
        text = f"see {prefix}{encoded} now"
        shown = redactor.redact_text(text)
        assert encoded not in shown, (encode.__name__, shown)


# --- timing ---------------------------------------------------------------------------------

MB = 1 << 20


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("v2.public." + "a" * MB, id="token run"),
        pytest.param("v2.public.%" + "a" * MB, id="token escaped"),
        pytest.param("v2.public.a\\" * (MB // 12), id="token escapes"),
        pytest.param("1234\t" + "\t" * MB + "x", id="tabs"),
        pytest.param("1234 " + " " * MB + "x", id="spaces"),
        pytest.param("1234" + "  1234" * (MB // 6), id="spaced groups"),
        pytest.param("1234,1234," * (MB // 10), id="commas"),
        pytest.param("1234\r\n" * (MB // 6), id="lines"),
        pytest.param("A" * MB, id="one base64 run"),
        pytest.param(("A" * 20 + " ") * (MB // 21), id="many base64 runs"),
        pytest.param(base64.b64encode(base64.b64encode(b"A" * (MB // 2))).decode(), id="nested"),
        pytest.param(("A" * 76 + "\n") * (MB // 77), id="base64 lines"),
        pytest.param(("A" * 75 + "\n") * (MB // 76), id="uneven base64 lines"),
        pytest.param("/a-" * (MB // 3), id="mixed alphabets"),
        pytest.param("eyJ" + "a" * MB, id="jwt head"),
        pytest.param("eyJa." * (MB // 5), id="jwt dots"),
    ],
)
def test_a_megabyte_of_pathological_text_is_fast(redactor: Redactor, text: str) -> None:
    start = time.perf_counter()
    redactor.redact_text(text)
    took = time.perf_counter() - start
    assert took < 1.0, took


# --- the text cap ---------------------------------------------------------------------------


def _multipart(parts: list[bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    body = preamble + b"".join(
        b'--XyZ\r\nContent-Disposition: form-data; name="f%d"\r\n'
        b"Content-Type: text/plain\r\n\r\n%s\r\n" % (i, part)
        for i, part in enumerate(parts)
    )
    return body + b"--XyZ--\r\n" + epilogue


DIGIT_GROUPS = b"1234 " * 100_000  # 500 kB: under the cap alone, about a second to read
WORDS = b"plain words " * 42_000  # 500 kB that redacting leaves as long as it is


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_multipart([WORDS] * 14), id="parts each under the cap"),
        pytest.param(_multipart([b"x"], preamble=DIGIT_GROUPS * 8 + b"\r\n"), id="preamble"),
        pytest.param(_multipart([b"x"], epilogue=DIGIT_GROUPS * 8), id="epilogue"),
        pytest.param(
            b"--XyZ\r\nX-Head: " + DIGIT_GROUPS * 2 + b"\r\n--XyZ--\r\n",
            id="a part of headers",
        ),
    ],
)
def test_multipart_text_is_capped_as_a_whole(redactor: Redactor, body: bytes) -> None:
    """Each part was read (up to the cap each, ~0.7 s a part here: 14 parts took ~10 s on the
    event loop) and the whole then shown as its summary anyway, the cap applying only to the
    reassembled body; a preamble, an epilogue or a header block were read whole."""
    started = time.perf_counter()
    shown = redactor.redact_body(body, "multipart/form-data; boundary=XyZ", None)
    took = time.perf_counter() - started
    assert shown.kind == "binary" and b"bytes of text" in shown.content, shown.content[:200]
    assert took < 4.0, took  # at most about twice the cap is read (~1 MB of digit groups)


def test_a_small_multipart_body_is_still_read(redactor: Redactor) -> None:
    body = _multipart([b"card " + CARD.encode(), b"hello"])
    shown = redactor.redact_body(body, "multipart/form-data; boundary=XyZ", None)
    assert shown.kind == "multipart" and CARD.encode() not in shown.content
    assert b"hello" in shown.content


def test_a_json_string_of_digit_groups_is_read_in_reasonable_time(redactor: Redactor) -> None:
    """JSON is outside MAX_TEXT_READ_BYTES, and max_body_bytes is 8 MiB: a JSON string of
    space-separated 4-digit groups went through card_spans window by window (~1.5 s/MB): 4 MB
    took ~7 s on the event loop, 2 MB ~3.5 s. A run that long is hidden whole (2 MB: ~0.8 s,
    the regex passes over it)."""
    body = json.dumps({"note": "1234 " * (2 * MB // 5)}).encode()
    started = time.perf_counter()
    shown = redactor.redact_body(body, "application/json", None)
    took = time.perf_counter() - started
    assert took < 3.0, took
    assert b"1234 1234" not in shown.content and b"[redacted:digit_run]" in shown.content


# --- body_size_limit --------------------------------------------------------------------------


def test_body_size_limit_defaults_and_an_explicit_value_is_kept() -> None:
    from mitmproxy.test import taddons

    redaction = FlowRedaction(GatewayCore())
    with taddons.context() as tctx:
        tctx.options.add_option("body_size_limit", str | None, None, "as proxyserver has it")
        tctx.master.addons.add(redaction)
        redaction.configure(set(tctx.options.keys()))  # as at start-up
        assert tctx.options.body_size_limit == "32m"
        tctx.configure(redaction, body_size_limit="100m")
        assert tctx.options.body_size_limit == "100m"
        tctx.configure(redaction, body_size_limit=None)  # "none" at runtime: back to 32m
        assert tctx.options.body_size_limit == "32m"


# --- the answer check -----------------------------------------------------------------------


def _guard_response(body: bytes, headers: dict[str, str]) -> Any:
    from mitmproxy import http

    made = http.Response.make(200, b"", {"Content-Type": "application/vnd.api+json"})
    for name, value in headers.items():
        made.headers[name] = value
    made.raw_content = body
    made.headers["Content-Length"] = str(len(body))
    return made


def _unit_document(token: str | None = None) -> bytes:
    attributes: dict[str, Any] = {
        "createdAt": "2024-03-01T12:30:00.000Z",
        "name": "Peter Parker",
        "balance": 1234567,
        "tags": {"ref": "a" * 40, "note": "café \u00e9 50% off, 100%25"},
        "description": "Rent\\u0020March \u2013 see https://example.com/a%20b?x=1",
    }
    if token is not None:
        attributes["token"] = token
        attributes["expiresIn"] = 86400
    return json.dumps(
        {"data": {"type": "customerBearerToken", "id": "1", "attributes": attributes}}, indent=2
    ).encode()


def _paseto(**claims: object) -> str:
    from unit_gateway.unit_api import paseto

    return paseto.encode({"exp": "2099-01-01T00:00:00.000Z", **claims}, b"k" * 32)


@pytest.mark.parametrize("with_token", [False, True])
@pytest.mark.parametrize(
    "encoding",
    ["identity", "gzip", "gzip two members", "deflate", "br", "chunked header"],
)
def test_ordinary_unit_answers_are_not_withheld(encoding: str, with_token: bool) -> None:
    import gzip
    import zlib

    import brotli

    from unit_gateway.tokens.guard import check_response

    token = _paseto(role="customer", customerId="10001") if with_token else None
    body = _unit_document(token)
    headers: dict[str, str] = {}
    if encoding == "gzip":
        body, headers = gzip.compress(body), {"Content-Encoding": "gzip"}
    elif encoding == "gzip two members":
        half = len(body) // 2
        body = gzip.compress(body[:half]) + gzip.compress(body[half:])
        headers = {"Content-Encoding": "gzip"}
    elif encoding == "deflate":
        body, headers = zlib.compress(body), {"Content-Encoding": "deflate"}
    elif encoding == "br":
        body, headers = brotli.compress(body), {"Content-Encoding": "br"}
    elif encoding == "chunked header":
        headers = {"Transfer-Encoding": "chunked"}
    verdict = check_response(_guard_response(body, headers), 1 << 20)
    assert verdict.withheld is None, verdict.withheld
    assert bool(verdict.placeholders) == with_token


def test_gzip_followed_by_a_line_break_is_withheld() -> None:
    """Noted, not a failure: gzip followed by a stray byte (a proxy's \\n) is withheld (502)
    where curl, browsers and urllib3 read the member and drop the rest."""
    import gzip

    from unit_gateway.tokens.guard import check_response

    body = gzip.compress(_unit_document()) + b"\n"
    verdict = check_response(_guard_response(body, {"Content-Encoding": "gzip"}), 1 << 20)
    # (the reason given reads "cannot undo its Content-Encoding within N bytes": not why)
    assert verdict.withheld is not None


# --- a token that goes on past an unseen character ----------------------------------------


@pytest.mark.parametrize("unseen", ["\u200b", "\u00ad", "\u2060", "\ufeff"])
@pytest.mark.parametrize("where", [12, 30, 60])
def test_a_token_with_an_unseen_character_in_its_payload(
    redactor: Redactor, unseen: str, where: int
) -> None:
    """The plain scan cut the token at the unseen character, and the visible reading was of
    the text *after* the plain scan, where the rest of the token has no prefix: the rest
    showed (``[token …]\\u200boiY3VzdG9t…``), though a person reads one token."""
    spelled = TOKEN[:where] + unseen + TOKEN[where:]
    shown = redactor.redact_text(f"x {spelled} y")
    assert TOKEN[where : where + 20] not in shown, shown
    assert shown.startswith("x [token") and shown.endswith("] y"), shown
    # in a body too (the text reading of a JSON string)
    body = json.dumps({"memo": spelled}, ensure_ascii=False).encode()
    result = redactor.redact_body(body, "application/vnd.api+json", None)
    assert TOKEN[where : where + 20].encode() not in result.content, result.content


def test_a_token_in_a_header_before_a_long_header_name_is_not_withheld() -> None:
    """_SPLIT was searched in the head blob, where a header's value and the next header's
    name are joined by a line break: a token as a value, followed by
    Access-Control-Allow-Credentials (32 characters), read as a token split by white space,
    and the answer was withheld (502) instead of the token being replaced."""
    from unit_gateway.tokens.guard import check_response

    token = _paseto(role="customer", customerId="10001")
    response = _guard_response(b"{}", {})
    response.headers["X-Customer-Token"] = token
    response.headers["Access-Control-Allow-Credentials"] = "true"
    verdict = check_response(response, 1 << 20)
    assert verdict.withheld is None, verdict.withheld
    assert verdict.placeholders == ["unitgw:customer:10001"]


@pytest.mark.parametrize("where", ["sni", "comment"])
def test_a_concealed_flow_is_freed(where: str) -> None:
    """The vault's records are weak by flow, but an edit whose holder is the flow itself (its
    connection shown as a copy, its comment) made the record hold its key: every such flow
    stayed alive after mitmproxy (and the view) let it go. FlowVault.forget is never called."""
    redaction = FlowRedaction(GatewayCore())
    flow = tflow.tflow(resp=True)
    if where == "sni":
        flow.client_conn.sni = f"{CARD}.example"
    else:
        flow.comment = f"card {CARD}"
    redaction.conceal(flow)
    assert CARD not in repr(flow.get_state())
    alive = weakref.ref(flow)
    del flow
    gc.collect()
    assert alive() is None, "the vault keeps the concealed flow alive"
