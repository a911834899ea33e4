"""Tests for the leak scanner that every end-to-end test runs over a run's outputs.

Encodings are produced here with the standard library directly, not with the scanner's own
``encoded_forms``, so a wrong encoding in the scanner makes these tests fail.
"""

import base64
import gzip
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import websocket
from mitmproxy.addons.savehar import SaveHar
from mitmproxy.io import FlowWriter
from mitmproxy.test import tflow
from wsproto.frame_protocol import Opcode

from unit_gateway.testing.leakscan import (
    MIN_INNER_BASE64_CHARS,
    MIN_SECRET_CHARS,
    RAW_LOCATION,
    Leak,
    assert_no_leaks,
    encoded_forms,
    find_leaks,
)

TOKEN = "v2.public.eyJyb2xlIjoib3JnIiwidXNlcklkIjoiMjcxOCJ9/Kx+q0Zr"
PAN = "4111111111111111"
SSN = "123-45-6789"
SECRETS = {"org token": TOKEN, "pan": PAN, "ssn": SSN}


def _lower_hex(url_encoded: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), url_encoded)


def _only(leaks: list[Leak]) -> Leak:
    assert len(leaks) == 1, [str(leak) for leak in leaks]
    return leaks[0]


def _check_offset(data: bytes, leak: Leak, encoded: bytes) -> None:
    assert leak.length == len(encoded)
    assert data[leak.offset : leak.offset + len(encoded)] == encoded


# --- plain files -----------------------------------------------------------------------------


def test_plain_log_reports_path_offset_label_encoding(tmp_path: Path) -> None:
    log = tmp_path / "mitmdump.log"
    data = f"12:00:01 GET /accounts\n12:00:02 Authorization: Bearer {TOKEN}\n".encode()
    log.write_bytes(data)

    leak = _only(find_leaks(SECRETS, [log]))

    assert (leak.source, leak.location, leak.label, leak.encoding) == (
        str(log),
        RAW_LOCATION,
        "org token",
        "raw",
    )
    assert leak.offset == data.index(TOKEN.encode())
    _check_offset(data, leak, TOKEN.encode())


def test_json_escaping_variants(tmp_path: Path) -> None:
    quoted = 'pa"ss\\wörd/42'  # needs escaping: quote, backslash, non-ASCII, slash
    cases = {
        "json-escaped": json.dumps({"p": quoted}, ensure_ascii=False),
        "json-escaped (ascii)": json.dumps({"p": quoted}),
        "json-escaped (ascii, \\/)": json.dumps({"p": quoted}).replace("/", "\\/"),
        "json-escaped (\\/)": json.dumps({"p": quoted}, ensure_ascii=False).replace("/", "\\/"),
    }
    for expected_encoding, text in cases.items():
        path = tmp_path / "out.json"
        data = text.encode()
        path.write_bytes(data)
        leak = _only(find_leaks({"password": quoted}, [path]))
        assert leak.encoding == expected_encoding
        escaped = text[len('{"p": "') : -len('"}')].encode()
        assert leak.offset == len('{"p": "')
        _check_offset(data, leak, escaped)


def test_url_encoded_query_strings() -> None:
    secret = "s3cr et/+=&?key"
    cases = {
        "url-encoded": quote(secret, safe=""),
        "url-encoded (lowercase hex)": _lower_hex(quote(secret, safe="")),
        "url-encoded (/ kept)": quote(secret),
        "form-encoded": quote_plus(secret, safe=""),
        "form-encoded (lowercase hex)": _lower_hex(quote_plus(secret, safe="")),
    }
    for expected_encoding, encoded in cases.items():
        data = f"GET /v1/accounts?page=2&token={encoded}&x=1 HTTP/1.1".encode()
        leak = _only(find_leaks({"api key": secret}, blobs=[("stdout", data)]))
        assert (leak.source, leak.encoding) == ("stdout", expected_encoding)
        assert leak.offset == data.index(b"token=") + len(b"token=")
        _check_offset(data, leak, encoded.encode())


@pytest.mark.parametrize("alignment", [0, 1, 2])
@pytest.mark.parametrize("urlsafe", [False, True], ids=["std", "urlsafe"])
def test_base64_inside_larger_blob_at_every_alignment(alignment: int, urlsafe: bool) -> None:
    # a run of "~" encodes to "+" (or "-") at every alignment, so the alphabets differ
    secret = "key_live_~~~~~_0123456789"
    before = b"\xfb\xff" * 10 + b"x" * (alignment + 1)
    assert len(before) % 3 == alignment
    plaintext = before + secret.encode() + b"\xff\xfe trailing bytes"
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    blob = encode(plaintext)
    data = b'{"payload": "' + blob + b'"}'

    leak = _only(find_leaks({"api key": secret}, blobs=[("har", data)]))

    alphabet = "base64url" if urlsafe else "base64"
    assert leak.encoding == f"{alphabet} inner (alignment {alignment})"
    # The secret starts in character group len(before) // 3; the first characters of that
    # group also carry bits of the bytes before it: 0, 2 or 3 characters for alignment 0, 1, 2.
    skipped = {0: 0, 1: 2, 2: 3}[alignment]
    expected_offset = data.index(blob) + 4 * (len(before) // 3) + skipped
    assert leak.offset == expected_offset
    _check_offset(data, leak, encoded_forms(secret)[leak.encoding])


def test_whole_value_base64_reported_as_base64_not_inner() -> None:
    encoded = base64.b64encode(f"user:{TOKEN}".encode())
    header = b"Authorization: Basic " + encoded
    leaks = find_leaks({"basic credentials": f"user:{TOKEN}"}, blobs=[("stdout", header)])
    assert _only(leaks).encoding == "base64"
    _check_offset(header, leaks[0], encoded)


def test_hex_encoding() -> None:
    data = b"dump: " + TOKEN.encode().hex().upper().encode() + b"\n"
    leak = _only(find_leaks({"org token": TOKEN}, blobs=[("hexdump", data)]))
    assert (leak.encoding, leak.offset) == ("hex (uppercase)", 6)


@pytest.mark.parametrize(
    ("codec", "encoding"),
    [
        ("utf-16-le", "utf-16-le"),
        ("utf-16-be", "utf-16-be"),
        ("utf-32-le", "utf-32-le"),
        ("utf-32-be", "utf-32-be"),
        ("cp037", "ebcdic (cp037)"),
    ],
)
def test_other_character_encodings(codec: str, encoding: str) -> None:
    data = b"body: " + f"card {PAN} on file".encode(codec)
    leak = _only(find_leaks({"pan": PAN}, blobs=[("flows", data)]))
    assert leak.location == RAW_LOCATION
    # ASCII in UTF-16-LE holds the UTF-16-BE form one byte earlier too: either is reported
    family = encoding[:6] if encoding.startswith("utf-") else encoding
    assert leak.encoding.startswith(family)
    _check_offset(data, leak, encoded_forms(PAN)[leak.encoding])


@pytest.mark.parametrize(
    "spelled",
    [
        TOKEN.replace(".", "\\u002e"),  # JSON escapes
        TOKEN.replace(".", "&#46;"),  # HTML character references
        TOKEN.replace(".", "&period;"),
        TOKEN.replace(".", "%2E"),  # percent-encoding of part of it
        TOKEN[:12] + "\u200b" + TOKEN[12:],  # a zero-width space
        TOKEN[:12] + "\x00" + TOKEN[12:],  # a NUL, which shows as nothing
        "".join(chr(ord(char) + 0xFEE0) for char in TOKEN),  # fullwidth
    ],
    ids=["json", "html decimal", "html named", "percent", "zero-width", "nul", "fullwidth"],
)
def test_what_a_person_reads_through(spelled: str) -> None:
    data = f"2024-05-01 GET /v1/cards note={spelled} done\n".encode()
    leak = _only(find_leaks(SECRETS, blobs=[("stdout", data)]))
    assert (leak.label, leak.location, leak.encoding) == ("org token", "raw bytes as read", "raw")
    assert TOKEN not in leak.context


def test_numbers_with_other_spaces_and_dashes() -> None:
    grouped = "4111 1111 1111 1111"
    for spelled in ("4111\u00a01111\u00a01111\u00a01111", "4111\u20131111\u20131111\u20131111"):
        secret = grouped if "\u00a0" in spelled else grouped.replace(" ", "-")
        leak = _only(find_leaks({"pan": secret}, blobs=[("stdout", spelled)]))
        assert leak.location == "raw bytes as read"


def test_as_read_reports_only_what_nothing_else_shows() -> None:
    spelled = f"{PAN[:4]}\u200b{PAN[4:]}"
    blobs = [("both", f"{PAN} and {spelled}".encode()), ("hidden", spelled.encode())]
    leaks = find_leaks({"pan": PAN}, blobs=blobs)
    assert [(leak.source, leak.location) for leak in leaks] == [
        ("both", RAW_LOCATION),
        ("hidden", "raw bytes as read"),
    ]


# --- containers ------------------------------------------------------------------------------


@pytest.mark.parametrize("content_encoding", ["gzip", "br", "zstd", "deflate"])
def test_flow_file_with_compressed_response_body(tmp_path: Path, content_encoding: str) -> None:
    clean = tflow.tflow(resp=True)
    leaky = tflow.tflow(resp=True)
    assert leaky.response is not None
    leaky.response.headers["content-encoding"] = content_encoding
    # compressible, so that every codec really compresses (brotli stores tiny bodies verbatim)
    padding = [{"type": "account", "id": str(n)} for n in range(50)]
    body = json.dumps({"data": {"token": TOKEN}, "included": padding}).encode()
    leaky.response.content = body  # encodes per content-encoding
    assert leaky.response.raw_content != body
    path = tmp_path / "flows.mitm"
    with path.open("wb") as file:
        writer = FlowWriter(file)
        writer.add(clean)
        writer.add(leaky)
    raw = path.read_bytes()
    assert TOKEN.encode() not in raw  # a plain byte search would miss this leak

    leak = _only(find_leaks(SECRETS, [path]))

    assert leak.source == str(path)
    assert leak.location == "flow 1 response body (decoded)"
    assert (leak.label, leak.encoding) == ("org token", "raw")
    assert leak.offset == body.index(TOKEN.encode())
    _check_offset(body, leak, TOKEN.encode())


def test_flow_file_plain_headers_found_in_raw_bytes(tmp_path: Path) -> None:
    flow = tflow.tflow(resp=True)
    flow.request.headers["authorization"] = f"Bearer {TOKEN}"
    path = tmp_path / "flows.mitm"
    with path.open("wb") as file:
        FlowWriter(file).add(flow)
    data = path.read_bytes()

    leak = _only(find_leaks(SECRETS, [path]))

    assert leak.location == RAW_LOCATION
    assert leak.offset == data.index(TOKEN.encode())


def test_flow_file_websocket_message_holding_gzip(tmp_path: Path) -> None:
    ws = websocket.WebSocketData()
    ws.messages = [websocket.WebSocketMessage(Opcode.BINARY, False, gzip.compress(PAN.encode()))]
    flow = tflow.tflow(resp=True, ws=ws)
    path = tmp_path / "ws.mitm"
    with path.open("wb") as file:
        FlowWriter(file).add(flow)

    leak = _only(find_leaks({"pan": PAN}, [path]))

    assert leak.location == "flow 0 websocket message 0 > gunzipped"
    assert leak.offset == 0


def test_har_with_base64_body(tmp_path: Path) -> None:
    flow = tflow.tflow(resp=True)
    assert flow.response is not None
    # binary enough for mitmproxy's HAR export to store it base64-encoded
    body = bytes(range(128, 256)) + SSN.encode() + bytes(range(200))
    flow.response.content = body
    har = SaveHar().make_har([flow])
    assert har["log"]["entries"][0]["response"]["content"]["encoding"] == "base64"
    path = tmp_path / "run.har"
    path.write_text(json.dumps(har, indent=2))

    leaks = find_leaks(SECRETS, [path])

    # visible twice: as inner base64 in the file, and in the decoded body
    decoded = [leak for leak in leaks if leak.location != RAW_LOCATION]
    leak = _only(decoded)
    assert leak.location == "har entry 0 response body (base64-decoded)"
    assert (leak.label, leak.encoding, leak.offset) == ("ssn", "raw", body.index(SSN.encode()))
    in_file = _only([leak for leak in leaks if leak.location == RAW_LOCATION])
    assert in_file.encoding.startswith("base64 inner")


def test_har_base64_body_finds_short_secret_only_decoded(tmp_path: Path) -> None:
    # 4-byte secret: too short for inner base64 matching, still found in the decoded body
    body = b"\x00\x01\x02" + b"Zq9#" + b"\xff"
    har = {"log": {"entries": [{"response": {"content": {"text": "", "encoding": "base64"}}}]}}
    har["log"]["entries"][0]["response"]["content"]["text"] = base64.b64encode(body).decode()
    path = tmp_path / "short.har"
    path.write_text(json.dumps(har))

    leak = _only(find_leaks({"pin": "Zq9#"}, [path], allow_short=True))

    assert (leak.location, leak.offset) == ("har entry 0 response body (base64-decoded)", 3)


def test_gzip_file(tmp_path: Path) -> None:
    text = f"line one\nssn={SSN}\n".encode()
    path = tmp_path / "gateway.log.gz"
    path.write_bytes(gzip.compress(text))

    leak = _only(find_leaks(SECRETS, [path]))

    assert (leak.source, leak.location) == (str(path), "gunzipped")
    assert leak.offset == text.index(SSN.encode())


def test_gzip_of_flow_file_with_gzip_body(tmp_path: Path) -> None:
    flow = tflow.tflow(resp=True)
    assert flow.response is not None
    flow.response.headers["content-encoding"] = "gzip"
    flow.response.content = b"card " + PAN.encode()
    plain = tmp_path / "flows.mitm"
    with plain.open("wb") as file:
        FlowWriter(file).add(flow)
    path = tmp_path / "flows.mitm.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()

    leak = _only(find_leaks(SECRETS, [tmp_path]))

    assert leak.location == "gunzipped > flow 0 response body (decoded)"
    assert leak.offset == 5


def test_directory_tree(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "clean.txt").write_text("nothing to see\n")
    (tmp_path / "a" / "b" / "deep.log").write_text(f"pan={PAN}\n")
    (tmp_path / "top.txt").write_text(f"x {TOKEN}")

    leaks = find_leaks(SECRETS, [tmp_path])

    assert sorted((leak.source, leak.label, leak.offset) for leak in leaks) == [
        (str(tmp_path / "a" / "b" / "deep.log"), "pan", 4),
        (str(tmp_path / "top.txt"), "org token", 2),
    ]


# --- clean outputs, messages, guards ---------------------------------------------------------


def test_clean_outputs_have_no_leaks(tmp_path: Path) -> None:
    flow = tflow.tflow(resp=True)
    with (tmp_path / "flows.mitm").open("wb") as file:
        FlowWriter(file).add(flow)
    (tmp_path / "run.har").write_text(json.dumps(SaveHar().make_har([flow])))
    (tmp_path / "log.gz").write_bytes(gzip.compress(b"all quiet\n" * 1000))
    (tmp_path / "empty").write_bytes(b"")
    # near misses: a truncated token and a PAN with one digit changed
    near = f"{TOKEN[:-1]} 4111111111111112 {base64.b64encode(TOKEN[:-2].encode()).decode()}"

    assert find_leaks(SECRETS, [tmp_path], [("stdout", near)]) == []
    assert_no_leaks(SECRETS, [tmp_path], [("stdout", near)])


def _all_forms(secret: str) -> list[str]:
    return [form.decode("latin-1") for form in encoded_forms(secret).values()]


def test_assertion_message_lists_hits_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    data = (
        f"{TOKEN}{PAN} q={quote(TOKEN, safe='')} "
        f"b64={base64.b64encode(b'xx' + SSN.encode()).decode()}\n"
    )
    path.write_text(data)

    with pytest.raises(AssertionError) as caught:
        assert_no_leaks(SECRETS, [path])

    message = str(caught.value)
    for secret in SECRETS.values():
        for form in _all_forms(secret):
            assert form not in message, "a secret form appears in the assertion message"
    leaks = find_leaks(SECRETS, [path])
    assert sorted((leak.label, leak.encoding) for leak in leaks) == [
        ("org token", "raw"),
        ("org token", "url-encoded"),
        ("pan", "raw"),
        ("ssn", "base64 inner (alignment 2)"),
    ]
    for leak in leaks:
        assert f"{path}:{leak.offset}: {leak.label} ({leak.encoding}) in raw bytes" in message
        # adjacent secrets (TOKEN directly followed by PAN) are masked in each other's context
        for secret in SECRETS.values():
            assert secret not in repr(leak)
            assert secret not in str(leak)
    token_leak = next(leak for leak in leaks if leak.encoding == "raw" and leak.label != "pan")
    assert token_leak.context.startswith("[org token][masked]")


def test_repeated_leak_reported_every_time() -> None:
    data = (f"{PAN}\n" * 3 + PAN * 3).encode()
    leaks = find_leaks({"pan": PAN}, blobs=[("stdout", data)])
    assert [leak.offset for leak in leaks] == [0, 17, 34, 51, 67, 83]
    assert all(PAN not in leak.context for leak in leaks)


def test_short_secrets_are_refused_unless_allowed() -> None:
    with pytest.raises(ValueError, match="'pin' is 4 characters") as caught:
        find_leaks({"pin": "1234"}, blobs=[("x", b"1234")])
    assert "1234" not in str(caught.value)
    assert _only(find_leaks({"pin": "1234"}, blobs=[("x", b"a1234")], allow_short=True)).offset == 1
    with pytest.raises(ValueError):
        find_leaks({"empty": ""}, allow_short=True)


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        find_leaks(SECRETS, [tmp_path / "never-written.log"])


@pytest.mark.parametrize("alignment", [0, 1, 2])
def test_shortest_secret_found_inside_base64_at_every_alignment(alignment: int) -> None:
    secret = "Zk3#q9"
    assert len(secret) == MIN_SECRET_CHARS
    blob = base64.b64encode(b"\xfe" * (3 + alignment) + secret.encode() + b"\xfe\xfe")
    leak = _only(find_leaks({"s": secret}, blobs=[("x", blob)]))
    assert len(encoded_forms(secret)[leak.encoding]) >= MIN_INNER_BASE64_CHARS
    assert leak.offset == 4 + {0: 0, 1: 2, 2: 3}[alignment]


def test_text_blob() -> None:
    leak = _only(find_leaks({"s": "abcdef"}, blobs=[("mitmweb GET /flows", "[x abcdef]")]))
    assert (leak.source, leak.offset) == ("mitmweb GET /flows", 3)


def test_tens_of_megabytes_scan_quickly() -> None:
    line = b"2024-05-01 12:00:00 INFO 127.0.0.1 GET /v1/accounts/123 200 application/json\n"
    data = line * 400_000  # ~31 MB
    data += base64.b64encode(bytes(range(256)) * 4000)  # and ~1.4 MB of base64
    secrets = {f"secret {n}": f"tok_{n}_{'k' * 20}{n}" for n in range(10)}
    started = time.perf_counter()
    assert find_leaks(secrets, blobs=[("big", data)]) == []
    # measured ~0.3 s; the bound only catches quadratic or per-byte Python loops
    assert time.perf_counter() - started < 15


# --- property: any planted secret under any encoding is found ------------------------------

Encoder = Callable[[str, bytes, bytes], tuple[bytes, int, int]]


def _direct(encode: Callable[[str], str | bytes]) -> Encoder:
    """Encode the secret itself; it sits between the random bytes."""

    def plant(secret: str, before: bytes, after: bytes) -> tuple[bytes, int, int]:
        encoded = encode(secret)
        encoded = encoded.encode() if isinstance(encoded, str) else encoded
        return before + encoded + after, len(before), len(encoded)

    return plant


def _inside_base64(encode: Callable[[bytes], bytes]) -> Encoder:
    """Encode random bytes + secret + random bytes as one base64 blob."""

    def plant(secret: str, before: bytes, after: bytes) -> tuple[bytes, int, int]:
        blob = encode(before + secret.encode() + after)
        return b"<<" + blob + b">>", 2, len(blob)

    return plant


ENCODERS: dict[str, Encoder] = {
    "raw": _direct(lambda s: s),
    "quote": _direct(lambda s: quote(s, safe="")),
    "quote lowercase": _direct(lambda s: _lower_hex(quote(s, safe=""))),
    "quote safe=/": _direct(quote),
    "quote_plus": _direct(lambda s: quote_plus(s, safe="")),
    "quote_plus lowercase": _direct(lambda s: _lower_hex(quote_plus(s, safe=""))),
    "json": _direct(lambda s: json.dumps(s)[1:-1]),
    "json \\/": _direct(lambda s: json.dumps(s)[1:-1].replace("/", "\\/")),
    "base64": _direct(lambda s: base64.b64encode(s.encode())),
    "base64 unpadded": _direct(lambda s: base64.b64encode(s.encode()).rstrip(b"=")),
    "base64url": _direct(lambda s: base64.urlsafe_b64encode(s.encode())),
    "base64url unpadded": _direct(lambda s: base64.urlsafe_b64encode(s.encode()).rstrip(b"=")),
    "hex": _direct(lambda s: s.encode().hex()),
    "utf-16-le": _direct(lambda s: s.encode("utf-16-le")),
    "utf-16-be": _direct(lambda s: s.encode("utf-16-be")),
    "utf-32-le": _direct(lambda s: s.encode("utf-32-le")),
    "utf-32-be": _direct(lambda s: s.encode("utf-32-be")),
    "cp037": _direct(lambda s: s.encode("cp037")),
    "inside base64": _inside_base64(base64.b64encode),
    "inside base64url": _inside_base64(base64.urlsafe_b64encode),
}

printable_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@settings(max_examples=400, deadline=None)
@given(
    secret=st.text(printable_ascii, min_size=8, max_size=60),
    before=st.binary(max_size=80),
    after=st.binary(max_size=80),
    encoder=st.sampled_from(sorted(ENCODERS)),
)
def test_planted_secret_is_always_found(
    secret: str, before: bytes, after: bytes, encoder: str
) -> None:
    data, start, length = ENCODERS[encoder](secret, before, after)

    leaks = find_leaks({"planted": secret}, blobs=[("blob", data)])

    forms = encoded_forms(secret)
    overlapping = [
        leak
        for leak in leaks
        if leak.location == RAW_LOCATION
        and leak.offset < start + length
        and leak.offset + leak.length > start
    ]
    assert overlapping, f"not found under {encoder}"
    for leak in overlapping:
        assert leak.label == "planted"
        _check_offset(data, leak, forms[leak.encoding])
