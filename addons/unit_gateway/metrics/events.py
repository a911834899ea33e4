"""What the token features report to the metrics: one dataclass per kind of event, with the
labels it is counted under. ``kind`` is the identity's kind (org, customer, cardholder)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """A token was looked for in the replica's cache."""

    kind: str
    hit: bool


@dataclass(frozen=True, slots=True)
class Mint:
    """A token was asked of Unit; ``seconds`` it took, verification included."""

    kind: str
    strategy: str
    outcome: str  # ok, error
    seconds: float


@dataclass(frozen=True, slots=True)
class Verification:
    """A two-factor verification was started, or refused by the verification limit."""

    kind: str
    refused: bool = False


@dataclass(frozen=True, slots=True)
class Challenge:
    kind: str
    outcome: str  # issued, reissued, completed, refused, error, unknown


@dataclass(frozen=True, slots=True)
class Learned:
    """A token created by a caller's own request was learned from Unit's answer."""

    kind: str


@dataclass(frozen=True, slots=True)
class Refresh:
    """A token was replaced ahead of its expiry."""

    kind: str
    outcome: str  # ok, error


@dataclass(frozen=True, slots=True)
class Retry:
    """Unit refused a token (401): the request was sent again with a new one."""

    kind: str
    outcome: str  # ok, refused, error


@dataclass(frozen=True, slots=True)
class Fleet:
    """The replicas' shared state at work."""

    kind: str
    outcome: str  # shared_hit, mint_wait, invalidated


TokenEvent = CacheLookup | Mint | Verification | Challenge | Learned | Refresh | Retry | Fleet
#: Where a token feature sends its events.
Report = Callable[[TokenEvent], None]


def ignore(event: TokenEvent) -> None:
    """A report that counts nothing (no metrics)."""
