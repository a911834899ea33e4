"""Why getting a token failed, and the answer that asks a person for a two-factor code."""

from __future__ import annotations

from typing import Any

from unit_gateway.unit_api.identity import Identity


class TokenError(Exception):
    """A step of getting a token failed; becomes the caller's JSON:API error."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.meta = meta


class VerificationRequired(TokenError):
    """A person must enter the code Unit sent them; the caller completes the challenge."""

    def __init__(self, challenge_id: str, identity: Identity) -> None:
        super().__init__(
            401,
            "verification_required",
            f"{identity} needs two-factor verification: send Unit's create-token request "
            "through the gateway with verificationToken set to meta.challengeId and the code",
            meta={"challengeId": challenge_id},
        )
        self.challenge_id = challenge_id
