"""Sensitive names in free text: the value after ``"key": v``, ``key=v``, ``key: v`` and the
like, found on a best-effort basis (:class:`KeyRules`), and the syntax that tells where such a
value ends."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from unit_gateway.redaction.markers import FieldMarker, HeaderValue
from unit_gateway.redaction.rules import names_pattern

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


class KeyRules:
    """The key rules for text, over every field, parameter and header name. ``params`` maps a
    lower-case name to the name markers show; ``headers`` are lower-case header names, whose
    values get ``header_value``; the rest get ``field_marker``."""

    def __init__(
        self,
        params: Mapping[str, str],
        headers: frozenset[str],
        header_value: HeaderValue,
        field_marker: FieldMarker,
    ) -> None:
        self._params = params
        self._headers = headers
        self._header_value = header_value
        self._field_marker = field_marker
        # The finder runs over a lower-cased copy of the text (a case-insensitive regex is
        # several times slower); the rest of the rule (quotes, separator, value) is checked at
        # each hit.
        names = names_pattern(sorted({*params, *headers}))
        self.finder = re.compile(rf"(?<![a-z0-9_-])(?:{names})(?![a-z0-9_-])")
        # for the rare text whose lower-case copy has another length (offsets would not match)
        self._finder_any_case = re.compile(
            rf"(?<![A-Za-z0-9_-])(?:{names})(?![A-Za-z0-9_-])", re.IGNORECASE
        )

    def redact(self, text: str, counts: Counter[str]) -> str:
        """Values after sensitive names in ``"key": v``, ``'key': v``, ``\\"key\\": v``,
        ``key=v``, ``key: v``, ``a[key]=v``."""
        haystack = text.lower()
        finder = self.finder
        if len(haystack) != len(text):
            haystack, finder = text, self._finder_any_case
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
                        replacement = self._header_value(name, value, counts)
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
