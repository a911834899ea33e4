"""Leak scanner: find planted secrets in everything an end-to-end run leaves behind.

End-to-end tests plant known secrets (tokens, card numbers, SSNs, ...) and then scan every
output of the run: mitmdump stdout/stderr, saved flow files (``-w``), HAR files, log files,
mitmweb API responses.  A secret counts as leaked if any of these shows it, in any of the
encodings a program commonly applies on the way out:

* raw UTF-8;
* URL encoding (``quote`` with ``safe=''`` and ``safe='/'``, ``quote_plus``; upper- and
  lower-case percent hex);
* JSON string escaping (``ensure_ascii`` on and off, ``\\/`` escaping, tornado's ``<\\/``);
* Python ``repr`` of the str and of its UTF-8 bytes;
* base64, standard and urlsafe, with and without padding, and *inside a larger base64 blob*
  at any byte offset (see below);
* hex, lower- and upper-case;
* UTF-16 and UTF-32 in both byte orders, and EBCDIC (cp037).

Each output is also searched *as a person reads it*: decoded as UTF-8, with JSON, JavaScript
and Python string escapes, HTML character references and percent-encoding resolved once, in
Unicode's compatibility form (NFKC: fullwidth and mathematical digits as digits), without
control and format characters (a zero-width space or a NUL between digits shows as nothing)
and with every space and dash as ASCII's. A secret found there and in no other way is
reported with the location ``<view> as read``. This is written independently of the
redaction engine, which must leave no secret in that reading either.

Some containers hide their content from a byte search, so the scanner also looks inside them:
gzip files (any file starting with the gzip magic), mitmproxy flow files (bodies stored with a
``Content-Encoding`` are compressed on disk, so the decoded body is scanned too) and HAR files
(binary bodies and websocket messages are stored base64-encoded).  Each such decoded view is
searched like a file, and hits in it carry the view's name (``location``) and the offset inside
that view.

Base64 inside a larger blob: base64 turns each 3-byte group into 4 characters, so how a secret
looks depends on where it starts within a group (its *alignment*, 0, 1 or 2).  For each
alignment we encode the secret behind that many filler bytes and keep only the characters made
purely of secret bits: ``ceil(8 * alignment / 6)`` leading characters mix with the bytes before
the secret and the last partial character mixes with the bytes after it.  What remains is at
least ``ceil(4 * n / 3) - 1`` characters for an n-byte secret (n=6: 7 chars, n=16: 21 chars).
It is searched only when at least ``MIN_INNER_BASE64_CHARS`` (6) characters long, which every
secret of 5 or more UTF-8 bytes satisfies at every alignment; shorter secrets (only possible
with ``allow_short=True``) are found in base64 only when they are the whole encoded value.
Line-wrapped base64 (MIME, PEM) is not covered.

Speed: one ``bytes.find`` loop per distinct encoded form (linear, no regex); a form that
extends a shorter form of the same secret (full base64 extends its alignment-0 inner part) is
only checked where the shorter one matched.  Occurrences of one form are counted without
overlap, so a form repeated back to back is still found but not at every byte.
"""

import base64
import bisect
import functools
import html
import io
import json
import os
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote

from mitmproxy import http
from mitmproxy.io import FlowReader

__all__ = [
    "MIN_INNER_BASE64_CHARS",
    "MIN_SECRET_CHARS",
    "RAW_LOCATION",
    "Leak",
    "assert_no_leaks",
    "encoded_forms",
    "find_leaks",
]

MIN_SECRET_CHARS = 6
"""Shorter secrets match too much ordinary text to mean anything (override: allow_short)."""

MIN_INNER_BASE64_CHARS = 6
"""Shortest inner base64 part searched: 36 secret bits, so chance hits in data are negligible."""

CONTEXT_BYTES = 12
"""Bytes of surrounding data shown on each side of a hit."""

MAX_NESTING = 4
"""How deep containers are opened (a gzip of a flow file whose body is gzip is depth 2)."""

RAW_LOCATION = "raw bytes"
GZIP_MAGIC = b"\x1f\x8b"

type Blob = tuple[str, bytes | str]
type PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Leak:
    """One place where a secret is visible.  Holds no part of the secret."""

    source: str  # file path or blob name
    location: str  # RAW_LOCATION or the decoded view, e.g. "flow 3 response body (decoded)"
    offset: int  # byte offset of the match inside that view
    length: int  # length of the matched encoded form
    label: str
    encoding: str
    context: str = ""  # surrounding bytes, every match in them replaced by [label] or [masked]

    def __str__(self) -> str:
        return (
            f"{self.source}:{self.offset}: {self.label} ({self.encoding}) in {self.location}"
            f"  context: {self.context}"
        )


@dataclass(frozen=True)
class _Form:
    """One encoded form of one secret.  ``data`` is the secret in disguise: never shown."""

    label: str
    encoding: str
    data: bytes = field(repr=False)
    preference: int  # lower wins when several forms match at the same offset


@dataclass(frozen=True)
class _SearchRoot:
    """A form searched with find(), plus the longer forms that start with it."""

    form: _Form
    # root and its extensions, most preferred first; checked with startswith() at each hit
    candidates: tuple[_Form, ...]


# --- encoded forms -------------------------------------------------------------------------

_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _lower_hex(url_encoded: str) -> str:
    return _PERCENT_ESCAPE.sub(lambda m: m.group().lower(), url_encoded)


def _json_escaped(secret: str, *, ensure_ascii: bool) -> str:
    return json.dumps(secret, ensure_ascii=ensure_ascii)[1:-1]


def _base64_inner(raw: bytes, alignment: int) -> bytes:
    """Standard base64 characters that encode only bytes of ``raw`` when ``raw`` starts
    ``alignment`` bytes into a 3-byte group of a longer blob."""
    encoded = base64.b64encode(b"\0" * alignment + raw)
    first = (8 * alignment + 5) // 6  # characters touching a filler bit
    end = 8 * (alignment + len(raw)) // 6  # characters made of whole known bits
    return encoded[first:end]


def encoded_forms(secret: str) -> dict[str, bytes]:
    """Every encoded form searched for ``secret``: encoding name -> bytes, most preferred
    first.  Forms with equal bytes appear once, under the first name (so an alphanumeric
    token's URL encoding is reported as "raw")."""
    raw = secret.encode()
    json_plain = _json_escaped(secret, ensure_ascii=False)
    json_ascii = _json_escaped(secret, ensure_ascii=True)
    candidates: list[tuple[str, str | bytes]] = [
        ("raw", raw),
        ("url-encoded", quote(secret, safe="")),
        ("url-encoded (lowercase hex)", _lower_hex(quote(secret, safe=""))),
        ("url-encoded (/ kept)", quote(secret, safe="/")),
        ("url-encoded (/ kept, lowercase hex)", _lower_hex(quote(secret, safe="/"))),
        ("form-encoded", quote_plus(secret, safe="")),
        ("form-encoded (lowercase hex)", _lower_hex(quote_plus(secret, safe=""))),
        ("json-escaped", json_plain),
        ("json-escaped (ascii)", json_ascii),
        ("json-escaped (\\/)", json_plain.replace("/", "\\/")),
        ("json-escaped (ascii, \\/)", json_ascii.replace("/", "\\/")),
        # mitmweb's list endpoints use tornado's json_encode, which escapes only "</"
        ("json-escaped (ascii, <\\/)", json_ascii.replace("</", "<\\/")),
        ("python repr", repr(secret)[1:-1]),
        ("python bytes repr", repr(raw)[2:-1]),
        ("base64", base64.b64encode(raw)),
        ("base64 (unpadded)", base64.b64encode(raw).rstrip(b"=")),
        ("base64url", base64.urlsafe_b64encode(raw)),
        ("base64url (unpadded)", base64.urlsafe_b64encode(raw).rstrip(b"=")),
    ]
    for alignment in range(3):
        inner = _base64_inner(raw, alignment)
        if len(inner) >= MIN_INNER_BASE64_CHARS:
            candidates.append((f"base64 inner (alignment {alignment})", inner))
            candidates.append(
                (f"base64url inner (alignment {alignment})", inner.translate(_TO_URLSAFE))
            )
    candidates += [("hex", raw.hex()), ("hex (uppercase)", raw.hex().upper())]
    for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        candidates.append((codec, secret.encode(codec)))
    try:
        candidates.append(("ebcdic (cp037)", secret.encode("cp037")))
    except UnicodeEncodeError:
        pass  # a character EBCDIC does not have: no such form

    forms: dict[str, bytes] = {}
    seen: set[bytes] = set()
    for name, value in candidates:
        data = value.encode() if isinstance(value, str) else value
        if data not in seen:
            seen.add(data)
            forms[name] = data
    return forms


def _search_roots(secrets: Mapping[str, str], allow_short: bool) -> list[_SearchRoot]:
    roots: list[_SearchRoot] = []
    for label, secret in secrets.items():
        if not isinstance(secret, str):
            raise TypeError(f"secret {label!r} must be a str, not {type(secret).__name__}")
        # the message names the label and length only: it may end up in test output
        if not secret or (len(secret) < MIN_SECRET_CHARS and not allow_short):
            raise ValueError(
                f"secret {label!r} is {len(secret)} characters long; secrets under "
                f"{MIN_SECRET_CHARS} characters match ordinary output "
                "(pass allow_short=True to scan anyway; empty secrets are never allowed)"
            )
        forms = [
            _Form(label, name, data, preference)
            for preference, (name, data) in enumerate(encoded_forms(secret).items())
        ]
        by_length = sorted(forms, key=lambda f: len(f.data))
        extensions: dict[_Form, list[_Form]] = {}
        for form in by_length:
            # the shortest form that is a prefix of this one is itself a root
            prefix = next(
                (r for r in extensions if r is not form and form.data.startswith(r.data)), None
            )
            if prefix is None:
                extensions[form] = [form]
            else:
                extensions[prefix].append(form)
        for root, group in extensions.items():
            group.sort(key=lambda f: f.preference)
            roots.append(_SearchRoot(root, tuple(group)))
    return roots


# --- searching one view --------------------------------------------------------------------


def _find_in_view(data: bytes, roots: list[_SearchRoot]) -> list[tuple[int, _Form]]:
    hits: list[tuple[int, _Form]] = []
    for root in roots:
        needle = root.form.data
        start = data.find(needle)
        while start != -1:
            best = next(c for c in root.candidates if data.startswith(c.data, start))
            hits.append((start, best))
            start = data.find(needle, start + len(best.data))
    hits.sort(key=lambda hit: (hit[0], hit[1].preference))
    # One place, one leak: UTF-16-LE text also holds the UTF-16-BE form one byte earlier (and
    # UTF-32's likewise), so a hit inside an earlier one of the same secret is left out.
    kept: list[tuple[int, _Form]] = []
    ends: dict[str, int] = {}
    for start, form in hits:
        if start >= ends.get(form.label, -1):
            kept.append((start, form))
            ends[form.label] = start + len(form.data)
    return kept


def _render(chunk: bytes) -> str:
    return repr(chunk)[2:-1]


def _masked_context(
    data: bytes, hits: list[tuple[int, _Form]], starts: list[int], longest: int, index: int
) -> str:
    """Bytes around hit ``index``, with every hit that reaches into them masked, so the
    context of one secret never shows another (or a second copy of itself).  ``hits`` are
    sorted by offset, ``starts`` are their offsets, ``longest`` their greatest length."""
    offset, form = hits[index]
    lo = max(0, offset - CONTEXT_BYTES)
    hi = min(len(data), offset + len(form.data) + CONTEXT_BYTES)
    masked = [False] * (hi - lo)
    # only hits starting within `longest` bytes before the window can reach into it
    first = bisect.bisect_left(starts, lo - longest)
    last = bisect.bisect_left(starts, hi)
    for start, other in hits[first:last]:
        for position in range(max(start, lo), min(start + len(other.data), hi)):
            masked[position - lo] = True

    def side(begin: int, end: int) -> str:
        parts: list[str] = []
        run_start = begin
        for position in range(begin, end + 1):
            boundary = position == end or masked[position - lo] != masked[run_start - lo]
            if boundary and position > run_start:
                is_masked = masked[run_start - lo]
                parts.append("[masked]" if is_masked else _render(data[run_start:position]))
                run_start = position
        return "".join(parts)

    end = offset + len(form.data)
    return f"{side(lo, offset)}[{form.label}]{side(end, hi)}"


def _scan_view(source: str, location: str, data: bytes, roots: list[_SearchRoot]) -> Iterator[Leak]:
    hits = _find_in_view(data, roots)
    starts = [start for start, _ in hits]
    longest = max((len(form.data) for _, form in hits), default=0)
    for index, (offset, form) in enumerate(hits):
        yield Leak(
            source=source,
            location=location,
            offset=offset,
            length=len(form.data),
            label=form.label,
            encoding=form.encoding,
            context=_masked_context(data, hits, starts, longest, index),
        )


# --- views: the bytes themselves and whatever containers hide ------------------------------

type View = tuple[str, bytes]  # (location, data)


def _views(data: bytes) -> Iterator[View]:
    yield RAW_LOCATION, data
    yield from _hidden_views(data, prefix="", depth=0)


def _hidden_views(data: bytes, prefix: str, depth: int) -> Iterator[View]:
    """Decoded views of content that a byte search of ``data`` cannot see."""
    if depth >= MAX_NESTING:
        return
    if data.startswith(GZIP_MAGIC):
        unzipped = _gunzip(data)
        if unzipped is not None:
            location = f"{prefix}gunzipped"
            yield location, unzipped
            yield from _hidden_views(unzipped, f"{location} > ", depth + 1)
    elif _looks_like_flow_file(data):
        yield from _flow_file_views(data, prefix, depth)
    elif _looks_like_har(data):
        yield from _har_views(data, prefix, depth)


def _gunzip(data: bytes) -> bytes | None:
    """All gzip members decompressed; a truncated file still yields what it holds."""
    parts: list[bytes] = []
    rest = data
    while rest.startswith(GZIP_MAGIC):
        decompressor = zlib.decompressobj(wbits=31)
        try:
            parts.append(decompressor.decompress(rest))
        except zlib.error:
            break
        if not decompressor.eof:
            break
        rest = decompressor.unused_data
    return b"".join(parts) if parts else None


_TNETSTRING_START = re.compile(rb"\d{1,12}:")


def _looks_like_flow_file(data: bytes) -> bool:
    return _TNETSTRING_START.match(data) is not None


def _flow_file_views(data: bytes, prefix: str, depth: int) -> Iterator[View]:
    flows = []
    try:
        for flow in FlowReader(io.BytesIO(data)).stream():
            flows.append(flow)
    except Exception:
        # Not a flow file after all, or truncated: keep the flows read so far.  The raw bytes
        # are scanned regardless; only compressed bodies need the parsed flows.
        pass
    for index, flow in enumerate(flows):
        location = f"{prefix}flow {index}"
        if isinstance(flow, http.HTTPFlow):
            messages: list[tuple[str, http.Message | None]] = [
                ("request", flow.request),
                ("response", flow.response),
            ]
            for name, message in messages:
                if message is not None and message.raw_content is not None:
                    yield from _body_views(
                        message.raw_content,
                        lambda m=message: m.get_content(strict=False),
                        f"{location} {name} body",
                        depth,
                    )
            if flow.websocket is not None:
                for number, ws_message in enumerate(flow.websocket.messages):
                    # stored verbatim; only content that is itself a container needs opening
                    yield from _hidden_views(
                        ws_message.content,
                        f"{location} websocket message {number} > ",
                        depth + 1,
                    )


def _body_views(
    raw: bytes, decode: Callable[[], bytes | None], location: str, depth: int
) -> Iterator[View]:
    decoded = decode()
    if decoded is not None and decoded != raw:
        # stored compressed: the file's bytes do not show the body
        yield f"{location} (decoded)", decoded
        yield from _hidden_views(decoded, f"{location} (decoded) > ", depth + 1)
    else:
        # stored verbatim (already covered by the raw scan); open it if it is a container
        yield from _hidden_views(raw, f"{location} > ", depth + 1)


def _looks_like_har(data: bytes) -> bool:
    return data[:64].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") and b'"entries"' in data


def _har_views(data: bytes, prefix: str, depth: int) -> Iterator[View]:
    try:
        har = json.loads(data)
        entries = har["log"]["entries"]
    except (ValueError, KeyError, TypeError):
        return
    if not isinstance(entries, list):
        return
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        location = f"{prefix}har entry {index}"
        response = entry.get("response")
        content = response.get("content") if isinstance(response, dict) else None
        if isinstance(content, dict) and content.get("encoding") == "base64":
            yield from _base64_view(content.get("text"), f"{location} response body", depth)
        for number, message in enumerate(entry.get("_webSocketMessages") or []):
            # mitmproxy writes binary messages (opcode 2) base64-encoded
            if isinstance(message, dict) and message.get("opcode") == 2:
                yield from _base64_view(
                    message.get("data"), f"{location} websocket message {number}", depth
                )


def _base64_view(text: object, location: str, depth: int) -> Iterator[View]:
    if not isinstance(text, str):
        return
    try:
        decoded = base64.b64decode(text)
    except ValueError:
        return
    location = f"{location} (base64-decoded)"
    yield location, decoded
    yield from _hidden_views(decoded, f"{location} > ", depth + 1)


# --- as a person reads it --------------------------------------------------------------------

_CODE_ESCAPE = re.compile(
    r"\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})|\\x([0-9a-fA-F]{2})|\\u\{([0-9a-fA-F]{1,6})\}"
)
#: Bytes that make the reading differ from the bytes of an ASCII view.
_READ_HINT = re.compile(rb"[\\&%\x00-\x08\x0e-\x1f\x7f]")


@functools.cache
def _unseen_and_lookalikes() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Control (but line-breaking and tab) and format characters; spaces and dashes other than
    ASCII's. From unicodedata, on first use (planes 0, 1 and 14 hold every one of them)."""
    unseen: list[str] = []
    other: list[str] = []
    for code in [*range(0x10000 * 2), *range(0xE0000, 0xE1000)]:
        char = chr(code)
        category = unicodedata.category(char)
        if (category == "Cc" and char not in "\t\n\r") or category == "Cf":
            unseen.append(char)
        elif code > 0x7F and category in ("Zs", "Pd"):
            other.append(char)

    def klass(chars: list[str]) -> re.Pattern[str]:
        return re.compile("[" + "".join(re.escape(char) for char in chars) + "]")

    return klass(unseen), klass(other)


def _as_read(data: bytes) -> bytes | None:
    """``data`` as a person reads it (see the module's docstring), or None when that is
    ``data`` itself (ASCII without escapes or control characters)."""
    if data.isascii() and _READ_HINT.search(data) is None:
        return None
    text = data.decode("utf-8", "replace")

    def code_point(match: re.Match[str]) -> str:
        code = int(next(group for group in match.groups() if group), 16)
        return chr(code) if code <= 0x10FFFF else "\ufffd"

    text = unquote(html.unescape(_CODE_ESCAPE.sub(code_point, text)), errors="replace")
    unseen, other = _unseen_and_lookalikes()
    text = unseen.sub("", unicodedata.normalize("NFKC", text))
    text = other.sub(lambda m: "-" if unicodedata.category(m.group()) == "Pd" else " ", text)
    read = text.encode("utf-8", "replace")
    return None if read == data else read


# --- sources -------------------------------------------------------------------------------


def _files(paths: Iterable[PathLike]) -> Iterator[Path]:
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for directory, subdirectories, names in os.walk(path):
                subdirectories.sort()
                for name in sorted(names):
                    file = Path(directory, name)
                    if file.is_file():
                        yield file
        elif path.is_file():
            yield path
        else:
            # a scan of an output that was never written would pass silently
            raise FileNotFoundError(f"leak scan: no such file or directory: {path}")


def find_leaks(
    secrets: Mapping[str, str],
    paths: Iterable[PathLike] = (),
    blobs: Iterable[Blob] = (),
    *,
    allow_short: bool = False,
) -> list[Leak]:
    """Every place where a secret (label -> value) shows in the files (directories are
    walked recursively) or named in-memory blobs (str blobs are taken as UTF-8)."""
    roots = _search_roots(secrets, allow_short)
    sources: list[tuple[str, Callable[[], bytes]]] = [
        (str(file), file.read_bytes) for file in _files(paths)
    ]
    for name, blob in blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        sources.append((name, lambda d=data: d))
    leaks: list[Leak] = []
    for source, read in sources:
        for location, view in _views(read()):
            found = list(_scan_view(source, location, view, roots))
            leaks.extend(found)
            # as read: only the secrets this view does not show otherwise (no duplicates)
            shown = {leak.label for leak in found}
            unseen = [root for root in roots if root.form.label not in shown]
            if unseen and (as_read := _as_read(view)) is not None:
                leaks.extend(_scan_view(source, f"{location} as read", as_read, unseen))
    return leaks


def assert_no_leaks(
    secrets: Mapping[str, str],
    paths: Iterable[PathLike] = (),
    blobs: Iterable[Blob] = (),
    *,
    allow_short: bool = False,
) -> None:
    """Raise AssertionError listing every leak as ``source:offset: label (encoding) in
    location`` plus masked context.  The message never contains a secret."""
    # keep pytest from printing this frame, whose locals hold the secrets (pytest -l)
    __tracebackhide__ = True
    leaks = find_leaks(secrets, paths, blobs, allow_short=allow_short)
    if leaks:
        lines = "\n".join(f"  {leak}" for leak in leaks)
        raise AssertionError(f"{len(leaks)} secret leak(s) found:\n{lines}")
