"""The demo's story, told with Unit's Python SDK through the gateway, placeholder tokens only.

The org opens a customer, an account and a card; the customer reads them with a minted token;
a two-factor scope goes through sandbox-otp; a short-lived cardholder token expires and is
replaced; Unit's rate limit answers 429. Each step checks what the sandbox saw.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .demo_gateway import CARDHOLDER_LIFETIME, Environment
from .demo_output import find_leaks_in_outputs, metric_samples, metric_total


class StepFailed(Exception):
    """A step of the story did not turn out as expected; the message says what was seen."""


def sdk_result(result: Any, what: str) -> Any:
    """The data of an SDK response; a UnitError becomes a StepFailed that says what Unit said."""
    from unit.models import UnitError

    if isinstance(result, UnitError):
        reasons = "; ".join(
            f"{e.status} {e.code or e.title}: {e.detail or ''}".strip() for e in result.errors
        )
        raise StepFailed(f"{what}: {reasons}")
    return result.data


def mask(value: str, keep: int = 4) -> str:
    return "•" * max(len(value) - keep, 0) + value[-keep:]


def counted(stats: Mapping[str, Any], group: str, kind: str) -> int:
    return int(stats.get(group, {}).get(kind, 0))


@dataclass
class Story:
    """The scripted traffic. Each step returns a one-line result or raises StepFailed."""

    env: Environment
    #: Values the caller legitimately received that must appear in no output.
    secrets: dict[str, str] = field(default_factory=dict)
    customer_id: str = ""
    account_id: str = ""
    card_id: str = ""

    def steps(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("org opens a customer (individual application)", self.open_customer),
            ("org opens a checking account for the customer", self.open_account),
            ("org issues a virtual debit card", self.issue_card),
            ("customer reads accounts and cards: one token minted, then reused", self.customer),
            ("customer reads secure card data: two-factor via sandbox-otp", self.secure_data),
            (
                f"cardholder token ({CARDHOLDER_LIFETIME} s) expires and is replaced",
                self.short_lived,
            ),
            ("Unit's rate limit answers 429", self.rate_limited),
            ("no token or card data in the gateway's output or saved flows", self.outputs_clean),
        ]

    def unit(self, placeholder: str) -> Any:
        from unit import Unit

        return Unit(self.env.sandbox_url, placeholder)

    def open_customer(self) -> str:
        from unit.models import Address, FullName, Phone
        from unit.models.application import CreateIndividualApplicationRequest

        run = time.time_ns()
        ssn = self.secrets["SSN"] = f"9{run % 10**8:08d}"
        application = sdk_result(
            self.unit("unitgw:org").applications.create(
                CreateIndividualApplicationRequest(
                    FullName("Avery", "Demo"),
                    datetime.date(1990, 5, 17),
                    Address("20 Ingram St", "Forest Hills", "NY", "11375", "US"),
                    "avery.demo@example.com",
                    Phone("1", "5555550199"),
                    ssn=ssn,
                    idempotency_key=f"demo-{run:x}",
                )
            ),
            "create application",
        )
        self.customer_id = application.relationships["customer"].id
        status = application.attributes["status"]
        return f"application {application.id} {status}, customer {self.customer_id}"

    def open_account(self) -> str:
        from unit.models import Relationship
        from unit.models.account import CreateDepositAccountRequest

        account = sdk_result(
            self.unit("unitgw:org").accounts.create(
                CreateDepositAccountRequest(
                    "checking", {"customer": Relationship("customer", self.customer_id)}
                )
            ),
            "create account",
        )
        self.account_id = account.id
        return f"account {account.id}"

    def issue_card(self) -> str:
        from unit.models import Relationship
        from unit.models.card import CreateIndividualVirtualDebitCard

        card = sdk_result(
            self.unit("unitgw:org").cards.create(
                CreateIndividualVirtualDebitCard(
                    {"account": Relationship("depositAccount", self.account_id)}
                )
            ),
            "create card",
        )
        self.card_id = card.id
        return f"card {card.id}, {card.attributes['status']}"

    def since(self, before: Mapping[str, Any], group: str, kind: str) -> int:
        """How many ``group`` of ``kind`` (tokens_created, customer) the sandbox counted
        since the stats ``before``."""
        return counted(self.env.stats(), group, kind) - counted(before, group, kind)

    def customer(self) -> str:
        before = self.env.stats()
        customer = self.unit(f"unitgw:customer:{self.customer_id}")
        accounts = sdk_result(customer.accounts.list(), "list accounts")
        cards = sdk_result(customer.cards.list(), "list cards")
        sdk_result(customer.cards.get(self.card_id), "get card")
        sdk_result(customer.customers.get(self.customer_id), "get customer")
        if [a.id for a in accounts] != [self.account_id] or [c.id for c in cards] != [self.card_id]:
            raise StepFailed("the customer does not see exactly its own account and card")
        minted = self.since(before, "tokens_created", "customer")
        if minted != 1:
            raise StepFailed(f"expected 1 customer token at Unit for 4 requests, saw {minted}")
        return "4 requests, 1 customer token created at Unit"

    def secure_data(self) -> str:
        from unit.api.base_resource import BaseResource

        before = self.env.stats()
        customer = self.unit(f"unitgw:customer:{self.customer_id}")
        pin = sdk_result(customer.cards.get_pin_status(self.card_id), "card PIN status")
        # The SDK has no method for the PAN; its generic GET sends the same headers.
        response = BaseResource.get(customer.cards, f"cards/{self.card_id}/secure-data/pan")
        if response.status_code != 200:
            raise StepFailed(f"card PAN: HTTP {response.status_code} {response.text[:200]}")
        pan = self.secrets["PAN"] = response.json()["data"]["attributes"]["pan"]
        verifications = self.since(before, "verifications_created", "customer")
        if verifications != 1:
            raise StepFailed(f"expected 1 verification at Unit, saw {verifications}")
        status = pin.attributes.get("status")
        return f"PIN {status}, PAN {mask(pan)} (1 verification, code 000001)"

    def short_lived(self) -> str:
        before = self.env.stats()
        cardholder = self.unit(f"unitgw:cardholder:{self.card_id}")
        sdk_result(cardholder.cards.get(self.card_id), "get card as cardholder")
        sdk_result(cardholder.cards.get(self.card_id), "get card as cardholder")
        time.sleep(CARDHOLDER_LIFETIME + 0.2)
        sdk_result(cardholder.cards.get(self.card_id), "get card after expiry")
        created = self.since(before, "tokens_created", "cardholder")
        if created != 2:
            raise StepFailed(f"expected 2 cardholder tokens (first, replacement), saw {created}")
        return "3 requests, 2 cardholder tokens: the second replaced the expired first"

    def rate_limited(self) -> str:
        from unit.models import UnitError

        limit = self.env.sandbox("GET", "/__sandbox/faults")["rate_limit_per_minute"]
        # Every request of the last minute already counts against a limit of 1.
        self.env.sandbox("POST", "/__sandbox/faults", {"rate_limit_per_minute": 1})
        try:
            result = self.unit(f"unitgw:customer:{self.customer_id}").accounts.list()
        finally:
            self.env.sandbox("POST", "/__sandbox/faults", {"rate_limit_per_minute": limit})
        if not isinstance(result, UnitError) or result.errors[0].status != "429":
            got = "a success"
            if isinstance(result, UnitError):
                got = f"HTTP {result.errors[0].status}"
            raise StepFailed(f"expected a 429 from Unit, got {got}")
        seen = metric_total(metric_samples(self.env), "unit_gateway_upstream_rate_limited_total")
        if seen < 1:
            raise StepFailed("the gateway did not count Unit's 429")
        return "the SDK got Unit's 429; the gateway counted it for the dashboard"

    def outputs_clean(self) -> str:
        self.collect_issued()
        leaks = find_leaks_in_outputs(self.secrets, self.env.run_dir)
        if leaks:
            raise StepFailed("found in the outputs: " + "; ".join(str(leak) for leak in leaks))
        files = sorted(p.name for p in self.env.run_dir.iterdir() if p.is_file())
        return f"{len(self.secrets)} secrets checked against {', '.join(files)}"

    def collect_issued(self) -> None:
        """Every token and verification token the sandbox issued, among the secrets."""
        issued = self.env.sandbox("GET", "/__sandbox/issued")
        for i, token in enumerate(issued["tokens"]):
            self.secrets[f"token {i + 1}"] = token
        for i, token in enumerate(issued["verificationTokens"]):
            self.secrets[f"verification token {i + 1}"] = token
