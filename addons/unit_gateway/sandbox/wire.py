"""Request and response plumbing shared by every sandbox handler.

Every error leaves through :func:`error_response`, which uses ``jsonapi`` so that Unit's SDKs
can parse it; handlers signal errors by raising :class:`ApiError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..net import jsonapi

# Success bodies are JSON:API documents, like Unit's.
_API_HEADERS = {"Content-Type": jsonapi.MEDIA_TYPE}
_JSON_HEADERS = {"Content-Type": "application/json"}


class ApiError(Exception):
    """An error the sandbox answers with: becomes a one-error JSON:API document."""

    def __init__(
        self,
        status: int,
        title: str | None = None,
        *,
        code: str | None = None,
        detail: str | None = None,
        pointer: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title or str(status))
        self.status = status
        self.title = title
        self.code = code
        self.detail = detail
        self.pointer = pointer
        self.headers = dict(headers or {})


def error_response(error: ApiError) -> web.Response:
    body = jsonapi.error_bytes(
        error.status, error.title, code=error.code, detail=error.detail, pointer=error.pointer
    )
    return web.Response(status=error.status, body=body, headers={**_API_HEADERS, **error.headers})


def document(
    data: Any,
    status: int = 200,
    *,
    meta: dict[str, Any] | None = None,
    included: list[Any] | None = None,
) -> web.Response:
    doc: dict[str, Any] = {"data": data}
    if included is not None:
        doc["included"] = included
    if meta is not None:
        doc["meta"] = meta
    return raw_document(encode(doc), status)


def encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def raw_document(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, headers=_API_HEADERS)


def plain_json(value: Any, status: int = 200) -> web.Response:
    """For /__sandbox endpoints, which are not part of Unit's API."""
    return web.Response(status=status, body=json.dumps(value).encode(), headers=_JSON_HEADERS)


def is_json_media_type(content_type: str) -> bool:
    """``application/json``, ``application/vnd.api+json`` and any other ``+json`` type."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_body(request: web.BaseRequest) -> bytes:
    """The request body; one over aiohttp's limit (Unit's is not documented) is a JSON:API
    413 like every other refusal."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise ApiError(413, code="request_too_large", detail=e.text) from None


def parse_json_body(raw: bytes, content_type: str) -> Any:
    """The JSON in a request body; raises 415 or 400 as a JSON:API error."""
    if not raw:
        return None
    if not is_json_media_type(content_type):
        raise ApiError(
            415,
            detail=f"Content-Type must be {jsonapi.MEDIA_TYPE} (or another JSON type)",
            code="unsupported_media_type",
        )
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "Malformed JSON", code="malformed_json", detail=str(e)) from None


# --- reading a JSON:API request document ----------------------------------------------------


def resource_data(body: Any, *allowed_types: str) -> dict[str, Any]:
    """``body["data"]``, checked to be a resource object of one of ``allowed_types``."""
    if body is None:
        raise ApiError(400, "Bad Request", detail="a request body is required", pointer="/data")
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise ApiError(400, "Bad Request", detail="expected a JSON:API document", pointer="/data")
    data: dict[str, Any] = body["data"]
    kind = data.get("type")
    if kind not in allowed_types:
        raise ApiError(
            400,
            "Bad Request",
            detail=f"type must be one of: {', '.join(allowed_types)}",
            pointer="/data/type",
        )
    attributes = data.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ApiError(400, "Bad Request", detail="must be an object", pointer="/data/attributes")
    return data


def attributes_of(data: dict[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = data.get("attributes") or {}
    return attributes


def _invalid(name: str, detail: str) -> ApiError:
    return ApiError(400, "Bad Request", detail=detail, pointer=f"/data/attributes/{name}")


def string_attr(
    attributes: dict[str, Any], name: str, *, required: bool = False, choices: tuple[str, ...] = ()
) -> str | None:
    value = attributes.get(name)
    if value is None:
        if required:
            raise _invalid(name, f"{name} is required")
        return None
    if not isinstance(value, str) or (required and not value):
        raise _invalid(name, f"{name} must be a non-empty string")
    if choices and value not in choices:
        raise _invalid(name, f"{name} must be one of: {', '.join(choices)}")
    return value


def int_attr(
    attributes: dict[str, Any],
    name: str,
    *,
    required: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    value = attributes.get(name)
    if value is None:
        if required:
            raise _invalid(name, f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(name, f"{name} must be an integer")
    if minimum is not None and value < minimum:
        raise _invalid(name, f"{name} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise _invalid(name, f"{name} must be at most {maximum}")
    return value


def object_attr(
    attributes: dict[str, Any], name: str, *, required: bool = False, fields: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """An object attribute whose listed ``fields`` must be non-empty strings."""
    value = attributes.get(name)
    if value is None:
        if required:
            raise _invalid(name, f"{name} is required")
        return None
    if not isinstance(value, dict):
        raise _invalid(name, f"{name} must be an object")
    for field in fields:
        if not isinstance(value.get(field), str) or not value[field]:
            raise ApiError(
                400,
                "Bad Request",
                detail=f"{name}.{field} is required",
                pointer=f"/data/attributes/{name}/{field}",
            )
    return value


def relationship_id(data: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    """The id in ``data.relationships.<name>.data.id``."""
    relationships = data.get("relationships") or {}
    target = relationships.get(name) if isinstance(relationships, dict) else None
    inner = target.get("data") if isinstance(target, dict) else None
    if not isinstance(inner, dict) or not isinstance(inner.get("id"), str):
        if required:
            raise ApiError(
                400,
                "Bad Request",
                detail=f"relationship {name} is required",
                pointer=f"/data/relationships/{name}",
            )
        return None
    identifier: str = inner["id"]
    return identifier
