"""State that gateway replicas share through Redis: tokens, challenges, verification windows
and mint leases, named and sealed as :mod:`.store_crypto` describes.

Every call has a deadline and never raises for Redis's sake: when Redis fails, calls return
:data:`UNAVAILABLE` (at once until a probe finds it back) and the replica uses its own state.

On a miss, :meth:`~SharedStore.acquire_lease`: ACQUIRED, mint, ``put_token``, ``release_lease``;
HELD, ``wait_released`` then ``get_tokens`` again; UNAVAILABLE, mint locally.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from unit_gateway.config.schema import LoadedConfig, StoreSettings, store_key
from unit_gateway.tokens.redis_link import UNAVAILABLE, RedisLink, Unavailable
from unit_gateway.tokens.store_crypto import Keyring, Names, unseal
from unit_gateway.tokens.store_types import (
    Lease,
    LeaseResult,
    LeaseStatus,
    SharedChallenge,
    SharedToken,
    WaitOutcome,
    WindowDecision,
)
from unit_gateway.unit_api.identity import Identity

logger = logging.getLogger(__name__)


#: A lease waiter looks again this often: the lease may expire without a release message.
LEASE_POLL_SECONDS = 0.25


class SharedStore:
    """One replica's shared store; ``await start()`` to hear the fleet, ``close()`` at the end."""

    def __init__(
        self,
        url: str,
        key: bytes,
        *,
        previous_key: bytes | None = None,
        cluster: bool = False,
        ca_file: str | None = None,
        operation_timeout: float = 0.1,
        probe_interval: float = 1.0,
        key_prefix: str = "unitgw:",
        mint_lease_seconds: float = 15.0,
    ) -> None:
        self._tls = {"ssl_ca_certs": ca_file} if ca_file else {}
        self._ring = Keyring(key)
        #: Read with, never written with (key rotation).
        self._old_ring = Keyring(previous_key) if previous_key else None
        self._rings = {r.kid: r for r in (self._ring, self._old_ring) if r is not None}
        self.prefix = key_prefix
        self.lease_seconds = mint_lease_seconds
        self.channel = key_prefix + "events"
        #: Tells this replica's own messages apart on the shared channel.
        self.origin = secrets.token_hex(8)
        self._link = RedisLink(
            url,
            self.channel,
            cluster=cluster,
            tls=self._tls,
            operation_timeout=operation_timeout,
            probe_interval=probe_interval,
        )
        self.timeout = operation_timeout
        self._run = self._link.run
        self._eval = self._link.eval
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._on_dropped: Callable[[str, str], None] | None = None
        #: ``op:outcome`` counts, plus undecryptable, lease_waits, invalidations_sent/_received.
        self.counts: Counter[str] = self._link.counts

    @classmethod
    def from_config(cls, config: LoadedConfig) -> SharedStore | None:
        """The store a configuration describes, or None without a ``store`` section."""
        settings: StoreSettings | None = config.model.store
        if settings is None:
            return None
        previous = config.secrets.get("store.previous_key")
        ca_file = settings.ca_file
        if ca_file is not None and config.path is not None:
            ca_file = str(config.path.resolve().parent / Path(ca_file).expanduser())
        return cls(
            config.secrets["store.url"].reveal(),
            store_key(config.secrets["store.key"]),
            previous_key=store_key(previous) if previous is not None else None,
            cluster=settings.cluster,
            ca_file=ca_file,
            operation_timeout=settings.operation_timeout_seconds,
            probe_interval=settings.probe_interval_seconds,
            key_prefix=settings.key_prefix,
            mint_lease_seconds=settings.mint_lease_seconds,
        )

    # --- Life cycle and state

    @property
    def up(self) -> bool:
        """Whether the replica shares through Redis now."""
        return self._link.up

    @property
    def subscribed(self) -> bool:
        """Whether other replicas' messages reach this one now."""
        return self._link.subscribed

    @property
    def on_operation(self) -> Callable[[str, str, float], None] | None:
        """Called with (operation, outcome, seconds) after every call."""
        return self._link.on_operation

    @on_operation.setter
    def on_operation(self, callback: Callable[[str, str, float], None] | None) -> None:
        self._link.on_operation = callback

    @property
    def on_state(self) -> Callable[[bool], None] | None:
        """Called with True/False when the store comes back / goes down."""
        return self._link.on_state

    @on_state.setter
    def on_state(self, callback: Callable[[bool], None] | None) -> None:
        self._link.on_state = callback

    async def start(
        self,
        *,
        on_dropped: Callable[[str, str], None] | None = None,
        on_gap: Callable[[], None] | None = None,
    ) -> None:
        """Listen to the fleet. ``on_dropped(identity_ref, fingerprint)``: another replica
        dropped that token; ``on_gap()``: messages may have been missed, copies may be stale."""
        self._on_dropped = on_dropped
        await self._link.start(self._dispatch, on_gap)

    async def wait_subscribed(self, seconds: float) -> bool:
        """Whether the subscription is up, waiting at most ``seconds`` for it."""
        return await self._link.wait_subscribed(seconds)

    async def close(self) -> None:
        await self._link.close()

    # --- Encryption

    def _names(self, identity: Identity) -> list[Names]:
        """The identity's names under the key, then the previous key."""
        rings = [self._ring] if self._old_ring is None else [self._ring, self._old_ring]
        return [Names(self.prefix, ring, identity) for ring in rings]

    def _open(self, blob: bytes, name: str) -> Any | None:
        """The JSON sealed in ``blob`` under ``name``, or None (wrong key, tampered, moved)."""
        plain = unseal(self._rings, blob, name)
        if plain is not None:
            with contextlib.suppress(ValueError):
                return orjson.loads(plain)
        self.counts["undecryptable"] += 1
        return None

    def identity_ref(self, identity: Identity) -> str:
        """The keyed hash that names ``identity`` in Redis and in drop messages."""
        return self._ring.ref(identity)

    def fingerprint(self, value: str) -> str:
        """A token's keyed fingerprint, as drop messages carry it."""
        return self._ring.tag("token", value, 24)

    # --- Tokens

    async def put_token(
        self,
        identity: Identity,
        scopes: frozenset[str],
        value: str,
        expires_at: float,
        *,
        learned: bool = False,
    ) -> bool | Unavailable:
        """Share a token until ``expires_at`` (wall clock, caller's margin); False if expired."""
        ttl_ms = int((expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return False
        names = self._names(identity)[0]
        member = names.token_member(scopes)
        key = names.token_prefix + member
        plain = orjson.dumps({"v": value, "s": sorted(scopes), "e": expires_at, "l": learned})
        entry = self.fingerprint(value).encode() + b":" + names.ring.seal(plain, key)
        result = await self._run(
            "put_token",
            lambda: self._eval("put_indexed", [key, names.token_index], [entry, ttl_ms, member]),
        )
        return result if isinstance(result, Unavailable) else True

    async def get_tokens(self, identity: Identity) -> list[SharedToken] | Unavailable:
        """Every live shared token of ``identity`` that decrypts; the caller picks by scope."""
        found: list[SharedToken] = []
        now = time.time()
        for names in self._names(identity):
            rows = await self._run(
                "get_tokens",
                lambda n=names: self._eval("list_indexed", [n.token_index], [n.token_prefix]),
            )
            if isinstance(rows, Unavailable):
                return UNAVAILABLE
            for member, entry in zip(rows[::2], rows[1::2], strict=True):
                _fp, _, sealed = entry.partition(b":")
                data = self._open(sealed, names.token_prefix + member.decode())
                if not isinstance(data, dict):
                    continue
                try:
                    token = SharedToken(
                        frozenset(data["s"]), float(data["e"]), bool(data["l"]), str(data["v"])
                    )
                except (KeyError, TypeError, ValueError):
                    continue
                if token.expires_at > now:
                    found.append(token)
            if found:
                break  # the previous key's names matter only when the current have nothing
        return found

    async def drop_token(
        self, identity: Identity, scopes: frozenset[str], value: str
    ) -> bool | Unavailable:
        """Drop this token unless a newer one replaced it, and tell every replica to drop its
        copy. True: it was the shared one."""
        dropped = False
        all_names = self._names(identity)
        message = orjson.dumps(
            {
                "o": self.origin,
                "t": "d",
                "k": [[n.ref, n.ring.tag("token", value, 24)] for n in all_names],
            }
        )
        # Previous names first: the message is published with the last (current) drop.
        for names in reversed(all_names):
            member = names.token_member(scopes)
            last = names is all_names[0]
            fingerprint = names.ring.tag("token", value, 24).encode() + b":"
            result = await self._run(
                "drop_token",
                lambda n=names, m=member, f=fingerprint, publish=last: self._eval(
                    "drop_token",
                    [n.token_prefix + m, n.token_index],
                    [f, m, self.channel if publish else "", message if publish else ""],
                ),
            )
            if isinstance(result, Unavailable):
                return UNAVAILABLE
            dropped = dropped or bool(result)
        self.counts["invalidations_sent"] += 1
        return dropped

    # --- Mint leases

    def lease_for(self, identity: Identity, what: str) -> Lease:
        """The lease on minting ``what`` for ``identity``, with a fresh holder id."""
        return Lease(self._names(identity)[0].lease(what), secrets.token_hex(12))

    async def acquire_lease(self, identity: Identity, what: str) -> LeaseResult:
        """Try to become the replica that mints ``what`` for ``identity``."""
        lease = self.lease_for(identity, what)
        ttl_ms = max(1, int(self.lease_seconds * 1000))
        result = await self._run(
            "acquire_lease", lambda: self._eval("acquire", [lease.name], [lease.holder, ttl_ms])
        )
        if isinstance(result, Unavailable):
            return LeaseResult(LeaseStatus.UNAVAILABLE, lease)
        if result == -1:
            return LeaseResult(LeaseStatus.ACQUIRED, lease)
        return LeaseResult(LeaseStatus.HELD, lease, max(0, int(result)) / 1000)

    async def release_lease(self, lease: Lease) -> bool | Unavailable:
        """Release the lease if this holder still has it, waking its waiters; safe if not held."""
        message = orjson.dumps({"o": self.origin, "t": "r", "n": lease.name})
        result = await self._run(
            "release_lease",
            lambda: self._eval("release", [lease.name], [lease.holder, self.channel, message]),
        )
        return result if isinstance(result, Unavailable) else bool(result)

    async def wait_released(self, lease: Lease, seconds: float) -> WaitOutcome:
        """Wait, at most ``seconds``, until the lease is released or expires."""
        deadline = time.monotonic() + seconds
        self.counts["lease_waits"] += 1
        while True:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(lease.name, set()).add(waiter)
            try:
                # Registered before looking, so a release in between still wakes us.
                left_ms = await self._run("lease_ttl", lambda: self._link.client.pttl(lease.name))
                if isinstance(left_ms, Unavailable):
                    return WaitOutcome.UNAVAILABLE
                if left_ms == -2:
                    return WaitOutcome.RELEASED
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return WaitOutcome.TIMEOUT
                pause = min(remaining, LEASE_POLL_SECONDS, max(left_ms, 1) / 1000)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await waiter
            finally:
                waiting = self._waiters.get(lease.name)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._waiters[lease.name]

    # --- Verification windows

    async def allow_verification(
        self, identity: Identity, limit: int, window: float
    ) -> WindowDecision | Unavailable:
        """Count one verification if fewer than ``limit`` in ``window`` seconds, fleet-wide;
        otherwise say when one will be allowed."""
        key = self._names(identity)[0].window
        window_ms = max(1, int(window * 1000))
        member = secrets.token_hex(8)
        result = await self._run(
            "allow_verification",
            lambda: self._eval("window", [key], [limit, window_ms, member]),
        )
        if isinstance(result, Unavailable):
            return UNAVAILABLE
        allowed, count, wait_ms = (int(x) for x in result)
        return WindowDecision(bool(allowed), count, max(0, wait_ms) / 1000)

    # --- Challenges

    async def put_challenge(
        self, identity: Identity, challenge: SharedChallenge
    ) -> bool | Unavailable:
        """Share (or put back after a wrong code) an open challenge; False if expired."""
        ttl_ms = int((challenge.expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return False
        names = self._names(identity)[0]
        member = names.challenge_member(challenge.challenge_id)
        key = names.challenge_prefix + member
        plain = orjson.dumps(
            {
                "i": challenge.challenge_id,
                "s": sorted(challenge.scopes),
                "v": challenge.verification_token,
                "c": challenge.created_at,
                "x": challenge.expires_at,
                "a": challenge.attempts,
            }
        )
        sealed = names.ring.seal(plain, key)
        result = await self._run(
            "put_challenge",
            lambda: self._eval(
                "put_indexed", [key, names.challenge_index], [sealed, ttl_ms, member]
            ),
        )
        return result if isinstance(result, Unavailable) else True

    async def take_challenge(
        self, identity: Identity, challenge_id: str
    ) -> SharedChallenge | Unavailable | None:
        """Take the challenge out, atomically fleet-wide. None: unknown, expired, taken, or
        not this identity's."""
        for names in self._names(identity):
            member = names.challenge_member(challenge_id)
            key = names.challenge_prefix + member
            sealed = await self._run(
                "take_challenge",
                lambda n=names, m=member, k=key: self._eval(
                    "take_indexed", [k, n.challenge_index], [m]
                ),
            )
            if isinstance(sealed, Unavailable):
                return UNAVAILABLE
            if sealed is not None:
                challenge = _challenge_of(self._open(sealed, key))
                if challenge is not None and challenge.challenge_id == challenge_id:
                    return challenge
                return None
        return None

    async def challenges_of(self, identity: Identity) -> list[SharedChallenge] | Unavailable:
        """The identity's open challenges."""
        found: list[SharedChallenge] = []
        now = time.time()
        for names in self._names(identity):
            rows = await self._run(
                "challenges_of",
                lambda n=names: self._eval(
                    "list_indexed", [n.challenge_index], [n.challenge_prefix]
                ),
            )
            if isinstance(rows, Unavailable):
                return UNAVAILABLE
            for member, sealed in zip(rows[::2], rows[1::2], strict=True):
                challenge = _challenge_of(
                    self._open(sealed, names.challenge_prefix + member.decode())
                )
                if challenge is not None and challenge.expires_at > now:
                    found.append(challenge)
        return found

    # --- Messages from the fleet

    def _dispatch(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            kind = message["t"]
        except (ValueError, KeyError, TypeError):
            return
        if kind == "r":
            for waiter in self._waiters.get(str(message.get("n")), ()):
                if not waiter.done():
                    waiter.set_result(None)
        elif kind == "d" and message.get("o") != self.origin:
            self.counts["invalidations_received"] += 1
            if self._on_dropped is None:
                return
            for pair in message.get("k") or ():
                try:
                    self._on_dropped(str(pair[0]), str(pair[1]))
                except Exception:
                    logger.exception("unit-gateway: shared store drop callback failed")


def _challenge_of(data: Any) -> SharedChallenge | None:
    if not isinstance(data, dict):
        return None
    try:
        return SharedChallenge(
            challenge_id=str(data["i"]),
            scopes=frozenset(data["s"]),
            verification_token=str(data["v"]),
            created_at=float(data["c"]),
            expires_at=float(data["x"]),
            attempts=int(data["a"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def new_key() -> str:
    """A fresh store key in the form ``store.key`` takes."""
    return base64.b64encode(os.urandom(32)).decode()
