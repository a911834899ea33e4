"""What a redacted value becomes: the markers, fingerprints, and credential header values
(``Authorization``, ``Cookie``, ``Set-Cookie``) reduced to fingerprints."""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Callable
from typing import Any

from unit_gateway.redaction.rules import Detectors
from unit_gateway.unit_api.identity import PLACEHOLDER_PATTERN

#: ``[token …a1b2c3]`` for a token (see ``Redactor.fingerprint``).
type Fingerprint = Callable[[str], str]
#: What a value under a sensitive name becomes (``Redactor._field_marker``).
type FieldMarker = Callable[[str, Any, Counter[str]], Any]
#: A header value under the rules of its (lower-case) name.
type HeaderValue = Callable[[str, str, Counter[str]], str]

#: Used when no key is configured: fingerprints agree across every Redactor in this process
#: (a configuration reload keeps them stable) and mean nothing outside it.
PROCESS_KEY = secrets.token_bytes(32)

#: Any marker the redaction writes (URLs keep them readable instead of percent-encoding them).
MARKER = re.compile(
    r"\[(?:redacted:[^\]\r\n]{1,200}|token …[0-9a-f]{6}"
    r"|binary (?:body|part) redacted: [^\]\r\n]{1,200})\]"
)

#: A fingerprint. A credential that already is one is left alone: it reveals 24 bits of a
#: keyed hash and nothing else, and leaving it makes redacting twice change nothing.
FINGERPRINT = re.compile(r"\[token …[0-9a-f]{6}\]")

#: The gateway's own stand-ins for a token (design.md, "Identity"): not secrets, kept visible.
PLACEHOLDER = re.compile(PLACEHOLDER_PATTERN)

#: The only credential header values a raw header check may leave to the detectors: an
#: optional auth scheme and one of the gateway's placeholders, nothing else.
PLACEHOLDER_HEADERS = frozenset({b"authorization", b"proxy-authorization"})
PLACEHOLDER_CREDENTIAL = re.compile(
    rb"[ \t]*(?:[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,31} +)?"
    + PLACEHOLDER_PATTERN.encode()
    + rb"[ \t]*"
)
_COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_AUTH_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,31}")


def redact_credential(
    name: str, value: str, counts: Counter[str], fingerprint: Fingerprint, detectors: Detectors
) -> str:
    """The value of the credential header ``name``: a fingerprint in place of the secret
    (placeholders stay, cookie names stay)."""
    stripped = value.strip()
    if not stripped or FINGERPRINT.fullmatch(stripped) or stripped == f"[redacted:{name}]":
        return value
    if name in ("authorization", "proxy-authorization"):
        scheme, space, credentials = stripped.partition(" ")
        credentials = credentials.strip()
        if not space or not credentials or not _AUTH_SCHEME.fullmatch(scheme):
            scheme, credentials = "", stripped
        if FINGERPRINT.fullmatch(credentials):
            return value
        if PLACEHOLDER.fullmatch(credentials):
            return detectors.scan(value, counts)
        counts["header"] += 1
        marker = fingerprint(credentials)
        return f"{scheme} {marker}" if scheme else marker
    if name == "cookie":
        pairs = [pair.strip() for pair in stripped.split(";") if pair.strip()]
        redacted_pairs = [_fingerprint_pair(pair, fingerprint, detectors) for pair in pairs]
        if redacted_pairs != pairs:
            counts["header"] += 1
        return "; ".join(redacted_pairs)
    if name == "set-cookie":
        pair, semicolon, attributes = stripped.partition(";")
        redacted_pair = _fingerprint_pair(pair, fingerprint, detectors)
        if redacted_pair != pair.strip():
            counts["header"] += 1
        return redacted_pair + semicolon + detectors.scan(attributes, counts)
    counts["header"] += 1
    return fingerprint(stripped)


def _fingerprint_pair(pair: str, fingerprint: Fingerprint, detectors: Detectors) -> str:
    """``name=value`` of a cookie: the name stays (if it is a valid cookie name), the value
    becomes a fingerprint; anything else is fingerprinted whole."""
    pair = pair.strip()
    name, eq, value = pair.partition("=")
    if not eq or not _COOKIE_NAME.fullmatch(name) or not detectors.finds_nothing_in(name):
        # no name, or one that is itself a secret: the pair is fingerprinted whole
        return pair if FINGERPRINT.fullmatch(pair) else fingerprint(pair)
    if not value or FINGERPRINT.fullmatch(value):
        return pair
    return f"{name}={fingerprint(value)}"
