"""Getting customer and cardholder tokens from Unit: minting, two-factor, single-flight.

The gateway's own calls go straight to the upstream with the org token, never through the
proxy, through an async client with Unit's documented 5 s timeout. At most one mint per
identity and scope set is in flight; every other request for it awaits that one.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from mitmproxy import http

from unit_gateway.config.schema import LoadedConfig, Secret, TokenKindSettings, Upstream
from unit_gateway.metrics import events
from unit_gateway.net import jsonapi
from unit_gateway.net.limits import SlidingWindow, retry_after_seconds, whole_seconds
from unit_gateway.net.loops import own_socket
from unit_gateway.tokens.cache import CachedToken, TokenCache, scopes_of, usable_lifetime
from unit_gateway.tokens.fleet import Fleet
from unit_gateway.tokens.store import SharedChallenge, Unavailable
from unit_gateway.unit_api.identity import Identity

logger = logging.getLogger(__name__)

SANDBOX_PASSCODE = "000001"
CLOSE_TIMEOUT = 2.0
#: How long after the redirect-loop guard closed a token call's connection a failure to
#: connect is put down to the loop.
LOOP_NAMED_SECONDS = 10.0
_HOP_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    }
)
VERIFICATION_LIMIT = 5
VERIFICATION_WINDOW = 600.0
CHALLENGE_LIFETIME = 600.0
#: Codes a challenge takes before it is closed: a challenge that stays open after a wrong
#: code must not allow more guesses than one code per verification (5 in 10 minutes) would.
CHALLENGE_ATTEMPTS = 5


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


class SingleFlight:
    """One task per key; later callers await the running one. A caller that goes away does
    not cancel the work others wait for."""

    def __init__(self) -> None:
        self._tasks: dict[Any, asyncio.Task[Any]] = {}

    def running(self, key: Any) -> asyncio.Task[Any] | None:
        return self._tasks.get(key)

    def find(self, matches: Callable[[Any], bool]) -> asyncio.Task[Any] | None:
        """A running task whose key ``matches``."""
        return next((task for key, task in self._tasks.items() if matches(key)), None)

    async def run(self, key: Any, work: Callable[[], Awaitable[Any]]) -> Any:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._tasks[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: Any, task: asyncio.Task[Any]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved: nobody may be left awaiting it

    def __len__(self) -> int:
        return len(self._tasks)


@dataclass
class Challenge:
    identity: Identity
    scopes: frozenset[str]
    verification_token: str = field(repr=False)
    created_at: float
    #: Codes callers sent for it so far (see ``CHALLENGE_ATTEMPTS``).
    attempts: int = 0


_TOKEN_PATHS = {
    "customer": ("/customers/{}/token", "customerToken", "customerTokenVerification"),
    "cardholder": ("/cards/{}/cardholder/token", "cardholderToken", "cardholderTokenVerification"),
}


class UnitClient:
    """The gateway's own connection to one Unit upstream: token and verification calls
    with the org token, and the one retry of a request whose injected token Unit refused."""

    def __init__(
        self,
        upstream: Upstream,
        org_token: Secret,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.upstream = upstream
        self.org_token = org_token
        #: Of the token and verification calls (``unit.token_timeout_seconds``).
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        #: time.monotonic() when the redirect-loop guard last closed one of its connections
        self.looped_at: float | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(
                    ssl=self.ssl_context or True,
                    limit=64,
                    socket_factory=functools.partial(own_socket, on_loop=self._looped),
                ),
                trust_env=False,  # never through a proxy: certainly not through ourselves
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            # Closing can wait on connections the upstream already dropped: bound it.
            try:
                await asyncio.wait_for(self._session.close(), CLOSE_TIMEOUT)
            except TimeoutError:
                logger.warning(
                    "unit-gateway: closing the connection to %s timed out", self.upstream.url
                )

    async def create_token(
        self,
        identity: Identity,
        scopes: frozenset[str],
        expires_in: int,
        *,
        verification: tuple[str, str] | None = None,
        jwt_token: str | None = None,
    ) -> tuple[str, float]:
        """Create a token; returns it with its usable lifetime in seconds."""
        path, data_type, _ = _TOKEN_PATHS[identity.kind]
        attributes: dict[str, Any] = {"scope": " ".join(sorted(scopes)), "expiresIn": expires_in}
        if verification is not None:
            attributes["verificationToken"], attributes["verificationCode"] = verification
        if jwt_token is not None:
            attributes["jwtToken"] = jwt_token
        step = f"creating a {identity.kind} token for {identity}"
        document = await self._post(path.format(identity.subject), data_type, attributes, step)
        try:
            token = document["data"]["attributes"]["token"]
            lifetime = usable_lifetime(token, document["data"]["attributes"].get("expiresIn"))
        except (KeyError, TypeError):
            raise TokenError(
                502, "token_response_invalid", f"{step}: Unit's answer had no token"
            ) from None
        return token, lifetime

    async def create_verification(self, identity: Identity, channel: str = "sms") -> str:
        path, _, data_type = _TOKEN_PATHS[identity.kind]
        step = f"starting two-factor verification for {identity}"
        document = await self._post(
            path.format(identity.subject) + "/verification", data_type, {"channel": channel}, step
        )
        try:
            return str(document["data"]["attributes"]["verificationToken"])
        except (KeyError, TypeError):
            raise TokenError(
                502, "token_response_invalid", f"{step}: Unit's answer had no verificationToken"
            ) from None

    async def forward(self, request: http.Request, deadline_seconds: float) -> http.Response:
        """Send a caller's request (with its new token) straight to this upstream, with
        ``deadline_seconds`` for Unit's answer."""
        headers = [
            (k, v) for k, v in request.headers.items(multi=True) if k.lower() not in _HOP_HEADERS
        ]
        try:
            async with self.session.request(
                request.method,
                self.upstream.url + request.path,
                headers=headers,
                data=request.raw_content or None,
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=deadline_seconds),
            ) as upstream_response:
                content = await upstream_response.read()
                status = upstream_response.status
                raw_headers = [
                    (k, v)
                    for k, v in upstream_response.raw_headers
                    if k.decode("latin-1").lower() not in _HOP_HEADERS
                ]
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self._connection_error(
                e,
                "retrying with a new token",
                deadline_seconds,
                "upstream",
                unreachable=502,
            ) from None
        response = http.Response.make(status, b"", raw_headers)
        # Keep the bytes exactly as Unit sent them, compressed or not.
        response.raw_content = content
        response.headers["Content-Length"] = str(len(content))
        return response

    def _connection_error(
        self, error: Exception, step: str, timeout: float, code: str, *, unreachable: int
    ) -> TokenError:
        """The caller's error when Unit cannot be reached or does not answer in time."""
        if isinstance(error, TimeoutError):
            return TokenError(
                504, f"{code}_timeout", f"{step}: Unit did not answer in {timeout:g} s"
            )
        detail = f"{step}: cannot reach {self.upstream.url}: {type(error).__name__}"
        if self.looped_at is not None and time.monotonic() - self.looped_at < LOOP_NAMED_SECONDS:
            detail += (
                " (a redirect rule sent the gateway's own connection back to the gateway; "
                "see its log)"
            )
        return TokenError(unreachable, f"{code}_unreachable", detail)

    def _looped(self) -> None:
        self.looped_at = time.monotonic()

    async def _post(
        self, path: str, data_type: str, attributes: dict[str, Any], step: str
    ) -> dict[str, Any]:
        body = json.dumps({"data": {"type": data_type, "attributes": attributes}})
        headers = {
            "Authorization": f"Bearer {self.org_token.reveal()}",
            "Content-Type": jsonapi.MEDIA_TYPE,
            "Accept": jsonapi.MEDIA_TYPE,
        }
        try:
            async with self.session.post(
                self.upstream.url + path,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                content = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self._connection_error(
                e, step, self.timeout, "token_endpoint", unreachable=503
            ) from None
        if status in (200, 201):
            try:
                return json.loads(content)
            except ValueError:
                raise TokenError(
                    502, "token_response_invalid", f"{step}: Unit's answer is not JSON"
                ) from None
        raise _upstream_refusal(step, status, content, attributes, retry_after)


#: What a token call sends that is a secret: Unit's error text must not hand it back.
_SECRET_ATTRIBUTES = ("verificationToken", "verificationCode", "jwtToken")


def _upstream_refusal(
    step: str, status: int, content: bytes, sent: dict[str, Any], retry_after: str | None = None
) -> TokenError:
    """Unit refused a token call: its error titles and details, for the caller, without any
    secret the call sent (should Unit quote one). A 429 keeps Unit's ``Retry-After``."""
    errors = jsonapi.errors_of(content) or []
    reason = (
        "; ".join(str(e.get("detail") or e.get("title")) for e in errors if isinstance(e, dict))
        or f"HTTP {status}"
    )
    for name in _SECRET_ATTRIBUTES:
        value = sent.get(name)
        if isinstance(value, str) and value:
            reason = reason.replace(value, f"[redacted:{name}]")
    if status == 429:
        wait = retry_after_seconds(retry_after) if retry_after else None
        return TokenError(
            429,
            "token_endpoint_rate_limited",
            f"{step}: Unit answered 429: {reason}",
            headers={"Retry-After": str(whole_seconds(wait))} if wait is not None else None,
        )
    if status >= 500:
        return TokenError(
            503 if status == 503 else 502,
            "token_endpoint_failed",
            f"{step}: Unit answered {status}: {reason}",
        )
    return TokenError(502, "token_refused", f"{step}: Unit answered {status}: {reason}")


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
            identity, _shared_challenge(challenge_id, challenge)
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
                challenge = _local_challenge(identity, taken)
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
            again = _shared_challenge(challenge_id, challenge, expires_at=shared.expires_at)
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


def _shared_challenge(
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


def _local_challenge(identity: Identity, shared: SharedChallenge) -> Challenge:
    created = time.monotonic() - (time.time() - shared.created_at)
    return Challenge(identity, shared.scopes, shared.verification_token, created, shared.attempts)
