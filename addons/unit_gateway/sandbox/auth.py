"""Who is calling: the org token, the tokens the sandbox mints, and their second factors."""

from __future__ import annotations

import base64
import hmac
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..net.limits import SlidingWindow, whole_seconds
from ..unit_api import paseto
from . import scopes as unit_scopes
from .clock import SandboxClock
from .wire import ApiError

ORG_ID = "1"
ORG_USER_ID = "1"
SANDBOX_PASSCODE = "000001"
VERIFICATION_TTL = 600.0  # "The challenge ... is valid for 10 minutes after its creation."
VERIFICATIONS_PER_WINDOW = 5  # "5 attempts per 10 minutes"
VERIFICATION_WINDOW = 600.0
_PRINCIPAL_CACHE_SIZE = 50_000
_MAX_ISSUED_VERIFICATIONS = 10_000  # beyond this, forget the expired ones


@dataclass(frozen=True, slots=True)
class Principal:
    role: str  # "org" | "customer" | "cardholder"
    scopes: frozenset[str]
    customer_id: str | None = None
    card_id: str | None = None
    # A customer token's optional `resources` restriction; None means every resource.
    cards: frozenset[str] | None = None
    accounts: frozenset[str] | None = None
    expires_at: float = float("inf")


def _unauthorized(detail: str, code: str) -> ApiError:
    return ApiError(401, "Unauthorized", code=code, detail=detail)


class TokenAuthority:
    """Recognises the org token and mints/verifies customer and cardholder tokens."""

    def __init__(self, clock: SandboxClock, org_token: str | None = None) -> None:
        self.clock = clock
        # A fresh key per run: tokens from an earlier run are "badly signed", as a revoked
        # token would be.
        self._key = secrets.token_bytes(32)
        self.generated_org_token = org_token is None
        self.org_token = org_token if org_token is not None else self._mint_org_token()
        self._org_token_bytes = self.org_token.encode()
        #: Every customer and cardholder token minted, for ``GET /__sandbox/issued`` (tests
        #: plant them in leak scans). Bounded like the verifications.
        self.issued: deque[str] = deque(maxlen=_MAX_ISSUED_VERIFICATIONS)
        self._org = Principal("org", unit_scopes.ALL_SCOPES)
        self._known: dict[str, Principal] = {}

    def _mint_org_token(self) -> str:
        claims = {
            "role": "org",
            "userId": ORG_USER_ID,
            "sub": f"user/{ORG_USER_ID}",
            "exp": paseto.format_time(self.clock.now_datetime() + timedelta(days=3650)),
            "jti": secrets.token_hex(8),
            "orgId": ORG_ID,
            "scope": " ".join(sorted(unit_scopes.ALL_SCOPES)),
            "userType": "user",
        }
        return paseto.encode(claims, self._key)

    # --- verifying ------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Principal:
        if authorization is None:
            raise _unauthorized("missing Authorization header", "missing_token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("expected Authorization: Bearer <token>", "malformed_token")
        if hmac.compare_digest(token.encode(), self._org_token_bytes):
            return self._org
        principal = self._known.get(token)
        if principal is None:
            principal = self._principal_of(token)
            if len(self._known) >= _PRINCIPAL_CACHE_SIZE:
                self._known.clear()
            self._known[token] = principal
        if principal.expires_at <= self.clock.now():
            raise _unauthorized("the token has expired", "expired_token")
        return principal

    def _principal_of(self, token: str) -> Principal:
        if paseto.claims_of(token) is None:
            raise _unauthorized("the token is malformed", "malformed_token")
        claims = paseto.verify(token, self._key)
        if claims is None:
            raise _unauthorized("the token is not valid", "invalid_token")
        expiry = paseto.expiry_of(claims)
        scope = claims.get("scope")
        role = claims.get("role")
        if expiry is None or not isinstance(scope, str) or role not in ("customer", "cardholder"):
            raise _unauthorized("the token is not valid", "invalid_token")
        resources = claims.get("resources") or []
        return Principal(
            role=role,
            scopes=frozenset(scope.split()),
            customer_id=claims.get("customerId"),
            card_id=claims.get("cardId"),
            cards=_restriction(resources, "card"),
            accounts=_restriction(resources, "account"),
            expires_at=expiry.timestamp(),
        )

    # --- minting --------------------------------------------------------------------------

    def _expiry(self, expires_in: int) -> str:
        return paseto.format_time(self.clock.now_datetime() + timedelta(seconds=expires_in))

    def mint_customer_token(
        self,
        customer_id: str,
        email: str,
        scope: Iterable[str],
        expires_in: int,
        resources: list[dict[str, Any]] | None = None,
    ) -> str:
        claims: dict[str, Any] = {
            "role": "customer",
            "userId": None,
            "sub": f"customer/{customer_id}/{email}",
            "exp": self._expiry(expires_in),
            "jti": secrets.token_hex(8),
            "orgId": ORG_ID,
            "scope": " ".join(scope),
            "customerId": customer_id,
            "userType": "customer",
        }
        if resources:
            claims["resources"] = resources
        token = paseto.encode(claims, self._key)
        self.issued.append(token)
        return token

    def mint_cardholder_token(self, card_id: str, scope: Iterable[str], expires_in: int) -> str:
        claims = {
            "role": "cardholder",
            "sub": f"card/{card_id}",
            "exp": self._expiry(expires_in),
            "jti": secrets.token_hex(8),
            "orgId": ORG_ID,
            "scope": " ".join(scope),
            "cardId": card_id,
            "userType": "cardholder",
        }
        token = paseto.encode(claims, self._key)
        self.issued.append(token)
        return token


def _restriction(resources: Any, kind: str) -> frozenset[str] | None:
    ids: set[str] | None = None
    for item in resources if isinstance(resources, list) else []:
        if isinstance(item, dict) and item.get("type") == kind:
            ids = (ids or set()) | {str(i) for i in item.get("ids", [])}
    return None if ids is None else frozenset(ids)


# --- one-time-password verifications -------------------------------------------------------


@dataclass(slots=True)
class _Verification:
    kind: str  # "customer" | "cardholder"
    subject_id: str
    created_at: float
    used: bool = False


class Verifications:
    """Verification tokens: 10 minutes, single use, 5 per 10 minutes per customer/card."""

    def __init__(self, clock: SandboxClock) -> None:
        self.clock = clock
        self._issued: dict[str, _Verification] = {}
        self.attempts = SlidingWindow(VERIFICATIONS_PER_WINDOW, VERIFICATION_WINDOW)

    def start(self, kind: str, subject_id: str, *, retry_after_header: bool) -> str:
        now = self.clock.now()
        decision = self.attempts.hit(f"{kind}/{subject_id}", now)
        if not decision.allowed:
            headers = {}
            if retry_after_header:
                headers["Retry-After"] = str(whole_seconds(decision.reset_after))
            raise ApiError(
                429,
                "Too Many Requests",
                code="verification_rate_limited",
                detail="at most 5 verifications per 10 minutes",
                headers=headers,
            )
        if len(self._issued) >= _MAX_ISSUED_VERIFICATIONS:
            self._issued = {
                t: v for t, v in self._issued.items() if now - v.created_at < VERIFICATION_TTL
            }
        # Shaped like Unit's: standard base64 of random bytes.
        token = base64.b64encode(secrets.token_bytes(48)).decode("ascii")
        self._issued[token] = _Verification(kind, subject_id, now)
        return token

    def issued(self) -> list[str]:
        """Verification tokens issued and not yet pruned (for ``GET /__sandbox/issued``)."""
        return list(self._issued)

    def redeem(self, kind: str, subject_id: str, token: str | None, code: str | None) -> None:
        """Check and use up a verification token with its code, or raise 400."""
        if not token:
            raise ApiError(
                400,
                "Bad Request",
                code="verification_required",
                detail="this scope requires two-factor authentication: verificationToken and "
                "verificationCode are required",
                pointer="/data/attributes/verificationToken",
            )
        if not code:
            raise ApiError(
                400,
                "Bad Request",
                code="verification_required",
                detail="verificationCode is required",
                pointer="/data/attributes/verificationCode",
            )
        record = self._issued.get(token)
        if record is None or record.kind != kind or record.subject_id != subject_id:
            raise ApiError(
                400,
                "Bad Request",
                code="invalid_verification_token",
                detail="unknown verification token",
                pointer="/data/attributes/verificationToken",
            )
        if record.used:
            raise ApiError(
                400,
                "Bad Request",
                code="verification_token_used",
                detail="the verification token was already used",
                pointer="/data/attributes/verificationToken",
            )
        if self.clock.now() - record.created_at >= VERIFICATION_TTL:
            raise ApiError(
                400,
                "Bad Request",
                code="verification_token_expired",
                detail="the verification token has expired",
                pointer="/data/attributes/verificationToken",
            )
        if not hmac.compare_digest(code.encode(), SANDBOX_PASSCODE.encode()):
            raise ApiError(
                400,
                "Bad Request",
                code="invalid_verification_code",
                detail="the verification code is not correct",
                pointer="/data/attributes/verificationCode",
            )
        record.used = True

    def clear_limits(self) -> None:
        self.attempts.clear()


# --- JWT (the alternative to a one-time password for customer tokens) -----------------------


class JwtVerifier:
    """Checks customers' JWTs against the org's configured public key (RS256 or ES256)."""

    def __init__(self, public_key_path: Path, clock: SandboxClock) -> None:
        self.clock = clock
        key = serialization.load_pem_public_key(public_key_path.read_bytes())
        if isinstance(key, rsa.RSAPublicKey):
            self.algorithms = ["RS256"]
        elif isinstance(key, ec.EllipticCurvePublicKey):
            self.algorithms = ["ES256"]
        else:
            raise ValueError(f"{public_key_path}: expected an RSA or EC public key")
        self._key = key

    def subject_of(self, token: str) -> str:
        """The verified `sub` of a JWT, or raise 401."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self.algorithms,
                # exp and nbf are checked against the sandbox clock, below.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "require": ["exp", "sub"],
                },
            )
        except jwt.PyJWTError:
            raise ApiError(
                401, "Unauthorized", code="invalid_jwt", detail="the JWT is not valid"
            ) from None
        now = self.clock.now()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or exp <= now:
            raise ApiError(401, "Unauthorized", code="expired_jwt", detail="the JWT has expired")
        if isinstance(nbf, int | float) and nbf > now:
            raise ApiError(
                401, "Unauthorized", code="invalid_jwt", detail="the JWT is not yet valid"
            )
        subject = claims.get("sub")
        if not isinstance(subject, str):
            raise ApiError(401, "Unauthorized", code="invalid_jwt", detail="the JWT has no subject")
        return subject
