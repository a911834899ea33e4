"""Reviewer r's probes of the changes after fd31c64: connection copies, base64 and grouped
card detection, the text cap, and the answer check."""

from __future__ import annotations

import base64
import gc
import time
import weakref

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
