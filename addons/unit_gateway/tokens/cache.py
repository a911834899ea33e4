"""The token cache: customer and cardholder tokens, each kept until shortly before it expires.

An entry is keyed by identity and scope set. A request is served by any live entry of its
identity whose scopes cover what the route needs, so a token minted with wide scopes is reused
for narrower routes instead of minting again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import TLRUCache

from unit_gateway.unit_api import paseto
from unit_gateway.unit_api.identity import Identity

Key = tuple[Identity, frozenset[str]]


@dataclass(frozen=True, slots=True)
class CachedToken:
    identity: Identity
    scopes: frozenset[str]
    #: Monotonic time after which the token must not be used (the safety margin is applied).
    expires_at: float
    #: Monotonic time after which a replacement is minted in the background.
    refresh_at: float
    learned: bool = False
    value: str = field(repr=False, default="")


def usable_lifetime(token: str, expires_in: float | None, *, now: float | None = None) -> float:
    """Seconds the token is good for: the shorter of ``expiresIn`` and its own ``exp`` claim."""
    lifetimes = []
    if expires_in is not None:
        lifetimes.append(float(expires_in))
    claims = paseto.claims_of(token)
    if claims is not None:
        expiry = paseto.expiry_of(claims)
        if expiry is not None:
            lifetimes.append(expiry.timestamp() - (time.time() if now is None else now))
    return min(lifetimes) if lifetimes else 0.0


def scopes_of(token: str) -> frozenset[str] | None:
    """The scopes in a token's own claims, when it has them."""
    claims = paseto.claims_of(token)
    if claims is None or not isinstance(claims.get("scope"), str):
        return None
    return frozenset(claims["scope"].split())


class TokenCache:
    def __init__(
        self,
        maxsize: int,
        *,
        margin: float = 30.0,
        refresh_ahead: float = 300.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.margin = margin
        self.refresh_ahead = refresh_ahead
        self.timer = timer
        self._entries: TLRUCache[Key, CachedToken] = TLRUCache(
            maxsize, ttu=lambda _key, token, _now: token.expires_at, timer=timer
        )
        # Which scope sets each identity has entries for; pruned lazily as entries expire.
        self._scope_sets: dict[Identity, set[frozenset[str]]] = {}

    def make(
        self,
        identity: Identity,
        scopes: frozenset[str],
        value: str,
        lifetime: float,
        *,
        learned: bool = False,
    ) -> CachedToken:
        """A cache entry for a token good for ``lifetime`` seconds from now."""
        now = self.timer()
        expires_at = now + lifetime - self.margin
        # Refresh ahead, but never so early that a short-lived token is replaced at once.
        refresh_at = max(expires_at - self.refresh_ahead, now + (expires_at - now) / 2)
        return CachedToken(identity, scopes, expires_at, refresh_at, learned, value)

    def get(self, identity: Identity, needed: frozenset[str]) -> CachedToken | None:
        """The live entry of ``identity`` covering ``needed`` that lasts longest."""
        scope_sets = self._scope_sets.get(identity)
        if not scope_sets:
            return None
        best: CachedToken | None = None
        for scopes in list(scope_sets):
            if not needed <= scopes:
                continue
            token = self._entries.get((identity, scopes))
            if token is None:
                scope_sets.discard(scopes)
                continue
            if best is None or token.expires_at > best.expires_at:
                best = token
        if not scope_sets:
            del self._scope_sets[identity]
        return best

    def put(self, token: CachedToken) -> None:
        if token.expires_at <= self.timer():
            return
        self._entries[(token.identity, token.scopes)] = token
        self._scope_sets.setdefault(token.identity, set()).add(token.scopes)
        if len(self._scope_sets) > 2 * self._entries.maxsize:
            self._prune_index()

    def evict(self, token: CachedToken) -> None:
        """Drop this token (e.g. after Unit answered 401 to it), if it is still the entry."""
        key = (token.identity, token.scopes)
        if self._entries.get(key) is token:
            del self._entries[key]

    def evict_where(self, drops: Callable[[CachedToken], bool]) -> int:
        """Drop every entry ``drops`` says to; how many."""
        gone = [key for key, token in list(self._entries.items()) if drops(token)]
        for key in gone:
            del self._entries[key]
        return len(gone)

    @property
    def maxsize(self) -> float:
        return self._entries.maxsize

    def resized(self, maxsize: int) -> TokenCache:
        """A cache of another size holding the live entries of this one."""
        other = TokenCache(
            maxsize, margin=self.margin, refresh_ahead=self.refresh_ahead, timer=self.timer
        )
        self._entries.expire()
        for token in list(self._entries.values()):
            other.put(token)
        return other

    def __len__(self) -> int:
        self._entries.expire()
        return len(self._entries)

    def count_by_kind(self) -> dict[str, int]:
        self._entries.expire()
        counts: dict[str, int] = {}
        for identity, _scopes in self._entries:
            counts[identity.kind] = counts.get(identity.kind, 0) + 1
        return counts

    def _prune_index(self) -> None:
        live: dict[Identity, set[frozenset[str]]] = {}
        for identity, scopes in self._entries:
            live.setdefault(identity, set()).add(scopes)
        self._scope_sets = live
