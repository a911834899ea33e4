"""PASETO-v2.public-shaped tokens, as Unit issues them.

A Unit token is ``v2.public.`` + base64url(JSON claims || 64-byte signature), so anyone can read
its claims without a key. Real v2.public tokens are Ed25519-signed over a pre-authentication
encoding; the local sandbox only needs tokens of the same *shape* that it alone can check, so
it signs with HMAC-SHA512 (also 64 bytes) over ``b"v2.public." + claims``.

The gateway only ever calls :func:`claims_of` and :func:`expiry_of`: it reads ``exp`` and
``scope`` from tokens it cannot (and need not) verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from typing import Any

PREFIX = "v2.public."
SIGNATURE_SIZE = 64

# base64url without padding; real PASETO may append ".<footer>", which carries no claims.
_TOKEN_RE = re.compile(r"v2\.public\.([A-Za-z0-9_-]+)(?:\.[A-Za-z0-9_-]*)?")


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    if len(text) % 4 == 1:  # no byte string encodes to this length
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _signature(message: bytes, key: bytes) -> bytes:
    return hmac.new(key, PREFIX.encode("ascii") + message, hashlib.sha512).digest()


def _split(token: str) -> tuple[bytes, bytes] | None:
    """(claims bytes, signature) of a token of the right shape, else None."""
    if not isinstance(token, str):
        return None
    match = _TOKEN_RE.fullmatch(token)
    if match is None:
        return None
    raw = _b64decode(match.group(1))
    if raw is None or len(raw) <= SIGNATURE_SIZE:
        return None
    return raw[:-SIGNATURE_SIZE], raw[-SIGNATURE_SIZE:]


def _parse_claims(message: bytes) -> dict[str, Any] | None:
    try:
        claims = json.loads(message)
    except (ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def encode(claims: dict[str, Any], key: bytes) -> str:
    """A token carrying ``claims``, signed with ``key``."""
    message = json.dumps(claims, separators=(",", ":")).encode()
    return PREFIX + _b64encode(message + _signature(message, key))


def claims_of(token: str) -> dict[str, Any] | None:
    """The claims of a v2.public-shaped token, WITHOUT checking its signature.

    None for anything that is not of that shape (placeholders, JWTs, garbage).
    """
    parts = _split(token)
    return None if parts is None else _parse_claims(parts[0])


def verify(token: str, key: bytes) -> dict[str, Any] | None:
    """The claims of ``token`` if ``key`` signed it, else None. Does not look at ``exp``."""
    parts = _split(token)
    if parts is None:
        return None
    message, signature = parts
    if not hmac.compare_digest(signature, _signature(message, key)):
        return None
    return _parse_claims(message)


def format_time(moment: datetime) -> str:
    """An aware datetime as Unit writes times: ``2026-11-21T10:00:00.000Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 string (or epoch seconds, as JWTs use) as an aware UTC datetime."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:  # Unit's times are UTC even when they forget to say so
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def expiry_of(claims: dict[str, Any]) -> datetime | None:
    """The ``exp`` claim as an aware UTC datetime, or None if absent or unreadable."""
    return parse_time(claims.get("exp"))
