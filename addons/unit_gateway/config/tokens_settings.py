"""The `tokens` section: how customer and cardholder tokens are minted and cached."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from unit_gateway.config.base import _Model
from unit_gateway.config.secret_refs import SecretRef

#: Unit's longest token lifetime, in seconds.
MAX_TOKEN_LIFETIME = 86400

Scope = Annotated[str, Field(pattern=r"^[a-z][a-z-]*[a-z]$")]

TwoFactorStrategy = Literal["sandbox-otp", "jwt", "challenge"]


class TokenKindSettings(_Model):
    default_scopes: list[Scope] = Field(default_factory=list)
    """Scopes every minted token of this kind gets, besides the scope the route needs; a
    broader token is reused for more routes. Writing the section without this key means no
    default scopes. Cardholder tokens accept only `cards`, `cards-sensitive`, `cards-write`
    and `cards-sensitive-write`."""
    expires_in: int = Field(default=3600, ge=1, le=MAX_TOKEN_LIFETIME)
    """Lifetime in seconds requested for minted tokens (Unit's `expiresIn`; Unit allows at
    most 86400). Shorter means more mints; it must exceed `tokens.expiry_margin_seconds`."""
    two_factor: TwoFactorStrategy = "challenge"
    """How a token with a two-factor scope is obtained: `challenge` asks the caller to get
    the person's code; `sandbox-otp` answers with Unit's sandbox passcode (refused with a
    `live` upstream); `jwt` signs a JWT with `tokens.jwt` (customer tokens only)."""


class CardholderSettings(TokenKindSettings):
    @field_validator("default_scopes")
    @classmethod
    def _card_scopes_only(cls, scopes: list[str]) -> list[str]:
        allowed = {"cards", "cards-sensitive", "cards-write", "cards-sensitive-write"}
        bad = [s for s in scopes if s not in allowed]
        if bad:
            raise ValueError(f"cardholder tokens allow only {' '.join(sorted(allowed))}")
        return scopes


class JwtSettings(_Model):
    private_key: SecretRef
    """PEM private key that signs the JWTs; Unit verifies them with the matching public key
    configured for your org."""
    algorithm: Literal["RS256", "RS384", "RS512", "ES256", "ES384"] = "RS256"
    """JWT signing algorithm; must fit the key type (RS* for RSA, ES* for EC keys)."""
    subject_template: str = "{customerId}"
    """The JWT `sub` claim: `{customerId}` is replaced by the customer's id; the result must
    be that customer's `jwtSubject` at Unit. Must contain `{customerId}`."""
    issuer: str | None = None
    """The JWT `iss` claim, if your Unit JWT settings expect one; unset: no `iss` claim."""
    lifetime_seconds: int = Field(default=60, ge=10, le=3600)
    """Seconds each signed JWT stays valid (its `exp`). It is used once, right away, so keep
    it short."""

    @field_validator("subject_template")
    @classmethod
    def _has_customer_id(cls, template: str) -> str:
        if "{customerId}" not in template:
            raise ValueError("must contain {customerId}")
        return template


class TokenSettings(_Model):
    cache_size: int = Field(default=10_000, ge=1, le=10_000_000)
    """Most tokens kept in the in-memory cache (one per identity and scope set); the least
    recently used go first. Raise it when more identities are active within a token's
    lifetime."""
    expiry_margin_seconds: int = Field(default=30, ge=0, le=3600)
    """Seconds before its expiry a cached token counts as expired, so no request leaves with
    a token that expires on the way. Must be smaller than each kind's `expires_in`."""
    refresh_ahead_seconds: int = Field(default=300, ge=0, le=MAX_TOKEN_LIFETIME)
    """Once a cached token has less than this many seconds left (and at least half of its
    usable lifetime has passed), a replacement is minted in the background while requests
    keep using it (not for a token with a two-factor scope under `two_factor: challenge`,
    which needs a person). 0: no early refresh."""
    customer: TokenKindSettings = TokenKindSettings(default_scopes=["customers", "accounts"])
    """Customer tokens, minted for `Bearer unitgw:customer:<customerId>`."""
    cardholder: CardholderSettings = CardholderSettings(default_scopes=["cards"])
    """Cardholder tokens, minted for `Bearer unitgw:cardholder:<cardId>` on card routes."""
    jwt: JwtSettings | None = None
    """JWT signing for `two_factor: jwt`; required when a kind uses `jwt`, unused
    otherwise."""
