"""What the gateway's replicas share through the store (the ``store:`` section): tokens, mints
in flight, open challenges and verification windows.

The token service asks here after its own cache and before Unit. Whenever the store does not
answer, each call says so and the service goes on with its replica's own state: a request never
waits on a store that is down, and never goes without its token because of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from unit_gateway.metrics import events
from unit_gateway.tokens.cache import CachedToken, TokenCache
from unit_gateway.tokens.store import (
    UNAVAILABLE,
    LeaseStatus,
    SharedChallenge,
    SharedStore,
    Unavailable,
    WaitOutcome,
)

if TYPE_CHECKING:
    from unit_gateway.unit_api.identity import Identity

logger = logging.getLogger(__name__)

#: The one lease per identity: a replica mints for it while the others wait for its token.
MINT_LEASE = "mint"


class Fleet:
    """One replica's view of the shared state, in front of its own :class:`TokenCache`."""

    def __init__(self, store: SharedStore, cache: TokenCache, on_event: events.Report) -> None:
        self.store = store
        self.cache = cache
        self._on_event = on_event

    async def start(self) -> None:
        await self.store.start(on_dropped=self._dropped, on_gap=self._gap)

    async def close(self) -> None:
        await self.store.close()

    # --- tokens ----------------------------------------------------------------------------

    def _wall_expiry(self, token: CachedToken) -> float:
        """When ``token`` really expires, on the wall clock every replica shares (the cache
        keeps it on the monotonic clock, less its margin)."""
        return time.time() + (token.expires_at - self.cache.timer()) + self.cache.margin

    async def fetch(
        self, identity: Identity, needed: frozenset[str], newer_than: float | None = None
    ) -> CachedToken | None:
        """A live shared token of ``identity`` covering ``needed`` (and expiring after
        ``newer_than``, a local expiry, for a refresh), now in the local cache."""
        shared = await self.store.get_tokens(identity)
        if isinstance(shared, Unavailable) or not shared:
            return None
        now = time.time()
        after = now
        if newer_than is not None:
            # The wall-clock expiry the store keeps for the local token (the cache's are
            # monotonic, less the margin), and a second for the clocks' drift: the same
            # token is not newer.
            after = now + newer_than - self.cache.timer() + self.cache.margin + 1.0
        covering = [t for t in shared if needed <= t.scopes and t.expires_at > after]
        if not covering:
            return None
        best = max(covering, key=lambda t: t.expires_at)
        token = self.cache.make(
            identity, best.scopes, best.value, best.expires_at - now, learned=best.learned
        )
        if token.expires_at <= self.cache.timer():
            return None  # inside the margin: as good as expired
        self.cache.put(token)
        self._on_event(events.Fleet(identity.kind, "shared_hit"))
        return token

    async def share(self, token: CachedToken) -> None:
        await self.store.put_token(
            token.identity,
            token.scopes,
            token.value,
            self._wall_expiry(token),
            learned=token.learned,
        )

    async def drop(self, token: CachedToken) -> None:
        """Unit refused ``token``: no replica uses it any more."""
        await self.store.drop_token(token.identity, token.scopes, token.value)

    async def mint_once(
        self,
        identity: Identity,
        needed: frozenset[str],
        mint: Callable[[], Awaitable[CachedToken]],
        newer_than: float | None = None,
    ) -> CachedToken:
        """``mint()`` unless another replica is minting for ``identity``: then its token,
        once it has put it (for a refresh, one that expires after ``newer_than``). A lease
        that expires (its holder died) or a store that stops answering ends the wait, and
        this replica mints."""
        for _ in range(2):
            lease = await self.store.acquire_lease(identity, MINT_LEASE)
            if lease.status is not LeaseStatus.HELD:
                try:
                    if lease.status is LeaseStatus.ACQUIRED:
                        # The last holder may have put its token and let go since we looked.
                        found = await self.fetch(identity, needed, newer_than)
                        if found is not None:
                            return found
                    token = await mint()
                    # Shared even when the lease's answer came too late: the lease may be
                    # ours all the same, and the replicas waiting on it read this token.
                    await self.share(token)
                    return token
                finally:
                    await self.store.release_lease(lease.lease)
            self._on_event(events.Fleet(identity.kind, "mint_wait"))
            waited = await self.store.wait_released(lease.lease, self.store.lease_seconds)
            found = await self.fetch(identity, needed, newer_than)
            if found is not None:
                return found
            if waited is not WaitOutcome.RELEASED:
                break  # the store stopped answering, or the holder outlived its lease
        return await mint()

    def _dropped(self, identity_ref: str, fingerprint: str) -> None:
        store = self.store
        gone = self.cache.evict_where(
            lambda token: (
                store.fingerprint(token.value) == fingerprint
                and store.identity_ref(token.identity) == identity_ref
            )
        )
        if gone:
            self._on_event(events.Fleet("any", "invalidated"))

    def _gap(self) -> None:
        # Drops may have been missed while the store was away: local copies could be tokens
        # another replica saw refused. Each is fetched again (or minted) on its next use.
        dropped = self.cache.evict_where(lambda token: True)
        if dropped:
            logger.info("unit-gateway: store back; %d cached token(s) read from it again", dropped)

    # --- verification windows and challenges ---------------------------------------------

    async def allow_verification(
        self, identity: Identity, limit: int, window: float
    ) -> float | Unavailable | None:
        """None: allowed, fleet-wide; seconds until one is; UNAVAILABLE: ask the replica's
        own limiter."""
        decision = await self.store.allow_verification(identity, limit, window)
        if isinstance(decision, Unavailable):
            return UNAVAILABLE
        return None if decision.allowed else decision.retry_after

    async def put_challenge(self, identity: Identity, challenge: SharedChallenge) -> bool:
        """True when every replica can complete it now."""
        return (await self.store.put_challenge(identity, challenge)) is True

    async def take_challenge(
        self, identity: Identity, challenge_id: str
    ) -> SharedChallenge | Unavailable | None:
        return await self.store.take_challenge(identity, challenge_id)

    async def open_challenges(self, identity: Identity) -> list[SharedChallenge] | Unavailable:
        return await self.store.challenges_of(identity)
