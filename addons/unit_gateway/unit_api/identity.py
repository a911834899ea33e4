"""Who a request speaks for, read from the caller's ``Authorization`` header.

Callers never hold a Unit credential; they name an identity with a placeholder:
``Bearer unitgw:org``, ``Bearer unitgw:customer:<customerId>``,
``Bearer unitgw:cardholder:<cardId>``. Anything else is a real token, forwarded untouched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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


class AmbiguousAuthorization(ValueError):
    """``Authorization`` that servers read in different ways (repeated, a name with white
    space, a value folded over lines): a placeholder could hide in the reading the gateway
    did not take, so the request is refused (400), whatever its host."""


_AUTHORIZATION = b"authorization"
# RFC 9110's optional white space: what may stand around and between scheme and credential.
_OWS = " \t"
_SCHEME = re.compile(r"([^ \t]*)[ \t]*(.*)", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_authorization_fields(names: Iterable[bytes]) -> None:
    """Raise :class:`AmbiguousAuthorization` unless at most one header field of ``names`` (a
    request's field names) is ``Authorization``, spelled without white space. The common case
    (one field, nothing like it) stays in C."""
    lowered = list(map(bytes.lower, names))
    exact = lowered.count(_AUTHORIZATION)
    if exact > 1:
        raise AmbiguousAuthorization(
            "the request has more than one Authorization header: servers take the first, the "
            "last or all of them"
        )
    if b"\n".join(lowered).count(_AUTHORIZATION) == exact:
        return  # no other name holds the word
    if any(n != _AUTHORIZATION and n.strip(b" \t") == _AUTHORIZATION for n in lowered):
        # mitmproxy keeps `Authorization : …` as a field named "Authorization "; servers
        # that trim the name read it as Authorization.
        raise AmbiguousAuthorization(
            "an Authorization header name has white space around it, which some servers "
            "remove and others do not"
        )


def parse_authorization(value: str | None) -> Identity | RealToken | None:
    """The identity a header names, a real token, or None when there is no credential.

    Anything that holds ``unitgw:`` in any case is a placeholder, and must be exactly
    ``Bearer unitgw:…`` (the scheme in any case, spaces or tabs around it); otherwise
    :class:`PlaceholderError`, so no spelling of a placeholder passes as a real token (which
    would be sent to any host). A value folded over lines or holding a control character is
    :class:`AmbiguousAuthorization`.
    """
    if value is None:
        return None
    if _CONTROL.search(value) is not None:
        raise AmbiguousAuthorization(
            "the Authorization header is folded over lines or holds a control character: "
            "servers read it in different ways"
        )
    text = value.strip(_OWS)
    if not text:
        return None
    found = _SCHEME.fullmatch(text)
    assert found is not None  # the pattern matches any text
    scheme, credential = found.groups()
    bearer = scheme.lower() == "bearer"
    if PREFIX in text.lower():
        if not bearer or not credential.startswith(PREFIX):
            raise PlaceholderError(
                "a placeholder is sent as Authorization: Bearer unitgw:org, "
                "Bearer unitgw:customer:<id> or Bearer unitgw:cardholder:<cardId>, in lower "
                "case and alone"
            )
        return parse_placeholder(credential)
    if not bearer:
        return RealToken(value)  # another scheme is not ours: forwarded untouched
    if not credential:
        return None
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
