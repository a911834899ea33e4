"""The shared store against a real Redis: a single redis-server and a three-node Redis
Cluster, several SharedStore instances standing in for replicas."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
import redis.asyncio

from unit_gateway.testing import harness
from unit_gateway.testing.redis_server import RedisProcess
from unit_gateway.tokens.redis_link import DOWN_AFTER_TIMEOUTS
from unit_gateway.tokens.store import (
    UNAVAILABLE,
    LeaseStatus,
    SharedChallenge,
    SharedStore,
    WaitOutcome,
    WindowDecision,
)
from unit_gateway.tokens.store_crypto import Keyring
from unit_gateway.unit_api.identity import Identity

if TYPE_CHECKING:
    from redis_fixtures import RedisCluster

# Imported by pytest (not above) so its asserts are rewritten; tests import from it inside.
pytest_plugins = ["redis_fixtures"]

KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
OTHER_KEY = os.urandom(32)
CUSTOMER = Identity("customer", "4207731")
OTHER_CUSTOMER = Identity("customer", "5518820")
CARD = Identity("cardholder", "9930417")
TOKEN = "v2.public.eyJzY29wZSI6ImN1c3RvbWVycyBhY2NvdW50cyJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
CARD_TOKEN = "v2.public.eyJzY29wZSI6ImNhcmRzIn0.Y2FyZGhvbGRlci10b2tlbi1zaWduYXR1cmU"
VERIFICATION_TOKEN = "vt-7c1d0f6e2a9b4c3d8e5f"
CHALLENGE_ID = "unitgw-challenge-Q2hhbGxlbmdlSWRTZWNyZXQ"
SCOPES = frozenset({"customers", "accounts"})
# Concurrency tests on a busy 2-core machine: a deadline that only a stuck Redis misses. The
# deadline itself is tested with its default-sized value.
RELAXED = 3.0


@dataclass
class Backend:
    url: str
    cluster: bool
    nodes: list[RedisProcess]

    def clients(self) -> list[redis.Redis]:
        return [node.client() for node in self.nodes]


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "single":
        server: RedisProcess = request.getfixturevalue("redis_server")
        return Backend(server.url, False, [server])
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return Backend(cluster.url, True, cluster.nodes)


Factory = Callable[..., SharedStore]


@pytest.fixture
async def make_store() -> AsyncIterator[Factory]:
    made: list[SharedStore] = []

    def make(url: str, key: bytes = KEY, **kwargs: Any) -> SharedStore:
        kwargs.setdefault("operation_timeout", RELAXED)
        store = SharedStore(url, key, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def replicas(make: Factory, backend: Backend, n: int = 3, **kwargs: Any) -> list[SharedStore]:
    return [make(backend.url, cluster=backend.cluster, **kwargs) for _ in range(n)]


def challenge(seconds: float = 600.0, attempts: int = 0) -> SharedChallenge:
    now = time.time()
    return SharedChallenge(
        CHALLENGE_ID,
        frozenset({"payments-write"}),
        VERIFICATION_TOKEN,
        now,
        now + seconds,
        attempts,
    )


# ------------------------------------------------------------------------------------------
# Tokens and encryption


async def test_tokens_are_shared_and_nothing_is_in_the_clear(
    backend: Backend, make_store: Factory
) -> None:
    a, b, c = replicas(make_store, backend)
    expires = time.time() + 600
    assert await a.put_token(CUSTOMER, SCOPES, TOKEN, expires) is True
    assert await a.put_token(CARD, frozenset({"cards"}), CARD_TOKEN, expires, learned=True)
    assert await b.put_challenge(CUSTOMER, challenge()) is True
    assert (await c.allow_verification(CUSTOMER, 5, 600)) == WindowDecision(True, 1, 0.0)
    assert (await c.acquire_lease(CUSTOMER, "customers accounts")).status == LeaseStatus.ACQUIRED

    [shared] = await b.get_tokens(CUSTOMER)
    assert (shared.value, shared.scopes, shared.learned) == (TOKEN, SCOPES, False)
    assert abs(shared.expires_at - expires) < 0.01
    [card] = await c.get_tokens(CARD)
    assert (card.value, card.learned) == (CARD_TOKEN, True)
    assert await c.get_tokens(OTHER_CUSTOMER) == []

    # A drop message, as another replica's subscriber would get it.
    raw = redis.asyncio.Redis.from_url(backend.url)
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(a.channel)
    assert await a.drop_token(CARD, frozenset({"cards"}), CARD_TOKEN) is True
    message = None
    for _ in range(50):
        message = await pubsub.get_message(timeout=0.1)
        if message is not None:
            break
    await pubsub.aclose()
    await raw.aclose()
    assert message is not None

    from redis_fixtures import everything_in

    contents = everything_in(backend.clients())
    assert len(contents) >= 5  # token + index, challenge + index, window, lease
    secrets = [
        TOKEN,
        TOKEN.split(".")[2],  # the token's signature part alone
        CARD_TOKEN,
        CARD_TOKEN.split(".")[2],
        VERIFICATION_TOKEN,
        CHALLENGE_ID,
        CHALLENGE_ID.removeprefix("unitgw-challenge-"),
        CUSTOMER.subject,
        CARD.subject,
        "customer",
        "cardholder",
    ]
    blobs = [key for key, _ in contents] + [v for _, values in contents for v in values]
    blobs.append(message["data"])
    for blob in blobs:
        for secret in secrets:
            assert secret is not None
            assert secret.encode() not in blob, f"{secret!r} in Redis: {blob!r}"
    for key, _ in contents:
        assert key.startswith(b"unitgw:{"), key


async def test_a_token_is_dropped_only_while_it_is_the_shared_one(
    redis_server: RedisProcess, make_store: Factory
) -> None:
    store = make_store(redis_server.url)
    await store.put_token(CUSTOMER, SCOPES, TOKEN, time.time() + 600)
    # Unit refused an older token: the newer one another replica put stays.
    assert await store.drop_token(CUSTOMER, SCOPES, "v2.public.older.token") is False
    assert [t.value for t in await store.get_tokens(CUSTOMER)] == [TOKEN]
    assert await store.drop_token(CUSTOMER, SCOPES, TOKEN) is True
    assert await store.get_tokens(CUSTOMER) == []
    # Expiry is Redis's TTL; an already expired token is not stored.
    assert await store.put_token(CUSTOMER, SCOPES, TOKEN, time.time() - 1) is False
    await store.put_token(CUSTOMER, SCOPES, TOKEN, time.time() + 0.3)
    with redis_server.client() as raw:
        ttls = [raw.pttl(key) for key in raw.scan_iter(match=b"*:t:*")]
    assert len(ttls) == 1 and 0 < ttls[0] <= 300
    await asyncio.sleep(0.4)
    assert await store.get_tokens(CUSTOMER) == []


async def test_key_rotation_reads_the_previous_key_and_a_wrong_key_is_a_miss(
    redis_server: RedisProcess, make_store: Factory
) -> None:
    old = make_store(redis_server.url, KEY)
    rotating = make_store(redis_server.url, NEW_KEY, previous_key=KEY)
    rotated = make_store(redis_server.url, NEW_KEY)
    stranger = make_store(redis_server.url, OTHER_KEY)
    await old.put_token(CUSTOMER, SCOPES, TOKEN, time.time() + 600)
    await old.put_challenge(CUSTOMER, challenge())

    assert [t.value for t in await rotating.get_tokens(CUSTOMER)] == [TOKEN]
    assert [c.challenge_id for c in await rotating.challenges_of(CUSTOMER)] == [CHALLENGE_ID]
    assert await rotated.get_tokens(CUSTOMER) == []
    assert await stranger.get_tokens(CUSTOMER) == []
    # Written with the new key, read by whoever has it.
    await rotating.put_token(CARD, frozenset({"cards"}), CARD_TOKEN, time.time() + 600)
    assert [t.value for t in await rotated.get_tokens(CARD)] == [CARD_TOKEN]
    assert await old.get_tokens(CARD) == []
    # A challenge put under the old key is taken through the rotating replica, once.
    taken = await rotating.take_challenge(CUSTOMER, CHALLENGE_ID)
    assert taken is not None and taken.verification_token == VERIFICATION_TOKEN
    assert await old.take_challenge(CUSTOMER, CHALLENGE_ID) is None
    # A drop through the rotating replica reaches the entry under the old key's names.
    assert await rotating.drop_token(CUSTOMER, SCOPES, TOKEN) is True
    assert await old.get_tokens(CUSTOMER) == []


async def test_a_value_that_does_not_decrypt_is_a_miss(
    redis_server: RedisProcess, make_store: Factory
) -> None:
    store = make_store(redis_server.url)
    await store.put_token(CUSTOMER, SCOPES, TOKEN, time.time() + 600)
    await store.put_token(OTHER_CUSTOMER, SCOPES, "v2.public.other", time.time() + 600)
    await store.put_challenge(CUSTOMER, challenge())
    raw = redis_server.client()
    [customer_key] = [
        k
        for k in raw.scan_iter(match=b"*:t:*")
        if raw.get(k).startswith(store._names(CUSTOMER)[0].ring.tag("token", TOKEN, 24).encode())
    ]
    [other_key] = [k for k in raw.scan_iter(match=b"*:t:*") if k != customer_key]
    entry = raw.get(customer_key)
    fingerprint, _, sealed = entry.partition(b":")

    # Tampered: one bit of the ciphertext flipped.
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    raw.set(customer_key, fingerprint + b":" + flipped, keepttl=True)
    assert await store.get_tokens(CUSTOMER) == []
    # Sealed with another key (same key id slot, so only the cipher can tell).
    name = customer_key.decode()
    foreign = Keyring(OTHER_KEY).seal(b'{"v":"x","s":[],"e":9e9,"l":false}', name)
    raw.set(customer_key, fingerprint + b":" + foreign[:1] + sealed[1:5] + foreign[5:])
    assert await store.get_tokens(CUSTOMER) == []
    # Moved: another customer's (valid) entry copied under this customer's name.
    raw.set(customer_key, raw.get(other_key))
    assert await store.get_tokens(CUSTOMER) == []
    # Garbage where a challenge should be.
    [challenge_key] = list(raw.scan_iter(match=b"*:c:*"))
    raw.set(challenge_key, b"not even a sealed value")
    assert await store.take_challenge(CUSTOMER, CHALLENGE_ID) is None
    assert store.counts["undecryptable"] == 4
    assert store.up
    raw.close()


# ------------------------------------------------------------------------------------------
# Mint leases


async def test_one_lease_holder_among_300_acquirers_on_three_replicas(
    backend: Backend, make_store: Factory
) -> None:
    stores = replicas(make_store, backend)
    results = await asyncio.gather(
        *(stores[i % 3].acquire_lease(CUSTOMER, "customers accounts") for i in range(300))
    )
    acquired = [r for r in results if r.status == LeaseStatus.ACQUIRED]
    assert len(acquired) == 1
    assert all(
        r.status == LeaseStatus.HELD and 0 < r.remaining <= 15
        for r in results
        if r is not acquired[0]
    )
    holder = acquired[0]
    waiting = [
        asyncio.ensure_future(stores[i].wait_released(results[i].lease, 10))
        for i in range(3)
        if results[i] is not holder
    ]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiting)
    # Only the holder releases it; another lease of the same name does not.
    other = stores[0].lease_for(CUSTOMER, "customers accounts")
    assert await stores[0].release_lease(other) is False
    # The handle carries the holder id: whichever replica got it releases it.
    assert await stores[1].release_lease(holder.lease) is True
    assert set(await asyncio.gather(*waiting)) == {WaitOutcome.RELEASED}


async def test_lease_holders_follow_one_another(backend: Backend, make_store: Factory) -> None:
    stores = replicas(make_store, backend)
    for store in stores:
        await store.start()
    for store in stores:
        assert await store.wait_subscribed(5)
    active = 0
    most = 0
    held = 0

    async def worker(store: SharedStore) -> None:
        nonlocal active, most, held
        while True:
            result = await store.acquire_lease(CARD, "cards")
            if result.status == LeaseStatus.ACQUIRED:
                active += 1
                most = max(most, active)
                await asyncio.sleep(0.002)
                active -= 1
                held += 1
                assert await store.release_lease(result.lease) is True
                return
            assert result.status == LeaseStatus.HELD
            assert await store.wait_released(result.lease, 10) == WaitOutcome.RELEASED

    started = time.monotonic()
    await asyncio.gather(*(worker(stores[i % 3]) for i in range(30)))
    assert (held, most) == (30, 1)
    # Woken by release messages, not by the poll (30 holds at 0.25 s each would be 7.5 s).
    assert time.monotonic() - started < 6


async def test_a_dead_holder_blocks_others_only_until_its_lease_expires(
    backend: Backend, make_store: Factory
) -> None:
    a, b = replicas(make_store, backend, 2, mint_lease_seconds=0.5)
    first = await a.acquire_lease(CUSTOMER, "customers accounts")
    assert first.status == LeaseStatus.ACQUIRED
    await a.close()  # the holder "dies" mid-mint: no release
    second = await b.acquire_lease(CUSTOMER, "customers accounts")
    assert second.status == LeaseStatus.HELD
    started = time.monotonic()
    assert await b.wait_released(second.lease, 5) == WaitOutcome.RELEASED
    waited = time.monotonic() - started
    assert 0.2 < waited < 2.0, waited
    third = await b.acquire_lease(CUSTOMER, "customers accounts")
    assert third.status == LeaseStatus.ACQUIRED
    # The dead holder's late release does not take the new holder's lease.
    late = make_store(backend.url, cluster=backend.cluster)
    assert await late.release_lease(first.lease) is False
    assert (await late.acquire_lease(CUSTOMER, "customers accounts")).status == LeaseStatus.HELD
    # A wait that runs out says so.
    short = await late.acquire_lease(CUSTOMER, "customers accounts")
    assert await late.wait_released(short.lease, 0.05) == WaitOutcome.TIMEOUT


# ------------------------------------------------------------------------------------------
# Verification windows


async def test_verification_limit_holds_across_the_fleet(
    backend: Backend, make_store: Factory
) -> None:
    stores = replicas(make_store, backend)
    decisions = await asyncio.gather(
        *(stores[i % 3].allow_verification(CUSTOMER, 5, 600) for i in range(30))
    )
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 5
    assert sorted(d.count for d in allowed) == [1, 2, 3, 4, 5]
    assert all(590 < d.retry_after <= 600 for d in decisions if not d.allowed)
    assert (await stores[1].allow_verification(CARD, 5, 600)).allowed  # per identity
    # The window slides.
    assert (await stores[0].allow_verification(OTHER_CUSTOMER, 2, 0.3)).allowed
    assert (await stores[1].allow_verification(OTHER_CUSTOMER, 2, 0.3)).allowed
    refused = await stores[2].allow_verification(OTHER_CUSTOMER, 2, 0.3)
    assert not refused.allowed and 0 < refused.retry_after <= 0.3
    await asyncio.sleep(refused.retry_after + 0.05)
    assert (await stores[2].allow_verification(OTHER_CUSTOMER, 2, 0.3)).allowed


# ------------------------------------------------------------------------------------------
# Challenges


async def test_a_challenge_is_taken_exactly_once(backend: Backend, make_store: Factory) -> None:
    stores = replicas(make_store, backend)
    assert await stores[0].put_challenge(CUSTOMER, challenge()) is True
    [listed] = await stores[2].challenges_of(CUSTOMER)
    assert (listed.challenge_id, listed.scopes) == (CHALLENGE_ID, frozenset({"payments-write"}))
    assert await stores[1].take_challenge(OTHER_CUSTOMER, CHALLENGE_ID) is None  # not theirs

    takes = await asyncio.gather(
        *(stores[i % 3].take_challenge(CUSTOMER, CHALLENGE_ID) for i in range(60))
    )
    taken = [t for t in takes if t is not None]
    assert len(taken) == 1
    assert taken[0].verification_token == VERIFICATION_TOKEN
    assert await stores[0].challenges_of(CUSTOMER) == []
    # Put back after a wrong code, with the attempt counted; taken again once.
    await stores[1].put_challenge(CUSTOMER, challenge(attempts=taken[0].attempts + 1))
    again = await stores[2].take_challenge(CUSTOMER, CHALLENGE_ID)
    assert again is not None and again.attempts == 1
    # Expiry.
    await stores[0].put_challenge(CUSTOMER, challenge(seconds=0.2))
    assert await stores[0].put_challenge(CUSTOMER, challenge(seconds=-1)) is False
    await asyncio.sleep(0.3)
    assert await stores[1].take_challenge(CUSTOMER, CHALLENGE_ID) is None
    assert await stores[1].challenges_of(CUSTOMER) == []


# ------------------------------------------------------------------------------------------
# Invalidation


async def test_a_drop_reaches_the_other_replicas(backend: Backend, make_store: Factory) -> None:
    stores = replicas(make_store, backend)
    heard: list[list[tuple[str, str]]] = [[], [], []]
    arrived = asyncio.Event()

    def listener(i: int) -> Callable[[str, str], None]:
        def on_dropped(ref: str, fingerprint: str) -> None:
            heard[i].append((ref, fingerprint))
            if heard[1] and heard[2]:
                arrived.set()

        return on_dropped

    for i, store in enumerate(stores):
        await store.start(on_dropped=listener(i))
    for store in stores:
        assert await store.wait_subscribed(5)
    await stores[0].put_token(CUSTOMER, SCOPES, TOKEN, time.time() + 600)
    started = time.monotonic()
    assert await stores[0].drop_token(CUSTOMER, SCOPES, TOKEN) is True
    async with asyncio.timeout(5):
        await arrived.wait()
    assert time.monotonic() - started < 1.0
    expected = (stores[1].identity_ref(CUSTOMER), stores[1].fingerprint(TOKEN))
    assert heard[1] == [expected] and heard[2] == [expected]
    assert heard[0] == []  # the replica that dropped it knows
    assert await stores[2].get_tokens(CUSTOMER) == []


# ------------------------------------------------------------------------------------------
# Cluster


async def test_one_identity_lives_in_one_hash_slot(
    redis_cluster: RedisCluster, make_store: Factory
) -> None:
    store = make_store(redis_cluster.url, cluster=True)
    for identity in (CUSTOMER, OTHER_CUSTOMER, CARD):
        await store.put_token(identity, SCOPES, TOKEN, time.time() + 600)
        await store.put_token(identity, frozenset({"cards"}), CARD_TOKEN, time.time() + 600)
        await store.put_challenge(identity, challenge())
        await store.allow_verification(identity, 5, 600)
        await store.acquire_lease(identity, "customers accounts")
    slots: dict[str, set[int]] = {}
    nodes: dict[str, set[int]] = {}
    for i, node in enumerate(redis_cluster.nodes):
        with node.client() as raw:
            for key in raw.scan_iter():
                ref = key.decode().split("{", 1)[1].split("}", 1)[0]
                slots.setdefault(ref, set()).add(raw.cluster("keyslot", key))
                nodes.setdefault(ref, set()).add(i)
    assert len(slots) == 3
    assert all(len(s) == 1 for s in slots.values()), slots
    assert all(len(n) == 1 for n in nodes.values()), nodes
    # Each identity's six keys: two tokens and their index, a challenge and its index, the
    # window, the lease.
    for identity in (CUSTOMER, OTHER_CUSTOMER, CARD):
        assert len(await store.get_tokens(identity)) == 2


# ------------------------------------------------------------------------------------------
# Redis down, slow, back


async def test_redis_down_or_slow_falls_back_at_once_and_sharing_resumes(
    tmp_path: Path, make_store: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    password = "redis-pass-7f3e9"
    server = RedisProcess(tmp_path / "redis", password=password)
    try:
        await _down_and_back(server, make_store, caplog)
    finally:
        server.stop()
    assert password not in caplog.text


async def _down_and_back(
    server: RedisProcess, make_store: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="unit_gateway.tokens.redis_link")
    deadline = 0.1
    states: list[bool] = []
    gaps: list[int] = []
    store = make_store(server.url, operation_timeout=deadline, probe_interval=0.2)
    store.on_state = states.append
    # A gap drops the replica's local copies: never while the store is down, when they are
    # all it has (it would mint on its own).
    await store.start(on_gap=lambda: gaps.append(1) if store.up else gaps.append(0))
    assert await store.wait_subscribed(5)
    assert await store.put_token(CUSTOMER, SCOPES, TOKEN, time.time() + 600) is True

    async def every_call() -> list[Any]:
        lease = store.lease_for(CUSTOMER, "x")
        return [
            await store.get_tokens(CUSTOMER),
            await store.put_token(CUSTOMER, SCOPES, TOKEN, time.time() + 600),
            await store.drop_token(CUSTOMER, SCOPES, TOKEN),
            (await store.acquire_lease(CUSTOMER, "x")).status,
            await store.release_lease(lease),
            await store.wait_released(lease, 1),
            await store.allow_verification(CUSTOMER, 5, 600),
            await store.put_challenge(CUSTOMER, challenge()),
            await store.take_challenge(CUSTOMER, CHALLENGE_ID),
            await store.challenges_of(CUSTOMER),
        ]

    unavailable = [UNAVAILABLE] * 3 + [LeaseStatus.UNAVAILABLE, UNAVAILABLE]
    unavailable += [WaitOutcome.UNAVAILABLE] + [UNAVAILABLE] * 4

    # Slow: Redis stops answering (SIGSTOP). Each call misses its deadline and falls back;
    # after DOWN_AFTER_TIMEOUTS in a row the store is down and the rest do not even try.
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(DOWN_AFTER_TIMEOUTS):
            assert store.up
            started = time.monotonic()
            first = await store.get_tokens(CUSTOMER)
            took = time.monotonic() - started
            assert first is UNAVAILABLE
            assert took < deadline + 0.3, took  # the deadline, and a busy loop's delay
        started = time.monotonic()
        assert await every_call() == unavailable
        assert time.monotonic() - started < 0.2
        assert not store.up and states == [False]
    finally:
        server.proc.send_signal(signal.SIGCONT)
    await _wait_for(lambda: store.up, 5)
    assert states == [False, True]
    assert [t.value for t in await store.get_tokens(CUSTOMER)] == [TOKEN]

    # Down: Redis killed mid-run.
    server.kill()
    started = time.monotonic()
    for _ in range(20):
        results = await every_call()
        assert results == unavailable
    assert time.monotonic() - started < 20 * 10 * deadline
    assert not store.up
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]  # one per outage
    assert "(no answer within the deadline)" in warnings[0].getMessage()
    assert "(ConnectionError)" in warnings[1].getMessage()
    assert store.counts["get_tokens:skipped"] > 10

    # Back: same port, empty (no persistence). Sharing resumes; missed drops are a gap.
    server.start()
    await _wait_for(lambda: store.up, 5)
    await _wait_for(lambda: store.subscribed, 5)
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 2  # one per return
    assert len(gaps) >= 2 and 0 not in gaps, gaps
    errors = sum(n for key, n in store.counts.items() if key.endswith((":error", ":timeout")))
    assert await store.get_tokens(CUSTOMER) == []
    assert await store.put_token(CUSTOMER, SCOPES, TOKEN, time.time() + 600) is True
    assert [t.value for t in await store.get_tokens(CUSTOMER)] == [TOKEN]
    assert (await store.acquire_lease(CUSTOMER, "x")).status is LeaseStatus.ACQUIRED
    assert states == [False, True, False, True]
    # The first calls after its return neither met a connection of the old server nor a
    # script the new one lacked (EVAL is the fallback for a script Redis does not have).
    assert sum(n for key, n in store.counts.items() if key.endswith((":error", ":timeout"))) == (
        errors
    )
    with server.client() as client:
        assert "cmdstat_eval" not in client.info("commandstats"), (
            "a call fell back to EVAL: the scripts were not loaded when the store came back"
        )


async def _wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_redis_absent_at_start_is_unavailable_not_an_error(make_store: Factory) -> None:
    store = make_store(f"redis://127.0.0.1:{harness.free_port()}/0", operation_timeout=0.1)
    await store.start()
    assert await store.get_tokens(CUSTOMER) is UNAVAILABLE
    assert (await store.acquire_lease(CUSTOMER, "x")).status == LeaseStatus.UNAVAILABLE
    # A refused connection takes it down at once; a client that retries until the deadline
    # shows it as timeouts, which take it down after DOWN_AFTER_TIMEOUTS in a row.
    for _ in range(DOWN_AFTER_TIMEOUTS):
        assert await store.get_tokens(CUSTOMER) is UNAVAILABLE
    assert not store.up


# ------------------------------------------------------------------------------------------
# TLS


async def test_rediss_with_a_private_ca(tmp_path: Path, make_store: Factory) -> None:
    from redis_fixtures import make_tls_files

    tls = make_tls_files(tmp_path / "tls")
    server = RedisProcess(tmp_path / "redis", tls=tls)
    try:
        assert server.url.startswith("rediss://")
        store = make_store(server.url, ca_file=str(tls.ca))
        assert await store.put_token(CUSTOMER, SCOPES, TOKEN, time.time() + 600) is True
        other = make_store(server.url, ca_file=str(tls.ca))
        await other.start()
        assert await other.wait_subscribed(5)
        assert [t.value for t in await other.get_tokens(CUSTOMER)] == [TOKEN]
        # The certificate is checked: without the CA, no connection.
        unverified = make_store(server.url, operation_timeout=1.0)
        assert await unverified.get_tokens(CUSTOMER) is UNAVAILABLE
    finally:
        server.stop()


def test_new_key_is_a_valid_store_key() -> None:
    from unit_gateway.config import schema as config
    from unit_gateway.tokens.store import new_key

    assert len(base64.b64decode(new_key())) == 32
    assert config.store_key(config.Secret(new_key(), "test")) != KEY


def test_a_missing_redis_server_fails_and_says_how_to_install_it() -> None:
    from redis_fixtures import redis_binary

    with pytest.raises(pytest.fail.Exception) as failed:
        redis_binary("redis-server-not-here")
    assert str(failed.value).startswith("redis-server-not-here is not installed")
    assert "apt-get install -y redis-server" in str(failed.value)


async def test_a_restarted_cluster_is_mapped_and_given_the_scripts_again(
    redis_cluster: RedisCluster, make_store: Factory
) -> None:
    store = make_store(redis_cluster.url, cluster=True, probe_interval=0.2)
    await store.start()
    assert await store.put_token(CUSTOMER, SCOPES, TOKEN, time.time() + 600) is True
    redis_cluster.crash()
    assert await store.get_tokens(CUSTOMER) is UNAVAILABLE
    await asyncio.to_thread(redis_cluster.restart)
    await _wait_for(lambda: store.up, 15)
    assert await store.get_tokens(CUSTOMER) == []  # no persistence: the cluster came back empty
    assert (await store.acquire_lease(CUSTOMER, "x")).status is LeaseStatus.ACQUIRED
    assert store.counts["acquire_lease:ok"] == 1
    for node in redis_cluster.nodes:
        with node.client() as client:
            assert "cmdstat_eval" not in client.info("commandstats")
