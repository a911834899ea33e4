"""Who a request speaks for, read from the caller's ``Authorization`` header.

Callers never hold a Unit credential; they name an identity with a placeholder:
``Bearer unitgw:org``, ``Bearer unitgw:customer:<customerId>``,
``Bearer unitgw:cardholder:<cardId>``. Anything else is a real token, forwarded untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PREFIX = "unitgw:"
IdentityKind = Literal["org", "customer", "cardholder"]
# Unit's ids are short strings of digits; letters, '-' and '_' are allowed for other setups.
ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
_ID = re.compile(ID_PATTERN)
#: Every valid placeholder, for whoever must recognise one in text (the redaction engine).
PLACEHOLDER_PATTERN = rf"{PREFIX}(?:org|customer:{ID_PATTERN}|cardholder:{ID_PATTERN})"


@dataclass(frozen=True, slots=True)
class Identity:
    kind: IdentityKind
    subject: str | None = None  # the customer id or card id; None for the org

    @property
    def placeholder(self) -> str:
        return PREFIX + (self.kind if self.subject is None else f"{self.kind}:{self.subject}")

    def __str__(self) -> str:
        return self.placeholder


ORG = Identity("org")


@dataclass(frozen=True, slots=True)
class RealToken:
    """A credential the caller brought itself: forwarded as is, never cached."""

    value: str


class PlaceholderError(ValueError):
    """A ``unitgw:`` placeholder that names no valid identity."""


def parse_authorization(value: str | None) -> Identity | RealToken | None:
    """The identity a header names, a real token, or None when there is no credential."""
    if value is None or not value.strip():
        return None
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer":
        return RealToken(value)  # another scheme is not ours: forwarded untouched
    if not credential:
        return None
    if credential.startswith(PREFIX):
        return parse_placeholder(credential)
    return RealToken(credential)


def parse_placeholder(text: str) -> Identity:
    kind, _, subject = text[len(PREFIX) :].partition(":")
    if kind == "org":
        if subject:
            raise PlaceholderError("unitgw:org takes no id")
        return ORG
    if kind in ("customer", "cardholder"):
        if not _ID.fullmatch(subject):
            what = "customer id" if kind == "customer" else "card id"
            raise PlaceholderError(f"unitgw:{kind}:<id> needs a {what} of letters and digits")
        return Identity(kind, subject)  # type: ignore[arg-type]
    raise PlaceholderError(
        "unknown placeholder; use unitgw:org, unitgw:customer:<id> or unitgw:cardholder:<cardId>"
    )
