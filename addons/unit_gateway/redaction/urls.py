"""URLs, request targets, query strings and form bodies, parameter by parameter."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from urllib.parse import quote, unquote, unquote_plus

from unit_gateway.redaction.markers import MARKER, FieldMarker, Fingerprint
from unit_gateway.redaction.readings import Rules, deep
from unit_gateway.redaction.rules import Detectors

_NAME_PARTS = re.compile(r"[\[\].]+")
_URL_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
#: Headers whose value is a URL: they get the URL rules, not the text rules.
URL_HEADERS = frozenset({"location", "content-location", "referer", "origin"})


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


class UrlRedactor:
    """The URL rules, with what they need of the Redactor: ``params`` maps a lower-case
    parameter name to the name markers show; ``text_rules`` is ``Redactor.redact_text``."""

    def __init__(
        self,
        params: Mapping[str, str],
        detectors: Detectors,
        fingerprint: Fingerprint,
        field_marker: FieldMarker,
        text_rules: Rules,
        text_is_clean: Callable[[str], bool],
    ) -> None:
        self._params = params
        self._detectors = detectors
        self._fingerprint = fingerprint
        self._field_marker = field_marker
        self._text_rules = text_rules
        self._text_is_clean = text_is_clean

    def redact_url(self, url: str, counts: Counter[str] | None = None) -> str:
        """A URL or a request target: password, path segments, query and fragment."""
        # Without escapes ("%", "+"), a password ("@"), a sensitive name or anything a detector
        # finds in the whole URL, no part of it can change: most request targets.
        if "%" not in url and "+" not in url and "@" not in url and self._text_is_clean(url):
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
            redacted += "?" + self.redact_pairs(query, tally)
        if hash_mark:
            # OAuth's implicit flow puts access_token=… in fragments: treat it as a query.
            redacted += "#" + self.redact_pairs(fragment, tally)
        return redacted

    def _redact_authority(self, prefix: str, counts: Counter[str]) -> str:
        scheme, _, authority = prefix.partition("://")
        userinfo, at, host = authority.rpartition("@")
        if not at:
            return prefix
        user, colon, password = userinfo.partition(":")
        if colon and password:
            counts["field:password"] += 1
            password = self._fingerprint(unquote(password))
        return f"{scheme}://{self._redact_path_segment(user, counts)}{colon}{password}@{host}"

    def _redact_path_segment(self, segment: str, counts: Counter[str]) -> str:
        if len(segment) < 5:
            return segment
        decoded = unquote(segment)
        redacted = self._text_rules(decoded, counts)
        if redacted == decoded:
            # percent escapes can split a run the decoded segment does not show
            return self._detectors.scan(segment, counts)
        return _requote(redacted, "!$&'()*+,;=:@~")

    def param_label(self, name: str) -> str | None:
        """The configured name a parameter falls under: ``data[attributes][address][city]``
        and ``counterparty.accountNumber`` count for every component, like a JSON path does."""
        lowered = name.lower()
        canonical = self._params.get(lowered)
        if canonical is None:
            for part in _NAME_PARTS.split(lowered):
                if part and (canonical := self._params.get(part)) is not None:
                    break
        return canonical

    def redact_pairs(self, text: str, counts: Counter[str]) -> str:
        """``a=1&b=2`` (query strings, form bodies, fragments), keeping untouched parts as sent."""
        items: list[str] = []
        for item in text.split("&"):
            raw_name, eq, raw_value = item.partition("=")
            name = unquote_plus(raw_name)
            new_name = deep(name, counts, self._detectors.scan)
            if new_name != name:
                raw_name = _requote(new_name, "[]")
            canonical = self.param_label(name) if eq else None
            value = unquote_plus(raw_value)
            if canonical is not None:
                marker = self._field_marker(canonical, value, counts)
                if marker != value:
                    raw_value = marker
            elif value:
                redacted = deep(value, counts, self._text_rules)
                if redacted != value:
                    raw_value = _requote(redacted, "!$'()*,/:;@~")
                else:
                    # percent escapes can split a run the decoded value does not show
                    raw_value = self._detectors.scan(raw_value, counts)
            items.append(f"{raw_name}{eq}{raw_value}")
        return "&".join(items)
