"""JSON:API documents: the one wire format for every error the sandbox or the gateway makes.

Unit's Python SDK parses every non-2xx body as ``{"errors": [...]}`` and crashes on anything
else, so nothing either side returns may be plain text.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mitmproxy import http

MEDIA_TYPE = "application/vnd.api+json"


def error_object(
    status: int,
    title: str | None = None,
    *,
    code: str | None = None,
    detail: str | None = None,
    pointer: str | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One item of a JSON:API ``errors`` array. ``status`` is a string, as Unit sends it."""
    item: dict[str, Any] = {
        "status": str(status),
        "title": title or HTTPStatus(status).phrase,
    }
    if code is not None:
        item["code"] = code
    if detail is not None:
        item["detail"] = detail
    if pointer is not None:
        item["source"] = {"pointer": pointer}
    if meta:
        item["meta"] = meta
    return item


def error_document(
    status: int,
    title: str | None = None,
    *,
    code: str | None = None,
    detail: str | None = None,
    pointer: str | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A whole error document with a single error."""
    return {
        "errors": [
            error_object(status, title, code=code, detail=detail, pointer=pointer, meta=meta)
        ]
    }


def error_bytes(status: int, title: str | None = None, **kwargs: Any) -> bytes:
    """The serialized form of :func:`error_document`, ready for a response body."""
    return json.dumps(error_document(status, title, **kwargs), separators=(",", ":")).encode()


def errors_of(body: bytes | str) -> list[dict[str, Any]] | None:
    """The ``errors`` array of a body, or None when it is not a JSON:API error document."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
        return None
    return doc["errors"]


def error_response(
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
) -> http.Response:
    """A mitmproxy response with one JSON:API error: every answer the gateway makes itself."""
    from mitmproxy import http  # here, not above: the sandbox uses this module too

    return http.Response.make(
        status,
        error_bytes(status, code=code, detail=detail, meta=meta),
        {"Content-Type": MEDIA_TYPE, **(headers or {})},
    )
