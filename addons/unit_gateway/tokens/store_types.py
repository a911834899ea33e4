"""What the shared store's calls return: shared tokens and challenges, leases and their
outcomes, verification-window decisions."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SharedToken:
    scopes: frozenset[str]
    #: Wall-clock expiry (``time.time()`` seconds), as the replica that put it computed it.
    expires_at: float
    learned: bool = False
    value: str = field(repr=False, default="")


@dataclass(frozen=True, slots=True)
class SharedChallenge:
    challenge_id: str = field(repr=False)
    scopes: frozenset[str]
    verification_token: str = field(repr=False)
    #: Wall-clock times (``time.time()``) it was started and stops being usable.
    created_at: float
    expires_at: float
    #: Codes tried on it so far.
    attempts: int = 0


class LeaseStatus(enum.StrEnum):
    ACQUIRED = "acquired"  # this replica mints; release the lease after putting the token
    HELD = "held"  # another replica mints: wait_released, then read its token
    UNAVAILABLE = "unavailable"  # no answer: mint locally (release it after, all the same)


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class LeaseResult:
    status: LeaseStatus
    lease: Lease
    #: HELD: seconds the holder's lease has left.
    remaining: float = 0.0


class WaitOutcome(enum.StrEnum):
    RELEASED = "released"  # released or expired: read the token, or acquire again
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class WindowDecision:
    allowed: bool
    #: Attempts in the window, this one included when allowed.
    count: int
    #: Refused: seconds until the oldest attempt leaves the window.
    retry_after: float
