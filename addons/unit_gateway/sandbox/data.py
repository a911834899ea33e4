"""The sandbox's resources: seeded deterministically, stored as JSON:API resource objects.

Shapes follow Unit's OpenAPI spec and satisfy the decoders of both of Unit's Python SDKs
(``unit`` needs times as ``%Y-%m-%dT%H:%M:%S.%f%z``; ``unit_finance_sdk`` validates required
fields and types strictly). Secrets that Unit only shows through secure-data endpoints (PAN,
CVV2, PIN) live beside the resources, never in their attributes.

All of it is fake: names, SSNs (900-series and other never-issued numbers), card numbers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..unit_api.paseto import format_time

ORG = {"data": {"type": "org", "id": "1"}}
ROUTING_NUMBER = "812345678"
CARD_BIN = "411111111"  # 9 digits, as Unit's `bin` attribute
_SEED_EPOCH = datetime(2024, 1, 2, 15, 4, 5, tzinfo=UTC)

Resource = dict[str, Any]


def _seed_time(hours: int) -> str:
    return format_time(_SEED_EPOCH + timedelta(hours=hours))


def _rel(kind: str, identifier: str) -> dict[str, Any]:
    return {"data": {"type": kind, "id": identifier}}


def _address(street: str, city: str, state: str, postal_code: str) -> dict[str, str]:
    return {
        "street": street,
        "city": city,
        "state": state,
        "postalCode": postal_code,
        "country": "US",
    }


def _phone(number: str) -> dict[str, str]:
    return {"countryCode": "1", "number": number}


def luhn_check_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # doubled: these sit at odd positions once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    return number.isdigit() and luhn_check_digit(number[:-1]) == number[-1]


def card_number(serial: int) -> str:
    body = f"{CARD_BIN}{serial:06d}"
    return body + luhn_check_digit(body)


@dataclass(slots=True)
class CardSecrets:
    pan: str
    cvv2: str
    pin: str | None = None


class SandboxData:
    """Every resource the sandbox serves, with the ownership links between them."""

    def __init__(self) -> None:
        self.customers: dict[str, Resource] = {}
        self.accounts: dict[str, Resource] = {}
        self.cards: dict[str, Resource] = {}
        self.card_secrets: dict[str, CardSecrets] = {}
        self.payments: dict[str, Resource] = {}
        self.transactions: dict[str, Resource] = {}
        self.applications: dict[str, Resource] = {}
        # (resource kind, idempotencyKey) -> id, so a retried create returns the same resource.
        self.idempotency: dict[tuple[str, str], str] = {}
        self._next_ids = {
            "customer": 10100,
            "account": 20100,
            "card": 30100,
            "payment": 40100,
            "transaction": 50100,
            "application": 60100,
        }
        _seed(self)

    def next_id(self, kind: str) -> str:
        self._next_ids[kind] += 1
        return str(self._next_ids[kind])

    # --- ownership --------------------------------------------------------------------------

    def customer_of_account(self, account_id: str) -> str | None:
        account = self.accounts.get(account_id)
        return account["relationships"]["customer"]["data"]["id"] if account else None

    def account_of_card(self, card_id: str) -> str | None:
        card = self.cards.get(card_id)
        return card["relationships"]["account"]["data"]["id"] if card else None

    def customer_of_card(self, card_id: str) -> str | None:
        card = self.cards.get(card_id)
        return card["relationships"]["customer"]["data"]["id"] if card else None

    @staticmethod
    def account_of(resource: Resource) -> str | None:
        rel = resource.get("relationships", {}).get("account")
        return rel["data"]["id"] if rel else None

    @staticmethod
    def customer_of(resource: Resource) -> str | None:
        rel = resource.get("relationships", {}).get("customer")
        return rel["data"]["id"] if rel else None

    def email_of(self, customer_id: str) -> str:
        attributes = self.customers[customer_id]["attributes"]
        email: str = attributes.get("email") or attributes["contact"]["email"]
        return email

    def jwt_subjects_of(self, customer_id: str) -> set[str]:
        """Every `jwtSubject` that may log in as this customer."""
        attributes = self.customers[customer_id]["attributes"]
        people = [attributes, attributes.get("contact") or {}, *attributes["authorizedUsers"]]
        return {p["jwtSubject"] for p in people if isinstance(p.get("jwtSubject"), str)}

    # --- creating ---------------------------------------------------------------------------

    def add_card(
        self,
        card_id: str,
        kind: str,
        account_id: str,
        created_at: str,
        attributes: dict[str, Any],
        serial: int,
    ) -> Resource:
        pan = card_number(serial)
        card = {
            "type": kind,
            "id": card_id,
            "attributes": {
                "createdAt": created_at,
                "last4Digits": pan[-4:],
                "expirationDate": "2028-03",
                "bin": CARD_BIN,
                "status": "Active",
                **attributes,
            },
            "relationships": {
                "account": _rel("depositAccount", account_id),
                "customer": _rel("customer", self.customer_of_account(account_id) or ""),
            },
        }
        self.cards[card_id] = card
        self.card_secrets[card_id] = CardSecrets(pan=pan, cvv2=f"{(serial * 7919) % 1000:03d}")
        return card

    def add_book_transaction(
        self,
        account_id: str,
        counterparty_account_id: str,
        payment_id: str,
        amount: int,
        direction: str,
        summary: str,
        created_at: str,
        transaction_id: str | None = None,
    ) -> Resource:
        """Post a book transfer leg to an account, moving its balance."""
        account = self.accounts[account_id]["attributes"]
        account["balance"] += amount if direction == "Credit" else -amount
        account["available"] = account["balance"] - account["hold"]
        counterparty = self.accounts[counterparty_account_id]["attributes"]
        owner = self.customer_of_account(account_id) or ""
        transaction_id = transaction_id or self.next_id("transaction")
        transaction = {
            "type": "bookTransaction",
            "id": transaction_id,
            "attributes": {
                "createdAt": created_at,
                "direction": direction,
                "amount": amount,
                "balance": account["balance"],
                "summary": summary,
                "counterparty": {
                    "name": counterparty["name"],
                    "routingNumber": counterparty["routingNumber"],
                    "accountNumber": counterparty["accountNumber"],
                    "accountType": "Checking",
                },
                "tags": {},
            },
            "relationships": {
                "account": _rel("account", account_id),
                "customer": _rel("customer", owner),
                "counterpartyAccount": _rel("account", counterparty_account_id),
                "payment": _rel("payment", payment_id),
            },
        }
        self.transactions[transaction_id] = transaction
        return transaction

    def add_purchase_transaction(
        self, transaction_id: str, card_id: str, amount: int, created_at: str
    ) -> Resource:
        """A settled card purchase, debited from the card's account."""
        account_id = self.account_of_card(card_id) or ""
        account = self.accounts[account_id]["attributes"]
        account["balance"] -= amount
        account["available"] = account["balance"] - account["hold"]
        transaction = {
            "type": "purchaseTransaction",
            "id": transaction_id,
            "attributes": {
                "createdAt": created_at,
                "direction": "Debit",
                "amount": amount,
                "balance": account["balance"],
                "summary": "Blue Bottle Coffee",
                "cardLast4Digits": self.cards[card_id]["attributes"]["last4Digits"],
                "merchant": {
                    "name": "Blue Bottle Coffee",
                    "type": 5814,
                    "category": "Fast Food",
                    "location": "Oakland, CA",
                },
                "recurring": False,
                "ecommerce": False,
                "cardPresent": True,
                "cardNetwork": "Visa",
                "tags": {},
            },
            "relationships": {
                "account": _rel("account", account_id),
                "customer": _rel("customer", self.customer_of_account(account_id) or ""),
                "card": _rel("card", card_id),
            },
        }
        self.transactions[transaction_id] = transaction
        return transaction


# --- seeding ---------------------------------------------------------------------------------


def _individual_customer(
    customer_id: str,
    hours: int,
    first: str,
    last: str,
    ssn: str,
    birth: str,
    address: dict[str, str],
    phone: str,
    email: str,
    application_id: str,
    jwt_subject: str | None,
) -> Resource:
    attributes: dict[str, Any] = {
        "createdAt": _seed_time(hours),
        "fullName": {"first": first, "last": last},
        "ssn": ssn,
        "dateOfBirth": birth,
        "address": address,
        "phone": _phone(phone),
        "email": email,
        "status": "Active",
        "authorizedUsers": [],
        "tags": {},
    }
    if jwt_subject is not None:
        attributes["jwtSubject"] = jwt_subject
    return {
        "type": "individualCustomer",
        "id": customer_id,
        "attributes": copy.deepcopy(attributes),
        "relationships": {
            "org": ORG,
            "application": _rel("individualApplication", application_id),
        },
    }


def _person(first: str, last: str, email: str, phone: str, jwt: str | None) -> dict[str, Any]:
    person: dict[str, Any] = {
        "fullName": {"first": first, "last": last},
        "email": email,
        "phone": _phone(phone),
    }
    if jwt is not None:
        person["jwtSubject"] = jwt
    return person


def _business_customer(
    customer_id: str,
    hours: int,
    name: str,
    ein: str,
    address: dict[str, str],
    phone: str,
    contact: dict[str, Any],
    authorized_users: list[dict[str, Any]],
    application_id: str,
) -> Resource:
    return {
        "type": "businessCustomer",
        "id": customer_id,
        "attributes": copy.deepcopy(
            {
                "createdAt": _seed_time(hours),
                "name": name,
                "address": address,
                "phone": _phone(phone),
                "stateOfIncorporation": "DE",
                "ein": ein,
                "entityType": "Corporation",
                "contact": contact,
                "authorizedUsers": authorized_users,
                "status": "Active",
                "tags": {},
            }
        ),
        "relationships": {
            "org": ORG,
            "application": _rel("businessApplication", application_id),
        },
    }


def deposit_account(
    account_id: str,
    customer_id: str,
    created_at: str,
    name: str,
    product: str,
    account_number: str,
    balance: int,
) -> Resource:
    return {
        "type": "depositAccount",
        "id": account_id,
        "attributes": {
            "createdAt": created_at,
            "name": name,
            "depositProduct": product,
            "routingNumber": ROUTING_NUMBER,
            "accountNumber": account_number,
            "currency": "USD",
            "balance": balance,
            "hold": 0,
            "available": balance,
            "tags": {},
            "status": "Open",
        },
        "relationships": {"customer": _rel("customer", customer_id)},
    }


def _individual_application(
    application_id: str, customer: Resource, hours: int, status: str
) -> Resource:
    source = customer["attributes"]
    attributes = {
        "createdAt": _seed_time(hours),
        "status": status,
        "message": "Approved" if status == "Approved" else "Waiting for review",
        "archived": False,
        "fullName": source["fullName"],
        "ssn": source["ssn"],
        "dateOfBirth": source["dateOfBirth"],
        "address": source["address"],
        "phone": source["phone"],
        "email": source["email"],
        "ip": "127.0.0.2",
        "tags": {},
    }
    relationships: dict[str, Any] = {"org": ORG}
    if status == "Approved":
        relationships["customer"] = _rel("customer", customer["id"])
    return {
        "type": "individualApplication",
        "id": application_id,
        "attributes": copy.deepcopy(attributes),
        "relationships": relationships,
    }


def _business_application(application_id: str, customer: Resource, hours: int) -> Resource:
    source = customer["attributes"]
    contact = source["contact"]
    officer = {
        "status": "Approved",
        "fullName": contact["fullName"],
        "title": "CEO",
        "ssn": "900112222",
        "dateOfBirth": "1980-04-01",
        "address": source["address"],
        "phone": contact["phone"],
        "email": contact["email"],
    }
    owner = {**officer, "percentage": 60}
    del owner["title"]
    return {
        "type": "businessApplication",
        "id": application_id,
        "attributes": copy.deepcopy(
            {
                "createdAt": _seed_time(hours),
                "status": "Approved",
                "message": "Approved",
                "archived": False,
                "name": source["name"],
                "address": source["address"],
                "phone": source["phone"],
                "stateOfIncorporation": source["stateOfIncorporation"],
                "ein": source["ein"],
                "entityType": source["entityType"],
                "contact": {k: v for k, v in contact.items() if k != "jwtSubject"},
                "yearOfIncorporation": "2014",
                "businessVertical": "TechnologyMediaOrTelecom",
                "annualRevenue": "Between1mAnd5m",
                "numberOfEmployees": "Between10And50",
                "cashFlow": "Predictable",
                "countriesOfOperation": ["US"],
                "officer": officer,
                "beneficialOwners": [owner],
                "tags": {},
            }
        ),
        "relationships": {"org": ORG, "customer": _rel("customer", customer["id"])},
    }


def _seed(data: SandboxData) -> None:
    palo_alto = _address("5230 Newell Rd", "Palo Alto", "CA", "94303")
    individuals = [
        _individual_customer(
            "10001", 0, "Jane", "Doe", "900121234", "1991-05-14", palo_alto, "5555550101",
            "jane.doe@example.com", "60001", jwt_subject="user|10001",
        ),
        _individual_customer(
            "10002", 1, "John", "Roe", "900131234", "1985-11-02",
            _address("20 W 34th St", "New York", "NY", "10001"), "5555550102",
            "john.roe@example.com", "60002", jwt_subject=None,
        ),
        _individual_customer(
            "10003", 2, "Maria", "Lopez", "900141234", "1979-02-28",
            _address("600 Congress Ave", "Austin", "TX", "78701"), "5555550103",
            "maria.lopez@example.com", "60003", jwt_subject="user|10003",
        ),
    ]  # fmt: skip
    for i, customer in enumerate(individuals):
        data.customers[customer["id"]] = customer
        app_id = customer["relationships"]["application"]["data"]["id"]
        data.applications[app_id] = _individual_application(app_id, customer, i, "Approved")

    pied_piper = _business_customer(
        "10004",
        3,
        "Pied Piper Inc.",
        "123456789",
        palo_alto,
        "5555550104",
        _person(
            "Richard", "Hendricks", "richard@piedpiper.example", "5555550105", "richard|sandbox"
        ),
        [_person("Monica", "Hall", "monica@piedpiper.example", "5555550106", "monica|sandbox")],
        "60004",
    )
    hooli = _business_customer(
        "10005",
        4,
        "Hooli LLC",
        "987654321",
        _address("1 Hacker Way", "Menlo Park", "CA", "94025"),
        "5555550107",
        _person("Gavin", "Belson", "gavin@hooli.example", "5555550108", None),
        [],
        "60005",
    )
    for customer in (pied_piper, hooli):
        data.customers[customer["id"]] = customer
        app_id = customer["relationships"]["application"]["data"]["id"]
        data.applications[app_id] = _business_application(app_id, customer, 3)

    # An application still under review: no customer yet.
    pending_source = _individual_customer(
        "0", 5, "Sam", "Pending", "900151234", "2000-07-04", palo_alto, "5555550109",
        "sam.pending@example.com", "60006", jwt_subject=None,
    )  # fmt: skip
    data.applications["60006"] = _individual_application("60006", pending_source, 5, "Pending")

    accounts = [
        ("20001", "10001", "Jane Doe Checking", "checking", "1000000001", 250_000),
        ("20002", "10001", "Jane Doe Savings", "savings", "1000000002", 1_000_000),
        ("20003", "10002", "John Roe Checking", "checking", "1000000003", 75_000),
        ("20004", "10003", "Maria Lopez Checking", "checking", "1000000004", 120_000),
        ("20005", "10004", "Pied Piper Operating", "checking", "1000000005", 5_000_000),
        ("20006", "10005", "Hooli Operating", "checking", "1000000006", 90_000_000),
    ]
    for i, (aid, cid, name, product, number, balance) in enumerate(accounts):
        data.accounts[aid] = deposit_account(
            aid, cid, _seed_time(24 + i), name, product, number, balance
        )

    shipping = {"shippingAddress": palo_alto}
    richard = pied_piper["attributes"]["contact"]
    business_holder = {
        "fullName": richard["fullName"],
        "dateOfBirth": "1980-04-01",
        "address": palo_alto,
        "phone": richard["phone"],
        "email": richard["email"],
        "ssn": "900112222",
    }
    gavin = hooli["attributes"]["contact"]
    hooli_holder = {
        "fullName": gavin["fullName"],
        "dateOfBirth": "1965-09-09",
        "address": hooli["attributes"]["address"],
        "phone": gavin["phone"],
        "email": gavin["email"],
    }
    cards = [
        ("30001", "individualDebitCard", "20001", shipping),
        ("30002", "individualVirtualDebitCard", "20001", {}),
        ("30003", "individualDebitCard", "20003", {}),
        ("30004", "individualDebitCard", "20004", shipping),
        ("30005", "businessDebitCard", "20005", business_holder),
        ("30006", "businessVirtualDebitCard", "20005", business_holder),
        ("30007", "businessDebitCard", "20006", hooli_holder),
    ]
    for i, (card_id, kind, account_id, attributes) in enumerate(cards):
        data.add_card(
            card_id, kind, account_id, _seed_time(48 + i), copy.deepcopy(attributes), i + 1
        )
    data.card_secrets["30001"].pin = "1234"

    # A settled book transfer between two customers, with both legs posted.
    data.payments["40001"] = book_payment(
        "40001", "20001", "20003", 1_500, "Rent share", _seed_time(72), "Sent", customer_id="10001"
    )
    data.add_book_transaction(
        "20001", "20003", "40001", 1_500, "Debit", "Rent share", _seed_time(72), "50001"
    )
    data.add_book_transaction(
        "20003", "20001", "40001", 1_500, "Credit", "Rent share", _seed_time(72), "50002"
    )
    data.payments["40002"] = ach_payment(
        "40002",
        "20001",
        _seed_time(73),
        10_000,
        "Credit",
        "Payroll",
        {
            "name": "Acme Payroll",
            "routingNumber": "091000019",
            "accountNumber": "123456789",
            "accountType": "Checking",
        },
        "Pending",
        "10001",
    )
    data.payments["40003"] = ach_payment(
        "40003",
        "20005",
        _seed_time(74),
        250_000,
        "Debit",
        "Supplies",
        {
            "name": "Hooli Supplies",
            "routingNumber": "091000019",
            "accountNumber": "987654321",
            "accountType": "Checking",
        },
        "Sent",
        "10004",
    )
    for i, (transaction_id, card_id, amount) in enumerate(
        [("50003", "30001", 2_599), ("50004", "30005", 12_000)]
    ):
        data.add_purchase_transaction(transaction_id, card_id, amount, _seed_time(75 + i))


def book_payment(
    payment_id: str,
    account_id: str,
    counterparty_account_id: str,
    amount: int,
    description: str,
    created_at: str,
    status: str,
    reason: str | None = None,
    tags: dict[str, Any] | None = None,
    customer_id: str = "",
) -> Resource:
    attributes: dict[str, Any] = {
        "createdAt": created_at,
        "status": status,
        "direction": "Credit",
        "description": description,
        "amount": amount,
        "tags": tags or {},
    }
    if reason is not None:
        attributes["reason"] = reason
    relationships = {
        "account": _rel("account", account_id),
        "counterpartyAccount": _rel("account", counterparty_account_id),
    }
    if customer_id:
        relationships["customer"] = _rel("customer", customer_id)
    return {
        "type": "bookPayment",
        "id": payment_id,
        "attributes": attributes,
        "relationships": relationships,
    }


def ach_payment(
    payment_id: str,
    account_id: str,
    created_at: str,
    amount: int,
    direction: str,
    description: str,
    counterparty: dict[str, str],
    status: str,
    customer_id: str,
    addenda: str | None = None,
    same_day: bool = False,
    tags: dict[str, Any] | None = None,
) -> Resource:
    attributes: dict[str, Any] = {
        "createdAt": created_at,
        "status": status,
        "counterparty": counterparty,
        "direction": direction,
        "description": description,
        "amount": amount,
        "sameDay": same_day,
        "secCode": "WEB",
        "tags": tags or {},
    }
    if addenda is not None:
        attributes["addenda"] = addenda
    return {
        "type": "achPayment",
        "id": payment_id,
        "attributes": attributes,
        "relationships": {
            "account": _rel("account", account_id),
            "customer": _rel("customer", customer_id),
        },
    }
