"""What the resource endpoints share: pages of lists, filters, idempotent creates, attributes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

from aiohttp import web

from ..unit_api.paseto import format_time
from .context import Call
from .data import Resource
from .wire import ApiError, document, encode, raw_document, relationship_id, string_attr

ADDRESS_FIELDS = ("street", "city", "state", "postalCode", "country")
PHONE_FIELDS = ("countryCode", "number")
FULL_NAME_FIELDS = ("first", "last")


# --- lists -------------------------------------------------------------------------------------


def _query_int(call: Call, name: str, default: int, minimum: int, maximum: int | None) -> int:
    raw = call.query(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ApiError(
            400, "Bad Request", code="invalid_parameter", detail=f"{name} must be {bound}"
        )
    return value


def page(call: Call, items: Iterable[Resource]) -> web.Response:
    """One page of a list, newest first unless ``sort=createdAt``."""
    limit = _query_int(call, "page[limit]", 100, 1, 1000)
    offset = _query_int(call, "page[offset]", 0, 0, None)
    ascending = call.query("sort") == "createdAt"
    ordered = sorted(
        items,
        key=lambda r: (r["attributes"]["createdAt"], int(r["id"]) if r["id"].isdigit() else 0),
        reverse=not ascending,
    )
    meta = {"pagination": {"total": len(ordered), "limit": limit, "offset": offset}}
    return document(ordered[offset : offset + limit], meta=meta)


def filtered(
    call: Call, items: Iterable[Resource], **filters: Callable[[Resource], str | None]
) -> list[Resource]:
    """Items matching every ``filter[<name>]`` query parameter given."""
    wanted = [(call.query(f"filter[{name}]"), get) for name, get in filters.items()]
    wanted = [(value, get) for value, get in wanted if value]
    return [item for item in items if all(get(item) == value for value, get in wanted)]


def rel_id(name: str) -> Callable[[Resource], str | None]:
    def get(resource: Resource) -> str | None:
        rel = resource.get("relationships", {}).get(name)
        return rel["data"]["id"] if rel else None

    return get


def tags_attr(attributes: dict[str, Any]) -> dict[str, Any]:
    tags = attributes.get("tags", {})
    if not isinstance(tags, dict):
        raise ApiError(
            400, "Bad Request", detail="tags must be an object", pointer="/data/attributes/tags"
        )
    return tags


def replayed(
    call: Call, kind: str, attributes: dict[str, Any], store: dict[str, Resource]
) -> Resource | None:
    """The resource an earlier create with the same idempotencyKey made, if any."""
    key = string_attr(attributes, "idempotencyKey")
    if key is None:
        return None
    existing = call.data.idempotency.get((kind, key))
    return store.get(existing) if existing else None


def remember(call: Call, kind: str, attributes: dict[str, Any], resource_id: str) -> None:
    key = attributes.get("idempotencyKey")
    if isinstance(key, str):
        call.data.idempotency[(kind, key)] = resource_id


def timestamp(call: Call) -> str:
    return format_time(call.state.clock.now_datetime())


def account_for_write(call: Call, payload: dict[str, Any], relationship: str = "account") -> str:
    account_id = relationship_id(payload, relationship)
    assert account_id is not None
    if account_id not in call.data.accounts:
        raise ApiError(
            400,
            "Bad Request",
            code="not_found",
            detail=f"account {account_id} not found",
            pointer=f"/data/relationships/{relationship}",
        )
    return account_id


def one(call: Call, resource: Resource) -> web.Response:
    """``{"data": resource}``, serialized once until the next write."""
    key = (resource["type"], resource["id"])
    body = call.state.documents.get(key)
    if body is None:
        body = call.state.documents[key] = encode({"data": resource})
    return raw_document(body)


def date_attr(attributes: dict[str, Any], name: str) -> str:
    value = string_attr(attributes, name, required=True)
    assert value is not None
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ApiError(
            400,
            "Bad Request",
            detail=f"{name} must be a date (YYYY-MM-DD)",
            pointer=f"/data/attributes/{name}",
        ) from None
    return value
