"""No real Unit token reaches a caller that used a placeholder, whatever route it took.

Every answer from a Unit upstream to a placeholder caller passes :func:`check_response`, so a
route-table gap cannot hand out a credential: a Unit token in the body, a header value, the
reason or a trailer becomes the placeholder of the identity its claims name (or
:data:`WITHHELD`), and an answer that cannot be checked (an encoding the gateway cannot undo,
too large, followed by bytes it does not hold, a transfer coding mitmproxy does not undo) or
that holds a token in a form it does not rewrite (escapes, percent-encoding, UTF-16/32, a
header name, a folded header) is withheld with a 502. An ordinary answer costs a few substring
searches, in C.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from mitmproxy import http

from unit_gateway.net.base64_runs import base64_runs, may_hold_base64
from unit_gateway.net.bodies import UndecodableBody, decode_content
from unit_gateway.net.headers import has_header_field
from unit_gateway.unit_api import paseto
from unit_gateway.unit_api.identity import ID_PATTERN, ORG, Identity

#: The prefix of every Unit token (PASETO v2.public).
MARK = paseto.PREFIX.encode("ascii")
_TEXT_MARK = paseto.PREFIX
# The bare prefix too: nothing spelled like a token is left for a caller to wonder about.
_TOKEN = re.compile(rb"v2\.public\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?")
_ID = re.compile(ID_PATTERN)
_JSON_ESCAPE = re.compile(rb"\\u([0-9A-Fa-f]{4})")
#: A prefix and what reads as the rest of a token after white space (a folded header line,
#: joined with a space by a client, or a line break in a body): a token's payload is over 32
#: characters, words after a prefix quoted in an error text are not.
_SPLIT = re.compile(rb"v2\.public\.[A-Za-z0-9_-]*\s+[A-Za-z0-9_-]{32}")
#: What of a Transfer-Encoding mitmproxy undoes itself (or that changes nothing).
_TRANSFER_CODINGS = re.compile(r"\b(?:chunked|identity)\b", re.IGNORECASE)
_CHARSET = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)
#: What stands in for a token whose claims name no identity the gateway has a placeholder for.
WITHHELD = "unitgw:token-withheld"
_WIDE = tuple(_TEXT_MARK.encode(c) for c in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"))


def placeholder_for(token: bytes) -> str:
    """The placeholder of the identity a Unit token's claims name (read, not verified: the
    placeholder is no credential, so a wrong claim costs nothing)."""
    claims = paseto.claims_of(token.decode("ascii"))
    if claims is None:
        return WITHHELD
    role = claims.get("role")
    if role == "org":
        return ORG.placeholder
    for kind, key in (("customer", "customerId"), ("cardholder", "cardId")):
        subject = claims.get(key)
        if role == kind and isinstance(subject, str) and _ID.fullmatch(subject):
            return Identity(kind, subject).placeholder
    return WITHHELD


def replace_tokens(data: bytes, used: list[str]) -> bytes:
    """``data`` with every Unit token replaced by its placeholder; each placeholder put in
    is appended to ``used``."""

    def placeholder(token: re.Match[bytes]) -> bytes:
        used.append(placeholder_for(token.group()))
        return used[-1].encode("ascii")

    return _TOKEN.sub(placeholder, data)


#: Every ASCII byte: in a charset that reads each as itself, a token is in the plain bytes.
_ASCII = bytes(range(128))


@functools.lru_cache(maxsize=64)
def _charset_spells_ascii(charset: str) -> bool | None:
    """Whether ``charset`` reads ASCII bytes as ASCII and has no other spelling of the token
    prefix (UTF-8, Latin-1...); None for a charset Python does not know. UTF-7 spells the
    prefix in ASCII too, but reads "+AHY-" as a "v": it is read to be sure."""
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        return None
    try:
        return _TEXT_MARK.encode(name) == MARK and codecs.decode(_ASCII, name) == _ASCII.decode()
    except (UnicodeError, LookupError, TypeError):
        return False  # a codec that is not a text encoding (base64...): read it to be sure


def hidden_token(data: bytes, content_type: str | None = None) -> str | None:
    """How ``data`` spells a Unit token that is not in it as plain bytes, or None. ``data``
    is what Unit sent, plain tokens and all: a reading must hold no token but those, each
    exactly as long (an escape just after a plain prefix makes the token a reader gets
    longer than the one replaced). Each reading costs only when its escape byte is there
    (one memchr each, otherwise), base64 only where a run of it is (one translate)."""
    plain = frozenset(_TOKEN.findall(data)) if MARK in data else frozenset()
    if b"\\" in data and _new_token(_JSON_ESCAPE.sub(_unescape, data), plain):
        return "in JSON \\u escapes"
    if b"%" in data and _new_token(unquote_to_bytes(data), plain):
        return "percent-encoded"
    if b"\x00" in data and any(wide in data for wide in _WIDE):
        return "in UTF-16 or UTF-32"
    text = data.decode("latin-1")
    if may_hold_base64(text) and any(
        _TEXT_MARK in reading for _, _, readings in base64_runs(text) for reading in readings
    ):
        return "base64-encoded"
    if content_type and "charset" in content_type.lower():
        found = _CHARSET.search(content_type)
        charset = found.group(1) if found else ""
        spells_ascii = _charset_spells_ascii(charset)
        if spells_ascii is None:
            return "in a charset the gateway does not know (it cannot check the body)"
        if not spells_ascii:
            try:
                text = codecs.decode(data, charset, "replace")
            except Exception:  # a codec that cannot read these bytes at all
                return "in a charset the gateway cannot read (it cannot check the body)"
            if isinstance(text, str) and _TEXT_MARK in text:
                return "in the charset its Content-Type declares"
            if not isinstance(text, str):
                return "in a charset the gateway cannot read (it cannot check the body)"
    return None


def _new_token(reading: bytes, plain: frozenset[bytes]) -> bool:
    """Whether ``reading`` holds a token that is not one of the ``plain`` ones."""
    return MARK in reading and not plain.issuperset(_TOKEN.findall(reading))


def _unescape(escape: re.Match[bytes]) -> bytes:
    return chr(int(escape.group(1), 16)).encode("utf-8", "surrogatepass")


@dataclass
class Verdict:
    """What the caller may get of an answer."""

    #: The answer with every token replaced; None when there was none (the answer goes as is).
    replacement: http.Response | None = None
    #: The placeholders put in place of tokens.
    placeholders: list[str] = field(default_factory=list)
    #: Why the answer must not reach the caller at all; None when it may.
    withheld: str | None = None


def _head_of(response: http.Response) -> bytes:
    """Everything of an answer but its body that a caller reads, as one blob to search."""
    fields = response.data.headers.fields
    if response.trailers is not None:
        fields += response.trailers.fields
    return b"\n".join([response.data.reason, *(part for pair in fields for part in pair)])


def _values(fields: tuple[tuple[bytes, bytes], ...]) -> Iterator[bytes]:
    return (value for _, value in fields)


def check_response(response: http.Response, limit: int) -> Verdict:
    """Check an answer as the caller would get it (real headers and body): see the module.
    ``limit`` bounds the bytes a compressed body may decode to."""
    head = _head_of(response)
    in_head = MARK in head
    body = b""
    raw = response.raw_content
    fields = response.data.headers.fields
    transfer = (
        _field(fields, b"transfer-encoding")
        if has_header_field(fields, b"transfer-encoding")
        else None
    )
    if transfer is not None and _TRANSFER_CODINGS.sub("", transfer).strip(" \t,"):
        # mitmproxy undoes only "chunked": a gzip transfer coding reaches the caller as Unit
        # sent it, to be undone by the caller's client.
        return Verdict(
            withheld="its body could not be checked: it has a Transfer-Encoding other than chunked"
        )
    if raw:
        coding = (_field(fields, b"content-encoding") or "").strip().lower()
        if coding and coding != "identity":
            try:
                body = decode_content(raw, coding, limit)
            except UndecodableBody:
                # (Unit's Content-Encoding is not quoted: any header value can hold a token.)
                return Verdict(
                    withheld="its body could not be checked: the gateway cannot undo its "
                    f"Content-Encoding within {limit} bytes"
                )
        else:
            body = raw
    in_body = MARK in body
    verdict = Verdict()
    used = verdict.placeholders
    if in_head:
        trailers = response.trailers.fields if response.trailers is not None else ()
        if any(MARK in name for name, _ in fields + trailers):
            return Verdict(withheld="a header name holds a Unit token")
        if any(b"\r" in value or b"\n" in value for _, value in fields + trailers):
            # A folded line (obs-fold, kept as is): a caller joins what follows the prefix
            # replaced to it.
            return Verdict(withheld="a header folded over lines holds a Unit token")
        # Each value on its own: in the head blob a value's end and the next header's name
        # are joined by a line break, and a value that ends with a token followed by a long
        # name (access-control-allow-credentials: 32 characters) read as a split token.
        if any(
            _SPLIT.search(value) for value in (response.data.reason, *_values(fields + trailers))
        ):
            return Verdict(withheld="its head holds a Unit token split by white space")
    if in_body and _SPLIT.search(body):
        return Verdict(withheld="its body holds a Unit token split by white space")
    # Read before the plain tokens are replaced: an escape right after a plain prefix
    # makes a longer token than the one that would be replaced.
    how = hidden_token(head)
    if how is not None:
        return Verdict(withheld=f"its head holds a Unit token {how}")
    if body:
        how = hidden_token(body, _field(fields, b"content-type"))
        if how is not None:
            return Verdict(withheld=f"its body holds a Unit token {how}")
    if in_head:
        head = replace_tokens(head, used)
    if in_body:
        body = replace_tokens(body, used)
    if not in_head and not in_body:
        return verdict
    replaced = response.copy()
    replaced.data.reason = replace_tokens(replaced.data.reason, [])
    replaced.headers.fields = _replaced_values(replaced.headers.fields)
    if replaced.trailers is not None:
        replaced.trailers.fields = _replaced_values(replaced.trailers.fields)
    if in_body:
        # Sent decoded: the caller takes an identity body whatever it asked for, and no
        # encoder has to agree with the decoder.
        replaced.headers.pop("content-encoding", None)
        replaced.set_content(body)
    verdict.replacement = replaced
    return verdict


def _field(fields: tuple[tuple[bytes, bytes], ...], lowered: bytes) -> str | None:
    """What ``headers.get(name)`` returns, without building mitmproxy's Headers view."""
    values = [value for name, value in fields if name.lower() == lowered]
    return b", ".join(values).decode("latin-1") if values else None


def _replaced_values(fields: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((name, replace_tokens(value, [])) for name, value in fields)
