"""Getting customer and cardholder tokens from Unit: cached, minted, verified, refreshed.

At most one mint per identity and scope set is in flight; every other request for it awaits
that one.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable
from typing import Any

import jwt

from unit_gateway.config.schema import LoadedConfig, Secret, TokenKindSettings, Upstream
from unit_gateway.metrics import events
from unit_gateway.net.limits import whole_seconds
from unit_gateway.tokens.cache import CachedToken, TokenCache, scopes_of, usable_lifetime
from unit_gateway.tokens.client import UnitClient
from unit_gateway.tokens.errors import TokenError, VerificationRequired
from unit_gateway.tokens.fleet import Fleet
from unit_gateway.tokens.single_flight import SingleFlight
from unit_gateway.tokens.store import SharedChallenge, Unavailable
from unit_gateway.tokens.two_factor import (
    CHALLENGE_ATTEMPTS,
    CHALLENGE_LIFETIME,
    CHALLENGE_PREFIX,
    SANDBOX_PASSCODE,
    Challenge,
    VerificationLimiter,
    local_challenge,
    shared_challenge,
)
from unit_gateway.unit_api.identity import Identity

logger = logging.getLogger(__name__)


class TokenService:
    """Tokens for identities: from the cache, minted, verified, refreshed ahead of expiry."""

    def __init__(
        self,
        config: LoadedConfig,
        org_token: Secret,
        *,
        ssl_context: ssl.SSLContext | None = None,
        two_factor_scopes: frozenset[str],
        on_event: events.Report = events.ignore,
    ) -> None:
        model = config.model
        self.config = config
        self.org_token = org_token
        self.two_factor_scopes = two_factor_scopes
        self.cache = TokenCache(
            model.tokens.cache_size,
            margin=model.tokens.expiry_margin_seconds,
            refresh_ahead=model.tokens.refresh_ahead_seconds,
        )
        self.ssl_context = ssl_context
        self.clients = {up.url: self._client(up, org_token) for up in model.unit.upstreams}
        self._closing: set[asyncio.Future[None]] = set()
        self.limiter = VerificationLimiter()
        self.flights = SingleFlight()
        self.challenges: dict[str, Challenge] = {}
        #: Shared challenges this replica took out of the store to complete: put back when
        #: Unit refuses the code.
        self._taken: dict[str, tuple[Challenge, SharedChallenge]] = {}
        #: What the replicas share, when the configuration has a store.
        self.fleet: Fleet | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._on_event = on_event
        jwt_settings = model.tokens.jwt
        self._jwt_key = config.secrets.get("tokens.jwt.private_key")
        self._jwt_settings = jwt_settings

    def reconfigure(self, config: LoadedConfig, *, two_factor_scopes: frozenset[str]) -> None:
        """Apply a reloaded configuration; cached tokens for unchanged upstreams stay."""
        model = config.model
        self.config = config
        self.two_factor_scopes = two_factor_scopes
        self._jwt_key = config.secrets.get("tokens.jwt.private_key")
        self._jwt_settings = model.tokens.jwt
        self.cache.margin = model.tokens.expiry_margin_seconds
        self.cache.refresh_ahead = model.tokens.refresh_ahead_seconds
        if model.tokens.cache_size != self.cache.maxsize:
            self.cache = self.cache.resized(model.tokens.cache_size)
            if self.fleet is not None:
                self.fleet.cache = self.cache
        org_token = config.org_token or self.org_token
        wanted = {up.url: up for up in model.unit.upstreams}
        for url in list(self.clients):
            if url not in wanted or org_token != self.org_token:
                closing = asyncio.ensure_future(self.clients.pop(url).close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
        self.org_token = org_token
        for url, up in wanted.items():
            if url not in self.clients:
                self.clients[url] = self._client(up, org_token)
            else:
                self.clients[url].timeout = model.unit.token_timeout_seconds

    def _client(self, upstream: Upstream, org_token: Secret) -> UnitClient:
        settings = self.config.model.unit
        return UnitClient(
            upstream,
            org_token,
            timeout=settings.token_timeout_seconds,
            ssl_context=self.ssl_context,
        )

    def settings_for(self, identity: Identity) -> TokenKindSettings:
        return getattr(self.config.model.tokens, identity.kind)

    def scopes_for(self, identity: Identity, needed: frozenset[str]) -> frozenset[str]:
        """What to mint: the kind's default scopes plus what the request needs."""
        return frozenset(self.settings_for(identity).default_scopes) | needed

    def needs_person(self, identity: Identity, scopes: frozenset[str]) -> bool:
        return bool(scopes & self.two_factor_scopes) and (
            self.settings_for(identity).two_factor == "challenge"
        )

    async def token_for(
        self, identity: Identity, needed: frozenset[str], upstream: Upstream
    ) -> CachedToken:
        """A live token for ``identity`` covering ``needed``: cached, in flight, or new."""
        cached = self.cached(identity, needed, upstream)
        if cached is not None:
            return cached
        self._on_event(events.CacheLookup(identity.kind, hit=False))
        scopes = self.scopes_for(identity, needed)
        # A mint in flight for a wider scope set serves this request too.
        wider = self.flights.find(lambda key: key[0] == identity and needed <= key[1])
        if wider is not None:
            return await asyncio.shield(wider)
        return await self.flights.run(
            (identity, scopes), lambda: self._obtain(identity, scopes, upstream)
        )

    async def _obtain(
        self,
        identity: Identity,
        scopes: frozenset[str],
        upstream: Upstream,
        newer_than: float | None = None,
    ) -> CachedToken:
        """A new token: another replica's, if there is a store (one that expires after
        ``newer_than``, for a refresh), else minted (once across the replicas)."""
        fleet = self.fleet
        if fleet is None:
            return await self._mint(identity, scopes, upstream)
        found = await fleet.fetch(identity, scopes, newer_than)
        if found is not None:
            return found
        return await fleet.mint_once(
            identity, scopes, lambda: self._mint(identity, scopes, upstream), newer_than
        )

    def cached(
        self, identity: Identity, needed: frozenset[str], upstream: Upstream
    ) -> CachedToken | None:
        """The cached token for a request, without waiting; starts a refresh when it is due."""
        cached = self.cache.get(identity, needed)
        if cached is not None:
            self._on_event(events.CacheLookup(identity.kind, hit=True))
            if cached.refresh_at <= self.cache.timer():
                self._refresh_in_background(cached, upstream)
        return cached

    async def evict(self, token: CachedToken) -> None:
        """Unit refused ``token``: dropped here, and (with a store) on every replica before
        this returns, so that a retry does not find it again."""
        self.cache.evict(token)
        if self.fleet is not None:
            await self.fleet.drop(token)

    def _in_background(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _mint(
        self, identity: Identity, scopes: frozenset[str], upstream: Upstream
    ) -> CachedToken:
        client = self.clients[upstream.url]
        settings = self.settings_for(identity)
        strategy = settings.two_factor if scopes & self.two_factor_scopes else "none"
        started = time.perf_counter()
        verification = None
        jwt_token = None
        if strategy == "challenge":
            reopened = await self._live_challenge(identity, scopes)
            if reopened is not None:
                # A person already has a code for this: another one would only spend Unit's
                # limit of 5 verifications in 10 minutes (and send another message).
                self._on_event(events.Challenge(identity.kind, "reissued"))
                raise VerificationRequired(reopened, identity)
        try:
            if strategy in ("sandbox-otp", "challenge"):
                asked = time.monotonic()  # Unit's verification token lives from about now
                verification_token = await self._verify(identity, client)
                if strategy == "challenge":
                    raise await self._challenge(identity, scopes, verification_token, asked)
                verification = (verification_token, SANDBOX_PASSCODE)
            elif strategy == "jwt":
                jwt_token = self._sign_jwt(identity)
            value, lifetime = await client.create_token(
                identity,
                scopes,
                settings.expires_in,
                verification=verification,
                jwt_token=jwt_token,
            )
        except VerificationRequired:
            self._on_event(events.Challenge(identity.kind, "issued"))
            raise
        except TokenError as e:
            # Once per mint, however many requests wait for it; each gets e as its answer.
            logger.warning(
                "unit-gateway: %s token call failed (%s): %s", identity.kind, e.code, e.detail
            )
            seconds = time.perf_counter() - started
            self._on_event(events.Mint(identity.kind, strategy, "error", seconds))
            raise
        seconds = time.perf_counter() - started
        self._on_event(events.Mint(identity.kind, strategy, "ok", seconds))
        token = self.cache.make(identity, scopes_of(value) or scopes, value, lifetime)
        self.cache.put(token)
        return token

    async def _verify(self, identity: Identity, client: UnitClient) -> str:
        wait = await self._verification_wait(identity)
        if wait is not None:
            self._on_event(events.Verification(identity.kind, refused=True))
            retry_after = whole_seconds(wait)
            raise TokenError(
                429,
                "verification_limit",
                f"{identity} reached {self.limiter.limit} verification attempts in "
                f"{int(self.limiter.window // 60)} minutes; retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
        self._on_event(events.Verification(identity.kind))
        return await client.create_verification(identity)

    async def _verification_wait(self, identity: Identity) -> float | None:
        """None: a verification may start; else seconds until one may (fleet-wide when the
        store answers, else this replica's count)."""
        if self.fleet is not None:
            limiter = self.limiter
            shared = await self.fleet.allow_verification(identity, limiter.limit, limiter.window)
            if not isinstance(shared, Unavailable):
                return shared
        return self.limiter.acquire(identity)

    async def _challenge(
        self,
        identity: Identity,
        scopes: frozenset[str],
        verification_token: str,
        created_at: float,
    ) -> VerificationRequired:
        self._expire_challenges()
        challenge_id = CHALLENGE_PREFIX + secrets.token_urlsafe(18)
        challenge = Challenge(identity, scopes, verification_token, created_at)
        if self.fleet is None or not await self.fleet.put_challenge(
            identity, shared_challenge(challenge_id, challenge)
        ):
            self.challenges[challenge_id] = challenge  # this replica's alone
        return VerificationRequired(challenge_id, identity)

    async def open_challenge(self, challenge_id: str, identity: Identity) -> Challenge | None:
        """The challenge a caller completes with a code, if it is live, for this identity and
        has attempts left. It stays open until Unit accepts a code (:meth:`close_challenge`):
        a mistyped code can be sent again (:meth:`reopen_challenge`), ``CHALLENGE_ATTEMPTS``
        codes in all. A shared one is taken out of the store meanwhile: one replica at a
        time completes it."""
        if self.fleet is not None:
            taken = await self.fleet.take_challenge(identity, challenge_id)
            if isinstance(taken, SharedChallenge):
                challenge = local_challenge(identity, taken)
                challenge.attempts += 1
                self._taken[challenge_id] = (challenge, taken)
                return challenge
        self._expire_challenges()
        challenge = self.challenges.get(challenge_id)
        if challenge is None or challenge.identity != identity:
            return None
        challenge.attempts += 1
        if challenge.attempts >= CHALLENGE_ATTEMPTS:
            del self.challenges[challenge_id]  # this one is the last
        return challenge

    def close_challenge(self, challenge_id: str) -> None:
        self.challenges.pop(challenge_id, None)
        self._taken.pop(challenge_id, None)

    def reopen_challenge(self, challenge_id: str) -> None:
        """Unit refused the code sent for a shared challenge: back in the store for another
        try, if it has attempts left."""
        taken = self._taken.pop(challenge_id, None)
        if taken is None or self.fleet is None:
            return
        challenge, shared = taken
        if challenge.attempts < CHALLENGE_ATTEMPTS:
            again = shared_challenge(challenge_id, challenge, expires_at=shared.expires_at)
            self._in_background(self.fleet.put_challenge(challenge.identity, again))

    async def _live_challenge(self, identity: Identity, scopes: frozenset[str]) -> str | None:
        if self.fleet is not None:
            shared = await self.fleet.open_challenges(identity)
            if not isinstance(shared, Unavailable):
                for challenge in shared:
                    if scopes <= challenge.scopes:
                        return challenge.challenge_id
        self._expire_challenges()
        for challenge_id, challenge in self.challenges.items():
            if challenge.identity == identity and scopes <= challenge.scopes:
                return challenge_id
        return None

    def _expire_challenges(self) -> None:
        cutoff = time.monotonic() - CHALLENGE_LIFETIME
        for key in [k for k, c in self.challenges.items() if c.created_at < cutoff]:
            del self.challenges[key]

    def _sign_jwt(self, identity: Identity) -> str:
        if self._jwt_settings is None or self._jwt_key is None:
            raise TokenError(500, "jwt_not_configured", "two_factor: jwt needs tokens.jwt")
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": self._jwt_settings.subject_template.format(customerId=identity.subject),
            "iat": now,
            "exp": now + self._jwt_settings.lifetime_seconds,
        }
        if self._jwt_settings.issuer:
            claims["iss"] = self._jwt_settings.issuer
        return jwt.encode(claims, self._jwt_key.reveal(), algorithm=self._jwt_settings.algorithm)

    def learn(
        self, identity: Identity, value: str, scopes: frozenset[str], expires_in: float | None
    ) -> CachedToken | None:
        """Cache a token a caller created through the gateway, for reuse until it expires."""
        lifetime = usable_lifetime(value, expires_in)
        token = self.cache.make(identity, scopes_of(value) or scopes, value, lifetime, learned=True)
        self.cache.put(token)
        if self.fleet is not None:
            self._in_background(self.fleet.share(token))
        self._on_event(events.Learned(identity.kind))
        return token

    def _refresh_in_background(self, token: CachedToken, upstream: Upstream) -> None:
        key = (token.identity, token.scopes)
        if self.flights.running(key) is not None or self.needs_person(token.identity, token.scopes):
            return

        async def refresh() -> None:
            try:
                await self.flights.run(
                    key,
                    lambda: self._obtain(
                        token.identity, token.scopes, upstream, newer_than=token.expires_at
                    ),
                )
                self._on_event(events.Refresh(token.identity.kind, "ok"))
            except TokenError:
                # (_mint logged why.) The current token stays in use until it expires; the next
                # request tries again.
                logger.warning(
                    "unit-gateway: refreshing a %s token failed; the current one stays in use",
                    token.identity.kind,
                )
                self._on_event(events.Refresh(token.identity.kind, "error"))

        task = asyncio.ensure_future(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self.fleet is not None:
            await self.fleet.close()
        for client in self.clients.values():
            await client.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
