"""What two-factor verification needs: Unit's verification limit, the sandbox passcode, and
the challenges a person completes with the code Unit sent them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from unit_gateway.net.limits import SlidingWindow
from unit_gateway.tokens.store import SharedChallenge
from unit_gateway.unit_api.identity import Identity

#: The code Unit's sandbox accepts for every verification (the sandbox-otp strategy).
SANDBOX_PASSCODE = "000001"
VERIFICATION_LIMIT = 5
VERIFICATION_WINDOW = 600.0
CHALLENGE_LIFETIME = 600.0
#: Codes a challenge takes before it is closed: a challenge that stays open after a wrong
#: code must not allow more guesses than one code per verification (5 in 10 minutes) would.
CHALLENGE_ATTEMPTS = 5

#: How the gateway's challenge ids start (a caller sends one back as verificationToken).
CHALLENGE_PREFIX = "unitgw-challenge-"


class VerificationLimiter:
    """Unit allows 5 verifications per 10 minutes per customer or card: refuse the sixth here,
    before spending Unit's own limit."""

    def __init__(
        self,
        limit: int = VERIFICATION_LIMIT,
        window: float = VERIFICATION_WINDOW,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempts = SlidingWindow(limit, window)
        self.timer = timer

    @property
    def limit(self) -> int:
        return self.attempts.limit

    @property
    def window(self) -> float:
        return self.attempts.window

    def acquire(self, identity: Identity) -> float | None:
        """Record an attempt and return None, or return seconds until one is allowed."""
        decision = self.attempts.hit(identity, self.timer())
        return None if decision.allowed else decision.reset_after


@dataclass
class Challenge:
    identity: Identity
    scopes: frozenset[str]
    verification_token: str = field(repr=False)
    created_at: float
    #: Codes callers sent for it so far (see ``CHALLENGE_ATTEMPTS``).
    attempts: int = 0


def shared_challenge(
    challenge_id: str, challenge: Challenge, *, expires_at: float | None = None
) -> SharedChallenge:
    """``challenge`` on the wall clock every replica shares (it keeps monotonic times)."""
    created = time.time() - (time.monotonic() - challenge.created_at)
    return SharedChallenge(
        challenge_id,
        challenge.scopes,
        challenge.verification_token,
        created,
        expires_at if expires_at is not None else created + CHALLENGE_LIFETIME,
        challenge.attempts,
    )


def local_challenge(identity: Identity, shared: SharedChallenge) -> Challenge:
    created = time.monotonic() - (time.time() - shared.created_at)
    return Challenge(identity, shared.scopes, shared.verification_token, created, shared.attempts)
