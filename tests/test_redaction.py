"""The redaction engine: every default field at every depth, path rules, headers and
fingerprints, detectors, every compression, forms, multipart, unparseable bodies, binary
summaries, a 10 MB body, and a property test that plants secrets in random JSON:API documents
and random encodings and requires that none survives."""

from __future__ import annotations

import base64
import codecs
import gzip
import html
import json
import random
import re
import time
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import brotli
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from unit_gateway.config.redaction import (
    DEFAULT_FIELDS,
    DEFAULT_MAX_BODY_BYTES,
    FINGERPRINTED_FIELDS,
    DetectorSettings,
    RedactionSettings,
)
from unit_gateway.redaction.engine import MARKER, Redactor
from unit_gateway.redaction.rules import card_spans, luhn_valid
from unit_gateway.testing.leakscan import encoded_forms

#: unit-api.md, "Sensitive data that must never reach a log", written out independently of the
#: defaults so that dropping a default fails these tests.
UNIT_API_SENSITIVE_FIELDS = [
    *("token", "verificationToken", "verificationCode", "jwtToken", "plaidProcessorToken"),
    *("authToken", "signedNonce", "payload"),
    *("pan", "cvv2", "pin", "expirationDate"),
    *("ssn", "passport", "matriculaConsular", "nationality", "dateOfBirth", "ein", "fullName"),
    *("address", "shippingAddress", "operatingAddress", "phone", "email", "ip"),
    *("deviceFingerprints", "jwtSubject"),
    *("accountNumber", "routingNumber", "secondaryAccountNumber", "counterpartyRoutingNumber"),
    "senderAccountNumber",
]
KEY = b"test fingerprint key"
JSONAPI = "application/vnd.api+json"
SECRET = "Sécret Välue QX-77"  # no detector would find this: only name rules can
TOKEN = "v2.public.eyJyb2xlIjoiY3VzdG9tZXIiLCJ1c2VySWQiOiIxMjMifQ" + "A" * 86
JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".POstGetfAytaZS82wHcjoTyoqhMyxXiWdR7Nhxx"
)


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(key=KEY)


def forms_of(secret: str) -> dict[str, bytes]:
    """The secret as it would appear raw, JSON-escaped or URL/form-encoded."""
    return {
        name: form
        for name, form in encoded_forms(secret).items()
        if name.startswith(("raw", "url-encoded", "form-encoded", "json-escaped"))
    }


def assert_absent(output: bytes | str, *secrets: str) -> None:
    data = output.encode() if isinstance(output, str) else output
    for secret in secrets:
        for name, form in forms_of(secret).items():
            assert form not in data, f"secret of length {len(secret)} survives ({name})"


def body_json(redactor: Redactor, document: Any, **kwargs: Any) -> tuple[Any, dict[str, int]]:
    result = redactor.redact_body(json.dumps(document).encode(), JSONAPI, None, **kwargs)
    assert result.kind == "json"
    return json.loads(result.content), dict(result.counts)


def at_depth(depth: int, leaf: dict[str, Any]) -> dict[str, Any]:
    """A JSON:API-shaped document with ``leaf``'s keys ``depth`` objects down."""
    if depth == 0:
        return {**leaf, "jsonapi": {"version": "1.0"}}
    if depth == 1:
        return {"data": {"type": "customer", "id": "1", **leaf}}
    if depth == 2:
        return {"data": {"type": "individualApplication", "id": "7", "attributes": leaf}}
    if depth == 3:
        return {"data": [{"type": "account", "id": "3", "attributes": {"counterparty": leaf}}]}
    return {"included": [{"attributes": {"beneficialOwners": [{"x": {"y": leaf}}]}}]}


def marker_for(name: str, value: str, redactor: Redactor) -> str:
    if name.lower() in FINGERPRINTED_FIELDS:
        return redactor.fingerprint(value)
    return f"[redacted:{name}]"


def find_value(document: Any, key: str) -> Any:
    """The value under ``key`` wherever it is (the first one found)."""
    if isinstance(document, dict):
        for k, v in document.items():
            if k == key:
                return v
            if (found := find_value(v, key)) is not None:
                return found
    if isinstance(document, list):
        for item in document:
            if (found := find_value(item, key)) is not None:
                return found
    return None


# --- JSON fields by name -------------------------------------------------------------------


@pytest.mark.parametrize("depth", range(5))
@pytest.mark.parametrize("name", UNIT_API_SENSITIVE_FIELDS)
def test_default_field_redacted_at_every_depth(redactor: Redactor, name: str, depth: int) -> None:
    document = at_depth(depth, {name: SECRET, "status": "Approved"})
    result, counts = body_json(redactor, document)
    assert find_value(result, name) == marker_for(name, SECRET, redactor)
    assert find_value(result, "status") == "Approved"
    assert counts == {f"field:{name}": 1}
    assert_absent(json.dumps(result, ensure_ascii=False), SECRET)


@pytest.mark.parametrize(
    "value",
    [
        {"street": "1 Secret Lane", "city": "Springfield", "postalCode": "94105"},
        {"first": "Peter", "last": "Parker"},
        [{"type": "iovation", "value": "Q-device-print"}],
        123456789,
        12.5,
        True,
    ],
    ids=["address", "fullName", "array", "int", "float", "bool"],
)
def test_value_under_sensitive_key_is_replaced_whole(redactor: Redactor, value: Any) -> None:
    result, counts = body_json(redactor, at_depth(2, {"address": value}))
    assert find_value(result, "address") == "[redacted:address]"
    assert counts == {"field:address": 1}


def test_keys_match_case_insensitively(redactor: Redactor) -> None:
    attributes = {"SSN": SECRET, "Pan": SECRET + "1", "ACCOUNTNUMBER": SECRET + "2"}
    result, counts = body_json(redactor, at_depth(2, attributes))
    assert result["data"]["attributes"] == {
        "SSN": "[redacted:ssn]",
        "Pan": "[redacted:pan]",
        "ACCOUNTNUMBER": "[redacted:accountNumber]",
    }
    assert counts == {"field:ssn": 1, "field:pan": 1, "field:accountNumber": 1}


def test_arrays_of_resources(redactor: Redactor) -> None:
    document = {
        "data": [
            {"type": "card", "id": str(i), "attributes": {"pan": f"{SECRET}{i}", "last4": "1111"}}
            for i in range(20)
        ]
    }
    result, counts = body_json(redactor, document)
    assert [item["attributes"]["pan"] for item in result["data"]] == ["[redacted:pan]"] * 20
    assert [item["attributes"]["last4"] for item in result["data"]] == ["1111"] * 20
    assert counts == {"field:pan": 20}


def test_null_and_empty_values_stay(redactor: Redactor) -> None:
    result, counts = body_json(redactor, at_depth(2, {"ssn": None, "email": ""}))
    assert result["data"]["attributes"] == {"ssn": None, "email": ""}
    assert counts == {}


def test_tokens_in_token_fields_are_fingerprinted(redactor: Redactor) -> None:
    document = {"data": {"type": "customerBearerToken", "attributes": {"token": TOKEN}}}
    result, counts = body_json(redactor, document)
    assert result["data"]["attributes"]["token"] == redactor.fingerprint(TOKEN)
    # the same token later in a request header shows the same fingerprint
    headers = redactor.redact_headers([("Authorization", f"Bearer {TOKEN}")])
    assert headers == [("Authorization", f"Bearer {redactor.fingerprint(TOKEN)}")]
    assert counts == {"field:token": 1}


def test_unrelated_structure_is_kept(redactor: Redactor) -> None:
    document = {
        "data": {
            "type": "depositAccount",
            "id": "42",
            "attributes": {"balance": 10000, "hold": 0.5, "closed": False, "tags": {"a": "b"}},
            "relationships": {"customer": {"data": {"type": "customer", "id": "7"}}},
        },
        "meta": {"pagination": {"total": 1}},
    }
    result, counts = body_json(redactor, document)
    assert result == document
    assert counts == {}


def test_configured_fields_add_to_defaults() -> None:
    redactor = Redactor(RedactionSettings(fields=["favouriteColour"]), key=KEY)
    result, _ = body_json(redactor, at_depth(2, {"favouriteColour": "Q", "ssn": "x"}))
    assert result["data"]["attributes"] == {
        "favouriteColour": "[redacted:favouriteColour]",
        "ssn": "[redacted:ssn]",
    }
    assert "field:favouriteColour" in redactor.rule_names


def test_counterparty_account_number(redactor: Redactor) -> None:
    document = {"data": {"attributes": {"counterparty": {"accountNumber": SECRET, "name": "x"}}}}
    result, _ = body_json(redactor, document)
    assert result["data"]["attributes"]["counterparty"] == {
        "accountNumber": "[redacted:accountNumber]",
        "name": "x",
    }


def test_count_names_are_bounded(redactor: Redactor) -> None:
    document = {"weirdKey": "4111111111111111", "ssn": "x", TOKEN: "value"}
    _, counts = body_json(redactor, document)
    assert set(counts) <= redactor.rule_names
    assert counts == {"detector:card_number": 1, "field:ssn": 1, "detector:unit_token": 1}


def test_secrets_in_keys_are_redacted_without_losing_values(redactor: Redactor) -> None:
    result, _ = body_json(redactor, {"4111111111111111": "a", "4012888888881881": "b"})
    assert result == {"[redacted:card_number]": "a", "[redacted:card_number] #2": "b"}


def test_json_inside_a_json_string(redactor: Redactor) -> None:
    inner = json.dumps({"data": {"attributes": {"ssn": "123456789", "name": "ok"}}})
    result, counts = body_json(redactor, {"webhook": {"payloadText": inner}})
    assert json.loads(result["webhook"]["payloadText"]) == {
        "data": {"attributes": {"ssn": "[redacted:ssn]", "name": "ok"}}
    }
    assert counts == {"field:ssn": 1}


def test_header_names_as_json_keys(redactor: Redactor) -> None:
    document = {
        "request": {
            "headers": {"Authorization": f"Bearer {'Q' * 20}", "Cookie": "s=Q1", "X-Id": "7"},
            "cookie": {"session": "Q2"},
        }
    }
    result, counts = body_json(redactor, document)
    assert result == {
        "request": {
            "headers": {
                "Authorization": f"Bearer {redactor.fingerprint('Q' * 20)}",
                "Cookie": f"s={redactor.fingerprint('Q1')}",
                "X-Id": "7",
            },
            "cookie": "[redacted:cookie]",
        }
    }
    assert counts == {"header": 3}


def test_inputs_are_not_mutated(redactor: Redactor) -> None:
    headers = [("Authorization", "Bearer abc"), ("X-Note", "4111111111111111")]
    before = list(headers)
    redactor.redact_headers(headers)
    assert headers == before


def test_marker_lookalikes_are_not_trusted(redactor: Redactor) -> None:
    document = {"fullName": "[redacted:Peter Parker]", "token": "[redacted:v2.public.x]"}
    result, counts = body_json(redactor, document)
    assert result == {
        "fullName": "[redacted:fullName]",
        "token": redactor.fingerprint("[redacted:v2.public.x]"),
    }
    assert counts == {"field:fullName": 1, "field:token": 1}


def test_redacting_twice_changes_nothing_more(redactor: Redactor) -> None:
    document = {"data": {"attributes": {"token": TOKEN, "ssn": 1, "note": f"jwt {JWT}"}}}
    once = redactor.redact_body(json.dumps(document).encode(), JSONAPI, None)
    twice = redactor.redact_body(once.content, JSONAPI, None)
    assert twice.content == once.content
    assert twice.counts == {}


# --- JSONPath-like rules -------------------------------------------------------------------


def path_redactor(*paths: str) -> Redactor:
    return Redactor(RedactionSettings(paths=list(paths)), key=KEY)


def test_path_rule_redacts_only_its_path() -> None:
    redactor = path_redactor("data.attributes.tags.secret")
    document = {
        "data": {"attributes": {"tags": {"secret": "Q1", "other": "v"}, "secret": "kept"}},
        "included": [{"attributes": {"tags": {"secret": "kept too"}}}],
    }
    result, counts = body_json(redactor, document)
    assert result["data"]["attributes"] == {
        "tags": {"secret": "[redacted:secret]", "other": "v"},
        "secret": "kept",
    }
    assert result["included"] == document["included"]
    assert counts == {"path": 1}


def test_path_rule_with_array_wildcard_and_index() -> None:
    redactor = path_redactor("data[*].attributes.note", "included[1].attributes.memo")
    document = {
        "data": [{"attributes": {"note": "Q1"}}, {"attributes": {"note": {"deep": "Q2"}}}],
        "included": [{"attributes": {"memo": "kept"}}, {"attributes": {"memo": "Q3"}}],
    }
    result, counts = body_json(redactor, document)
    assert [item["attributes"]["note"] for item in result["data"]] == ["[redacted:note]"] * 2
    assert [item["attributes"]["memo"] for item in result["included"]] == [
        "kept",
        "[redacted:memo]",
    ]
    assert counts == {"path": 3}


def test_path_rule_looks_through_arrays_and_ignores_case() -> None:
    redactor = path_redactor("$.Data.Attributes.Note")
    result, _ = body_json(redactor, {"data": [{"attributes": {"note": "Q"}}]})
    assert result == {"data": [{"attributes": {"note": "[redacted:Note]"}}]}


def test_floating_path_rule_and_wildcard() -> None:
    redactor = path_redactor("..tags.*")
    document = {"a": {"b": [{"tags": {"x": "Q1", "y": {"z": "Q2"}}}]}, "tags": {"k": "Q3"}}
    result, counts = body_json(redactor, document)
    assert result == {
        "a": {"b": [{"tags": {"x": "[redacted:path]", "y": "[redacted:path]"}}]},
        "tags": {"k": "[redacted:path]"},
    }
    assert counts == {"path": 3}


@pytest.mark.parametrize("bad", ["", "data..x", "data[", "data[x]", "a b"])
def test_bad_path_rules_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError) as error:
        RedactionSettings(paths=[bad])
    assert error.value.errors()[0]["loc"] == ("paths", 0)


# --- settings ------------------------------------------------------------------------------


def test_settings_are_strict_and_frozen() -> None:
    with pytest.raises(ValidationError):
        RedactionSettings.model_validate({"feilds": ["x"]})
    with pytest.raises(ValidationError):
        RedactionSettings.model_validate({"detectors": {"card_number": True}})
    with pytest.raises(ValidationError):
        RedactionSettings(headers=["Bad Header"])
    with pytest.raises(ValidationError):
        RedactionSettings(binary_summary_routes=["statements/*/pdf"])
    with pytest.raises(ValidationError):
        RedactionSettings(binary_summary_content_types=["pdf"])
    defaults = RedactionSettings()
    assert defaults.detectors == DetectorSettings(
        card_numbers=True, ssn=True, unit_tokens=True, jwts=True, ssn_bare_digits=False
    )
    with pytest.raises(ValidationError):
        defaults.fields = ["x"]  # type: ignore[misc]


# --- headers and fingerprints --------------------------------------------------------------


def test_authorization_keeps_scheme_and_fingerprints_token(redactor: Redactor) -> None:
    counts: Counter[str] = Counter()
    result = redactor.redact_headers(
        [
            ("Authorization", f"Bearer {TOKEN}"),
            ("proxy-authorization", "Basic dXNlcjpwYXNzd29yZA=="),
            ("Authorization", "opaque-secret-without-scheme"),
            ("Content-Type", JSONAPI),
        ],
        counts=counts,
    )
    assert result == [
        ("Authorization", f"Bearer {redactor.fingerprint(TOKEN)}"),
        ("proxy-authorization", f"Basic {redactor.fingerprint('dXNlcjpwYXNzd29yZA==')}"),
        ("Authorization", redactor.fingerprint("opaque-secret-without-scheme")),
        ("Content-Type", JSONAPI),
    ]
    assert counts == {"header": 3}


@pytest.mark.parametrize(
    "placeholder", ["unitgw:org", "unitgw:customer:1001", "unitgw:cardholder:card-7"]
)
def test_placeholders_stay_visible(redactor: Redactor, placeholder: str) -> None:
    counts: Counter[str] = Counter()
    result = redactor.redact_headers([("Authorization", f"Bearer {placeholder}")], counts=counts)
    assert result == [("Authorization", f"Bearer {placeholder}")]
    assert counts == {}


def test_a_placeholder_lookalike_hiding_a_card_is_not_kept(redactor: Redactor) -> None:
    (result,) = redactor.redact_headers([("Authorization", "Bearer unitgw:customer:x y")])
    assert result[1].startswith("Bearer [token …")
    (result,) = redactor.redact_headers(
        [("Authorization", "Bearer unitgw:customer:4111111111111111")]
    )
    assert result[1] == "Bearer unitgw:customer:[redacted:card_number]"


def test_cookies(redactor: Redactor) -> None:
    result = redactor.redact_headers(
        [
            ("Cookie", "session=Qs3cr3t; theme=dark"),
            ("Set-Cookie", "session=Qs3cr3t; Path=/; HttpOnly; Secure"),
        ]
    )
    fingerprint = redactor.fingerprint("Qs3cr3t")
    assert result == [
        ("Cookie", f"session={fingerprint}; theme={redactor.fingerprint('dark')}"),
        ("Set-Cookie", f"session={fingerprint}; Path=/; HttpOnly; Secure"),
    ]


def test_configured_and_other_headers() -> None:
    redactor = Redactor(RedactionSettings(headers=["X-Api-Key"]), key=KEY)
    result = redactor.redact_headers(
        [
            ("x-api-key", "Qkey123456"),
            ("X-Debug", f"card 4111 1111 1111 1111 token {TOKEN}"),
            ("Location", "https://h/x?ssn=123456789&page=2"),
            ("Accept", "application/vnd.api+json"),
        ]
    )
    assert result == [
        ("x-api-key", redactor.fingerprint("Qkey123456")),
        ("X-Debug", f"card [redacted:card_number] token {redactor.fingerprint(TOKEN)}"),
        ("Location", "https://h/x?ssn=[redacted:ssn]&page=2"),
        ("Accept", "application/vnd.api+json"),
    ]


def sample_tokens(count: int) -> Iterator[str]:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rng = random.Random(20240601)
    for _ in range(count):
        yield "v2.public." + "".join(rng.choice(alphabet) for _ in range(rng.randint(16, 200)))


def test_fingerprints_are_stable_distinct_and_opaque() -> None:
    redactor = Redactor(key=KEY)
    tokens = list(sample_tokens(300))
    fingerprints = [redactor.fingerprint(token) for token in tokens]
    assert len(set(fingerprints)) == len(tokens)
    assert fingerprints == [Redactor(key=KEY).fingerprint(token) for token in tokens]
    for token, fingerprint in zip(tokens, fingerprints, strict=True):
        assert MARKER.fullmatch(fingerprint)
        assert not any(token[i : i + 6] in fingerprint for i in range(len(token) - 5))
    # another key, other fingerprints; no key, one random key per process
    assert Redactor(key=b"other").fingerprint(tokens[0]) != fingerprints[0]
    assert Redactor().fingerprint(tokens[0]) == Redactor().fingerprint(tokens[0])
    assert Redactor().fingerprint(tokens[0]) != fingerprints[0]


# --- detectors -----------------------------------------------------------------------------

CARDS = [
    "4111111111111111",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "5555555555554444",
    "378282246310005",  # 15 digits (Amex)
    "3782 822463 10005",
    "6011111111111117",
    "4222222222222",  # 13 digits
    "6304000000000000018",  # 19 digits
]
NOT_CARDS = [
    "4111111111111112",  # Luhn fails
    "411111111113",  # Luhn passes, 12 digits
    "12345678901234567890",  # a 20-digit id
    "41111111111111110000",  # a 20-digit id that starts with a valid PAN
    "94111111111111111",  # 17 digits, Luhn fails; the PAN inside is part of a longer run
    "2024-01-15 10:00:00",
    "+1 (555) 123-4567",
    "1000000 2000000",
    "ref 10001 10002 10003",
]


@pytest.mark.parametrize("card", CARDS)
def test_card_numbers_in_free_text(redactor: Redactor, card: str) -> None:
    counts: Counter[str] = Counter()
    result = redactor.redact_text(f"charged card {card}, thanks", counts=counts)
    assert result == "charged card [redacted:card_number], thanks"
    assert counts == {"detector:card_number": 1}


@pytest.mark.parametrize("text", NOT_CARDS)
def test_digit_runs_that_are_not_cards(redactor: Redactor, text: str) -> None:
    assert redactor.redact_text(f"value {text} end") == f"value {text} end"


def test_long_runs_with_separators_still_find_the_card(redactor: Redactor) -> None:
    result = redactor.redact_text("4111 1111 1111 1111 2025 and 12 5555555555554444")
    assert result == "[redacted:card_number] 2025 and 12 [redacted:card_number]"


def test_luhn_and_card_spans() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert card_spans("4111111111111111") == [(0, 16)]
    assert card_spans("12345678901234567890") == []
    # a number beside a card: every Luhn-valid window goes, so no group of the card is left
    assert card_spans("12 4111 1111 1111 1111") == [(3, 22)]
    assert card_spans("4111 1111 1111 1111 2025") == [(0, 19)]
    # two cards in one run where a window across both also passes Luhn: one span
    assert card_spans("4111 1111 1111 1111 4012 8888 8888 1881") == [(0, 39)]
    assert card_spans("4111111111111111 12 4012888888881881") == [(0, 16), (20, 36)]


def test_ssn_detector(redactor: Redactor) -> None:
    assert redactor.redact_text("ssn is 123-45-6789.") == "ssn is [redacted:ssn]."
    assert redactor.redact_text("ids 1123-45-6789 123-45-67890") == "ids 1123-45-6789 123-45-67890"
    # a bare 9-digit number is an id far more often than an SSN: only with the opt-in rule
    assert redactor.redact_text("id 123456789") == "id 123456789"
    strict = Redactor(RedactionSettings(detectors=DetectorSettings(ssn_bare_digits=True)))
    assert strict.redact_text("id 123456789 x") == "id [redacted:ssn] x"
    assert strict.redact_text("id 1234567890") == "id 1234567890"


def test_token_and_jwt_detectors(redactor: Redactor) -> None:
    counts: Counter[str] = Counter()
    text = f"customer token {TOKEN} and jwt {JWT}."
    result = redactor.redact_text(text, counts=counts)
    assert result == (
        f"customer token {redactor.fingerprint(TOKEN)} and jwt {redactor.fingerprint(JWT)}."
    )
    assert counts == {"detector:unit_token": 1, "detector:jwt": 1}


def test_detectors_can_be_switched_off() -> None:
    off = DetectorSettings(card_numbers=False, ssn=False, unit_tokens=False, jwts=False)
    redactor = Redactor(RedactionSettings(detectors=off))
    text = f"4111111111111111 123-45-6789 {TOKEN} {JWT}"
    assert redactor.redact_text(text) == text


def test_detectors_in_numbers_and_long_ids(redactor: Redactor) -> None:
    document = {"n": 4111111111111111, "f": 4111111111111111.0, "id": 12345678901234567890}
    result, counts = body_json(redactor, document)
    assert result == {
        "n": "[redacted:card_number]",
        "f": "[redacted:card_number].0",
        "id": 12345678901234567890,
    }
    assert counts == {"detector:card_number": 2}


def test_text_key_rules(redactor: Redactor) -> None:
    line = (
        'error {"pan": "4111", "cvv2": 123, "address": {"street": "x]}", "c": [1]}, "ok": 1} '
        "{'ssn': 'Q1'} verificationCode=000001&x=1 email: Q@example.com\n"
        'escaped {\\"pan\\":\\"Q2\\"} Authorization: Bearer abc.def card[pan]=Q3'
    )
    assert redactor.redact_text(line) == (
        'error {"pan": "[redacted:pan]", "cvv2": [redacted:cvv2], "address": '
        '"[redacted:address]", "ok": 1} '
        "{'ssn': '[redacted:ssn]'} verificationCode=[redacted:verificationCode]&x=1 "
        "email: [redacted:email]\n"
        'escaped {\\"pan\\":\\"[redacted:pan]\\"} '
        f"Authorization: Bearer {redactor.fingerprint('abc.def')} card[pan]=[redacted:pan]"
    )


def test_redact_text_twice_changes_nothing_more(redactor: Redactor) -> None:
    line = (
        f"Authorization: Bearer {TOKEN} Cookie: a=1; b=2\n"
        'body {"pan": "4111111111111111", "address": {"a": 1}, "cookie": {"x": 1}} '
        "ssn=123-45-6789 email: x@y.z"
    )
    once = redactor.redact_text(line)
    counts: Counter[str] = Counter()
    assert redactor.redact_text(once, counts=counts) == once
    assert counts == {}


# --- query strings and URLs ----------------------------------------------------------------


def test_query_strings(redactor: Redactor) -> None:
    counts: Counter[str] = Counter()
    query = (
        "filter[email]=peter%40example.com&page[limit]=10&cursor=abc&access_token=Qtok"
        "&note=card+4111+1111+1111+1111&n=%34111111111111111&ssn&filter[since]=2024-01-01"
    )
    assert redactor.redact_query(query, counts=counts) == (
        "filter[email]=[redacted:email]&page[limit]=10&cursor=abc"
        f"&access_token={redactor.fingerprint('Qtok')}"
        "&note=card%20[redacted:card_number]&n=[redacted:card_number]&ssn&filter[since]=2024-01-01"
    )
    assert counts == {
        "field:email": 1,
        "field:access_token": 1,
        "detector:card_number": 2,
    }
    assert redactor.redact_query("?a=1&b=2") == "?a=1&b=2"


def test_configured_query_params() -> None:
    redactor = Redactor(RedactionSettings(query_params=["sig"]), key=KEY)
    assert redactor.redact_query("sig=Qabc&x=1") == "sig=[redacted:sig]&x=1"


def test_urls(redactor: Redactor) -> None:
    url = (
        "https://user:Qpass@api.s.unit.sh/cards/4111111111111111/secure-data/pan"
        "?filter[accountNumber]=Q123&sort=-createdAt#access_token=Qfrag&state=1"
    )
    assert redactor.redact_url(url) == (
        f"https://user:{redactor.fingerprint('Qpass')}@api.s.unit.sh/cards/"
        "[redacted:card_number]/secure-data/pan?filter[accountNumber]=[redacted:accountNumber]"
        f"&sort=-createdAt#access_token={redactor.fingerprint('Qfrag')}&state=1"
    )
    assert redactor.redact_url("/accounts/123?include=customer") == (
        "/accounts/123?include=customer"
    )
    assert redactor.redact_url(f"/x/{quote('4111 1111 1111 1111')}") == (
        "/x/[redacted:card_number]"
    )


# --- bodies: compression -------------------------------------------------------------------

SECRET_DOCUMENT = {
    "data": {
        "type": "card",
        "attributes": {
            "pan": "5555555555554444",
            "cvv2": "Q987",
            "note": "ssn 123-45-6789",
            "memo": f"token {TOKEN}",
        },
    }
}
SECRET_VALUES = ["5555555555554444", "Q987", "123-45-6789", TOKEN]


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


COMPRESSIONS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # zlib-wrapped, as the RFC says
    "deflate-raw": raw_deflate,  # what some servers send as "deflate"
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
    "gzip, br": lambda data: brotli.compress(gzip.compress(data)),
    "identity": lambda data: data,
}


@pytest.mark.parametrize("name", COMPRESSIONS)
def test_compressed_bodies(redactor: Redactor, name: str) -> None:
    encoded = COMPRESSIONS[name](json.dumps(SECRET_DOCUMENT).encode())
    encoding = "deflate" if name == "deflate-raw" else name
    result = redactor.redact_body(encoded, JSONAPI, encoding)
    assert result.kind == "json"
    assert json.loads(result.content)["data"]["attributes"] == {
        "pan": "[redacted:pan]",
        "cvv2": "[redacted:cvv2]",
        "note": "ssn [redacted:ssn]",
        "memo": f"token {redactor.fingerprint(TOKEN)}",
    }
    assert_absent(result.content, *SECRET_VALUES)


def test_multi_member_gzip(redactor: Redactor) -> None:
    data = json.dumps(SECRET_DOCUMENT).encode()
    encoded = gzip.compress(data[:20]) + gzip.compress(data[20:])
    result = redactor.redact_body(encoded, JSONAPI, "gzip")
    assert result.kind == "json"
    assert_absent(result.content, *SECRET_VALUES)


@pytest.mark.parametrize(
    ("content", "encoding", "note"),
    [
        (b"\x1f\x8b\x08\x00garbage 4111111111111111", "gzip", "gzip could not be decoded"),
        (b"not brotli 4111111111111111", "br", "br could not be decoded"),
        (b"not zstd 4111111111111111", "zstd", "zstd could not be decoded"),
        (b"4111111111111111", "compress", "unsupported content-encoding"),
    ],
)
def test_bodies_that_cannot_be_decoded_are_summarized(
    redactor: Redactor, content: bytes, encoding: str, note: str
) -> None:
    result = redactor.redact_body(content, "application/json", encoding)
    assert result.kind == "binary"
    assert result.content.decode() == (
        f"[binary body redacted: application/json, {len(content)} bytes, {note}]"
    )
    assert result.counts == {"binary": 1}


def test_decompression_is_bounded() -> None:
    redactor = Redactor(RedactionSettings(max_body_bytes=1 << 20))
    bomb = gzip.compress(b"0" * (50 << 20))
    result = redactor.redact_body(bomb, "text/plain", "gzip")
    assert result.kind == "binary"
    assert b"over 1048576 bytes decoded" in result.content


# --- bodies: forms, multipart --------------------------------------------------------------


def test_form_body(redactor: Redactor) -> None:
    body = (
        "data[attributes][ssn]=123456789&data[attributes][address][street]=1+Q+Lane"
        "&data%5Battributes%5D%5Bphone%5D%5Bnumber%5D=5555555555&verificationCode=000001"
        "&note=pay+4111-1111-1111-1111+now&type=individualApplication&flag"
    )
    result = redactor.redact_body(body.encode(), "application/x-www-form-urlencoded", None)
    assert result.kind == "form"
    assert result.content.decode() == (
        "data[attributes][ssn]=[redacted:ssn]&data[attributes][address][street]=[redacted:address]"
        "&data%5Battributes%5D%5Bphone%5D%5Bnumber%5D=[redacted:phone]"
        "&verificationCode=[redacted:verificationCode]"
        "&note=pay%20[redacted:card_number]%20now&type=individualApplication&flag"
    )
    assert set(result.counts) <= redactor.rule_names


def multipart(boundary: str, parts: list[tuple[str, bytes]], newline: bytes = b"\r\n") -> bytes:
    out = b""
    for headers, body in parts:
        out += b"--" + boundary.encode() + newline
        out += newline.join(line.encode() for line in headers.split("\n")) + newline * 2
        out += body + newline
    return out + b"--" + boundary.encode() + b"--" + newline


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_multipart_body(redactor: Redactor, newline: bytes) -> None:
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF Q-passport-scan 4111111111111111"
    body = multipart(
        "----form-7",
        [
            ('Content-Disposition: form-data; name="ssn"', b"123456789"),
            ('Content-Disposition: form-data; name="note"', b"call about 4111 1111 1111 1111"),
            (
                'Content-Disposition: form-data; name="meta"\nContent-Type: application/json',
                json.dumps({"email": "Q@x.io", "kind": "passport"}).encode(),
            ),
            (
                'Content-Disposition: form-data; name="file"; filename="Q Parker passport.jpg"\n'
                "Content-Type: image/jpeg",
                jpeg,
            ),
            ('Content-Disposition: form-data; name="doc"; filename="x"', b"plain text Q file"),
        ],
        newline,
    )
    result = redactor.redact_body(body, 'multipart/form-data; boundary="----form-7"', None)
    assert result.kind == "multipart"
    expected = multipart(
        "----form-7",
        [
            ('Content-Disposition: form-data; name="ssn"', b"[redacted:ssn]"),
            ('Content-Disposition: form-data; name="note"', b"call about [redacted:card_number]"),
            (
                'Content-Disposition: form-data; name="meta"\nContent-Type: application/json',
                b'{"email":"[redacted:email]","kind":"passport"}',
            ),
            (
                'Content-Disposition: form-data; name="file"; filename="[redacted].jpg"\n'
                "Content-Type: image/jpeg",
                f"[binary part redacted: image/jpeg, {len(jpeg)} bytes]".encode(),
            ),
            (
                'Content-Disposition: form-data; name="doc"; filename="[redacted]"',
                b"[binary part redacted: text/plain, 17 bytes]",
            ),
        ],
        newline,
    )
    assert result.content == expected
    assert result.counts == {
        "field:ssn": 1,
        "detector:card_number": 1,
        "field:email": 1,
        "binary": 2,
    }


def test_unparseable_multipart_falls_back_to_text_rules(redactor: Redactor) -> None:
    body = (
        b'--other\r\nContent-Disposition: form-data; name="x"\r\n\r\npan=4111111111111111 ssn: Q1'
    )
    result = redactor.redact_body(body, "multipart/form-data; boundary=missing", None)
    assert result.kind == "text"
    assert b"4111111111111111" not in result.content and b"Q1" not in result.content


# --- bodies that do not parse --------------------------------------------------------------


def test_malformed_json_gets_key_rules_and_detectors(redactor: Redactor) -> None:
    body = json.dumps(SECRET_DOCUMENT).encode()[:-3] + b", oops"
    result = redactor.redact_body(body, JSONAPI, None)
    assert result.kind == "text"
    assert_absent(result.content, *SECRET_VALUES)
    assert b'"pan": "[redacted:pan]"' in result.content


def test_json_inside_a_json_string_of_malformed_json(redactor: Redactor) -> None:
    inner = json.dumps({"pan": 'Q"quoted\\ and "more', "ok": "shown"})
    body = json.dumps({"payloadText": inner}).encode() + b" trailing garbage"
    result = redactor.redact_body(body, JSONAPI, None)
    assert result.kind == "text"
    assert b"Q" not in result.content and b"more" not in result.content
    assert b'\\"pan\\": \\"[redacted:pan]\\", \\"ok\\": \\"shown\\"' in result.content


def test_truncated_json_redacts_to_the_end(redactor: Redactor) -> None:
    body = b'{"data": {"attributes": {"address": {"street": "1 Q Lane", "city": "Spring'
    result = redactor.redact_body(body, JSONAPI, None)
    assert result.content == b'{"data": {"attributes": {"address": "[redacted:address]"'


def test_invalid_utf8_with_secrets_inside(redactor: Redactor) -> None:
    body = b'{"note": "caf\xe9 4111111111111111", "ssn": "Q\xff123", "x": "\xc3\x28"}'
    result = redactor.redact_body(body, "application/json", None)
    assert result.kind == "text"
    assert result.content.decode() == (
        '{"note": "caf\ufffd [redacted:card_number]", "ssn": "[redacted:ssn]", "x": "\ufffd("}'
    )


def test_deeply_nested_json_falls_back_to_text(redactor: Redactor) -> None:
    body = b"[" * 5000 + b'{"pan": "Q1", "n": "4111111111111111"}' + b"]" * 5000
    result = redactor.redact_body(body, "application/json", None)
    assert_absent(result.content, "4111111111111111")
    assert b"Q1" not in result.content


def test_plain_text_and_sniffed_json(redactor: Redactor) -> None:
    result = redactor.redact_body(b"upstream said: ssn 123-45-6789", "text/plain", None)
    assert (result.kind, result.content) == ("text", b"upstream said: ssn [redacted:ssn]")
    result = redactor.redact_body(b'\xef\xbb\xbf  {"pan": "Q"}', None, None)
    assert (result.kind, result.content) == ("json", b'{"pan": "[redacted:pan]"}')


def test_empty_body(redactor: Redactor) -> None:
    result = redactor.redact_body(b"", JSONAPI, "gzip")
    assert (result.content, result.kind, result.counts) == (b"", "empty", {})


# --- binary summaries ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type", "shown"),
    [
        (b"%PDF-1.7 statement of Peter Parker 4111111111111111", "application/pdf", None),
        (b"\x89PNG\r\n\x1a\n....", "application/json", None),  # the magic wins over the label
        (b"Q" * 10 + b"\x00\x01\x02", "text/plain", None),
        (b"<html>statement for Peter Parker</html>", "text/html; charset=utf-8", "text/html"),
        (b"plain bytes", "application/octet-stream", None),
        (b"PII", "application/pdf; name=Q<Parker>.pdf", "application/pdf"),
        (b"\x00\x01", "weird type with spaces", "unknown type"),
    ],
)
def test_binary_bodies_are_summarized(
    redactor: Redactor, content: bytes, content_type: str, shown: str | None
) -> None:
    result = redactor.redact_body(content, content_type, None)
    media = shown or content_type.split(";")[0]
    assert result.kind == "binary"
    assert result.content.decode() == f"[binary body redacted: {media}, {len(content)} bytes]"
    assert result.counts == {"binary": 1}


def test_document_routes_are_summarized_unless_json(redactor: Redactor) -> None:
    html = b"Statement for Peter Parker, 1 Q Lane"
    for path in ("/statements/42/html", "/statements/42/bank/pdf?x=1", "/tax-forms/9/pdf"):
        result = redactor.redact_body(html, "text/plain", None, path=path)
        assert result.kind == "binary", path
    error = json.dumps({"errors": [{"status": "404", "title": "Not Found"}]}).encode()
    result = redactor.redact_body(error, JSONAPI, None, path="/statements/42/pdf")
    assert result.kind == "json"
    result = redactor.redact_body(html, "text/plain", None, path="/statements")
    assert result.kind == "text"
    custom = Redactor(RedactionSettings(binary_summary_routes=["/exports/{id}/**"]))
    assert custom.redact_body(b"x", "text/csv", None, path="/exports/1/a/b").kind == "binary"
    custom = Redactor(RedactionSettings(binary_summary_content_types=["text/csv"]))
    assert custom.redact_body(b"x", "text/csv", None).kind == "binary"


# --- a 10 MB body --------------------------------------------------------------------------


def large_document(target_bytes: int) -> dict[str, Any]:
    def resource(i: int) -> dict[str, Any]:
        return {
            "type": "depositAccount",
            "id": str(100000 + i),
            "attributes": {
                "createdAt": f"2024-01-{i % 28 + 1:02d}T10:00:00.000Z",
                "name": "Peter Parker checking",
                "status": "Open",
                "routingNumber": "812345678",
                "accountNumber": f"1000{i:08d}",
                "balance": i * 37,
                "tags": {"purpose": "checking", "note": "customer asked on the phone"},
                "description": f"Payment for invoice {i} from ACME corp, reference ABC-{i}",
            },
            "relationships": {"customer": {"data": {"type": "customer", "id": str(i)}}},
        }

    per_item = len(json.dumps(resource(0)))
    return {"data": [resource(i) for i in range(target_bytes // per_item + 1)]}


def test_a_json_body_near_the_limit(redactor: Redactor) -> None:
    document = large_document(DEFAULT_MAX_BODY_BYTES - 512 * 1024)
    document["data"][-1]["attributes"]["description"] = "last one 4012888888881881"
    body = json.dumps(document).encode()
    assert DEFAULT_MAX_BODY_BYTES - 1024 * 1024 < len(body) <= DEFAULT_MAX_BODY_BYTES
    started = time.perf_counter()
    result = redactor.redact_body(gzip.compress(body, compresslevel=1), JSONAPI, "gzip")
    elapsed = time.perf_counter() - started
    count = len(document["data"])
    assert result.counts == {
        "field:routingNumber": count,
        "field:accountNumber": count,
        "detector:card_number": 1,
    }
    assert_absent(result.content, "4012888888881881", "100000000001")
    # ~0.05 s/MB on a 2-core CI machine; the bound only catches a pathological slowdown
    assert elapsed < 20, f"{elapsed:.1f} s for {len(body) / 1e6:.1f} MB"


def test_ten_megabytes_of_text_without_secrets(redactor: Redactor) -> None:
    line = "2024-01-01 12:00:00 INFO GET /accounts/123 took 12 ms status=200 user=alice\n"
    text = line * (10 * 1024 * 1024 // len(line))
    started = time.perf_counter()
    assert redactor.redact_text(text) == text
    assert time.perf_counter() - started < 20


# --- the property: planted secrets never survive -------------------------------------------

# Benign content uses lower-case letters and a few structural characters, never Q/X/Z/€/é or
# digit runs: so any planted secret found in the output can only have leaked.
BENIGN_TEXT = st.text(alphabet="abcdefghijk lmnop-.,:={}[]\"'/\\", max_size=24)
BENIGN_KEY = st.text(alphabet="abcdefghijklmnoprstuvwy", min_size=1, max_size=10).filter(
    lambda key: key.lower() not in {name.lower() for name in DEFAULT_FIELDS}
)
BENIGN_SCALAR = st.one_of(
    BENIGN_TEXT, st.integers(-999, 999), st.booleans(), st.none(), st.floats(-99, 99)
)
BENIGN_JSON = st.recursive(
    BENIGN_SCALAR,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(BENIGN_KEY, children, max_size=4)
    ),
    max_leaves=25,
)
# Name-rule secrets: always a Q, plus characters that JSON and URLs escape.
# "q" is the one letter in no sensitive name (upper-cased keys stay visible), and benign
# content has none of these characters: in the output, any of them is a piece of a secret.
SECRET_TRACES = [
    *(char.encode() for char in "Q€é<>"),
    *(b"\\u20ac", b"\\u00e9", b"%E2%82%AC", b"%C3%A9", b"%3C", b"%3E"),
    *(b"%e2%82%ac", b"%c3%a9", b"%3c", b"%3e"),
]
TEXT_SECRET = st.text(alphabet="QXZ€é\"\\/&=+% <>'#", min_size=5, max_size=30).map(
    lambda s: "Q" + s
)


@st.composite
def card_number(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    middle = draw(st.lists(st.integers(0, 9), min_size=length - 2, max_size=length - 2))
    body = [draw(st.integers(1, 9)), *middle]
    for check in range(10):
        digits = "".join(map(str, [*body, check]))
        if luhn_valid(digits):
            break
    style = draw(st.sampled_from(["plain", " ", "-"]))
    if style == "plain":
        return digits
    return style.join(digits[i : i + 4] for i in range(0, len(digits), 4))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def detector_secret(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["card", "ssn", "unit_token", "jwt"]))
    if kind == "card":
        return draw(card_number())
    if kind == "ssn":
        area, group, serial = draw(
            st.tuples(st.integers(1, 899), st.integers(1, 99), st.integers(1, 9999))
        )
        return f"{area:03d}-{group:02d}-{serial:04d}"
    if kind == "unit_token":
        claims = {"role": "customer", "exp": "2030-01-01T00:00:00Z", "jti": draw(st.uuids()).hex}
        return "v2.public." + b64url(
            json.dumps(claims).encode() + draw(st.binary(min_size=64, max_size=64))
        )
    header = b64url(b'{"alg":"RS256","typ":"JWT"}')
    payload = b64url(json.dumps({"sub": draw(st.uuids()).hex}).encode())
    return f"{header}.{payload}.{b64url(draw(st.binary(min_size=16, max_size=64)))}"


def case_variant(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.lower(), name.upper(), name[:1].upper() + name[1:]])


@st.composite
def planted_document(draw: st.DrawFn) -> tuple[Any, list[str], list[str]]:
    """A JSON:API document with secrets planted at random places. Returns the document, the
    secrets only name rules can find, and the detector-shaped ones."""
    resource = st.fixed_dictionaries(
        {
            "type": BENIGN_KEY,
            "id": BENIGN_KEY,
            "attributes": st.dictionaries(BENIGN_KEY, BENIGN_JSON, max_size=5),
        }
    )
    document: dict[str, Any] = {
        "data": draw(st.one_of(resource, st.lists(resource, min_size=1, max_size=3))),
        "included": draw(st.lists(resource, max_size=2)),
        "meta": draw(st.dictionaries(BENIGN_KEY, BENIGN_JSON, max_size=3)),
    }
    named: list[str] = []
    detected: list[str] = []
    for _ in range(draw(st.integers(1, 6))):
        objects = list(_objects(document))
        target = draw(st.sampled_from(objects))
        mode = draw(
            st.sampled_from(
                [
                    "key",
                    "key-object",
                    "key-number",
                    "detector",
                    "in-text",
                    "in-text-tight",
                    "as-key",
                    "embedded-json",
                    "key=value",
                ]
            )
        )
        name = draw(st.sampled_from(UNIT_API_SENSITIVE_FIELDS))
        if mode == "key":
            secret = draw(TEXT_SECRET)
            target[draw(case_variant(name))] = secret
            named.append(secret)
        elif mode == "key-object":
            secrets = draw(st.lists(TEXT_SECRET, min_size=1, max_size=3))
            target[name] = {"first": secrets[0], "list": secrets[1:], "deep": {"x": secrets[0]}}
            named += secrets
        elif mode == "key-number":
            number = draw(st.integers(10**6, 10**15))
            target[name] = number
            named.append(str(number))
        elif mode == "detector":
            secret = draw(detector_secret())
            target[draw(BENIGN_KEY)] = draw(st.sampled_from([secret, [secret], {"v": secret}]))
            detected.append(secret)
        elif mode == "in-text":
            secret = draw(detector_secret())
            target[draw(BENIGN_KEY)] = f"{draw(BENIGN_TEXT)} {secret} {draw(BENIGN_TEXT)}"
            detected.append(secret)
        elif mode == "in-text-tight":  # no space around it, or a number beside it
            secret = draw(detector_secret())
            before = draw(st.sampled_from(["", "ab", "x-", "12 ", "7-", "a.", "1 2 "]))
            after = draw(st.sampled_from(["", "cd", "-x", " 34", "-7", ".b", " 5 6"]))
            target[draw(BENIGN_KEY)] = f"{before}{secret}{after}"
            detected.append(secret)
        elif mode == "as-key":
            secret = draw(detector_secret())
            target[secret] = draw(BENIGN_SCALAR)
            detected.append(secret)
        elif mode == "embedded-json":
            secret = draw(TEXT_SECRET)
            target[draw(BENIGN_KEY)] = json.dumps({draw(case_variant(name)): secret})
            named.append(secret)
        else:  # "key=value" text, as a log line or an error detail would quote it
            secret = draw(TEXT_SECRET)
            target[draw(BENIGN_KEY)] = f"failed {name}={quote_plus(secret)} retry"
            named.append(secret)
    return document, named, detected


def _objects(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _objects(item)


def form_encode(document: Any) -> bytes:
    pairs: list[tuple[str, str]] = []

    def flatten(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                flatten(item, f"{prefix}[{key}]" if prefix else key)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                flatten(item, f"{prefix}[{index}]")
        else:
            pairs.append((prefix, "" if value is None else str(value)))

    flatten(document, "")
    return "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs).encode()


ENCODINGS = [
    "json",
    "gzip",
    "br",
    "zstd",
    "deflate",
    "deflate-raw",
    "sniffed",
    "form",
    "trailing-garbage",
    "invalid-utf8",
    "corrupted",
]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    planted=planted_document(),
    encoding=st.sampled_from(ENCODINGS),
    ascii_only=st.booleans(),
    data=st.data(),
)
def test_planted_secrets_never_survive(
    planted: tuple[Any, list[str], list[str]], encoding: str, ascii_only: bool, data: st.DataObject
) -> None:
    document, named, detected = planted
    raw = json.dumps(document, ensure_ascii=ascii_only).encode()
    content_type: str | None = JSONAPI
    content_encoding: str | None = None
    must_hide = named + detected
    if encoding == "json":
        content = raw
    elif encoding in ("gzip", "br", "zstd", "deflate"):
        content, content_encoding = COMPRESSIONS[encoding](raw), encoding
    elif encoding == "deflate-raw":
        content, content_encoding = raw_deflate(raw), "deflate"
    elif encoding == "sniffed":
        content, content_type = raw, data.draw(st.sampled_from([None, "text/plain"]))
    elif encoding == "form":
        content, content_type = form_encode(document), "application/x-www-form-urlencoded"
    elif encoding == "trailing-garbage":
        content = raw + b", }} not json"
    elif encoding == "invalid-utf8":
        content = b"\xff\xfe" + raw + b"\xc3"
    else:
        assert encoding == "corrupted"  # a byte changed: only detector-shaped secrets are sure
        position = data.draw(st.integers(0, len(raw) - 1))
        content = (
            raw[:position]
            + data.draw(st.sampled_from([b"\xff", b"\x01", b"}", b'"']))
            + raw[position + 1 :]
        )
        must_hide = detected
    redactor = Redactor(key=KEY)
    result = redactor.redact_body(content, content_type, content_encoding)
    assert_absent(result.content, *must_hide)
    assert set(result.counts) <= redactor.rule_names
    if encoding != "corrupted":
        # Stronger than "no whole secret": no piece of a name-rule secret survives either.
        for trace in SECRET_TRACES:
            assert trace not in result.content, f"part of a secret survives: {trace!r}"
    if must_hide and encoding != "corrupted" and result.kind != "binary":
        assert result.counts  # something was found, so the secrets were there to find
    if result.kind in ("json", "form"):  # redacting what was shown again changes nothing
        again_type = JSONAPI if result.kind == "json" else "application/x-www-form-urlencoded"
        again = redactor.redact_body(result.content, again_type, None)
        assert (again.content, again.counts) == (result.content, {})


def test_a_duplicate_keys_dropped_value_never_stays_in_what_is_shown(redactor: Redactor) -> None:
    # The parser keeps the last of two equal keys; the earlier value was never checked, so the
    # original bytes must not be shown even though nothing was redacted.
    body = b'{"note": "4111 1111 1111 1111", "note": "ok"}'
    result = redactor.redact_body(body, JSONAPI, None)
    assert not result.redacted
    assert result.changed
    assert b"4111" not in result.content
    assert json.loads(result.content) == {"note": "ok"}
    nested = b'{"data": [{"attributes": {"x": "900-12-3456", "x": 1}}]}'
    result = redactor.redact_body(nested, JSONAPI, None)
    assert result.changed and b"900-12-3456" not in result.content


def test_a_clean_body_that_round_trips_is_left_as_it_is(redactor: Redactor) -> None:
    # compact, as Unit sends it
    document = {"data": {"type": "card", "id": "1", "attributes": {"status": "Active"}}}
    body = json.dumps(document, separators=(",", ":"))
    result = redactor.redact_body(body.encode(), JSONAPI, None)
    assert not result.changed and not result.redacted
    assert not redactor.redact_body(b"plain words", "text/plain", None).changed


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"ssn": "123456789", "n": 1}',  # a byte-order mark
        b'{"ssn": "123456789", "n": 123456789012345678901234567890}',  # over 64 bits
        b'{"ssn": "123456789", "s": "\\ud800"}',  # a lone surrogate escape
    ],
)
def test_json_the_fast_parser_refuses_is_still_redacted_as_json(
    redactor: Redactor, body: bytes
) -> None:
    result = redactor.redact_body(body, JSONAPI, None)
    assert result.kind == "json"
    assert result.counts == {"field:ssn": 1}
    assert json.loads(result.content)["ssn"] == "[redacted:ssn]"


def test_the_known_keys_cache_starts_over_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    from unit_gateway.redaction import json_walk as module

    monkeypatch.setattr(module, "_KNOWN_KEYS_LIMIT", 10)
    redactor = Redactor()
    unique = {f"tag{i}": i for i in range(25)}
    assert redactor.redact_body(json.dumps(unique).encode(), "application/json", None).counts == {}
    assert len(redactor._json.known_keys) <= 10
    body = json.dumps({"ssn": "123-45-6789", "brandNewKey": "x"}).encode()
    assert redactor.redact_body(body, "application/json", None).counts == {"field:ssn": 1}
    assert "brandNewKey" in redactor._json.known_keys  # still learning after it filled up


# --- bodies as a person's viewer may read them ---------------------------------------------

# What "a person may read" means here is written out independently of the engine: every
# decoding a viewer may apply, then escapes resolved with the standard library, then the
# text as a screen shows it (NFKC, no control or format characters). The engine must leave
# no planted secret in any of them.
VIEWER_CODECS = ("utf-8", "latin-1", "cp1252", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
CODE_ESCAPE = re.compile(
    r"\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})|\\x([0-9a-fA-F]{2})|\\u\{([0-9a-fA-F]{1,6})\}"
)
BOM_CODECS = [
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
]


def as_screen_shows(text: str) -> str:
    normal = unicodedata.normalize("NFKC", text)
    return "".join(
        char
        for char in normal
        if unicodedata.category(char) not in ("Cc", "Cf") or char in "\t\n\r"
    )


def code_unescaped(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = int(next(group for group in match.groups() if group), 16)
        return chr(code) if code <= 0x10FFFF else "?"

    return CODE_ESCAPE.sub(one, text)


def person_reads(stored: bytes, declared: list[str], form: bool = False) -> list[str]:
    """Every text a person may read in ``stored``: decoded as each viewer may decode it (and
    as the ``declared`` charsets), with escapes resolved, as a screen shows it."""
    wanted = [*VIEWER_CODECS, *declared]
    wanted += [codec for bom, codec in BOM_CODECS if stored.startswith(bom)][:1]
    texts: list[str] = []
    for codec in dict.fromkeys(wanted):
        try:
            text = stored.decode(codec, "replace")
        except (LookupError, UnicodeError):
            continue
        resolved = html.unescape(code_unescaped(text))
        resolved = unquote_plus(resolved) if form else unquote(resolved)
        for reading in (text, resolved):
            texts += [reading, as_screen_shows(reading)]
    return texts


def shows(reading: str, secret: str) -> bool:
    """Whether ``reading`` shows ``secret``; a number also grouped otherwise (one space or
    dash, of any kind, between digits: as the detectors read numbers)."""
    if secret in reading:
        return True
    digits = re.sub(r"[ -]", "", secret)
    if not digits.isdigit():
        return False
    normal = "".join(
        " " if char.isspace() else "-" if unicodedata.category(char) == "Pd" else char
        for char in reading
    )
    return digits in re.sub(r"(?<=[0-9])[ -](?=[0-9])", "", normal)


def assert_nobody_reads(stored: bytes, declared: list[str], *secrets: str, form: bool = False):
    for number, reading in enumerate(person_reads(stored, declared, form)):
        for secret in secrets:
            assert not shows(reading, secret), f"reading {number} shows a secret"


def stored_copy(content: bytes, result: Any) -> bytes:
    """What the flow keeps: the redacted copy if it differs, else the bytes as sent."""
    return result.content if result.changed else content


CARD = "4012888888881881"
# "+" starts a UTF-7 shift: read as UTF-7 the values after one are other characters
NOTE = f"pay +{CARD}- with +{TOKEN} for +123-45-6789"


def utf7_shifted(text: str) -> str:
    """``text`` as UTF-7 writes characters it does not write directly (ASCII stays ASCII)."""
    return "+" + base64.b64encode(text.encode("utf-16-be")).decode().rstrip("=") + "-"


@pytest.mark.parametrize(
    ("content_type", "codec"),
    [
        ("text/plain; charset=utf-16", "utf-8"),
        ("text/plain; charset=utf-32", "utf-8"),
        ("text/plain; charset=utf-16-be", "utf-8"),
        ("text/plain; charset=cp037", "utf-8"),
        ("text/plain; charset=utf-7", "utf-8"),
        ("application/x-www-form-urlencoded; charset=utf-16", "utf-8"),
        ("application/x-www-form-urlencoded; charset=cp037", "utf-8"),
        ("application/xml", "utf-8"),  # with encoding="utf-7" in its declaration
    ],
)
def test_a_body_in_another_charset_than_it_declares(
    redactor: Redactor, content_type: str, codec: str
) -> None:
    form = content_type.startswith("application/x-www-form-urlencoded")
    text = f"note={quote_plus(NOTE)}&x=1" if form else NOTE
    if content_type == "application/xml":  # mitmproxy's get_text (HAR, export) reads UTF-7
        text = f'<?xml version="1.0" encoding="utf-7"?><note>{utf7_shifted(NOTE)}</note>'
    content = text.encode(codec)
    result = redactor.redact_body(content, content_type, None)
    declared = [content_type.partition("charset=")[2] or "utf-7"]
    assert_nobody_reads(stored_copy(content, result), declared, CARD, TOKEN, "123-45-6789")
    # reading other charsets finds nothing where there is nothing
    clean = text.replace(quote_plus(NOTE), "pay").replace(utf7_shifted(NOTE), "pay")
    clean = clean.replace(NOTE, "pay the usual way")
    assert not redactor.redact_body(clean.encode(codec), content_type, None).redacted


def test_the_redacted_copy_is_written_as_the_reading_that_found_it(redactor: Redactor) -> None:
    # ASCII said to be UTF-16: the copy is ASCII too, as the original shows in a raw view
    result = redactor.redact_body(b"ssn 123-45-6789", "text/plain; charset=utf-16", None)
    assert (result.kind, result.content) == ("text", b"ssn [redacted:ssn]")
    # EBCDIC said to be EBCDIC: written back in EBCDIC, so the declared charset shows it
    ebcdic = "ssn 123-45-6789".encode("cp037")
    result = redactor.redact_body(ebcdic, "text/plain; charset=cp037", None)
    assert result.content.decode("cp037") == "ssn [redacted:ssn]"
    latin = f"café {CARD}".encode("latin-1")
    result = redactor.redact_body(latin, "text/plain; charset=iso-8859-1", None)
    assert result.content == "café [redacted:card_number]".encode("latin-1")


def test_json_escapes_in_text_that_does_not_parse(redactor: Redactor) -> None:
    escaped_token = TOKEN.replace(".", "\\u002e")
    escaped_card = CARD[:4] + f"\\u{ord(CARD[4]):04x}" + CARD[5:]
    body = f'{{"token": "{escaped_token}", "note": "{escaped_card} \\x31" '.encode()
    result = redactor.redact_body(body + b"truncated", JSONAPI, None)
    assert result.kind == "text"
    assert_nobody_reads(result.content, [], TOKEN, CARD)
    body = f"note: card {escaped_card}, ssn 123\\u002d45\\u002d6789, {escaped_token}".encode()
    result = redactor.redact_body(body, "text/plain", None)
    assert_nobody_reads(result.content, [], TOKEN, CARD, "123-45-6789")
    # a name written with escapes, which the key rules alone do not read
    result = redactor.redact_body(b'{"p\\u0061n": "Q-77 x", "id": 1', JSONAPI, None)
    assert b"Q-77" not in result.content and result.counts == {"field:pan": 1}
    # JSON that parses: the parser resolves the escapes before the rules see the strings
    parsed = redactor.redact_body(f'{{"n": "{escaped_card}"}}'.encode(), JSONAPI, None)
    assert (parsed.kind, parsed.content) == ("json", b'{"n":"[redacted:card_number]"}')


SPELLINGS = {
    "html decimal": f"v2&#46;public&#46;{TOKEN[10:]}",
    "html hex": CARD[:8] + "&#x20;" + CARD[8:],
    "html named": f"v2&period;public&period;{TOKEN[10:]}",
    "percent": f"{CARD[:4]}%20{CARD[4:8]}%20{CARD[8:12]}%20{CARD[12:]}",
    "zero-width space": CARD[:4] + "\u200b" + CARD[4:],
    "soft hyphen": TOKEN[:6] + "\u00ad" + TOKEN[6:],
    "no-break spaces": "\u00a0".join(CARD[i : i + 4] for i in range(0, 16, 4)),
    "en dashes": "123\u201345\u20136789",
    "fullwidth": "".join(chr(ord(c) + 0xFEE0) for c in CARD),
    "mathematical": "".join(chr(0x1D7CE + int(c)) for c in CARD),
    "percent-encoded zero-width": CARD[:4] + "%E2%80%8B" + CARD[4:],
}


# Escapes of another syntax inside a JSON string that parses are not resolved: that would cost
# every JSON body a pass over its bytes (mitmweb's JSON view does not resolve them either).
ESCAPE_SPELLINGS = {
    "html decimal",
    "html hex",
    "html named",
    "percent",
    "percent-encoded zero-width",
}


@pytest.mark.parametrize(
    ("where", "spelling"),
    [
        (where, spelling)
        for where in ("text", "form", "json")
        for spelling in SPELLINGS
        if where != "json" or spelling not in ESCAPE_SPELLINGS
    ],
)
def test_spellings_a_person_reads_through(redactor: Redactor, spelling: str, where: str) -> None:
    secret = {"no-break spaces": CARD, "en dashes": "123-45-6789"}.get(spelling)
    spelled = SPELLINGS[spelling]
    if secret is None:
        secret = TOKEN if spelled.startswith("v2") or spelled.startswith(TOKEN[:8]) else CARD
    if where == "text":
        content, content_type = f"note: {spelled} end".encode(), "text/plain"
    elif where == "form":
        content = f"memo={quote_plus(spelled)}&x=1".encode()
        content_type = "application/x-www-form-urlencoded"
    else:
        content, content_type = json.dumps({"memo": spelled}).encode(), JSONAPI
    result = redactor.redact_body(content, content_type, None)
    assert result.redacted
    assert_nobody_reads(stored_copy(content, result), [], secret, form=where == "form")


def test_form_values_with_control_characters_between_digits(redactor: Redactor) -> None:
    hidden = "%00".join(CARD)  # mitmweb's form view decodes it; the NULs show as nothing
    result = redactor.redact_body(f"a={hidden}".encode(), "application/x-www-form-urlencoded", None)
    assert result.content == b"a=[redacted:card_number]"
    result = redactor.redact_body(f"text {hidden}".encode(), "text/plain", None)
    assert result.content == b"text [redacted:card_number]"


def test_headers_and_json_strings_are_read_as_shown(redactor: Redactor) -> None:
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in CARD)
    headers = redactor.redact_headers([("X-Note", f"card {fullwidth}")])
    assert headers == [("X-Note", "card [redacted:card_number]")]
    document = {"a": CARD[:6] + "\u2060" + CARD[6:], "b": "Jöhn Smith", "c": "4111\u00a01111"}
    result, counts = body_json(redactor, document)
    assert result == {"a": "[redacted:card_number]", "b": "Jöhn Smith", "c": "4111\u00a01111"}
    assert counts == {"detector:card_number": 1}


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("text/plain; charset=x-unknown-charset", b"plain words"),
        ("text/plain; charset=base64", b"NDAxMjg4ODg4ODg4MTg4MQ=="),  # a viewer may decode it
        ("application/x-www-form-urlencoded; charset=hex", b"a=1"),
        ("text/xml", b'<?xml version="1.0" encoding="x-none"?><a>b</a>'),
        ("text/plain; charset=idna", b"xn--a 4012888888881881"),
        ("application/json; charset=zlib", b'{"a": 1}'),
    ],
)
def test_a_charset_the_engine_cannot_read_shows_the_summary(
    redactor: Redactor, content_type: str, content: bytes
) -> None:
    result = redactor.redact_body(content, content_type, None)
    if "idna" in content_type:  # a codec Python has, with strict errors only: still read
        assert result.content == b"xn--a [redacted:card_number]"
        return
    media_type = content_type.partition(";")[0]
    expected = f"[binary body redacted: {media_type}, {len(content)} bytes, charset not readable]"
    assert (result.kind, result.content.decode()) == ("binary", expected)


def test_json_is_read_in_the_charset_it_declares(redactor: Redactor) -> None:
    # "+ADQAMA…-": plain ASCII to a JSON parser, the card to mitmproxy's get_text (HAR)
    body = json.dumps({"note": f"card {utf7_shifted(CARD)}", "id": "1"}).encode()
    result = redactor.redact_body(body, "application/json; charset=utf-7", None)
    assert_nobody_reads(stored_copy(body, result), ["utf-7"], CARD)
    # a charset that reads the same as UTF-8 changes nothing (and costs nothing)
    plain = redactor.redact_body(b'{"id":"1"}', "application/json; charset=UTF-8", None)
    assert (plain.kind, plain.changed) == ("json", False)


def test_multipart_bytes_outside_the_parts_are_read_too(redactor: Redactor) -> None:
    preamble = f"sent by {TOKEN}".encode("utf-16-le") + b"\r\n"
    body = preamble + multipart(
        "b1", [('Content-Disposition: form-data; name="note"', b"hello")]
    ).replace(b"--b1\r\n", b"--b1 " + CARD.encode() + b"\r\n", 1)
    result = redactor.redact_body(body, "multipart/form-data; boundary=b1", None)
    assert result.kind == "multipart"
    assert_nobody_reads(result.content, [], TOKEN, CARD)
    assert b'name="note"\r\n\r\nhello' in result.content


def test_visible_classes_match_unicodedata() -> None:
    """The generated character classes of redaction_rules, recomputed from this Python's
    unicodedata: a new Unicode version that adds a format character or a lookalike fails
    here (regenerate the classes from expected_unseen and expected_lookalike)."""
    from unit_gateway.redaction.rules import _ASCII_UNSEEN, _LOOKALIKE, _UNSEEN, visible

    ascii_chars = [chr(c) for c in range(128)]
    assert [c for c in ascii_chars if _UNSEEN.match(c)] == [
        c for c in ascii_chars if _ASCII_UNSEEN.match(c)
    ]

    def expected_unseen(char: str) -> bool:
        category = unicodedata.category(char)
        return (category == "Cc" and char not in "\t\n\v\f\r") or category == "Cf"

    def expected_lookalike(char: str) -> bool:
        if char.isascii() or expected_unseen(char):
            return False
        if unicodedata.category(char) in ("Zs", "Zl", "Zp", "Pd") or char == "\u2212":
            return True
        decomposition = unicodedata.decomposition(char)
        if not decomposition:  # most code points: NFKC leaves them as they are
            return False
        normal = unicodedata.normalize("NFKC", char)
        tag = decomposition.partition(" ")[0]
        return (
            len(normal) == 1
            and normal.isascii()
            and normal.isprintable()
            and (
                tag in ("<wide>", "<small>", "<compat>", "<noBreak>")
                or (tag == "<font>" and normal.isdigit())
                or "<" not in tag
            )
        )

    wrong = []
    for code in range(0x110000):
        char = chr(code)
        if (_UNSEEN.match(char) is not None) != expected_unseen(char):
            wrong.append(f"unseen U+{code:04X}")
        if (_LOOKALIKE.match(char) is not None) != expected_lookalike(char):
            wrong.append(f"lookalike U+{code:04X}")
        elif expected_lookalike(char):
            assert visible(char).isascii(), f"U+{code:04X}"
    assert not wrong, wrong[:20]


def can_stand_in_utf8(data: bytes) -> bool:
    """Whether ``data`` can be found somewhere in valid UTF-8 without NUL: past up to three
    continuation bytes (the end of a character before it), the rest decodes, a last
    character cut short allowed."""
    if b"\x00" in data:
        return False
    for skip in range(4):
        if not all(0x80 <= byte <= 0xBF for byte in data[:skip]):
            return False
        try:
            codecs.getincrementaldecoder("utf-8")().decode(data[skip:], final=False)
        except UnicodeDecodeError:
            continue
        return True
    return False


def test_utf16_and_utf32_readings_of_utf8_show_no_digit_and_no_j() -> None:
    """Why readings() reads valid UTF-8 without NUL as UTF-8 only: in such bytes read as
    UTF-16 or UTF-32, no character reads (visible()) as an ASCII digit or a "J", and every
    detector needs one (cards and SSNs digits, Unit tokens their version digit, JWTs the
    "J" of "eyJ")."""
    from unit_gateway.redaction.rules import _LOOKALIKE, visible

    # only ASCII characters and lookalikes read as an ASCII letter or digit
    candidates = [chr(code) for code in range(0x110000) if _LOOKALIKE.match(chr(code))]
    reachable = []
    for char in [*map(chr, range(0x80)), *candidates]:
        for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
            if can_stand_in_utf8(char.encode(codec)):
                reachable.append(visible(char))
    assert reachable  # spaces, dashes and letters do stand there
    assert not set("".join(reachable)) & set("0123456789J")
    assert can_stand_in_utf8("é".encode()[1:] + b"a\xe2\x82")  # the helper says yes too


# Characters that make Latin-1, Windows-1252, UTF-16 and UTF-32 readings of UTF-8 differ
TRICKY_TEXT = st.lists(
    st.sampled_from(
        [*"0123456789 -.eyJv2publicQ", "v2.public.", "eyJ", "\u00a0", "\u00ad", "\u2013",
         "\u200b", "\uff14", "\U0001d7d2", "\u0634", "\u00ff", "\u20ac", "\U0001f600", "\u2460"]
    ),
    max_size=60,
).map("".join)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(words=st.lists(TRICKY_TEXT, max_size=4))
def test_what_utf8_shows_clean_no_other_reading_shows(redactor: Redactor, words: list[str]) -> None:
    """readings()'s shortcut, tried: when valid UTF-8 is left as it is, neither Latin-1,
    Windows-1252, UTF-16 nor UTF-32 shows the text rules anything."""
    content = " ".join(words).encode()
    if redactor.redact_body(content, "text/plain; charset=utf-8", None).changed:
        return
    for codec in VIEWER_CODECS[1:]:
        reading = content.decode(codec, "replace")
        assert redactor.redact_text(reading) == reading, codec


# --- the property: no planted secret in any reading of what is kept --------------------------

SEPARATOR_SPELLINGS = {" ": [" ", "\u00a0", "\u2009", "\u3000"], "-": ["-", "\u2013", "\u2011"]}
INVISIBLE = ["\u200b", "\u00ad", "\u2060", "\ufeff", "\u200d"]
NAMED_ENTITIES = {".": "&period;", "-": "&hyphen;", " ": "&nbsp;"}
BODY_CODECS = [
    "utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
    "latin-1", "cp1252", "cp037", "utf-7",
]  # fmt: skip
DECLARED = [
    None, "utf-8", "utf-16", "utf-32", "iso-8859-1", "cp037", "us-ascii", "utf-7",
    "shift_jis", "x-unknown", "base64",
]  # fmt: skip
FILLER = st.text(alphabet="abcdfghjkmnorstwxz ,;:", max_size=16)


ALL_STYLES = ("json", "html", "percent", "wide", "invisible")


@st.composite
def spelled(draw: st.DrawFn, secret: str, styles: tuple[str, ...] = ALL_STYLES) -> str:
    """``secret`` as a person still reads it: some characters escaped (JSON, HTML, percent),
    fullwidth, followed by an invisible character, separators another space or dash."""
    style = draw(st.sampled_from(["plain", *styles, "mix"]))
    out = []
    for char in secret:
        if char in SEPARATOR_SPELLINGS:
            char = draw(st.sampled_from(SEPARATOR_SPELLINGS[char]))
        how = draw(st.sampled_from(styles)) if style == "mix" else style
        if how == "plain" or not draw(st.integers(0, 3)) == 0:
            out.append(char)
        elif how == "json":
            out.append(f"\\u{ord(char):04x}")
        elif how == "html":
            out.append(
                draw(
                    st.sampled_from(
                        [f"&#{ord(char)};", f"&#x{ord(char):X};", NAMED_ENTITIES.get(char, "")]
                    ).filter(bool)
                )
            )
        elif how == "percent":
            out.append("".join(f"%{byte:02X}" for byte in char.encode()))
        elif how == "wide" and "!" <= char <= "~":
            out.append(chr(ord(char) + 0xFEE0))
        else:
            out.append(char + draw(st.sampled_from(INVISIBLE)))
    return "".join(out)


@st.composite
def planted_body(draw: st.DrawFn) -> tuple[bytes, str, list[str], list[str], bool]:
    """(content, Content-Type, the codecs it names, the secrets, is a form)."""
    kind = draw(st.sampled_from(["text", "form", "json", "malformed json", "xml", "multipart"]))
    # in JSON that parses, only what the parser resolves (see ESCAPE_SPELLINGS)
    styles = ("wide", "invisible") if kind == "json" else ALL_STYLES
    secrets = draw(st.lists(detector_secret(), min_size=1, max_size=3))
    text = " ".join(
        f"{draw(FILLER)} {draw(spelled(secret, styles))} {draw(FILLER)}" for secret in secrets
    )
    codec = draw(st.sampled_from(BODY_CODECS))
    # what a codec cannot write becomes an escape; HTML ones not inside JSON (as above)
    errors = draw(st.sampled_from(["xmlcharrefreplace", "backslashreplace"][kind == "json" :]))
    declared = draw(st.sampled_from([*DECLARED, codec]))
    names: list[str] = [declared] if declared else []
    media = {"form": "application/x-www-form-urlencoded", "xml": "application/xml"}.get(
        kind, "application/json" if "json" in kind else "text/plain"
    )
    if kind == "form":
        text = f"note={quote_plus(text)}&x=1"
    elif kind == "json":
        text = json.dumps({"note": text}, ensure_ascii=draw(st.booleans()))
    elif kind == "malformed json":
        text = json.dumps({"note": text})[:-1] + ", oops"
    elif kind == "xml":
        inside = draw(st.sampled_from(DECLARED[1:]))
        names.append(inside)
        text = f'<?xml version="1.0" encoding="{inside}"?><note>{text}</note>'
    if kind == "multipart":
        part = text.encode(codec, errors)
        head = 'Content-Disposition: form-data; name="note"\r\nContent-Type: text/plain'
        head += f"; charset={declared}" if declared else ""
        content = (
            draw(st.sampled_from([b"", text.encode(codec, errors) + b"\r\n"]))
            + f"--b7\r\n{head}\r\n\r\n".encode()
            + part
            + b"\r\n--b7--\r\n"
        )
        return content, "multipart/form-data; boundary=b7", names, secrets, False
    content_type = f"{media}; charset={declared}" if declared else media
    return text.encode(codec, errors), content_type, names, secrets, kind == "form"


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(body=planted_body())
def test_no_reading_of_what_is_kept_shows_a_planted_secret(
    redactor: Redactor, body: tuple[bytes, str, list[str], list[str], bool]
) -> None:
    content, content_type, declared, secrets, form = body
    result = redactor.redact_body(content, content_type, None)
    stored = stored_copy(content, result)
    if content_type.startswith("multipart/"):
        # the part's charset is the part's: the rest is read in the viewers' encodings
        assert_nobody_reads(stored, [], *secrets)
        head, _, rest = stored.partition(b"\r\n\r\n")
        stored = rest.rpartition(b"\r\n--b7--")[0] if b"--b7\r\n" in head else b""
    assert_nobody_reads(stored, declared, *secrets, form=form)
    assert set(result.counts) <= redactor.rule_names
    if result.kind in ("text", "form"):  # what is kept, redacted again, has nothing more
        again = redactor.redact_body(stored, content_type, None)
        assert set(again.counts) <= {"binary"}  # (EBCDIC's quotes may look binary, shorter)


@pytest.mark.parametrize(
    "spelled",
    [
        "v2.public.\\u0065yJyb2xlIjoiY3VzdG9tZXIifQ.c2lnbmF0dXJl",  # an escape just after
        "v2.public.\\\\u0065yJyb2xlIjoiY3VzdG9tZXIifQ.c2lnbmF0dXJl",  # as a repr shows it
        "v2.public.eyJyb2xlIjoiY3\\u0056zdG9tZXIifQ.c2lnbmF0dXJl",  # one in the middle
        "v2.public.%65yJyb2xlIjoiY3VzdG9tZXIifQ.c2lnbmF0dXJl",  # percent-encoded
    ],
)
def test_a_token_that_goes_on_escaped_is_redacted_whole(redactor: Redactor, spelled: str) -> None:
    shown = redactor.redact_text(f"Invalid header line: b'X-Token: {spelled}' (at 2)")
    assert "c2lnbmF0dXJl" not in shown and "yJyb2xl" not in shown, shown
    assert shown.endswith("' (at 2)") and shown.startswith("Invalid header line: b'X-Token: ")


def test_a_token_ends_where_its_characters_end(redactor: Redactor) -> None:
    assert redactor.redact_text(f"a={TOKEN}, b") == f"a={redactor.fingerprint(TOKEN)}, b"
    assert redactor.redact_text("tokens look like v2.public. and go on") == (
        "tokens look like v2.public. and go on"
    )


@pytest.mark.parametrize(
    ("written", "secret"),
    [
        ("Basic {}", b"svc:" + TOKEN.encode()),
        ("data:text/plain;base64,{}", b"card 4111111111111111 on file"),
        ("{}", b"ssn=123-45-6789"),
        ("nested {}", base64.b64encode(b"pan 4111 1111 1111 1111")),
    ],
)
def test_base64_that_holds_a_secret_is_redacted(
    redactor: Redactor, written: str, secret: bytes
) -> None:
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = written.format(encode(secret).decode())
        shown = redactor.redact_text(text)
        assert shown == written.format("[redacted:base64]"), shown


def test_base64_that_holds_no_secret_is_shown(redactor: Redactor) -> None:
    for text in (
        base64.b64encode(b"hello, world of many words").decode(),
        base64.b64encode(bytes(range(256)) * 4).decode(),  # binary
        "customers/10001/accounts/20001/transactions",
        "internationalization",
    ):
        assert redactor.redact_text(text) == text


def test_a_card_number_grouped_with_commas_is_redacted(redactor: Redactor) -> None:
    assert redactor.redact_text("card 4111,1111,1111,1111 x") == "card [redacted:card_number] x"
    assert redactor.redact_text("pan 4111, 1111, 1111, 1111.") == "pan [redacted:card_number]."
    assert redactor.redact_text("1,234,567,890,123") == "1,234,567,890,123"
