"""Customers, accounts, cards (with secure data), payments, transactions and applications."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

from aiohttp import web

from ..unit_api.paseto import format_time
from . import data as seeds
from .context import (
    Call,
    check_account,
    check_card,
    check_customer,
    check_org,
    forbidden,
    may_see_account,
    may_see_card,
    not_found,
)
from .data import Resource, SandboxData
from .wire import (
    ApiError,
    attributes_of,
    document,
    encode,
    int_attr,
    object_attr,
    raw_document,
    relationship_id,
    resource_data,
    string_attr,
)

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


def _page(call: Call, items: Iterable[Resource]) -> web.Response:
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


def _filtered(
    call: Call, items: Iterable[Resource], **filters: Callable[[Resource], str | None]
) -> list[Resource]:
    """Items matching every ``filter[<name>]`` query parameter given."""
    wanted = [(call.query(f"filter[{name}]"), get) for name, get in filters.items()]
    wanted = [(value, get) for value, get in wanted if value]
    return [item for item in items if all(get(item) == value for value, get in wanted)]


def _rel_id(name: str) -> Callable[[Resource], str | None]:
    def get(resource: Resource) -> str | None:
        rel = resource.get("relationships", {}).get(name)
        return rel["data"]["id"] if rel else None

    return get


def _id(resource: Resource) -> str | None:
    return str(resource["id"])


def _tags(attributes: dict[str, Any]) -> dict[str, Any]:
    tags = attributes.get("tags", {})
    if not isinstance(tags, dict):
        raise ApiError(
            400, "Bad Request", detail="tags must be an object", pointer="/data/attributes/tags"
        )
    return tags


def _replayed(
    call: Call, kind: str, attributes: dict[str, Any], store: dict[str, Resource]
) -> Resource | None:
    """The resource an earlier create with the same idempotencyKey made, if any."""
    key = string_attr(attributes, "idempotencyKey")
    if key is None:
        return None
    existing = call.data.idempotency.get((kind, key))
    return store.get(existing) if existing else None


def _remember(call: Call, kind: str, attributes: dict[str, Any], resource_id: str) -> None:
    key = attributes.get("idempotencyKey")
    if isinstance(key, str):
        call.data.idempotency[(kind, key)] = resource_id


def _now(call: Call) -> str:
    return format_time(call.state.clock.now_datetime())


def _account_for_write(call: Call, payload: dict[str, Any], relationship: str = "account") -> str:
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


def _one(call: Call, resource: Resource) -> web.Response:
    """``{"data": resource}``, serialized once until the next write."""
    key = (resource["type"], resource["id"])
    body = call.state.documents.get(key)
    if body is None:
        body = call.state.documents[key] = encode({"data": resource})
    return raw_document(body)


# --- customers -------------------------------------------------------------------------------


def list_customers(call: Call) -> web.Response:
    principal = call.principal
    customers: Iterable[Resource] = call.data.customers.values()
    if principal.role != "org":
        customers = [c for c in customers if c["id"] == principal.customer_id]
    return _page(call, customers)


def get_customer(call: Call) -> web.Response:
    customer_id = call.params["customerId"]
    customer = call.data.customers.get(customer_id)
    if customer is None:
        raise not_found("customer", customer_id)
    check_customer(call.principal, customer_id)
    return _one(call, customer)


# --- accounts --------------------------------------------------------------------------------


def list_accounts(call: Call) -> web.Response:
    data = call.data
    accounts = _filtered(call, data.accounts.values(), customerId=_rel_id("customer"))
    accounts = [a for a in accounts if may_see_account(call.principal, data, a["id"])]
    return _page(call, accounts)


def get_account(call: Call) -> web.Response:
    account_id = call.params["accountId"]
    account = call.data.accounts.get(account_id)
    if account is None:
        raise not_found("account", account_id)
    check_account(call.principal, call.data, account_id)
    return _one(call, account)


_DEPOSIT_PRODUCTS = ("checking", "savings")


def create_account(call: Call) -> web.Response:
    """A deposit account for an existing customer; the sandbox opens it at once, empty."""
    check_org(call.principal, "open accounts")
    data = call.data
    payload = resource_data(call.body, "depositAccount")
    attributes = attributes_of(payload)
    replay = _replayed(call, "account", attributes, data.accounts)
    if replay is not None:
        return document(replay, 201)
    product = string_attr(attributes, "depositProduct", required=True)
    if product not in _DEPOSIT_PRODUCTS:
        raise ApiError(
            400,
            "Bad Request",
            detail=f"depositProduct must be one of {', '.join(_DEPOSIT_PRODUCTS)}",
            pointer="/data/attributes/depositProduct",
        )
    customer_id = relationship_id(payload, "customer")
    assert customer_id is not None
    customer = data.customers.get(customer_id)
    if customer is None:
        raise ApiError(
            400,
            "Bad Request",
            code="not_found",
            detail=f"customer {customer_id} not found",
            pointer="/data/relationships/customer",
        )
    tags = copy.deepcopy(_tags(attributes))  # checked before an id is taken
    account_id = data.next_id("account")
    owner = customer["attributes"].get("fullName") or {"first": customer["attributes"]["name"]}
    name = " ".join(part for part in (owner.get("first"), owner.get("last")) if part)
    account = seeds.deposit_account(
        account_id,
        customer_id,
        _now(call),
        f"{name} {product.capitalize()}",
        product,
        f"10{int(account_id):08d}",
        0,
    )
    account["attributes"]["tags"] = tags
    data.accounts[account_id] = account
    _remember(call, "account", attributes, account_id)
    return document(account, 201)


# --- cards -----------------------------------------------------------------------------------


def list_cards(call: Call) -> web.Response:
    data = call.data
    cards = _filtered(
        call, data.cards.values(), customerId=_rel_id("customer"), accountId=_rel_id("account")
    )
    cards = [c for c in cards if may_see_card(call.principal, data, c["id"])]
    return _page(call, cards)


def _card(call: Call) -> Resource:
    card_id = call.params["cardId"]
    card = call.data.cards.get(card_id)
    if card is None:
        raise not_found("card", card_id)
    check_card(call.principal, call.data, card_id)
    return card


def get_card(call: Call) -> web.Response:
    return _one(call, _card(call))


_INDIVIDUAL_CARDS = ("individualDebitCard", "individualVirtualDebitCard")
_BUSINESS_CARDS = ("businessDebitCard", "businessVirtualDebitCard")


def create_card(call: Call) -> web.Response:
    data = call.data
    payload = resource_data(call.body, *_INDIVIDUAL_CARDS, *_BUSINESS_CARDS)
    kind: str = payload["type"]
    attributes = attributes_of(payload)
    replay = _replayed(call, "card", attributes, data.cards)
    if replay is not None:
        return document(replay, 201)
    account_id = _account_for_write(call, payload)
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
    card_attributes: dict[str, Any] = {"tags": _tags(attributes)}
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
        card_attributes["dateOfBirth"] = _date_attr(attributes, "dateOfBirth")
        card_attributes["address"] = object_attr(
            attributes, "address", required=True, fields=ADDRESS_FIELDS
        )
        card_attributes["phone"] = object_attr(
            attributes, "phone", required=True, fields=PHONE_FIELDS
        )
        card_attributes["email"] = string_attr(attributes, "email", required=True)
    card_id = data.next_id("card")
    card = data.add_card(
        card_id, kind, account_id, _now(call), copy.deepcopy(card_attributes), int(card_id)
    )
    _remember(call, "card", attributes, card_id)
    return document(card, 201)


def _set_card_status(call: Call, status: str, allowed_from: tuple[str, ...]) -> web.Response:
    card = _card(call)
    current = card["attributes"]["status"]
    if current not in allowed_from:
        raise ApiError(
            400, "Bad Request", code="invalid_card_status", detail=f"the card is {current}"
        )
    card["attributes"]["status"] = status
    card["attributes"]["updatedAt"] = _now(call)
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


# --- payments --------------------------------------------------------------------------------


def _may_see_payment(call: Call, payment: Resource) -> bool:
    account_id = SandboxData.account_of(payment)
    return account_id is not None and may_see_account(call.principal, call.data, account_id)


def list_payments(call: Call) -> web.Response:
    payments = _filtered(
        call,
        call.data.payments.values(),
        accountId=_rel_id("account"),
        customerId=lambda p: call.data.customer_of_account(SandboxData.account_of(p) or ""),
    )
    return _page(call, [p for p in payments if _may_see_payment(call, p)])


def get_payment(call: Call) -> web.Response:
    payment_id = call.params["paymentId"]
    payment = call.data.payments.get(payment_id)
    if payment is None:
        raise not_found("payment", payment_id)
    if not _may_see_payment(call, payment):
        raise forbidden("this token may not access that payment")
    return _one(call, payment)


def create_payment(call: Call) -> web.Response:
    data = call.data
    payload = resource_data(call.body, "bookPayment", "achPayment")
    attributes = attributes_of(payload)
    replay = _replayed(call, "payment", attributes, data.payments)
    if replay is not None:
        return document(replay, 201)
    amount = int_attr(attributes, "amount", required=True, minimum=1)
    description = string_attr(attributes, "description", required=True)
    assert amount is not None and description is not None
    tags = _tags(attributes)
    account_id = _account_for_write(call, payload)
    check_account(call.principal, data, account_id)
    customer_id = data.customer_of_account(account_id) or ""
    payment_id = data.next_id("payment")
    now = _now(call)
    if payload["type"] == "bookPayment":
        counterparty_id = _account_for_write(call, payload, "counterpartyAccount")
        if counterparty_id == account_id:
            raise ApiError(
                400,
                "Bad Request",
                detail="counterpartyAccount must differ from account",
                pointer="/data/relationships/counterpartyAccount",
            )
        funds = data.accounts[account_id]["attributes"]["available"]
        status, reason = ("Sent", None) if funds >= amount else ("Rejected", "InsufficientFunds")
        payment = seeds.book_payment(
            payment_id,
            account_id,
            counterparty_id,
            amount,
            description,
            now,
            status,
            reason,
            tags,
            customer_id,
        )
        if status == "Sent":
            data.add_book_transaction(
                account_id, counterparty_id, payment_id, amount, "Debit", description, now
            )
            data.add_book_transaction(
                counterparty_id, account_id, payment_id, amount, "Credit", description, now
            )
    else:
        counterparty = object_attr(
            attributes,
            "counterparty",
            required=True,
            fields=("name", "routingNumber", "accountNumber", "accountType"),
        )
        assert counterparty is not None
        direction = string_attr(attributes, "direction", choices=("Credit", "Debit")) or "Credit"
        same_day = attributes.get("sameDay", False)
        if not isinstance(same_day, bool):
            raise ApiError(
                400,
                "Bad Request",
                detail="sameDay must be a boolean",
                pointer="/data/attributes/sameDay",
            )
        payment = seeds.ach_payment(
            payment_id,
            account_id,
            now,
            amount,
            direction,
            description,
            {k: counterparty[k] for k in ("name", "routingNumber", "accountNumber", "accountType")},
            "Pending",
            customer_id,
            string_attr(attributes, "addenda"),
            same_day,
            tags,
        )
    data.payments[payment_id] = payment
    _remember(call, "payment", attributes, payment_id)
    return document(payment, 201)


# --- transactions ----------------------------------------------------------------------------


def list_transactions(call: Call) -> web.Response:
    data = call.data
    transactions = _filtered(
        call,
        data.transactions.values(),
        accountId=_rel_id("account"),
        customerId=_rel_id("customer"),
        cardId=_rel_id("card"),
    )
    visible = [
        t
        for t in transactions
        if may_see_account(call.principal, data, SandboxData.account_of(t) or "")
    ]
    if call.principal.role == "customer" and call.principal.cards is not None:
        visible = [t for t in visible if _rel_id("card")(t) in (None, *call.principal.cards)]
    return _page(call, visible)


def get_account_transaction(call: Call) -> web.Response:
    data = call.data
    account_id, transaction_id = call.params["accountId"], call.params["transactionId"]
    if account_id not in data.accounts:
        raise not_found("account", account_id)
    transaction = data.transactions.get(transaction_id)
    if transaction is None or SandboxData.account_of(transaction) != account_id:
        raise not_found("transaction", transaction_id)
    check_account(call.principal, data, account_id)
    return _one(call, transaction)


# --- applications ----------------------------------------------------------------------------


def _may_see_application(call: Call, application: Resource) -> bool:
    principal = call.principal
    if principal.role == "org":
        return True
    return (
        principal.role == "customer" and _rel_id("customer")(application) == principal.customer_id
    )


def list_applications(call: Call) -> web.Response:
    applications = [a for a in call.data.applications.values() if _may_see_application(call, a)]
    return _page(call, applications)


def get_application(call: Call) -> web.Response:
    application_id = call.params["applicationId"]
    application = call.data.applications.get(application_id)
    if application is None:
        raise not_found("application", application_id)
    if not _may_see_application(call, application):
        raise forbidden("this token may not access that application")
    return _one(call, application)


_SSN = re.compile(r"\d{9}")


def _date_attr(attributes: dict[str, Any], name: str) -> str:
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


def create_application(call: Call) -> web.Response:
    """An individual application; the sandbox approves it at once and opens the customer."""
    check_org(call.principal, "create applications")
    data = call.data
    payload = resource_data(call.body, "individualApplication")
    attributes = attributes_of(payload)
    replay = _replayed(call, "application", attributes, data.applications)
    if replay is not None:
        return document(replay, 201)
    person: dict[str, Any] = {
        "fullName": object_attr(attributes, "fullName", required=True, fields=FULL_NAME_FIELDS),
        "dateOfBirth": _date_attr(attributes, "dateOfBirth"),
        "address": object_attr(attributes, "address", required=True, fields=ADDRESS_FIELDS),
        "phone": object_attr(attributes, "phone", required=True, fields=PHONE_FIELDS),
        "email": string_attr(attributes, "email", required=True),
    }
    ssn = string_attr(attributes, "ssn")
    passport = string_attr(attributes, "passport")
    nationality = string_attr(attributes, "nationality")
    if ssn is not None:
        if not _SSN.fullmatch(ssn):
            raise ApiError(
                400, "Bad Request", detail="ssn must be 9 digits", pointer="/data/attributes/ssn"
            )
        person["ssn"] = ssn
    elif passport is not None and nationality is not None:
        person["passport"], person["nationality"] = passport, nationality
    else:
        raise ApiError(
            400,
            "Bad Request",
            detail="either ssn, or passport and nationality, is required",
            pointer="/data/attributes/ssn",
        )
    if "@" not in person["email"]:
        raise ApiError(
            400, "Bad Request", detail="email is not valid", pointer="/data/attributes/email"
        )
    now = _now(call)
    customer_id = data.next_id("customer")
    application_id = data.next_id("application")
    customer_attributes: dict[str, Any] = {
        "createdAt": now,
        **person,
        "status": "Active",
        "authorizedUsers": [],
        "tags": _tags(attributes),
    }
    jwt_subject = string_attr(attributes, "jwtSubject")
    if jwt_subject is not None:
        customer_attributes["jwtSubject"] = jwt_subject
    data.customers[customer_id] = {
        "type": "individualCustomer",
        "id": customer_id,
        "attributes": copy.deepcopy(customer_attributes),
        "relationships": {
            "org": seeds.ORG,
            "application": {"data": {"type": "individualApplication", "id": application_id}},
        },
    }
    application_attributes: dict[str, Any] = {
        "createdAt": now,
        "status": "Approved",
        "message": "Approved",
        "archived": False,
        **person,
        "tags": _tags(attributes),
    }
    # Optional attributes Unit keeps on the application as sent.
    for name in ("ip", "occupation", "annualIncome", "sourceOfIncome"):
        value = string_attr(attributes, name)
        if value is not None:
            application_attributes[name] = value
    application = {
        "type": "individualApplication",
        "id": application_id,
        "attributes": copy.deepcopy(application_attributes),
        "relationships": {
            "org": seeds.ORG,
            "customer": {"data": {"type": "customer", "id": customer_id}},
        },
    }
    data.applications[application_id] = application
    _remember(call, "application", attributes, application_id)
    return document(application, 201)


def not_implemented(call: Call) -> web.Response:
    """A route Unit has that the local sandbox does not model."""
    raise ApiError(
        501,
        "Not Implemented",
        code="not_implemented",
        detail="the local Unit sandbox does not implement this route",
    )
