"""Payments (book and ACH) and the transactions accounts hold."""

from __future__ import annotations

from aiohttp import web

from . import data as seeds
from .context import Call, check_account, forbidden, may_see_account, not_found
from .data import Resource, SandboxData
from .resource_common import (
    account_for_write,
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
    int_attr,
    object_attr,
    resource_data,
    string_attr,
)

# --- payments --------------------------------------------------------------------------------


def _may_see_payment(call: Call, payment: Resource) -> bool:
    account_id = SandboxData.account_of(payment)
    return account_id is not None and may_see_account(call.principal, call.data, account_id)


def list_payments(call: Call) -> web.Response:
    payments = filtered(
        call,
        call.data.payments.values(),
        accountId=rel_id("account"),
        customerId=lambda p: call.data.customer_of_account(SandboxData.account_of(p) or ""),
    )
    return page(call, [p for p in payments if _may_see_payment(call, p)])


def get_payment(call: Call) -> web.Response:
    payment_id = call.params["paymentId"]
    payment = call.data.payments.get(payment_id)
    if payment is None:
        raise not_found("payment", payment_id)
    if not _may_see_payment(call, payment):
        raise forbidden("this token may not access that payment")
    return one(call, payment)


def create_payment(call: Call) -> web.Response:
    data = call.data
    payload = resource_data(call.body, "bookPayment", "achPayment")
    attributes = attributes_of(payload)
    replay = replayed(call, "payment", attributes, data.payments)
    if replay is not None:
        return document(replay, 201)
    amount = int_attr(attributes, "amount", required=True, minimum=1)
    description = string_attr(attributes, "description", required=True)
    assert amount is not None and description is not None
    tags = tags_attr(attributes)
    account_id = account_for_write(call, payload)
    check_account(call.principal, data, account_id)
    customer_id = data.customer_of_account(account_id) or ""
    payment_id = data.next_id("payment")
    now = timestamp(call)
    if payload["type"] == "bookPayment":
        counterparty_id = account_for_write(call, payload, "counterpartyAccount")
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
    remember(call, "payment", attributes, payment_id)
    return document(payment, 201)


# --- transactions ----------------------------------------------------------------------------


def list_transactions(call: Call) -> web.Response:
    data = call.data
    transactions = filtered(
        call,
        data.transactions.values(),
        accountId=rel_id("account"),
        customerId=rel_id("customer"),
        cardId=rel_id("card"),
    )
    visible = [
        t
        for t in transactions
        if may_see_account(call.principal, data, SandboxData.account_of(t) or "")
    ]
    if call.principal.role == "customer" and call.principal.cards is not None:
        visible = [t for t in visible if rel_id("card")(t) in (None, *call.principal.cards)]
    return page(call, visible)


def get_account_transaction(call: Call) -> web.Response:
    data = call.data
    account_id, transaction_id = call.params["accountId"], call.params["transactionId"]
    if account_id not in data.accounts:
        raise not_found("account", account_id)
    transaction = data.transactions.get(transaction_id)
    if transaction is None or SandboxData.account_of(transaction) != account_id:
        raise not_found("transaction", transaction_id)
    check_account(call.principal, data, account_id)
    return one(call, transaction)
