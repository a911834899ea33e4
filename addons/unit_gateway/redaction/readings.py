"""How a person may read a body: every decoding a viewer may apply (:func:`readings`), escapes
resolved (:func:`unescaped`), the text as a screen shows it, and the rounds that redact a text
or bytes until none of those readings shows the rules anything more (:func:`deep`,
:func:`settle`). docs/security.md ("Bodies") states the guarantee."""

from __future__ import annotations

import codecs
import functools
import html.entities
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence

from unit_gateway.redaction.rules import visible

#: Rules for one reading of a text: the text redacted; what they found is added to the Counter.
type Rules = Callable[[str, Counter[str]], str]

#: How often a body or a value is read again after a reading found something: each round
#: redacts a whole reading, so two or three suffice; one that still finds more is in doubt.
MAX_ROUNDS = 4

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
def reads_ascii_as_ascii(codec: str) -> bool:
    try:
        return all(probe.decode(codec) == probe.decode("ascii") for probe in _ASCII_PROBES)
    except Exception:  # any codec that cannot decode plain ASCII is not one
        return False


def declared_codecs(data: bytes, media_type: str, params: Mapping[str, str]) -> list[str] | None:
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


def encode(text: str, codec: str) -> bytes:
    try:
        return text.encode(codec)
    except UnicodeEncodeError:  # a fingerprint's "…" in EBCDIC or Latin-1, a U+FFFD
        return text.replace("\u2026", "...").encode(codec, "replace")
    except Exception:  # a codec that cannot write at all: the next round reads UTF-8 too
        return text.encode("utf-8", "replace")


def readings(data: bytes, declared: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(codec, text) for every way a person's viewer may decode ``data``, identical texts
    once, undecodable bytes as U+FFFD: the ``declared`` codecs, a byte-order mark's, UTF-8,
    Latin-1, Windows-1252, UTF-16 and UTF-32 in both byte orders.

    Valid UTF-8 without NUL, declared as UTF-8 (or ASCII declared in a codec that reads ASCII
    as ASCII), gets its UTF-8 reading only: in Latin-1 and Windows-1252 each non-ASCII
    character starts with a letter, which ends any run a detector matches, and in UTF-16 and
    UTF-32 nothing looks like an ASCII digit or a "J"
    (test_utf16_and_utf32_readings_of_utf8_show_no_digit_and_no_j). A declared codec that
    cannot decode the bytes is left out: mitmproxy's get_text falls back to UTF-8 too."""
    ascii_only = data.isascii()
    if b"\x00" not in data:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if all(
                codec == "utf-8" or (ascii_only and reads_ascii_as_ascii(codec))
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


def other_views(text: str) -> Iterator[str]:
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


def deep(text: str, counts: Counter[str], rules: Rules) -> str:
    """``rules`` over ``text``, then over each of its :func:`other_views`. When one of those
    finds more, the text becomes that reading, redacted (its escapes stay resolved: what is
    shown is what was checked), and is read again."""
    text = rules(text, counts)
    for _ in range(MAX_ROUNDS):
        for view in other_views(text):
            found: Counter[str] = Counter()
            redacted = rules(view, found)
            if found:
                counts.update(found)
                text = redacted
                break
        else:
            break
    return text


def settle(
    data: bytes, declared: Sequence[str], rules: Rules, counts: Counter[str]
) -> bytes | None:
    """``data`` fit to show: itself when no reading of it (:func:`readings`, each read
    :func:`deep`) shows anything ``rules`` find; else the redacted text of the reading that
    finds the most, written in that reading's encoding (so that it shows the way the original
    did), and read again. None when that does not settle: show the summary."""
    current = data
    for _ in range(MAX_ROUNDS):
        best: tuple[int, str, str, Counter[str]] | None = None
        for codec, text in readings(current, declared):
            found: Counter[str] = Counter()
            redacted = deep(text, found, rules)
            # The reading that shows the most is the one the bytes are in: another one,
            # redacted and written back, could garble what only the right one shows.
            if found and (best is None or found.total() > best[0]):
                best = (found.total(), codec, redacted, found)
        if best is None:
            return current
        _, codec, redacted, found = best
        counts.update(found)
        current = encode(redacted, codec)
    return None
