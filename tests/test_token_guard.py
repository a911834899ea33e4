"""The answer check for placeholder callers, without a proxy: every Unit token in an answer
becomes the placeholder its claims name, and an answer that cannot be checked, or holds a
token in a form the check does not rewrite, is withheld."""

from __future__ import annotations

import base64
import gzip
import json

import pytest
from mitmproxy import http

from unit_gateway.tokens.guard import (
    MARK,
    WITHHELD,
    check_response,
    hidden_token,
    placeholder_for,
    replace_tokens,
)
from unit_gateway.unit_api import paseto

KEY = b"k" * 32
LIMIT = 1 << 16


def token(**claims: object) -> str:
    return paseto.encode({"exp": "2099-01-01T00:00:00.000Z", **claims}, KEY)


CUSTOMER = token(role="customer", customerId="10001")
CARDHOLDER = token(role="cardholder", cardId="30001")
ORG = token(role="org", userId="1")


def response(
    body: bytes = b"{}",
    headers: dict[str, str] | None = None,
    *,
    reason: bytes = b"OK",
    trailers: list[tuple[bytes, bytes]] | None = None,
) -> http.Response:
    # As it came from Unit: make() would encode the body by its Content-Encoding.
    made = http.Response.make(200, b"", {"Content-Type": "application/vnd.api+json"})
    for name, value in (headers or {}).items():
        made.headers[name] = value
    made.raw_content = body
    made.headers["Content-Length"] = str(len(body))
    made.data.reason = reason
    if trailers is not None:
        made.trailers = http.Headers(trailers)
    return made


@pytest.mark.parametrize(
    ("value", "placeholder"),
    [
        (ORG, "unitgw:org"),
        (CUSTOMER, "unitgw:customer:10001"),
        (CARDHOLDER, "unitgw:cardholder:30001"),
        (token(role="customer"), WITHHELD),  # no id
        (token(role="customer", customerId="a/b"), WITHHELD),  # no id a placeholder takes
        (token(role="customer", customerId=10001), WITHHELD),
        (token(role="cardholder", customerId="10001"), WITHHELD),
        (token(role="admin"), WITHHELD),
        ("v2.public.", WITHHELD),
        ("v2.public.bm90IGpzb24", WITHHELD),
    ],
)
def test_placeholder_of_a_token(value: str, placeholder: str) -> None:
    assert placeholder_for(value.encode()) == placeholder


def test_every_token_is_replaced() -> None:
    used: list[str] = []
    data = f'["{CUSTOMER}", "x{ORG}.footer y", "v2.public.", "{CARDHOLDER}"]'.encode()
    replaced = replace_tokens(data, used)
    assert MARK not in replaced
    assert replaced == (
        b'["unitgw:customer:10001", "xunitgw:org y", "unitgw:token-withheld", '
        b'"unitgw:cardholder:30001"]'
    )
    assert used == ["unitgw:customer:10001", "unitgw:org", WITHHELD, "unitgw:cardholder:30001"]


@pytest.mark.parametrize(
    ("data", "content_type", "how"),
    [
        (b'{"t": "v2\\u002epublic\\u002eabc"}', None, "in JSON \\u escapes"),
        (b'{"t": "\\u0076\\u0032.public.abc"}', None, "in JSON \\u escapes"),
        (b"t=v2%2Epublic%2eabc", None, "percent-encoded"),
        (b"t=%76%32.public.abc", None, "percent-encoded"),
        ('{"t": "v2.public.abc"}'.encode("utf-16-le"), None, "in UTF-16 or UTF-32"),
        ('{"t": "v2.public.abc"}'.encode("utf-16-be"), None, "in UTF-16 or UTF-32"),
        ('{"t": "v2.public.abc"}'.encode("utf-32"), None, "in UTF-16 or UTF-32"),
        (
            '{"t": "v2.public.abc"}'.encode("cp037"),
            "application/json; charset=cp037",
            "in the charset its Content-Type declares",
        ),
        (b"{}", "application/json; charset=x-unheard-of", "in a charset the gateway does not know"),
        (
            b'{"t": "+AHY-2.public.abc"}',
            "application/json; charset=utf-7",
            "in the charset its Content-Type declares",
        ),
        (b'{"t": "%s"}' % base64.b64encode(b"v2.public.abcdefgh"), None, "base64-encoded"),
        (b"id_%s" % base64.urlsafe_b64encode(b"x v2.public.abcdefgh"), None, "base64-encoded"),
    ],
)
def test_tokens_spelled_otherwise_are_found(
    data: bytes, content_type: str | None, how: str
) -> None:
    found = hidden_token(data, content_type)
    assert found is not None and found.startswith(how)


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b'{"name": "Ren\\u00e9e", "rate": "5%", "path": "a\\\\b"}', None),
        (b"50% of v2 public", None),
        ("plain utf-16 text".encode("utf-16"), None),
        (b'{"t": "1"}', "application/json; charset=utf-8"),
        (b'{"t": "1"}', 'application/json; charset="ISO-8859-1"'),
        (b'{"digest": "%s"}' % base64.b64encode(b"an ordinary long value here"), None),
    ],
)
def test_ordinary_data_holds_no_hidden_token(data: bytes, content_type: str | None) -> None:
    assert hidden_token(data, content_type) is None


def test_an_ordinary_answer_goes_as_it_is() -> None:
    verdict = check_response(response(b'{"data": {"id": "1"}}'), LIMIT)
    assert verdict.replacement is None and verdict.withheld is None
    assert verdict.placeholders == []


def test_tokens_in_body_headers_reason_and_trailers_become_placeholders() -> None:
    original = response(
        json.dumps({"data": {"token": CUSTOMER}}).encode(),
        {"X-Debug": f"Bearer {CARDHOLDER}"},
        reason=f"OK {ORG}".encode(),
        trailers=[(b"x-token", CUSTOMER.encode())],
    )
    verdict = check_response(original, LIMIT)
    assert verdict.withheld is None
    replaced = verdict.replacement
    assert replaced is not None and replaced is not original
    assert json.loads(replaced.content or b"") == {"data": {"token": "unitgw:customer:10001"}}
    assert replaced.headers["X-Debug"] == "Bearer unitgw:cardholder:30001"
    assert replaced.headers["Content-Length"] == str(len(replaced.raw_content or b""))
    assert replaced.data.reason == b"OK unitgw:org"
    assert replaced.trailers is not None
    assert replaced.trailers["x-token"] == "unitgw:customer:10001"
    assert sorted(verdict.placeholders) == [
        "unitgw:cardholder:30001",
        "unitgw:customer:10001",
        "unitgw:customer:10001",
        "unitgw:org",
    ]
    # The answer checked is left alone: the caller's copy is the replacement.
    assert CUSTOMER.encode() in (original.raw_content or b"")


def test_a_compressed_body_is_read_and_sent_decoded() -> None:
    body = json.dumps({"token": CUSTOMER}).encode()
    verdict = check_response(response(gzip.compress(body), {"Content-Encoding": "gzip"}), LIMIT)
    assert verdict.replacement is not None
    assert "content-encoding" not in verdict.replacement.headers
    assert json.loads(verdict.replacement.raw_content or b"") == {"token": "unitgw:customer:10001"}
    clean = check_response(response(gzip.compress(b"{}"), {"Content-Encoding": "gzip"}), LIMIT)
    assert clean.replacement is None and clean.withheld is None


def test_a_body_needing_no_decoding_is_searched_past_the_limit() -> None:
    body = b'{"x": "' + b"a" * (LIMIT * 4) + f'", "t": "{CUSTOMER}"}}'.encode()
    verdict = check_response(response(body), LIMIT)
    assert verdict.replacement is not None
    assert MARK not in (verdict.replacement.raw_content or b"")


@pytest.mark.parametrize(
    ("made", "reason"),
    [
        (
            response(CUSTOMER.encode(), {"Content-Encoding": "x-custom"}),
            "cannot undo its Content-Encoding",
        ),
        (
            response(gzip.compress(b"a" * (LIMIT + 1)), {"Content-Encoding": "gzip"}),
            "cannot undo its Content-Encoding within 65536 bytes",
        ),
        (response(b"\x1f\x8b broken", {"Content-Encoding": "gzip"}), "cannot undo"),
        (response(headers={f"X-{CUSTOMER}": "1"}), "a header name holds a Unit token"),
        (
            response(gzip.compress(CUSTOMER.encode()), {"Transfer-Encoding": "gzip, chunked"}),
            "a Transfer-Encoding other than chunked",
        ),
        (
            response(gzip.compress(b"{}") + CUSTOMER.encode(), {"Content-Encoding": "gzip"}),
            "cannot undo its Content-Encoding",
        ),
        (
            response(headers={"X-Token": "v2.public.\r\n " + CUSTOMER.split(".", 2)[2]}),
            "a header folded over lines holds a Unit token",
        ),
        (
            # As aiohttp (the resend after a 401) passes a folded line on: joined by a space.
            response(headers={"X-Token": "v2.public. " + CUSTOMER.split(".", 2)[2]}),
            "its head holds a Unit token split by white space",
        ),
        (
            response(b'{"t": "v2.public.\n' + CUSTOMER.encode()[10:] + b'"}'),
            "its body holds a Unit token split by white space",
        ),
        (
            response(b'{"t": "v2.public.\\u0065' + CUSTOMER.encode()[11:] + b'"}'),
            "its body holds a Unit token in JSON \\u escapes",
        ),
        (
            response(headers={"Link": "<https://x/?t=v2.public.%65" + CUSTOMER[11:] + ">"}),
            "its head holds a Unit token percent-encoded",
        ),
        (
            response(headers={"Link": f"<https://x/?t={CUSTOMER.replace('.', '%2E')}>"}),
            "its head holds a Unit token percent-encoded",
        ),
        (
            response(f'{{"t": "{CUSTOMER}", "u": "v2\\u002epublic\\u002eabc"}}'.encode()),
            "its body holds a Unit token in JSON \\u escapes",
        ),
        (
            response(f'{{"t": "{CUSTOMER}"}}'.encode("utf-16-le")),
            "its body holds a Unit token in UTF-16 or UTF-32",
        ),
    ],
)
def test_what_cannot_be_checked_or_rewritten_is_withheld(made: http.Response, reason: str) -> None:
    verdict = check_response(made, LIMIT)
    assert verdict.withheld is not None and reason in verdict.withheld
    assert verdict.replacement is None
    assert MARK not in verdict.withheld.encode()


def test_withheld_reasons_never_quote_unit() -> None:
    verdict = check_response(response(b"x", {"Content-Encoding": CUSTOMER}), LIMIT)
    assert verdict.withheld is not None and CUSTOMER not in verdict.withheld
