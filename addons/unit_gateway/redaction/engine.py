"""The redaction engine: what a person or a file may see of a flow.

Pure logic, no mitmproxy hooks: the addons call a :class:`Redactor` on copies of what they
show, log or save, never on what goes to the caller or to Unit. Every method returns new
objects and leaves its inputs alone.

What gets redacted (rules and defaults live in :mod:`unit_gateway.redaction.rules`):

* Headers: credentials (``Authorization``, ``Proxy-Authorization``, ``Cookie``,
  ``Set-Cookie`` + configured) become keyed fingerprints; every other header value goes
  through the text rules.
* JSON: a value under a sensitive key (any depth, case-insensitive) is replaced whole, as is
  the value a configured path rule points at; every other string, key and long number goes
  through the detectors (card numbers, SSNs, Unit tokens, JWTs), and strings that themselves
  look like ``key: value`` or ``key=value`` text through the key rules too.
* Form bodies and query strings: by parameter name (any ``a[b][c]`` / ``a.b`` component)
  and detectors on decoded names and values.
* Multipart: parts by name; file parts become a summary; other parts are redacted by their
  own content type.
* Everything else that is text: the key rules on a best-effort basis (``"pan": "…"``,
  ``'pan': …``, ``pan=…``, ``pan: …``) and the detectors, which are exact.
* Binary bodies, documents and bodies that cannot be decompressed: a one-line summary.

The detectors read a string that is not ASCII also as a screen shows it
(:func:`~unit_gateway.redaction.rules.visible`): without zero-width and control characters,
every space and dash, and fullwidth and mathematical digits, as ASCII's.

What is guaranteed for a body that is not JSON that parses (malformed JSON, invalid UTF-8,
text, forms, multipart), whatever it declares: it is read every way a person's viewer may read
its bytes (:func:`readings`: its Content-Type's charset and, for XML, HTML and CSS, the one
inside it; a byte-order mark's; UTF-8, Latin-1, Windows-1252, UTF-16 and UTF-32), each
reading also with its escapes resolved (JSON, JavaScript and Python string escapes, HTML
character references, percent-encoding: :func:`unescaped`) and as a screen shows it, and the
text rules run over each. When one of them finds something, the copy shown is that reading
redacted (with its escapes resolved, if that is where it was found), written back in that
reading's encoding, and it is read again in every way. When that does not settle, or the
charset is not one Python reads as text (unknown, or base64, zlib), the body is shown as its
summary. The detectors are exact in every reading: no Luhn-valid card number, dashed SSN, Unit
token or JWT survives in any. The key rules are best effort: they find the syntaxes above (a
quoted value with its escapes, a number or bare word, an object or array up to its closing
bracket or to the end of a truncated body, JSON inside a JSON string at any depth of
escaping) and nothing else: not XML or YAML blocks, not a person's name in prose. A body that
cannot be decompressed, or looks binary (a NUL is enough), shows nothing but its type and
size.

JSON that parses is walked as parsed, which is what mitmweb's JSON view shows; written out
again it is UTF-8 without NUL, whose other readings show the detectors nothing more (see
:func:`readings`), unless its Content-Type names another charset: then it is read as above.
Escapes of other syntaxes inside its strings (``&#46;``, ``%2E``) are not resolved: that
would cost every JSON body another pass over its bytes.

Markers: a redacted value becomes ``[redacted:<rule>]``; a token becomes
``[token …a1b2c3]``, an HMAC-SHA256 of the token under a key that never leaves the process,
so the same token always shows the same fingerprint within a run and nobody without the key
can tell which token it was. In JSON every marker is a string, even where the value was a
number or an object: the output is only ever displayed or stored, a string says "this was
removed" where a fake number would pass for data, and the document stays valid JSON.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import hmac
import html.entities
import json
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, unquote, unquote_plus

import orjson

from unit_gateway.config.redaction import (
    DEFAULT_BINARY_SUMMARY_CONTENT_TYPES,
    DEFAULT_BINARY_SUMMARY_ROUTES,
    DEFAULT_FIELDS,
    DEFAULT_HEADERS,
    DEFAULT_QUERY_PARAMS,
    FINGERPRINTED_FIELDS,
    PathRule,
    RedactionSettings,
)
from unit_gateway.net.bodies import UndecodableBody, decode_content
from unit_gateway.redaction.rules import (
    DETECTOR_RULES,
    Detectors,
    compile_content_types,
    compile_route_patterns,
    names_pattern,
    visible,
)
from unit_gateway.unit_api.identity import PLACEHOLDER_PATTERN

__all__ = [
    "MARKER",
    "PLACEHOLDER",
    "RedactedBody",
    "RedactionSettings",
    "Redactor",
    "readings",
    "unescaped",
]

#: Used when no key is configured: fingerprints agree across every Redactor in this process
#: (a configuration reload keeps them stable) and mean nothing outside it.
_PROCESS_KEY = secrets.token_bytes(32)

#: Any marker this module writes (URLs keep them readable instead of percent-encoding them).
MARKER = re.compile(
    r"\[(?:redacted:[^\]\r\n]{1,200}|token …[0-9a-f]{6}"
    r"|binary (?:body|part) redacted: [^\]\r\n]{1,200})\]"
)

#: A fingerprint. A credential that already is one is left alone: it reveals 24 bits of a
#: keyed hash and nothing else, and leaving it makes redacting twice change nothing.
_FINGERPRINT = re.compile(r"\[token …[0-9a-f]{6}\]")

#: The gateway's own stand-ins for a token (design.md, "Identity"): not secrets, kept visible.
PLACEHOLDER = re.compile(PLACEHOLDER_PATTERN)

BodyKind = Literal["empty", "json", "form", "multipart", "text", "binary"]


@dataclass(frozen=True)
class RedactedBody:
    """A body fit to show: decompressed (drop ``Content-Encoding`` when you use it), UTF-8
    for every kind but ``empty``, except text and forms redacted in another reading (written
    back in its encoding: EBCDIC stays EBCDIC), and how many values each rule redacted."""

    content: bytes
    kind: BodyKind
    counts: Mapping[str, int] = field(default_factory=dict)
    #: Whether ``content`` must be shown instead of the original: something was redacted,
    #: or a re-serialized JSON document differs from the original bytes. The original may
    #: hold what the parser dropped (a duplicate key's earlier value), unchecked.
    changed: bool = False

    @property
    def redacted(self) -> bool:
        return bool(self.counts)


# --- body parsing helpers ------------------------------------------------------------------

#: Body kinds whose shown copy is rebuilt from a parse, not edited in place.
_RESERIALIZED = frozenset({"json", "multipart"})
_JSON_TYPES = frozenset({"application/json", "text/json", "application/vnd.api+json"})
_FORM_TYPE = "application/x-www-form-urlencoded"
_SAFE_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,64}/[a-z0-9!#$&^_.+-]{1,100}")
#: Containers whose content no text rule can see into.
_BINARY_MAGIC = (
    b"%PDF-",
    b"\x89PNG",
    b"\xff\xd8\xff",  # JPEG
    b"GIF8",
    b"PK\x03\x04",  # zip, docx, xlsx
    b"II*\x00",  # TIFF
    b"MM\x00*",
    b"RIFF",  # WebP, WAV, AVI
    b"\x1f\x8b",  # a gzip file that is the content, not its encoding
    b"\xd0\xcf\x11\xe0",  # MS Office (OLE)
    b"%!PS",
)
#: C0 controls other than whitespace, backspace and escape, plus DEL: rare in text.
#: Binary values up to this size (an IPv6 address in a DNS record) get the text rules rather
#: than a summary: no encoding that hides text from them fits a secret in so few bytes.
SHORT_BINARY_VALUE = 16
_CONTROL_BYTES = bytes(b for b in range(0x20) if b not in b"\t\n\r\f\b\x1b") + b"\x7f"
_MAX_MULTIPART_DEPTH = 4


def _parse_content_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """(lower-case media type or "", parameters with lower-case names)."""
    if not content_type:
        return "", {}
    media, _, rest = content_type.partition(";")
    params: dict[str, str] = {}
    for item in rest.split(";"):
        name, eq, value = item.partition("=")
        if eq:
            params[name.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), params


def _looks_binary(data: bytes) -> bool:
    """NUL anywhere, or more than 1 in 10 bytes a control character. Invalid UTF-8 alone is
    not binary: it still gets the text rules over a replacement-decoded view."""
    if data.startswith(_BINARY_MAGIC) or b"\x00" in data:
        return True
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    return controls * 10 > len(data)


def _starts_like_json(data: bytes) -> bool:
    head = data[:64].lstrip(b" \t\r\n")
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :].lstrip(b" \t\r\n")
    return head[:1] in (b"{", b"[")


# --- how a person may read a body ----------------------------------------------------------

#: UTF-32's marks first: UTF-32-LE's starts with UTF-16-LE's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
#: Where mitmproxy's infer_content_encoding finds a charset inside a body, by media type.
_XML_ENCODING = re.compile(rb"""<\?xml[^\?>]+encoding=['"]([^'"\?>]+)""", re.IGNORECASE)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset=['"]?([^'">]+)""", re.IGNORECASE)
_CSS_CHARSET = re.compile(rb"""@charset "([^"]+)";""", re.IGNORECASE)
_EBCDIC_XML = "<?xml".encode("cp037")
#: Bytes in which Windows-1252 differs from Latin-1.
_C1_BYTES = re.compile(rb"[\x80-\x9f]")
#: Escapes, ASCII and invisible-ish text that a codec may read other than as ASCII (UTF-7's
#: "+…-", HZ's "~{…~}", ISO-2022's escape sequences, unicode_escape's backslashes).
_ASCII_PROBES = (
    bytes(range(128)),
    b"+ADQ-",
    b"~{41~}",
    b"\x1b$B41\x1b(B",
    b"\\u0034\\x34",
    b"xn--4-",
)


@functools.lru_cache(maxsize=256)  # bounded: the name comes from the message
def _text_codec(charset: str) -> str | None:
    """Python's name for a declared charset, or None when it is not a text encoding Python
    knows (unknown, or a bytes transform such as base64 or zlib that a viewer may apply)."""
    try:
        name = codecs.lookup(charset).name
    except (LookupError, ValueError, TypeError):
        return None
    try:
        b"a".decode(name)
    except LookupError:  # "not a text encoding" (empty bytes would not even ask)
        return None
    except Exception:  # a text encoding that cannot decode this byte alone (UTF-16)
        pass
    return name


@functools.lru_cache(maxsize=256)
def _reads_ascii_as_ascii(codec: str) -> bool:
    try:
        return all(probe.decode(codec) == probe.decode("ascii") for probe in _ASCII_PROBES)
    except Exception:  # any codec that cannot decode plain ASCII is not one
        return False


def _declared_codecs(data: bytes, media_type: str, params: Mapping[str, str]) -> list[str] | None:
    """The codecs a body names for itself: its Content-Type charset, and for XML, HTML and CSS
    the declaration inside it (mitmproxy reads them; gb2312 and gbk as gb18030). None when one
    names no text encoding Python knows: a viewer may read those bytes in a way this engine
    cannot check, so the body is shown as a summary."""
    names: list[bytes | str] = []
    if charset := params.get("charset"):
        names.append(charset)
    for applies, pattern in (
        ("html" in media_type, _META_CHARSET),
        ("xml" in media_type, _XML_ENCODING),
        (media_type == "text/css", _CSS_CHARSET),
    ):
        if applies and (found := pattern.search(data)) is not None:
            names.append(found.group(1))
    if "xml" in media_type and data.startswith(_EBCDIC_XML):
        # XML's own autodetection (its appendix F): the declaration is in EBCDIC too
        head = data[:256].decode("cp037").encode("latin-1", "replace")
        found = _XML_ENCODING.search(head)
        names.append(found.group(1) if found is not None else "cp037")
    declared: list[str] = []
    for name in names:
        text = name.decode("latin-1") if isinstance(name, bytes) else name
        codec = _text_codec(text.strip())
        if codec is None:
            return None
        declared += [codec, "gb18030"] if codec in ("gb2312", "gbk") else [codec]
    return declared


def _decode(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec, "replace")
    except UnicodeError:  # a codec that supports strict errors only (idna)
        try:
            return data.decode(codec)
        except Exception:  # the viewer fails as well, and falls back to UTF-8
            return None
    except Exception:
        return None


def _encode(text: str, codec: str) -> bytes:
    try:
        return text.encode(codec)
    except UnicodeEncodeError:  # a fingerprint's "…" in EBCDIC or Latin-1, a U+FFFD
        return text.replace("\u2026", "...").encode(codec, "replace")
    except Exception:  # a codec that cannot write at all: the next round reads UTF-8 too
        return text.encode("utf-8", "replace")


def readings(data: bytes, declared: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(codec, text) for every way a person's viewer may decode ``data``, identical texts
    once, undecodable bytes as U+FFFD: the ``declared`` codecs, the one a byte-order mark
    names, UTF-8 (mitmproxy's raw view and every fallback), Latin-1 (get_text's and HAR's
    fallback) and Windows-1252 (what a browser shows for it), UTF-16 and UTF-32 in both byte
    orders (a byte-order mark, json.loads' sniffing, a hex viewer).

    Valid UTF-8 without NUL, declared as UTF-8 (or as an encoding that reads ASCII as ASCII,
    if it is ASCII), has one reading that matters, its UTF-8 one: in Latin-1 and
    Windows-1252 each non-ASCII character starts with a letter (the lead byte), which ends
    every run a detector matches, so they show the detectors nothing the UTF-8 reading does
    not; and in UTF-16 and UTF-32 no character looks like an ASCII digit or a "J", one of
    which every detector needs (test_utf16_and_utf32_readings_of_utf8_show_no_digit_and_no_j).
    Other bytes get every reading; a declared codec Python cannot decode them with is left
    out (mitmproxy's get_text fails too, and falls back to UTF-8)."""
    ascii_only = data.isascii()
    if b"\x00" not in data:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if all(
                codec == "utf-8" or (ascii_only and _reads_ascii_as_ascii(codec))
                for codec in declared
            ):
                return [("utf-8", text)]
    wanted = list(declared)
    wanted += [codec for bom, codec in _BOMS if data.startswith(bom)][:1]
    wanted += ["utf-8"] if ascii_only else ["utf-8", "latin-1"]
    if _C1_BYTES.search(data) is not None:
        wanted.append("cp1252")
    # Without NUL no UTF-32 unit is a character, and without NUL, 0xFF (fullwidth forms) or
    # 0xD8 (the surrogates of mathematical digits) no UTF-16 one looks like a digit or a "J".
    if b"\x00" in data or b"\xff" in data or b"\xd8" in data:
        wanted += ["utf-16-le", "utf-16-be"]
    if b"\x00" in data:
        wanted += ["utf-32-le", "utf-32-be"]
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for codec in dict.fromkeys(wanted):
        text = _decode(data, codec)
        if text is not None and text not in seen:
            seen.add(text)
            found.append((codec, text))
    return found


#: What a reader resolves in a text: JSON, JavaScript and Python string escapes, HTML character
#: references and percent-encoding. mitmweb's JSON view shows JSON strings unescaped, and a
#: person reads "v2\\u002epublic" or "4111&#32;1111" as what they stand for.
_ESCAPE = re.compile(
    r"\\(?:u\{(?P<brace>[0-9A-Fa-f]{1,6})\}|u(?P<u>[0-9A-Fa-f]{4})|U(?P<big>[0-9A-Fa-f]{8})"
    r"|x(?P<x>[0-9A-Fa-f]{2})"
    r"|(?P<simple>[\\/\"'bfnrtv0]))"
    r"|&#(?:[xX](?P<hexref>[0-9A-Fa-f]{1,6})|(?P<decref>[0-9]{1,7}));?"
    r"|&(?P<named>[A-Za-z][A-Za-z0-9]{1,31};)"
    r"|(?P<percent>(?:%[0-9A-Fa-f]{2})+)"
)
_SIMPLE_ESCAPES = {
    "\\": "\\", "/": "/", '"': '"', "'": "'", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
    "v": "\v", "0": "\0",
}  # fmt: skip
_SURROGATE = re.compile("[\ud800-\udfff]")


def _unescaped_one(match: re.Match[str]) -> str:
    kind = match.lastgroup
    value = match.group(kind or 0)
    if kind == "simple":
        return _SIMPLE_ESCAPES[value]
    if kind == "named":
        return html.entities.html5.get(value, match.group())
    if kind == "percent":
        return bytes.fromhex(value.replace("%", "")).decode("utf-8", "replace")
    code = int(value, 10 if kind == "decref" else 16)
    return chr(code) if code <= 0x10FFFF else "\ufffd"


def _has_escapes(text: str) -> bool:
    return "\\" in text or "&" in text or "%" in text


def unescaped(text: str) -> str:
    """``text`` with every escape :data:`_ESCAPE` knows resolved, once (``\\\\u0034`` is a
    backslash and "u0034"); an escaped surrogate pair becomes its character."""
    out = _ESCAPE.sub(_unescaped_one, text)
    if _SURROGATE.search(out) is not None:
        out = out.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return out


# --- text helpers --------------------------------------------------------------------------

_QUOTE_OPEN = re.compile(r"""\\*["']""")
_DOUBLE_QUOTED_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_SINGLE_QUOTED_REST = re.compile(r"[^'\\]*(?:\\.[^'\\]*)*", re.DOTALL)
# Bare values end where the surrounding syntax resumes: a query's & or ;, a JSON string's
# closing (or escaped) quote. Not at an apostrophe: "fullName: Peter O'Brien".
_EQUALS_VALUE = re.compile(r'[^\s&;,"\\]*')
_COLON_VALUE = re.compile(r'[^,}\]\r\n"]*')
_LINE_VALUE = re.compile(r'[^\r\n"]*')  # Cookie: a=1; b=2
_AUTHORIZATION_VALUE = re.compile(
    r"(?:[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]* +)?(?:\[token …[0-9a-f]{6}\]|[^\s\"']+)"
)
_STRUCTURAL = re.compile(r'[\[\]{}"]')
_SEPARATOR = re.compile(r"[ \t]*([:=])[ \t]*")
_COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_AUTH_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,31}")
_NAME_PARTS = re.compile(r"[\[\].]+")
_URL_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
_URL_HEADERS = frozenset({"location", "content-location", "referer", "origin"})
#: What _redact_header_value leaves as it is (but for the detectors) in these headers: an
#: optional auth scheme and one of the gateway's placeholders, nothing else.
_PLACEHOLDER_HEADERS = frozenset({b"authorization", b"proxy-authorization"})
_PLACEHOLDER_CREDENTIAL = re.compile(
    rb"[ \t]*(?:[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,31} +)?"
    + PLACEHOLDER_PATTERN.encode()
    + rb"[ \t]*"
)
_DISPOSITION_PARAM = re.compile(
    r""";\s*(?P<name>[A-Za-z*-]+)\s*=\s*(?P<value>"(?:[^"\\]|\\.)*"|[^;]*)""", re.DOTALL
)


def _bracket_end(text: str, start: int) -> int:
    """End of the JSON-ish object or array opening at ``start`` (end of text if unbalanced)."""
    depth = 0
    pos = start
    while True:
        match = _STRUCTURAL.search(text, pos)
        if match is None:
            return len(text)
        char = match.group()
        if char == '"':
            rest = _DOUBLE_QUOTED_REST.match(text, match.end())
            assert rest is not None  # the pattern matches the empty string
            pos = rest.end() + 1
            continue
        depth += 1 if char in "[{" else -1
        if depth <= 0:
            return match.end()
        pos = match.end()


def _value_span(
    text: str, pos: int, separator: str, bare: re.Pattern[str] | None = None
) -> tuple[int, int, bool] | None:
    """Where the value after ``key:`` / ``key=`` at ``pos`` is: (start, end, is an object or
    array). The inside of a quoted string, a whole object/array, or an unquoted value as
    ``bare`` (by default: up to the next delimiter of the syntax ``separator`` suggests).
    None when there is no value."""
    if pos >= len(text):
        return None
    opening = _QUOTE_OPEN.match(text, pos)
    if opening is not None:
        quote_text = opening.group()
        start = opening.end()
        if quote_text == '"':
            end_match = _DOUBLE_QUOTED_REST.match(text, start)
        elif quote_text == "'":
            end_match = _SINGLE_QUOTED_REST.match(text, start)
        else:
            return start, _escaped_string_end(text, start, quote_text), False
        assert end_match is not None
        return start, end_match.end(), False
    if text[pos] in "{[":
        return pos, _bracket_end(text, pos), True
    pattern = bare or (_EQUALS_VALUE if separator == "=" else _COLON_VALUE)
    unquoted = pattern.match(text, pos)
    assert unquoted is not None
    end = len(text[pos : unquoted.end()].rstrip()) + pos
    return (pos, end, False) if end > pos else None


def _escaped_string_end(text: str, start: int, opening: str) -> int:
    """End of a string opened by a quote behind b backslashes (JSON inside a JSON string,
    ``\\"pan\\":\\"…\\"``, has b = 1). Each level of escaping doubles every backslash and puts
    one before each quote, so a quote behind k backslashes closes the string exactly when
    k = b (mod 2(b + 1)); at b = 1, k = 3 (mod 4) is a quote inside the value."""
    quote_char, escapes = opening[-1], len(opening) - 1
    period = 2 * (escapes + 1)
    position = start
    while (found := text.find(quote_char, position)) != -1:
        backslashes = 0
        while found - backslashes - 1 >= start and text[found - backslashes - 1] == "\\":
            backslashes += 1
        if backslashes % period == escapes:
            return found - escapes
        position = found + 1
    return len(text)


def _requote(text: str, safe: str) -> str:
    """Percent-encode ``text`` for a URL, leaving the markers in it readable."""
    pieces: list[str] = []
    done = 0
    for match in MARKER.finditer(text):
        pieces.append(quote(text[done : match.start()], safe=safe))
        pieces.append(match.group())
        done = match.end()
    pieces.append(quote(text[done:], safe=safe))
    return "".join(pieces)


# --- the engine ----------------------------------------------------------------------------

type _State = tuple[int, int]  # (path rule index, next segment index)
#: Rules for one reading of a text: the text redacted; what they found is added to the Counter.
type _Rules = Callable[[str, Counter[str]], str]

_UNSEEN: Any = object()
_CACHE_LIMIT = 100_000  # entries per walk: bounds memory on a body of unique strings
_CACHED_STRING_MAX = 256
#: Keys known across documents: an API's documents use the same few hundred keys over and
#: over. Bounded in count and length, so a document of unique keys (ids as keys) cannot grow
#: it; when full it is emptied, so the keys in use are learnt again.
_KNOWN_KEYS_LIMIT = 10_000
#: What json.dumps(…, ensure_ascii=False) builds on every call.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)
#: How often a body or a value is read again after a reading found something: each round
#: redacts a whole reading, so two or three suffice; one that still finds more is in doubt.
_MAX_ROUNDS = 4


def _other_views(text: str) -> Iterator[str]:
    """The other ways a person reads ``text``: as it shows on a screen, with its escapes
    resolved, and both; each only when it differs. Escapes are resolved twice: a string
    inside JSON that does not parse holds escapes of its own (``\\\\u0031``)."""
    shown = visible(text)
    if shown != text:
        yield shown
    for _ in range(2):
        if not _has_escapes(text):
            return
        resolved = unescaped(text)
        if resolved == text:
            return
        yield resolved
        shown = visible(resolved)
        if shown != resolved:
            yield shown
        text = resolved


@dataclass(slots=True)
class _Walk:
    """One JSON document's walk: what it redacted, and what it already found clean."""

    counts: Counter[str]
    clean: set[str]  # strings no rule changes


class Redactor:
    """Applies :class:`RedactionSettings` (plus the defaults) to bodies, headers, URLs, text.

    ``key``: the fingerprint key; by default a random key made once per process. Methods that
    return ``str`` take an optional ``counts`` Counter and add what they redacted to it;
    :meth:`redact_body` returns its counts. Count names come from :attr:`rule_names`.
    """

    def __init__(self, settings: RedactionSettings | None = None, key: bytes | None = None) -> None:
        self.settings = settings if settings is not None else RedactionSettings()
        self._key = key if key is not None else _PROCESS_KEY
        settings = self.settings
        # lower-case name -> name as configured (used in markers and count names)
        self._fields: dict[str, str] = {}
        for name in (*DEFAULT_FIELDS, *settings.fields):
            self._fields.setdefault(name.lower(), name)
        self._params: dict[str, str] = dict(self._fields)
        for name in (*DEFAULT_QUERY_PARAMS, *settings.query_params):
            self._params.setdefault(name.lower(), name)
        self._headers = frozenset(h.lower() for h in (*DEFAULT_HEADERS, *settings.headers))
        # JSON keys: every field, and header names that are not also fields (by lower case)
        self._header_keys = self._headers - self._fields.keys()
        self._own_header_rules = self._headers | _URL_HEADERS
        self._own_header_rules_raw = frozenset(h.encode() for h in self._own_header_rules)
        self._json_keys: dict[str, str] = {h: h for h in self._header_keys} | self._fields
        #: JSON key no detector changes -> its field name, if it is one (see _KNOWN_KEYS_LIMIT)
        self._known_keys: dict[str, str | None] = {}

        self._paths = tuple(PathRule.parse(text) for text in settings.paths)
        self._root_states: tuple[_State, ...] = tuple(
            (i, 0) for i, rule in enumerate(self._paths) if not rule.floating
        )
        self._floating_states: tuple[_State, ...] = tuple(
            (i, 0) for i, rule in enumerate(self._paths) if rule.floating
        )

        self._detectors = Detectors(settings.detectors, self.fingerprint)
        self._binary_routes = compile_route_patterns(
            (*DEFAULT_BINARY_SUMMARY_ROUTES, *settings.binary_summary_routes)
        )
        self._is_binary_type = compile_content_types(
            (*DEFAULT_BINARY_SUMMARY_CONTENT_TYPES, *settings.binary_summary_content_types)
        )

        # Key rules for text: every field, parameter and header name. The finder runs over a
        # lower-cased copy of the text (a case-insensitive regex is several times slower);
        # the rest of the rule (quotes, separator, value) is checked at each hit.
        names = names_pattern(sorted({*self._params, *self._headers}))
        self._key_finder = re.compile(rf"(?<![a-z0-9_-])(?:{names})(?![a-z0-9_-])")
        # for the rare text whose lower-case copy has another length (offsets would not match)
        self._key_finder_any_case = re.compile(
            rf"(?<![A-Za-z0-9_-])(?:{names})(?![A-Za-z0-9_-])", re.IGNORECASE
        )

        self.rule_names: frozenset[str] = frozenset(
            {"header", "path", "binary", *DETECTOR_RULES}
            | {f"field:{name}" for name in self._params.values()}
        )

    # --- markers ---------------------------------------------------------------------------

    def fingerprint(self, token: str) -> str:
        """``[token …a1b2c3]``: 24 bits of HMAC-SHA256(key, token). Stable within a run, tells
        tokens apart, reveals nothing about the token without the key."""
        digest = hmac.new(
            self._key, token.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).hexdigest()
        return f"[token …{digest[:6]}]"

    def _field_marker(self, name: str, value: Any, counts: Counter[str]) -> Any:
        """What a value under the sensitive name ``name`` becomes. Redacting the result again
        gives the same result, and counts nothing; a value that merely looks like some other
        marker (``[redacted:Peter Parker]``) is replaced like any other."""
        # null and "" hold nothing, and show that a field is absent: kept.
        marker = f"[redacted:{name}]"
        if value is None or value == "" or value == marker:
            return value
        if isinstance(value, str) and name.lower() in FINGERPRINTED_FIELDS:
            if _FINGERPRINT.fullmatch(value):
                return value
            counts[f"field:{name}"] += 1
            return self.fingerprint(value)
        counts[f"field:{name}"] += 1
        return marker

    # --- text ------------------------------------------------------------------------------

    def text_is_clean(self, text: str) -> bool:
        """True when :meth:`redact_text` is sure to return ``text`` unchanged: no sensitive
        name stands in it as a word, and nothing a detector looks for is in it. When ``text``
        is several values joined by newlines, True holds for each of them (a newline ends a
        word and no detector spans one), so many values cost one check. ASCII only: case
        rules for other scripts can change lengths and match names differently."""
        return (
            text.isascii()
            and self._key_finder.search(text.lower()) is None
            and self._detectors.finds_nothing_in(text)
        )

    def redact_text(self, text: str, *, counts: Counter[str] | None = None) -> str:
        """Log lines, error bodies, any free text: key rules, then detectors."""
        tally = counts if counts is not None else Counter()
        return self._detectors.scan(self._redact_keyed_text(text, tally), tally)

    def redact_data(
        self, data: bytes, *, counts: Counter[str] | None = None, value: bool = False
    ) -> bytes | None:
        """Bytes that carry no declared type (a TCP, UDP or WebSocket message, a DNS record)
        fit to show: the text rules over every way a viewer reads them; None for binary data
        (as a body's) and when no reading settles: show a summary instead. ``value``: ``data``
        is one value of its own, not part of a stream: binary of up to
        :data:`SHORT_BINARY_VALUE` bytes gets the text rules too."""
        if _looks_binary(data) and not (value and len(data) <= SHORT_BINARY_VALUE):
            return None
        tally = counts if counts is not None else Counter()
        return self._settle(data, (), self._text_rules, tally)

    def _text_rules(self, text: str, counts: Counter[str]) -> str:
        return self.redact_text(text, counts=counts)

    def _scan_rules(self, text: str, counts: Counter[str]) -> str:
        return self._detectors.scan(text, counts)

    def _deep(self, text: str, counts: Counter[str], rules: _Rules) -> str:
        """``rules`` over ``text``, then over each other way a person reads it
        (:func:`_other_views`). When one of those finds more, the text becomes that reading,
        redacted (its escapes stay resolved: what is shown is what was checked), and is read
        again."""
        text = rules(text, counts)
        for _ in range(_MAX_ROUNDS):
            for view in _other_views(text):
                found: Counter[str] = Counter()
                redacted = rules(view, found)
                if found:
                    counts.update(found)
                    text = redacted
                    break
            else:
                break
        return text

    def _settle(
        self, data: bytes, declared: Sequence[str], rules: _Rules, counts: Counter[str]
    ) -> bytes | None:
        """``data`` fit to show: itself when no reading of it (:func:`readings`, each read
        :meth:`_deep`) shows anything ``rules`` find; else the redacted text of the reading
        that finds the most, written in that reading's encoding (so that it shows the way the
        original did), and read again. None when that does not settle: show the summary."""
        current = data
        for _ in range(_MAX_ROUNDS):
            best: tuple[int, str, str, Counter[str]] | None = None
            for codec, text in readings(current, declared):
                found: Counter[str] = Counter()
                redacted = self._deep(text, found, rules)
                # The reading that shows the most is the one the bytes are in: another one,
                # redacted and written back, could garble what only the right one shows.
                if found and (best is None or found.total() > best[0]):
                    best = (found.total(), codec, redacted, found)
            if best is None:
                return current
            _, codec, redacted, found = best
            counts.update(found)
            current = _encode(redacted, codec)
        return None

    def _redact_keyed_text(self, text: str, counts: Counter[str]) -> str:
        """Values after sensitive names in ``"key": v``, ``'key': v``, ``\\"key\\": v``,
        ``key=v``, ``key: v``, ``a[key]=v``."""
        haystack = text.lower()
        finder = self._key_finder
        if len(haystack) != len(text):
            haystack, finder = text, self._key_finder_any_case
        match = finder.search(haystack)
        if match is None:
            return text
        pieces: list[str] = []
        done = 0
        while match is not None:
            key_start, key_end = match.span()
            resume = key_end
            name = haystack[key_start:key_end].lower()
            if haystack.endswith("redacted:", 0, key_start):  # our own [redacted:ssn]
                match = finder.search(haystack, key_end)
                continue
            after, quote_text = key_end, ""
            if key_start > 0 and text[key_start - 1] in "\"'":
                # "pan", 'pan' or \"pan\" (JSON inside a JSON string): same quote both sides
                quote_start = key_start - 1
                while quote_start > 0 and text[quote_start - 1] == "\\":
                    quote_start -= 1
                candidate = text[quote_start:key_start]
                if text.startswith(candidate, key_end):
                    quote_text, after = candidate, key_end + len(candidate)
            if not quote_text and text.startswith("]", after):
                after += 1  # card[pan]=…
            separator = _SEPARATOR.match(text, after)
            if separator is not None:
                is_header = name in self._headers
                bare = None
                if is_header:
                    bare = _AUTHORIZATION_VALUE if name.endswith("authorization") else _LINE_VALUE
                span = _value_span(text, separator.end(), separator.group(1), bare)
                if span is not None:
                    start, end, structured = span
                    value = text[start:end]
                    if is_header and structured:  # not a header value: hide it all
                        counts["header"] += 1
                        replacement = f"{quote_text}[redacted:{name}]{quote_text}"
                    elif is_header:
                        replacement = self._redact_header_value(name, value, counts)
                    else:
                        replacement = self._field_marker(self._params[name], value, counts)
                        if structured and replacement != value:
                            # a whole object or array went: keep the surroundings JSON-ish
                            replacement = f"{quote_text}{replacement}{quote_text}"
                    if replacement != value:
                        pieces.append(text[done:start])
                        pieces.append(replacement)
                        done = end
                    resume = max(resume, end)
            match = finder.search(haystack, resume)
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    # --- headers ---------------------------------------------------------------------------

    def redact_headers(
        self, headers: Iterable[tuple[str, str]], *, counts: Counter[str] | None = None
    ) -> list[tuple[str, str]]:
        """Credentials become fingerprints (``Bearer [token …a1b2c3]``; placeholders such as
        ``unitgw:customer:123`` stay); URL headers get :meth:`redact_url`; the rest
        :meth:`redact_text`."""
        tally = counts if counts is not None else Counter()
        headers = list(headers)
        # Names get the detectors, values without rules of their own the text rules: most
        # often nothing in either is secret, and one check over all of them says so.
        own_rules = self._own_header_rules
        plain = [value for name, value in headers if name.lower() not in own_rules]
        if self.text_is_clean("\n".join(plain)) and self._detectors.finds_nothing_in(
            "\n".join([name for name, _ in headers])
        ):
            return [
                (name, self._redact_own_rules(name.lower(), value, tally))
                for name, value in headers
            ]
        redacted: list[tuple[str, str]] = []
        for name, value in headers:
            lowered = name.lower()
            if lowered in own_rules:
                new_value = self._redact_own_rules(lowered, value, tally)
            else:
                new_value = self.redact_text(value, counts=tally)
            redacted.append((self._detectors.scan(name, tally), new_value))
        return redacted

    def header_fields_are_clean(self, fields: Iterable[tuple[bytes, bytes]]) -> bool:
        """True when :meth:`redact_headers` would change nothing in these raw header fields
        (and count nothing), told without decoding and redacting them one by one: every field
        is ASCII, no URL header, credentials only as the gateway's placeholders (which stay),
        and :meth:`text_is_clean` for the rest. False means "redact them": most requests and
        responses take the True branch."""
        names: list[bytes] = []
        values: list[bytes] = []
        for name, value in fields:
            lowered = name.lower()
            if lowered in self._own_header_rules_raw and not (
                lowered in _PLACEHOLDER_HEADERS and _PLACEHOLDER_CREDENTIAL.fullmatch(value)
            ):
                return False  # a credential or a URL: its own rules apply
            names.append(name)
            values.append(value)  # a placeholder credential only gets the detectors: stricter
        text, names_text = b"\n".join(values), b"\n".join(names)
        return (
            text.isascii()
            and names_text.isascii()
            and self.text_is_clean(text.decode("ascii"))
            and self._detectors.finds_nothing_in(names_text.decode("ascii"))
        )

    def _redact_own_rules(self, lowered: str, value: str, counts: Counter[str]) -> str:
        """A header value with the rules of its own name, if it has any (credentials, URLs)."""
        if lowered in self._headers:
            return self._redact_header_value(lowered, value, counts)
        if lowered in _URL_HEADERS:
            return self.redact_url(value, counts=counts)
        return value

    def _redact_header_value(self, name: str, value: str, counts: Counter[str]) -> str:
        stripped = value.strip()
        if not stripped or _FINGERPRINT.fullmatch(stripped) or stripped == f"[redacted:{name}]":
            return value
        if name in ("authorization", "proxy-authorization"):
            scheme, space, credentials = stripped.partition(" ")
            credentials = credentials.strip()
            if not space or not credentials or not _AUTH_SCHEME.fullmatch(scheme):
                scheme, credentials = "", stripped
            if _FINGERPRINT.fullmatch(credentials):
                return value
            if PLACEHOLDER.fullmatch(credentials):
                return self._detectors.scan(value, counts)
            counts["header"] += 1
            marker = self.fingerprint(credentials)
            return f"{scheme} {marker}" if scheme else marker
        if name == "cookie":
            pairs = [pair.strip() for pair in stripped.split(";") if pair.strip()]
            redacted_pairs = [self._fingerprint_pair(pair) for pair in pairs]
            if redacted_pairs != pairs:
                counts["header"] += 1
            return "; ".join(redacted_pairs)
        if name == "set-cookie":
            pair, semicolon, attributes = stripped.partition(";")
            redacted_pair = self._fingerprint_pair(pair)
            if redacted_pair != pair.strip():
                counts["header"] += 1
            return redacted_pair + semicolon + self._detectors.scan(attributes, counts)
        counts["header"] += 1
        return self.fingerprint(stripped)

    def _fingerprint_pair(self, pair: str) -> str:
        """``name=value`` of a cookie: the name stays (if it is a valid cookie name), the value
        becomes a fingerprint; anything else is fingerprinted whole."""
        pair = pair.strip()
        name, eq, value = pair.partition("=")
        if not eq or not _COOKIE_NAME.fullmatch(name) or not self._detectors.finds_nothing_in(name):
            # no name, or one that is itself a secret: the pair is fingerprinted whole
            return pair if _FINGERPRINT.fullmatch(pair) else self.fingerprint(pair)
        if not value or _FINGERPRINT.fullmatch(value):
            return pair
        return f"{name}={self.fingerprint(value)}"

    # --- URLs ------------------------------------------------------------------------------

    def redact_query(self, query: str, *, counts: Counter[str] | None = None) -> str:
        """A query string (with or without its ``?``), parameter by parameter."""
        tally = counts if counts is not None else Counter()
        if query.startswith("?"):
            return "?" + self._redact_pairs(query[1:], tally)
        return self._redact_pairs(query, tally)

    def redact_url(self, url: str, *, counts: Counter[str] | None = None) -> str:
        """A URL or a request target: password, path segments, query and fragment."""
        # Without escapes ("%", "+"), a password ("@"), a sensitive name or anything a detector
        # finds in the whole URL, no part of it can change: most request targets.
        if "%" not in url and "+" not in url and "@" not in url and self.text_is_clean(url):
            return url
        tally = counts if counts is not None else Counter()
        rest, hash_mark, fragment = url.partition("#")
        rest, question_mark, query = rest.partition("?")
        prefix, path = "", rest
        if (authority := _URL_PREFIX.match(rest)) is not None:
            prefix, path = self._redact_authority(authority.group(), tally), rest[authority.end() :]
        segments = [self._redact_path_segment(segment, tally) for segment in path.split("/")]
        redacted = prefix + "/".join(segments)
        if question_mark:
            redacted += "?" + self._redact_pairs(query, tally)
        if hash_mark:
            # OAuth's implicit flow puts access_token=… in fragments: treat it as a query.
            redacted += "#" + self._redact_pairs(fragment, tally)
        return redacted

    def _redact_authority(self, prefix: str, counts: Counter[str]) -> str:
        scheme, _, authority = prefix.partition("://")
        userinfo, at, host = authority.rpartition("@")
        if not at:
            return prefix
        user, colon, password = userinfo.partition(":")
        if colon and password:
            counts["field:password"] += 1
            password = self.fingerprint(unquote(password))
        return f"{scheme}://{self._redact_path_segment(user, counts)}{colon}{password}@{host}"

    def _redact_path_segment(self, segment: str, counts: Counter[str]) -> str:
        if len(segment) < 5:
            return segment
        decoded = unquote(segment)
        redacted = self.redact_text(decoded, counts=counts)
        if redacted == decoded:
            # percent escapes can split a run the decoded segment does not show
            return self._detectors.scan(segment, counts)
        return _requote(redacted, "!$&'()*+,;=:@~")

    def _param_label(self, name: str) -> str | None:
        """The configured name a parameter falls under: ``data[attributes][address][city]``
        and ``counterparty.accountNumber`` count for every component, like a JSON path does."""
        lowered = name.lower()
        canonical = self._params.get(lowered)
        if canonical is None:
            for part in _NAME_PARTS.split(lowered):
                if part and (canonical := self._params.get(part)) is not None:
                    break
        return canonical

    def _redact_pairs(self, text: str, counts: Counter[str]) -> str:
        """``a=1&b=2`` (query strings, form bodies, fragments), keeping untouched parts as sent."""
        items: list[str] = []
        for item in text.split("&"):
            raw_name, eq, raw_value = item.partition("=")
            name = unquote_plus(raw_name)
            new_name = self._deep(name, counts, self._scan_rules)
            if new_name != name:
                raw_name = _requote(new_name, "[]")
            canonical = self._param_label(name) if eq else None
            value = unquote_plus(raw_value)
            if canonical is not None:
                marker = self._field_marker(canonical, value, counts)
                if marker != value:
                    raw_value = marker
            elif value:
                redacted = self._deep(value, counts, self._text_rules)
                if redacted != value:
                    raw_value = _requote(redacted, "!$'()*,/:;@~")
                else:
                    # percent escapes can split a run the decoded value does not show
                    raw_value = self._detectors.scan(raw_value, counts)
            items.append(f"{raw_name}{eq}{raw_value}")
        return "&".join(items)

    # --- bodies ----------------------------------------------------------------------------

    def redact_body(
        self,
        content: bytes,
        content_type: str | None,
        content_encoding: str | None,
        *,
        path: str | None = None,
    ) -> RedactedBody:
        """A body fit to show. ``path`` (the request path, query or not) enables the
        route-based document summaries; without it only content types and sniffing apply."""
        counts: Counter[str] = Counter()
        if not content:
            return RedactedBody(b"", "empty", {})
        media_type, params = _parse_content_type(content_type)
        try:
            decoded = decode_content(content, content_encoding, self.settings.max_body_bytes)
        except UndecodableBody as e:  # show nothing of it
            return self._summary(media_type, len(content), counts, "body", str(e))
        route = path.partition("?")[0] if path else None
        out, kind = self._redact_decoded(decoded, media_type, params, counts, route, 0)
        changed = bool(counts) or (kind in _RESERIALIZED and out != decoded)
        return RedactedBody(out, kind, dict(counts), changed)

    def _summary(
        self, media_type: str, size: int, counts: Counter[str], what: str, note: str = ""
    ) -> RedactedBody:
        counts["binary"] += 1
        shown = media_type if _SAFE_MEDIA_TYPE.fullmatch(media_type) else "unknown type"
        text = f"[binary {what} redacted: {shown}, {size} bytes{', ' + note if note else ''}]"
        return RedactedBody(text.encode(), "binary", dict(counts), True)

    def _redact_decoded(
        self,
        data: bytes,
        media_type: str,
        params: dict[str, str],
        counts: Counter[str],
        route: str | None,
        depth: int,
    ) -> tuple[bytes, BodyKind]:
        what = "body" if depth == 0 else "part"

        def summary(note: str = "") -> tuple[bytes, BodyKind]:
            return self._summary(media_type, len(data), counts, what, note).content, "binary"

        if len(data) > self.settings.max_body_bytes:
            return summary(f"over {self.settings.max_body_bytes} bytes")
        is_json_type = media_type in _JSON_TYPES or media_type.endswith("+json")
        # A document route answers JSON only for errors and metadata, which are safe to parse.
        if (
            route is not None
            and not is_json_type
            and self._binary_routes is not None
            and self._binary_routes.fullmatch(route)
        ):
            return summary()
        if self._is_binary_type(media_type):
            return summary()
        if media_type == _FORM_TYPE and not _looks_binary(data):
            declared = _declared_codecs(data, media_type, params)
            return self._settled(data, declared, self._redact_pairs, "form", counts, summary)
        if media_type.startswith("multipart/") and depth < _MAX_MULTIPART_DEPTH:
            multipart = self._redact_multipart(data, params, counts, depth)
            if multipart is not None:
                # Delimiter lines, and bytes outside the parts that are not UTF-8, are kept as
                # sent; the rest was read as UTF-8: read the whole in every way.
                return self._settled(multipart, (), self._scan_rules, "multipart", counts, summary)
        if _looks_binary(data):
            return summary()
        if is_json_type or _starts_like_json(data):
            redacted_json = self._redact_json(data, counts)
            if redacted_json is not None:
                if not params.get("charset"):
                    return redacted_json, "json"  # as Unit sends it: nothing more to read
                # The walk saw the UTF-8 reading (see readings()); a charset may show more.
                declared = _declared_codecs(redacted_json, media_type, params)
                if declared is not None and all(
                    codec == "utf-8" or (redacted_json.isascii() and _reads_ascii_as_ascii(codec))
                    for codec in declared
                ):
                    return redacted_json, "json"
                shown, kind = self._settled(
                    redacted_json, declared, self._scan_rules, "text", counts, summary
                )
                return shown, "json" if shown is redacted_json else kind
        # Plain text, malformed JSON, invalid UTF-8, a charset its bytes are not in: the text
        # rules over every reading of it.
        declared = _declared_codecs(data, media_type, params)
        return self._settled(data, declared, self._text_rules, "text", counts, summary)

    def _settled(
        self,
        content: bytes,
        declared: Sequence[str] | None,
        rules: _Rules,
        kind: BodyKind,
        counts: Counter[str],
        summary: Callable[[str], tuple[bytes, BodyKind]],
    ) -> tuple[bytes, BodyKind]:
        """:meth:`_settle`, or the summary when the charset or the readings leave doubt."""
        if declared is None:
            return summary("charset not readable")
        shown = self._settle(content, declared, rules, counts)
        if shown is None:
            return summary("no clean reading")
        return shown, kind

    # --- JSON ------------------------------------------------------------------------------

    def _redact_json(self, data: bytes, counts: Counter[str]) -> bytes | None:
        """The document with every rule applied, re-serialized; None if it is not JSON.

        Always re-serialized, so what is shown is exactly what was checked (a duplicate key's
        earlier value, which the parser drops, cannot slip through in the original bytes)."""
        # orjson is ~3x faster to parse and ~10x to encode; what it refuses (a BOM, lone
        # surrogates, integers over 64 bits, deep nesting) takes the standard library's path.
        fast = True
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            fast = False
            try:
                document = json.loads(data.decode("utf-8-sig"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                return None
        walk = _Walk(Counter(), set())
        try:
            redacted = self._walk(document, self._root_states, walk)
        except RecursionError:  # nested deeper than the interpreter allows: treat as text
            return None
        counts.update(walk.counts)
        if fast:
            try:
                return orjson.dumps(redacted)
            except orjson.JSONEncodeError:
                pass
        # backslashreplace turns a lone surrogate from "\ud800" back into a valid JSON escape
        return _JSON_ENCODER.encode(redacted).encode("utf-8", "backslashreplace")

    # The walk is the hot loop of a large body: it dispatches on exact types (json.loads makes
    # no subclasses) and remembers strings and keys it already found clean.

    def _walk(self, value: Any, states: tuple[_State, ...], walk: _Walk) -> Any:
        kind = type(value)
        if kind is str:
            return value if value in walk.clean else self._walk_string(value, walk)
        if kind is dict:
            return self._walk_object(value, states, walk)
        if kind is list:
            return self._walk_array(value, states, walk)
        if kind is int or kind is float:
            return self._redact_number(value, walk.counts)
        return value  # None, True, False

    def _walk_object(
        self, obj: dict[str, Any], states: tuple[_State, ...], walk: _Walk
    ) -> dict[str, Any]:
        if self._floating_states:
            states = tuple(dict.fromkeys(states + self._floating_states))
        known_keys = self._known_keys
        clean = walk.clean
        out: dict[str, Any] = {}
        renamed = False  # a key became a marker: the next ones may collide with it
        for key, item in obj.items():
            name = known_keys.get(key, _UNSEEN)
            new_key = key
            if name is _UNSEEN:
                new_key = self._detectors.scan(key, walk.counts)
                name = self._json_keys.get(key.lower())
                if new_key != key:
                    renamed = True
                elif len(key) <= _CACHED_STRING_MAX:
                    if len(known_keys) >= _KNOWN_KEYS_LIMIT:
                        known_keys.clear()  # a document of unique keys: start over, stay bounded
                    known_keys[key] = name
            if name is not None:
                new_item = self._sensitive_value(name, item, walk.counts)
            elif states:
                child_states, matched = self._step(states, key.lower(), -1)
                if matched is not None:
                    new_item = self._path_marker(matched, item, walk.counts)
                else:
                    new_item = self._walk(item, child_states, walk)
            else:  # _walk without states, inlined: this is the loop most of a body goes through
                kind = type(item)
                if kind is str:
                    new_item = item if item in clean else self._walk_string(item, walk)
                elif kind is dict:
                    new_item = self._walk_object(item, (), walk)
                elif kind is list:
                    new_item = self._walk_array(item, (), walk)
                elif kind is int or kind is float:
                    new_item = self._redact_number(item, walk.counts)
                else:
                    new_item = item  # None, True, False
            if renamed and new_key in out:  # two keys redacted to the same marker: keep both
                suffix = 2
                while f"{new_key} #{suffix}" in out:
                    suffix += 1
                new_key = f"{new_key} #{suffix}"
            out[new_key] = new_item
        return out

    def _sensitive_value(self, name: str, value: Any, counts: Counter[str]) -> Any:
        """A JSON value under a sensitive key: a field, or a header name (a document that
        records requests, ``{"headers": {"Authorization": "Bearer …"}}``)."""
        if name not in self._header_keys:
            return self._field_marker(name, value, counts)
        if isinstance(value, str):
            return self._redact_header_value(name, value, counts)
        marker = f"[redacted:{name}]"
        if value is None or value == marker:
            return value
        counts["header"] += 1
        return marker

    def _walk_array(self, array: list[Any], states: tuple[_State, ...], walk: _Walk) -> list[Any]:
        if not states:
            return [self._walk(item, (), walk) for item in array]
        out: list[Any] = []
        for index, item in enumerate(array):
            child_states, matched = self._step(states, "", index)
            if matched is not None:
                out.append(self._path_marker(matched, item, walk.counts))
            else:
                out.append(self._walk(item, child_states, walk))
        return out

    def _walk_string(self, text: str, walk: _Walk) -> str:
        redacted = self._redact_string(text, walk.counts)
        if redacted == text and len(text) <= _CACHED_STRING_MAX and len(walk.clean) < _CACHE_LIMIT:
            walk.clean.add(text)
        return redacted

    def _step(
        self, states: tuple[_State, ...], key: str, index: int
    ) -> tuple[tuple[_State, ...], PathRule | None]:
        """Follow every path rule in progress one level down, into ``key`` of an object
        (index == -1) or item ``index`` of an array. Returns the states below and the rule
        that ends here, if any."""
        next_states: list[_State] = []
        matched: PathRule | None = None
        for rule_index, position in states:
            rule = self._paths[rule_index]
            segment = rule.segments[position]
            if index < 0:
                advance = segment.kind == "wildcard" or (
                    segment.kind == "key" and segment.key == key
                )
            else:
                advance = segment.kind in ("wildcard", "any_index") or (
                    segment.kind == "index" and segment.index == index
                )
                if not advance and segment.kind == "key":
                    next_states.append((rule_index, position))  # look through the array
                    continue
            if advance:
                if position + 1 == len(rule.segments):
                    matched = matched or rule
                else:
                    next_states.append((rule_index, position + 1))
        return tuple(next_states), matched

    def _path_marker(self, rule: PathRule, value: Any, counts: Counter[str]) -> Any:
        if value is None or value == "":
            return value
        marker = f"[redacted:{rule.label}]"
        if value != marker:
            counts["path"] += 1
        return marker

    def _redact_string(self, text: str, counts: Counter[str]) -> str:
        # Strings holding "key: value" or "key=value" text (a JSON document or a query string
        # inside a JSON string, an error message quoting a field) get the key rules as well.
        if ":" in text or "=" in text:
            text = self._redact_keyed_text(text, counts)
        return self._detectors.scan(text, counts)

    def _redact_number(self, number: int | float, counts: Counter[str]) -> int | float | str:
        # Under nine digits no detector can match: the common case costs one comparison.
        if -100_000_000 < number < 100_000_000:
            return number
        text = json.dumps(number)
        redacted = self._detectors.scan(text, counts)
        return number if redacted == text else redacted

    # --- multipart -------------------------------------------------------------------------

    def _redact_multipart(
        self, data: bytes, params: dict[str, str], counts: Counter[str], depth: int
    ) -> bytes | None:
        """Each part redacted by name and content type; None if this is not multipart."""
        boundary = params.get("boundary", "")
        if not boundary or len(boundary) > 200:
            return None
        delimiter = b"--" + boundary.encode("latin-1", "replace")
        position = data.find(delimiter)
        if position == -1 or (position > 0 and data[position - 1 : position] != b"\n"):
            return None
        found: Counter[str] = Counter()

        def outside_parts(raw: bytes) -> bytes:
            # Not UTF-8: kept as sent, for the reading of the whole body (_settle) to read
            # in its own encoding; re-encoding a replacement-decoded copy would garble it.
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw
            return self.redact_text(text, counts=found).encode()

        out = [outside_parts(data[:position])]
        while True:
            after = position + len(delimiter)
            if data.startswith(b"--", after):  # the close delimiter; the epilogue follows
                out.append(delimiter + b"--" + outside_parts(data[after + 2 :]))
                break
            line_end = data.find(b"\n", after)
            if line_end == -1:
                return None
            next_delimiter = data.find(b"\n" + delimiter, line_end)
            if next_delimiter == -1:
                return None  # unterminated: fall back to the text rules over the whole body
            part_end = next_delimiter
            if data[next_delimiter - 1 : next_delimiter] == b"\r":
                part_end -= 1
            part_end = max(part_end, line_end + 1)  # an empty part: nothing between the lines
            out.append(data[position : line_end + 1])
            out.append(self._redact_part(data[line_end + 1 : part_end], found, depth))
            out.append(data[part_end : next_delimiter + 1])
            position = next_delimiter + 1
        counts.update(found)
        return b"".join(out)

    def _redact_part(self, part: bytes, counts: Counter[str], depth: int) -> bytes:
        crlf, lf = part.find(b"\r\n\r\n"), part.find(b"\n\n")
        if crlf != -1 and (lf == -1 or crlf < lf):
            head, separator, body = part[:crlf], b"\r\n\r\n", part[crlf + 4 :]
        elif lf != -1:
            head, separator, body = part[:lf], b"\n\n", part[lf + 2 :]
        else:  # no header block ends here: a part with headers only, or garbage
            head, separator, body = part, b"", b""
        name = filename = None
        content_type = "text/plain"
        transfer_encoding = ""
        header_lines: list[str] = []
        for line in head.decode("utf-8", "replace").splitlines():
            header, colon, value = line.partition(":")
            lowered = header.strip().lower()
            if colon and lowered == "content-disposition":
                disposition = value
                for param in _DISPOSITION_PARAM.finditer(value):
                    param_name = param.group("name").lower()
                    param_value = param.group("value").strip('"')
                    if param_name == "name":
                        name = param_value
                    elif param_name in ("filename", "filename*"):
                        filename = param_value
                        # a file's name can name its owner: keep only the extension
                        extension = re.search(r"\.[A-Za-z0-9]{1,8}$", param_value)
                        hidden = f'"[redacted]{extension.group() if extension else ""}"'
                        disposition = disposition.replace(param.group(), f"; {param_name}={hidden}")
                line = header + colon + self._detectors.scan(disposition, counts)
            elif colon and lowered == "content-type":
                content_type = value.strip()
                line = self.redact_text(line, counts=counts)
            else:
                if colon and lowered == "content-transfer-encoding":
                    transfer_encoding = value.strip().lower()
                line = self.redact_text(line, counts=counts)
            header_lines.append(line)
        new_head = "\r\n".join(header_lines) if b"\r\n" in separator else "\n".join(header_lines)
        media_type, params = _parse_content_type(content_type)
        label = self._param_label(name) if name is not None else None
        if not body:
            new_body = body
        elif filename is not None or transfer_encoding not in ("", "7bit", "8bit", "binary"):
            # uploaded files are documents; base64 or quoted-printable hides text from rules
            new_body = self._summary(media_type, len(body), counts, "part").content
        elif label is not None:
            marker = self._field_marker(label, body.decode("utf-8", "replace"), counts)
            new_body = marker.encode("utf-8")
        else:
            new_body, _ = self._redact_decoded(body, media_type, params, counts, None, depth + 1)
        return new_head.encode("utf-8") + separator + new_body
