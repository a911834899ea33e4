"""What a handler gets: the sandbox's state, the request, and who is calling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..net.limits import SlidingWindow
from .auth import JwtVerifier, Principal, TokenAuthority, Verifications
from .clock import SandboxClock
from .data import SandboxData
from .faults import Faults
from .stats import Stats
from .wire import ApiError


class SandboxState:
    """Everything one running sandbox knows; handlers share it, nothing else does."""

    def __init__(
        self,
        *,
        org_token: str | None,
        faults: Faults,
        jwt_public_key: Path | None = None,
        access_log: bool = False,
    ) -> None:
        self.clock = SandboxClock()
        self.faults = faults
        self.stats = Stats()
        self.rate_limiter = SlidingWindow(faults.rate_limit_per_minute, 60.0)
        self.authority = TokenAuthority(self.clock, org_token)
        self.verifications = Verifications(self.clock)
        self.jwt = JwtVerifier(jwt_public_key, self.clock) if jwt_public_key else None
        self.data = SandboxData()
        # Serialized single-resource documents, dropped whenever a write request runs.
        self.documents: dict[tuple[str, str], bytes] = {}
        self.access_log = access_log

    def reset(self) -> None:
        """Clear stats, limits and the clock; keep the data, tokens and faults."""
        self.stats.clear()
        self.rate_limiter.clear()
        self.verifications.clear_limits()
        self.clock.reset()


@dataclass(slots=True)
class Call:
    state: SandboxState
    request: web.BaseRequest
    params: dict[str, str]
    principal: Principal
    body: Any = None

    @property
    def data(self) -> SandboxData:
        return self.state.data

    def query(self, name: str) -> str | None:
        return self.request.query.get(name)


def forbidden(detail: str) -> ApiError:
    return ApiError(403, "Forbidden", code="forbidden", detail=detail)


def not_found(kind: str, identifier: str) -> ApiError:
    return ApiError(404, "Not Found", code="not_found", detail=f"{kind} {identifier} not found")


# --- which principal may touch what -----------------------------------------------------------


def check_org(principal: Principal, what: str) -> None:
    """Only an org token may ``what`` (create tokens, open accounts, ...)."""
    if principal.role != "org":
        raise forbidden(f"only an org token may {what}")


def check_customer(principal: Principal, customer_id: str) -> None:
    if principal.role == "org":
        return
    if principal.role != "customer" or principal.customer_id != customer_id:
        raise forbidden("this token may not access that customer")


def may_see_account(principal: Principal, data: SandboxData, account_id: str) -> bool:
    if principal.role == "org":
        return True
    if (
        principal.role != "customer"
        or data.customer_of_account(account_id) != principal.customer_id
    ):
        return False
    return principal.accounts is None or account_id in principal.accounts


def check_account(principal: Principal, data: SandboxData, account_id: str) -> None:
    if not may_see_account(principal, data, account_id):
        raise forbidden("this token may not access that account")


def may_see_card(principal: Principal, data: SandboxData, card_id: str) -> bool:
    if principal.role == "org":
        return True
    if principal.role == "cardholder":
        return principal.card_id == card_id
    if principal.role != "customer" or data.customer_of_card(card_id) != principal.customer_id:
        return False
    return principal.cards is None or card_id in principal.cards


def check_card(principal: Principal, data: SandboxData, card_id: str) -> None:
    if not may_see_card(principal, data, card_id):
        raise forbidden("this token may not access that card")
