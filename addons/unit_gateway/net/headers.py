"""Header helpers on mitmproxy's raw header fields, shared by the addons that read and write
``Authorization``."""

from __future__ import annotations

from operator import itemgetter

from mitmproxy import http

_FIELD_NAME = itemgetter(0)

_LOWER_CASE_NAMES = (b"HTTP/2.0", b"HTTP/3")


def authorization_name(request: http.Request) -> str:
    """How an ``Authorization`` field the gateway adds is spelled: HTTP/2 and 3 allow only
    lower-case names (mitmproxy would lowercase it, and log that it had to, every time)."""
    return "authorization" if request.data.http_version in _LOWER_CASE_NAMES else "Authorization"


def has_header_field(fields: tuple[tuple[bytes, bytes], ...], lowered: bytes) -> bool:
    """Whether a field is named ``lowered`` (any case): asked for most headers of most
    requests, and mostly no, so the walk stays in C (no Python frame per field)."""
    return lowered in map(bytes.lower, map(_FIELD_NAME, fields))
