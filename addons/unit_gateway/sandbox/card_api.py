"""Cards: reading, creating, freezing and closing them, and their secure data."""

from __future__ import annotations

import copy
import re
from typing import Any

from aiohttp import web

from .context import Call, check_account, check_card, may_see_card, not_found
from .data import Resource
from .resource_common import (
    ADDRESS_FIELDS,
    FULL_NAME_FIELDS,
    PHONE_FIELDS,
    account_for_write,
    date_attr,
    filtered,
    one,
    page,
    rel_id,
    remember,
    replayed,
    tags_attr,
    timestamp,
)
from .wire import ApiError, attributes_of, document, object_attr, resource_data, string_attr


def list_cards(call: Call) -> web.Response:
    data = call.data
    cards = filtered(
        call, data.cards.values(), customerId=rel_id("customer"), accountId=rel_id("account")
    )
    cards = [c for c in cards if may_see_card(call.principal, data, c["id"])]
    return page(call, cards)


def _card(call: Call) -> Resource:
    card_id = call.params["cardId"]
    card = call.data.cards.get(card_id)
    if card is None:
        raise not_found("card", card_id)
    check_card(call.principal, call.data, card_id)
    return card


def get_card(call: Call) -> web.Response:
    return one(call, _card(call))


_INDIVIDUAL_CARDS = ("individualDebitCard", "individualVirtualDebitCard")
_BUSINESS_CARDS = ("businessDebitCard", "businessVirtualDebitCard")


def create_card(call: Call) -> web.Response:
    data = call.data
    payload = resource_data(call.body, *_INDIVIDUAL_CARDS, *_BUSINESS_CARDS)
    kind: str = payload["type"]
    attributes = attributes_of(payload)
    replay = replayed(call, "card", attributes, data.cards)
    if replay is not None:
        return document(replay, 201)
    account_id = account_for_write(call, payload)
    check_account(call.principal, data, account_id)
    owner = data.customers[data.customer_of_account(account_id) or ""]
    wanted_owner = "individualCustomer" if kind in _INDIVIDUAL_CARDS else "businessCustomer"
    if owner["type"] != wanted_owner:
        raise ApiError(
            400,
            "Bad Request",
            detail=f"a {kind} needs an account of an {wanted_owner}",
            pointer="/data/relationships/account",
        )
    card_attributes: dict[str, Any] = {"tags": tags_attr(attributes)}
    physical = "Virtual" not in kind
    if physical:
        shipping = object_attr(attributes, "shippingAddress", fields=ADDRESS_FIELDS)
        if shipping is not None:
            card_attributes["shippingAddress"] = shipping
        design = string_attr(attributes, "design")
        if design is not None:
            card_attributes["design"] = design
    if kind in _BUSINESS_CARDS:
        card_attributes["fullName"] = object_attr(
            attributes, "fullName", required=True, fields=FULL_NAME_FIELDS
        )
        card_attributes["dateOfBirth"] = date_attr(attributes, "dateOfBirth")
        card_attributes["address"] = object_attr(
            attributes, "address", required=True, fields=ADDRESS_FIELDS
        )
        card_attributes["phone"] = object_attr(
            attributes, "phone", required=True, fields=PHONE_FIELDS
        )
        card_attributes["email"] = string_attr(attributes, "email", required=True)
    card_id = data.next_id("card")
    card = data.add_card(
        card_id, kind, account_id, timestamp(call), copy.deepcopy(card_attributes), int(card_id)
    )
    remember(call, "card", attributes, card_id)
    return document(card, 201)


def _set_card_status(call: Call, status: str, allowed_from: tuple[str, ...]) -> web.Response:
    card = _card(call)
    current = card["attributes"]["status"]
    if current not in allowed_from:
        raise ApiError(
            400, "Bad Request", code="invalid_card_status", detail=f"the card is {current}"
        )
    card["attributes"]["status"] = status
    card["attributes"]["updatedAt"] = timestamp(call)
    return document(card)


def freeze_card(call: Call) -> web.Response:
    return _set_card_status(call, "Frozen", ("Active", "Inactive", "Frozen"))


def unfreeze_card(call: Call) -> web.Response:
    return _set_card_status(call, "Active", ("Frozen", "Active"))


def close_card(call: Call) -> web.Response:
    return _set_card_status(
        call, "ClosedByCustomer", ("Active", "Inactive", "Frozen", "ClosedByCustomer")
    )


# --- card secure data (Unit serves these from its secure host; not in the OpenAPI spec) -------


def card_pan(call: Call) -> web.Response:
    card = _card(call)
    pan = call.data.card_secrets[card["id"]].pan
    return document({"type": "cardSecureData", "attributes": {"pan": pan}})


def card_cvv2(call: Call) -> web.Response:
    card = _card(call)
    cvv2 = call.data.card_secrets[card["id"]].cvv2
    return document({"type": "cardSecureData", "attributes": {"cvv2": cvv2}})


def _pin_status(call: Call, card_id: str) -> dict[str, Any]:
    status = "Set" if call.data.card_secrets[card_id].pin else "NotSet"
    return {"type": "pinStatus", "attributes": {"status": status}}


def card_pin_status(call: Call) -> web.Response:
    return document(_pin_status(call, _card(call)["id"]))


_PIN = re.compile(r"\d{4}")


def set_card_pin(call: Call) -> web.Response:
    card = _card(call)
    body = call.body
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise ApiError(400, "Bad Request", detail="expected a JSON:API document", pointer="/data")
    pin = attributes_of(body["data"]).get("pin")
    if not isinstance(pin, str) or not _PIN.fullmatch(pin):
        raise ApiError(
            400, "Bad Request", detail="pin must be 4 digits", pointer="/data/attributes/pin"
        )
    call.data.card_secrets[card["id"]].pin = pin
    return document(_pin_status(call, card["id"]))
