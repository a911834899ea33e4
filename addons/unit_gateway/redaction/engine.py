"""The redaction engine: what a person or a file may see of a flow.

Pure logic: called on copies of what is shown, logged or saved, never on what goes to the
caller or to Unit; inputs are never modified. Guarantees: docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Iterable
from typing import Any

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
from unit_gateway.redaction.bodies import (
    MAX_TEXT_READ_BYTES,
    BodyRedactor,
    RedactedBody,
    looks_binary,
)
from unit_gateway.redaction.json_walk import JsonWalker
from unit_gateway.redaction.keyed_text import KeyRules
from unit_gateway.redaction.markers import (
    FINGERPRINT,
    MARKER,
    PLACEHOLDER_CREDENTIAL,
    PLACEHOLDER_HEADERS,
    PROCESS_KEY,
    redact_credential,
)
from unit_gateway.redaction.readings import settle
from unit_gateway.redaction.rules import (
    DETECTOR_RULES,
    Detectors,
    compile_content_types,
    compile_route_patterns,
)
from unit_gateway.redaction.urls import URL_HEADERS, UrlRedactor

__all__ = [
    "MARKER",
    "RedactedBody",
    "RedactionSettings",
    "Redactor",
]

#: Binary values this short get the text rules: no encoding hiding text fits a secret in them.
SHORT_BINARY_VALUE = 16


class Redactor:
    """Applies :class:`RedactionSettings` plus the defaults.

    ``key``: the fingerprint key (default: random per process). ``counts`` arguments are
    incremented per rule in :attr:`rule_names`.
    """

    def __init__(self, settings: RedactionSettings | None = None, key: bytes | None = None) -> None:
        self.settings = settings if settings is not None else RedactionSettings()
        self._key = key if key is not None else PROCESS_KEY
        settings = self.settings
        # lower-case -> as configured, for markers and count names
        self._fields: dict[str, str] = {}
        for name in (*DEFAULT_FIELDS, *settings.fields):
            self._fields.setdefault(name.lower(), name)
        self._params: dict[str, str] = dict(self._fields)
        for name in (*DEFAULT_QUERY_PARAMS, *settings.query_params):
            self._params.setdefault(name.lower(), name)
        self._headers = frozenset(h.lower() for h in (*DEFAULT_HEADERS, *settings.headers))
        header_keys = self._headers - self._fields.keys()
        self._own_header_rules = self._headers | URL_HEADERS
        self._own_header_rules_raw = frozenset(h.encode() for h in self._own_header_rules)
        self._detectors = Detectors(settings.detectors, self.fingerprint)
        self._keys = KeyRules(
            self._params, self._headers, self._redact_header_value, self._field_marker
        )
        self._urls = UrlRedactor(
            self._params,
            self._detectors,
            self.fingerprint,
            self._field_marker,
            self._text_rules,
            self.text_is_clean,
        )
        self._json = JsonWalker(
            [PathRule.parse(text) for text in settings.paths],
            {h: h for h in header_keys} | self._fields,
            header_keys,
            self._detectors,
            self._field_marker,
            self._redact_header_value,
            self._keys.redact,
        )
        self._bodies = BodyRedactor(
            settings.max_body_bytes,
            compile_route_patterns(
                (*DEFAULT_BINARY_SUMMARY_ROUTES, *settings.binary_summary_routes)
            ),
            compile_content_types(
                (*DEFAULT_BINARY_SUMMARY_CONTENT_TYPES, *settings.binary_summary_content_types)
            ),
            self._urls,
            self._json,
            self._detectors,
            self._field_marker,
            self._text_rules,
        )
        self.rule_names: frozenset[str] = frozenset(
            {"header", "path", "binary", *DETECTOR_RULES}
            | {f"field:{name}" for name in self._params.values()}
        )

    # --- markers

    def fingerprint(self, token: str) -> str:
        """``[token …a1b2c3]``: a keyed HMAC, so it tells tokens apart without revealing them."""
        digest = hmac.new(
            self._key, token.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).hexdigest()
        return f"[token …{digest[:6]}]"

    def _field_marker(self, name: str, value: Any, counts: Counter[str]) -> Any:
        """A value under the sensitive ``name``, redacted idempotently (counted once)."""
        # null and "" show that a field is absent, and hold nothing.
        marker = f"[redacted:{name}]"
        if value is None or value == "" or value == marker:
            return value
        if isinstance(value, str) and name.lower() in FINGERPRINTED_FIELDS:
            if FINGERPRINT.fullmatch(value):
                return value
            counts[f"field:{name}"] += 1
            return self.fingerprint(value)
        counts[f"field:{name}"] += 1
        return marker

    # --- text

    def text_is_clean(self, text: str) -> bool:
        """True if :meth:`redact_text` surely leaves ``text`` unchanged; holds for each of
        newline-joined values. Non-ASCII is never clean: other case rules match differently."""
        return (
            text.isascii()
            and self._keys.finder.search(text.lower()) is None
            and self._detectors.finds_nothing_in(text)
        )

    def redact_text(self, text: str, *, counts: Counter[str] | None = None) -> str:
        """Log lines, error bodies, any free text: key rules, then detectors."""
        tally = counts if counts is not None else Counter()
        return self._detectors.scan(self._keys.redact(text, tally), tally)

    def redact_data(
        self, data: bytes, *, counts: Counter[str] | None = None, value: bool = False
    ) -> bytes | None:
        """Untyped bytes (TCP/UDP/WebSocket message, DNS record) fit to show, or None: show a
        summary. ``value``: a standalone value, so short binary gets the text rules too."""
        if looks_binary(data) and not (value and len(data) <= SHORT_BINARY_VALUE):
            return None
        if len(data) > MAX_TEXT_READ_BYTES:
            return None
        tally = counts if counts is not None else Counter()
        shown = settle(data, (), self._text_rules, tally)
        if shown is not None and self._bodies.views_show_a_secret(shown):
            return None
        return shown

    def _text_rules(self, text: str, counts: Counter[str]) -> str:
        return self.redact_text(text, counts=counts)

    # --- headers

    def redact_headers(
        self, headers: Iterable[tuple[str, str]], *, counts: Counter[str] | None = None
    ) -> list[tuple[str, str]]:
        """Credentials become fingerprints (placeholders stay), URLs :meth:`redact_url`, the
        rest :meth:`redact_text`."""
        tally = counts if counts is not None else Counter()
        headers = list(headers)
        # Usually nothing is secret, and one check over all of them says so.
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
        """True if :meth:`redact_headers` would change and count nothing in these raw
        fields; False means "redact them", not that something is secret."""
        names: list[bytes] = []
        values: list[bytes] = []
        for name, value in fields:
            lowered = name.lower()
            if lowered in self._own_header_rules_raw and not (
                lowered in PLACEHOLDER_HEADERS and PLACEHOLDER_CREDENTIAL.fullmatch(value)
            ):
                return False
            names.append(name)
            values.append(value)
        text, names_text = b"\n".join(values), b"\n".join(names)
        return (
            text.isascii()
            and names_text.isascii()
            and self.text_is_clean(text.decode("ascii"))
            and self._detectors.finds_nothing_in(names_text.decode("ascii"))
        )

    def _redact_own_rules(self, lowered: str, value: str, counts: Counter[str]) -> str:
        """A header value under its name's own rules (credentials, URLs), if any."""
        if lowered in self._headers:
            return self._redact_header_value(lowered, value, counts)
        if lowered in URL_HEADERS:
            return self.redact_url(value, counts=counts)
        return value

    def _redact_header_value(self, name: str, value: str, counts: Counter[str]) -> str:
        """The value of a credential header (``name`` in lower case): a fingerprint."""
        return redact_credential(name, value, counts, self.fingerprint, self._detectors)

    # --- URLs

    def redact_query(self, query: str, *, counts: Counter[str] | None = None) -> str:
        """A query string (with or without its ``?``), parameter by parameter."""
        tally = counts if counts is not None else Counter()
        if query.startswith("?"):
            return "?" + self._urls.redact_pairs(query[1:], tally)
        return self._urls.redact_pairs(query, tally)

    def redact_url(self, url: str, *, counts: Counter[str] | None = None) -> str:
        """A URL or a request target: password, path segments, query and fragment."""
        return self._urls.redact_url(url, counts)

    # --- bodies

    def redact_body(
        self,
        content: bytes,
        content_type: str | None,
        content_encoding: str | None,
        *,
        path: str | None = None,
    ) -> RedactedBody:
        """A body fit to show; ``path`` (the request path) enables route-based summaries."""
        return self._bodies.redact(content, content_type, content_encoding, path=path)
