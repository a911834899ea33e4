"""The token endpoints: customer and cardholder tokens, and their verifications.

Follows Unit's docs (seeds/customer-tokens.txt, seeds/cardholder-tokens.txt): expiresIn
1..86400 (default 86400), cardholder tokens limited to card scopes, two-factor scopes need a
verification token (10 minutes, single use) with the sandbox passcode 000001 or, for customers,
a JWT; at most 5 verifications per 10 minutes per customer or card.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from . import scopes as unit_scopes
from .context import Call, check_org, not_found
from .wire import (
    ApiError,
    attributes_of,
    document,
    int_attr,
    object_attr,
    resource_data,
    string_attr,
)

MAX_EXPIRES_IN = 86_400
_APP_HASH = re.compile(r"[A-Za-z0-9+/]{11}")


def _scope_attr(
    attributes: dict[str, Any], name: str, *, required: bool, allowed: frozenset[str]
) -> tuple[str, ...]:
    text = string_attr(attributes, name, required=required)
    requested = unit_scopes.parse(text or "")
    if required and not requested:
        raise ApiError(
            400, "Bad Request", detail=f"{name} is required", pointer=f"/data/attributes/{name}"
        )
    bad = [s for s in requested if s not in allowed]
    if bad:
        raise ApiError(
            400,
            "Bad Request",
            code="invalid_scope",
            detail=f"{name} may not include: {' '.join(bad)}",
            pointer=f"/data/attributes/{name}",
        )
    return requested


def _expires_in(attributes: dict[str, Any]) -> int:
    expires_in = int_attr(attributes, "expiresIn", minimum=1, maximum=MAX_EXPIRES_IN)
    return MAX_EXPIRES_IN if expires_in is None else expires_in


def _resources(
    call: Call, attributes: dict[str, Any], customer_id: str
) -> list[dict[str, Any]] | None:
    """The optional ``resources`` restriction: cards/accounts of this customer only."""
    value = attributes.get("resources")
    if value is None:
        return None
    pointer = "/data/attributes/resources"
    if not isinstance(value, list):
        raise ApiError(400, "Bad Request", detail="resources must be an array", pointer=pointer)
    data = call.data
    owners = {"card": data.customer_of_card, "account": data.customer_of_account}
    cleaned = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or item.get("type") not in owners:
            raise ApiError(
                400,
                "Bad Request",
                detail="type must be card or account",
                pointer=f"{pointer}/{i}/type",
            )
        ids = item.get("ids")
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise ApiError(
                400,
                "Bad Request",
                detail="ids must be an array of ids",
                pointer=f"{pointer}/{i}/ids",
            )
        owner_of = owners[item["type"]]
        foreign = [x for x in ids if owner_of(x) != customer_id]
        if foreign:
            raise ApiError(
                400,
                "Bad Request",
                detail=f"not resources of this customer: {', '.join(foreign)}",
                pointer=f"{pointer}/{i}/ids",
            )
        cleaned.append({"type": item["type"], "ids": list(ids)})
    return cleaned


def create_customer_token(call: Call) -> web.Response:
    check_org(call.principal, "create tokens")
    state, data = call.state, call.data
    customer_id = call.params["customerId"]
    if customer_id not in data.customers:
        raise not_found("customer", customer_id)
    attributes = attributes_of(resource_data(call.body, "customerToken"))
    requested = _scope_attr(attributes, "scope", required=True, allowed=unit_scopes.ALL_SCOPES)
    _scope_attr(attributes, "upgradableScope", required=False, allowed=unit_scopes.ALL_SCOPES)
    expires_in = _expires_in(attributes)
    resources = _resources(call, attributes, customer_id)
    jwt_token = string_attr(attributes, "jwtToken")
    verification_token = string_attr(attributes, "verificationToken")
    verification_code = string_attr(attributes, "verificationCode")
    two_factor = any(s in unit_scopes.TWO_FACTOR_SCOPES for s in requested)

    if jwt_token is not None:
        if state.jwt is None:
            raise ApiError(
                400,
                "Bad Request",
                code="jwt_not_configured",
                detail="JWT authentication is not configured for this org",
                pointer="/data/attributes/jwtToken",
            )
        subject = state.jwt.subject_of(jwt_token)
        if subject not in data.jwt_subjects_of(customer_id):
            raise ApiError(
                401,
                "Unauthorized",
                code="jwt_subject_mismatch",
                detail="the JWT is not for this customer",
            )
        state.stats.jwt_tokens_accepted += 1
    elif two_factor or verification_token is not None:
        state.verifications.redeem("customer", customer_id, verification_token, verification_code)

    token = state.authority.mint_customer_token(
        customer_id, data.email_of(customer_id), requested, expires_in, resources
    )
    state.stats.tokens_created["customer"] += 1
    return document(
        {"type": "customerBearerToken", "attributes": {"token": token, "expiresIn": expires_in}},
        201,
    )


def create_cardholder_token(call: Call) -> web.Response:
    check_org(call.principal, "create tokens")
    state = call.state
    card_id = call.params["cardId"]
    if card_id not in call.data.cards:
        raise not_found("card", card_id)
    attributes = attributes_of(resource_data(call.body, "cardholderToken"))
    requested = _scope_attr(
        attributes, "scope", required=True, allowed=unit_scopes.CARDHOLDER_SCOPES
    )
    _scope_attr(
        attributes, "upgradableScope", required=False, allowed=unit_scopes.CARDHOLDER_SCOPES
    )
    expires_in = _expires_in(attributes)
    if attributes.get("jwtToken") is not None:
        raise ApiError(
            400,
            "Bad Request",
            detail="jwtToken is only accepted for customer tokens",
            pointer="/data/attributes/jwtToken",
        )
    verification_token = string_attr(attributes, "verificationToken")
    verification_code = string_attr(attributes, "verificationCode")
    if any(s in unit_scopes.TWO_FACTOR_SCOPES for s in requested) or verification_token is not None:
        state.verifications.redeem("cardholder", card_id, verification_token, verification_code)

    token = state.authority.mint_cardholder_token(card_id, requested, expires_in)
    state.stats.tokens_created["cardholder"] += 1
    return document(
        {"type": "cardholderBearerToken", "attributes": {"token": token, "expiresIn": expires_in}},
        201,
    )


def _start_verification(call: Call, kind: str, subject_id: str, data_type: str) -> web.Response:
    attributes = attributes_of(resource_data(call.body, data_type))
    string_attr(attributes, "channel", required=True, choices=("sms", "call"))
    object_attr(attributes, "phone", fields=("countryCode", "number"))
    app_hash = string_attr(attributes, "appHash")
    if app_hash is not None and not _APP_HASH.fullmatch(app_hash):
        raise ApiError(
            400,
            "Bad Request",
            detail="appHash must be 11 characters",
            pointer="/data/attributes/appHash",
        )
    string_attr(attributes, "language")
    state = call.state
    try:
        token = state.verifications.start(
            kind, subject_id, retry_after_header=state.faults.rate_limit_headers
        )
    except ApiError:
        state.stats.verifications_rate_limited += 1
        raise
    state.stats.verifications_created[kind] += 1
    return document({"type": data_type, "attributes": {"verificationToken": token}}, 201)


def create_customer_token_verification(call: Call) -> web.Response:
    check_org(call.principal, "create tokens")
    customer_id = call.params["customerId"]
    if customer_id not in call.data.customers:
        raise not_found("customer", customer_id)
    return _start_verification(call, "customer", customer_id, "customerTokenVerification")


def create_cardholder_token_verification(call: Call) -> web.Response:
    check_org(call.principal, "create tokens")
    card_id = call.params["cardId"]
    if card_id not in call.data.cards:
        raise not_found("card", card_id)
    return _start_verification(call, "cardholder", card_id, "cardholderTokenVerification")
