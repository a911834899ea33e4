"""The encoded forms of a secret, and where they occur in a view's bytes.

Forms searched: raw UTF-8; URL and form encoding (upper- and lower-case hex, ``/`` kept or
not); JSON string escaping (``ensure_ascii`` on and off, ``\\/``, tornado's ``<\\/``); Python
``repr`` of the str and of its bytes; base64 and base64url, padded or not, also inside a larger
blob; hex; UTF-16 and UTF-32 in both byte orders; EBCDIC (cp037).

Inside a larger base64 blob a secret's characters depend on where it starts in a 3-byte group
(its alignment, 0-2); for each alignment only the characters made purely of secret bits are
searched, if at least ``MIN_INNER_BASE64_CHARS`` (every secret of 5 or more UTF-8 bytes at
every alignment; shorter ones only as the whole encoded value). Line-wrapped base64 (MIME,
PEM) is not covered. Occurrences of one form do not overlap: a form repeated back to back is
found, not at every byte.
"""

import base64
import bisect
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

MIN_SECRET_CHARS = 6
"""Shorter secrets match too much ordinary text to mean anything (override: allow_short)."""

MIN_INNER_BASE64_CHARS = 6
"""Shortest inner base64 part searched: 36 secret bits, so chance hits in data are negligible."""

CONTEXT_BYTES = 12
"""Bytes of surrounding data shown on each side of a hit."""


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
class SearchRoot:
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


def search_roots(secrets: Mapping[str, str], allow_short: bool) -> list[SearchRoot]:
    roots: list[SearchRoot] = []
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
            roots.append(SearchRoot(root, tuple(group)))
    return roots


# --- searching one view --------------------------------------------------------------------


def _find_in_view(data: bytes, roots: list[SearchRoot]) -> list[tuple[int, _Form]]:
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


def scan_view(source: str, location: str, data: bytes, roots: list[SearchRoot]) -> Iterator[Leak]:
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
