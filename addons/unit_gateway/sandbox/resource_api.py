"""Customers, accounts and applications; the cards and payments handlers, for the routes."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from . import data as seeds

# `name as name`: not defined here; app.py routes to them through this module.
from .card_api import card_cvv2 as card_cvv2
from .card_api import card_pan as card_pan
from .card_api import card_pin_status as card_pin_status
from .card_api import close_card as close_card
from .card_api import create_card as create_card
from .card_api import freeze_card as freeze_card
from .card_api import get_card as get_card
from .card_api import list_cards as list_cards
from .card_api import set_card_pin as set_card_pin
from .card_api import unfreeze_card as unfreeze_card
from .context import (
    Call,
    check_account,
    check_customer,
    check_org,
    forbidden,
    may_see_account,
    not_found,
)
from .data import Resource
from .payment_api import create_payment as create_payment
from .payment_api import get_account_transaction as get_account_transaction
from .payment_api import get_payment as get_payment
from .payment_api import list_payments as list_payments
from .payment_api import list_transactions as list_transactions
from .resource_common import (
    ADDRESS_FIELDS,
    FULL_NAME_FIELDS,
    PHONE_FIELDS,
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
from .wire import (
    ApiError,
    attributes_of,
    document,
    object_attr,
    relationship_id,
    resource_data,
    string_attr,
)

# --- customers -------------------------------------------------------------------------------


def list_customers(call: Call) -> web.Response:
    principal = call.principal
    customers: Iterable[Resource] = call.data.customers.values()
    if principal.role != "org":
        customers = [c for c in customers if c["id"] == principal.customer_id]
    return page(call, customers)


def get_customer(call: Call) -> web.Response:
    customer_id = call.params["customerId"]
    customer = call.data.customers.get(customer_id)
    if customer is None:
        raise not_found("customer", customer_id)
    check_customer(call.principal, customer_id)
    return one(call, customer)


# --- accounts --------------------------------------------------------------------------------


def list_accounts(call: Call) -> web.Response:
    data = call.data
    accounts = filtered(call, data.accounts.values(), customerId=rel_id("customer"))
    accounts = [a for a in accounts if may_see_account(call.principal, data, a["id"])]
    return page(call, accounts)


def get_account(call: Call) -> web.Response:
    account_id = call.params["accountId"]
    account = call.data.accounts.get(account_id)
    if account is None:
        raise not_found("account", account_id)
    check_account(call.principal, call.data, account_id)
    return one(call, account)


_DEPOSIT_PRODUCTS = ("checking", "savings")


def create_account(call: Call) -> web.Response:
    """A deposit account for an existing customer; the sandbox opens it at once, empty."""
    check_org(call.principal, "open accounts")
    data = call.data
    payload = resource_data(call.body, "depositAccount")
    attributes = attributes_of(payload)
    replay = replayed(call, "account", attributes, data.accounts)
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
    tags = copy.deepcopy(tags_attr(attributes))  # checked before an id is taken
    account_id = data.next_id("account")
    owner = customer["attributes"].get("fullName") or {"first": customer["attributes"]["name"]}
    name = " ".join(part for part in (owner.get("first"), owner.get("last")) if part)
    account = seeds.deposit_account(
        account_id,
        customer_id,
        timestamp(call),
        f"{name} {product.capitalize()}",
        product,
        f"10{int(account_id):08d}",
        0,
    )
    account["attributes"]["tags"] = tags
    data.accounts[account_id] = account
    remember(call, "account", attributes, account_id)
    return document(account, 201)


# --- applications ----------------------------------------------------------------------------


def _may_see_application(call: Call, application: Resource) -> bool:
    principal = call.principal
    if principal.role == "org":
        return True
    return principal.role == "customer" and rel_id("customer")(application) == principal.customer_id


def list_applications(call: Call) -> web.Response:
    applications = [a for a in call.data.applications.values() if _may_see_application(call, a)]
    return page(call, applications)


def get_application(call: Call) -> web.Response:
    application_id = call.params["applicationId"]
    application = call.data.applications.get(application_id)
    if application is None:
        raise not_found("application", application_id)
    if not _may_see_application(call, application):
        raise forbidden("this token may not access that application")
    return one(call, application)


_SSN = re.compile(r"\d{9}")


def create_application(call: Call) -> web.Response:
    """An individual application; the sandbox approves it at once and opens the customer."""
    check_org(call.principal, "create applications")
    data = call.data
    payload = resource_data(call.body, "individualApplication")
    attributes = attributes_of(payload)
    replay = replayed(call, "application", attributes, data.applications)
    if replay is not None:
        return document(replay, 201)
    person: dict[str, Any] = {
        "fullName": object_attr(attributes, "fullName", required=True, fields=FULL_NAME_FIELDS),
        "dateOfBirth": date_attr(attributes, "dateOfBirth"),
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
    now = timestamp(call)
    customer_id = data.next_id("customer")
    application_id = data.next_id("application")
    customer_attributes: dict[str, Any] = {
        "createdAt": now,
        **person,
        "status": "Active",
        "authorizedUsers": [],
        "tags": tags_attr(attributes),
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
        "tags": tags_attr(attributes),
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
    remember(call, "application", attributes, application_id)
    return document(application, 201)


def not_implemented(call: Call) -> web.Response:
    """A route Unit has that the local sandbox does not model."""
    raise ApiError(
        501,
        "Not Implemented",
        code="not_implemented",
        detail="the local Unit sandbox does not implement this route",
    )
