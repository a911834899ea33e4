"""Unit's token scopes, as docs/unit-api.md lists them."""

from __future__ import annotations

ALL_SCOPES: frozenset[str] = frozenset(
    """
    applications applications-write customer-token customer-token-write customers
    customers-write customer-tags-write accounts accounts-write cards cards-write
    cards-sensitive cards-sensitive-write transactions transactions-write payments
    payments-write payments-write-counterparty payments-write-ach-debit
    payments-write-linked-account ach-payments-write wire-payments-write counterparties
    counterparties-write events events-write webhooks webhooks-write authorization-requests
    authorization-requests-write authorizations statements batch-releases batch-releases-write
    check-deposits check-deposits-write received-payments received-payments-write chargebacks
    chargebacks-write rewards rewards-write check-payments check-payments-write
    """.split()
)

# Scopes a customer or cardholder token may only get after a one-time password (or, for
# customers, a JWT). Unit confirms the card ones; "sensitive actions related to funds
# movement" covers counterparties-write and the payments-write family.
TWO_FACTOR_SCOPES: frozenset[str] = frozenset(
    {
        "cards-write",
        "cards-sensitive",
        "cards-sensitive-write",
        "counterparties-write",
        "payments-write",
        "payments-write-counterparty",
        "payments-write-ach-debit",
        "payments-write-linked-account",
        "ach-payments-write",
        "wire-payments-write",
    }
)

# "Only cards (cards cards-sensitive cards-write cards-sensitive-write) scopes are allowed."
CARDHOLDER_SCOPES: frozenset[str] = frozenset(
    {"cards", "cards-sensitive", "cards-write", "cards-sensitive-write"}
)


def parse(value: str) -> tuple[str, ...]:
    """A space-separated scope string as a tuple, order kept, duplicates dropped."""
    return tuple(dict.fromkeys(value.split()))


def unknown(scopes: tuple[str, ...]) -> list[str]:
    return [scope for scope in scopes if scope not in ALL_SCOPES]
