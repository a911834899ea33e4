"""Three real gateway processes sharing one real Redis (the ``store:`` section): a token is
minted once for the fleet, a token Unit refused on one replica is dropped on all, a challenge
started through one replica is completed through another, Unit's verification limit holds
fleet-wide, and a Redis that goes away fails no request."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3

from conftest import GatewayFactory, Planted, proxied_session
from redis_fixtures import RedisCluster
from test_tokens_e2e import (
    CUSTOMER,
    OTHER_CUSTOMER,
    challenge_of,
    complete_challenge,
    created,
    customer_two_factor,
    get,
)
from unit_gateway.testing import harness
from unit_gateway.testing.redis_server import RedisProcess, redis_binary

pytest_plugins = ["redis_fixtures"]

REPLICAS = 3


@pytest.fixture(autouse=True)
def issued_tokens_planted(planted: Planted, sandbox: harness.Sandbox) -> Iterator[None]:
    """Every token the replicas minted is planted before the leak scan reads the outputs."""
    yield
    planted.add_issued(sandbox.url)


@pytest.fixture
def redis_server(run_dir: Path) -> Iterator[RedisProcess]:
    """Redis with persistence on, and a ``MONITOR`` client beside it: the files it writes and
    every command it is sent stay in ``run_dir``, where the leak scan reads them. Nor may
    they name the customer (keys hold a keyed hash of the identity)."""
    server = RedisProcess(run_dir / "redis", "--appendonly", "yes", "--appendfsync", "always")
    monitored = run_dir / "redis-monitor.txt"
    with monitored.open("wb") as out:
        monitor = subprocess.Popen(
            [redis_binary("redis-cli"), "-p", str(server.port), "monitor"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            yield server
            if server.proc is not None and server.proc.poll() is None:
                with server.client() as client:
                    client.save()  # the RDB file as well as the AOF
        finally:
            monitor.terminate()
            monitor.wait(10)
            server.stop()
    commands = [line.partition(b"] ")[2] for line in monitored.read_bytes().splitlines()]
    assert len(commands) > 10, "MONITOR saw the replicas' commands"
    written = [p for p in (run_dir / "redis").rglob("*") if p.is_file() and p.name != "redis.log"]
    assert written, "Redis wrote its append-only file"
    for name, data in [("MONITOR", b"\n".join(commands))] + [
        (p.name, p.read_bytes()) for p in written
    ]:
        # as a whole word: timestamps and hex digests hold its digits by chance
        assert not re.search(rb"(?<![0-9A-Za-z])%s(?![0-9A-Za-z])" % CUSTOMER.encode(), data), (
            f"the customer id is in Redis's {name}"
        )


@pytest.fixture
def store(run_dir: Path, redis_server: RedisProcess) -> dict[str, Any]:
    return harness.store_overrides(run_dir, redis_server.url)


def _fleet(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    store: dict[str, Any],
    **overrides: Any,
) -> list[harness.Gateway]:
    return [
        gateway_factory(sandbox, overrides={**store, **overrides}, name=f"replica-{n}")
        for n in range(REPLICAS)
    ]


def _spread(gateways: list[harness.Gateway], url: str, token: str, count: int) -> list[int]:
    """``count`` concurrent requests, dealt over the replicas in turn."""
    return asyncio.run(harness.spread_requests([g.proxy_url for g in gateways], url, token, count))


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_300_cold_requests_over_three_replicas_mint_once(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    run_dir: Path,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    if backend == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        store = harness.store_overrides(run_dir, cluster.url)
        store["store"]["cluster"] = True
    else:
        store = request.getfixturevalue("store")
    gateways = _fleet(gateway_factory, sandbox, store)
    statuses = _spread(gateways, sandbox.url + "/cards", f"unitgw:customer:{CUSTOMER}", 300)
    assert statuses == [200] * 300
    counters = [
        line
        for gateway in gateways
        for line in gateway.metrics_text().splitlines()
        if line.startswith(("unit_gateway_store_operations_total", "unit_gateway_fleet_events"))
    ]
    assert created(sandbox)[0] == 1, "\n".join(counters)
    for gateway in gateways:  # each replica says it is sharing
        assert 'unit_gateway_store_up{store="redis"} 1.0' in gateway.metrics_text()


def test_a_token_refused_on_one_replica_is_dropped_on_all(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, store: dict[str, Any]
) -> None:
    gateways = _fleet(gateway_factory, sandbox, store)
    sessions = [proxied_session(g) for g in gateways]
    placeholder = f"unitgw:customer:{CUSTOMER}"
    for session in sessions:  # every replica caches the one token
        assert get(session, sandbox, "/cards", placeholder).status_code == 200
    assert created(sandbox)[0] == 1
    # Unit's clock moves past the token's expiry: Unit answers 401 to it.
    sandbox.admin("POST", "/__sandbox/clock", {"advance_seconds": 7200})
    # replica 0 sees Unit refuse it, mints another and tells the others
    assert get(sessions[0], sandbox, "/cards", placeholder).status_code == 200
    assert created(sandbox)[0] == 2
    deadline = time.monotonic() + 5
    while 'outcome="invalidated"' not in gateways[2].metrics_text():
        assert time.monotonic() < deadline, "replica 2 never heard of the drop"
        time.sleep(0.05)
    for session in sessions[1:]:  # they use the new one: no 401 round, no third mint
        assert get(session, sandbox, "/cards", placeholder).status_code == 200
    stats = sandbox.stats()
    assert stats["tokens_created"]["customer"] == 2
    assert stats["responses"]["401"] == 1
    assert stats["requests"]["GET /cards"] == REPLICAS + 2 + (REPLICAS - 1)


def test_a_challenge_started_on_one_replica_is_completed_on_another(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, store: dict[str, Any]
) -> None:
    gateways = _fleet(gateway_factory, sandbox, store, **customer_two_factor("challenge"))
    first, second, third = (proxied_session(g) for g in gateways)
    placeholder = f"unitgw:customer:{CUSTOMER}"
    pan = "/cards/30001/secure-data/pan"
    challenge = challenge_of(get(first, sandbox, pan, placeholder))
    # asked again on another replica: the same challenge, no second code sent
    assert challenge_of(get(second, sandbox, pan, placeholder)) == challenge
    assert created(sandbox)[2] == 1

    def complete(session: requests.Session, code: str) -> requests.Response:
        return complete_challenge(session, sandbox, challenge, code)

    mistyped = complete(second, "000002")  # a wrong code: the challenge stays open
    assert mistyped.json()["errors"][0]["code"] != "unknown_challenge"
    answer = complete(third, "000001")
    assert answer.status_code in (200, 201), answer.text
    assert answer.json()["data"]["attributes"]["token"] == placeholder
    # used up: no replica knows it any more
    assert complete(first, "000001").json()["errors"][0]["code"] == "unknown_challenge"
    assert created(sandbox)[2] == 1


def test_the_verification_limit_holds_across_replicas(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, store: dict[str, Any]
) -> None:
    gateways = _fleet(gateway_factory, sandbox, store, **customer_two_factor("sandbox-otp"))
    sessions = [proxied_session(g) for g in gateways]
    placeholder = f"unitgw:customer:{CUSTOMER}"
    # Unit refuses every user token: each request verifies and mints, is refused, and
    # verifies and mints once more for its one retry (two verifications a request).
    sandbox.faults(reject_user_tokens=True)
    answers = [
        get(session, sandbox, "/cards/30001/secure-data/pan", placeholder) for session in sessions
    ]
    sandbox.faults(reject_user_tokens=False)
    assert [a.status_code for a in answers] == [401, 401, 429]
    assert answers[2].json()["errors"][0]["code"] == "verification_limit"
    assert created(sandbox)[2] == 5, "Unit never saw the sixth, whichever replica asked"


def test_a_redis_that_goes_away_under_load_fails_no_request_and_sharing_resumes(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    store: dict[str, Any],
    redis_server: RedisProcess,
) -> None:
    gateways = _fleet(gateway_factory, sandbox, store)
    proxies = [g.proxy_url for g in gateways]
    placeholder = f"unitgw:customer:{CUSTOMER}"
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:  # waves of requests over the replicas until told to stop
        while not stop.is_set():
            statuses.extend(
                await harness.spread_requests(proxies, sandbox.url + "/cards", placeholder, 15)
            )

    async def scenario() -> None:
        loader = asyncio.create_task(load())
        await asyncio.sleep(0.5)
        redis_server.kill()
        await asyncio.sleep(2)
        await asyncio.to_thread(redis_server.start)
        await asyncio.to_thread(_all_store_up, gateways)
        await asyncio.sleep(0.5)
        stop.set()
        await loader

    asyncio.run(scenario())
    assert len(statuses) > 60
    assert Counter(statuses) == {200: len(statuses)}, "no request failed because of Redis"
    for gateway in gateways:
        gateway.process.wait_for(r"the shared store \(Redis\) is unavailable", timeout=5)
    before = created(sandbox)[0]
    # Sharing is back: a customer no replica has seen is minted once for the fleet.
    other = f"unitgw:customer:{OTHER_CUSTOMER}"
    assert _spread(gateways, sandbox.url + "/cards", other, 90) == [200] * 90
    assert created(sandbox)[0] == before + 1


def _all_store_up(gateways: list[harness.Gateway], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for gateway in gateways:
        while 'unit_gateway_store_up{store="redis"} 1.0' not in gateway.metrics_text():
            assert time.monotonic() < deadline, "a replica never found Redis back"
            time.sleep(0.1)


def test_tokens_are_refreshed_ahead_of_expiry_once_for_the_fleet(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, store: dict[str, Any]
) -> None:
    # Tokens of 6 s (a 1 s margin): due for a refresh 2.5 s after they were minted.
    short = {"tokens": {"expiry_margin_seconds": 1, "customer": {"expires_in": 6}}}
    gateways = _fleet(gateway_factory, sandbox, store, **short)
    sessions = [proxied_session(g) for g in gateways]
    placeholder = f"unitgw:customer:{CUSTOMER}"
    for session in sessions:
        assert get(session, sandbox, "/cards", placeholder).status_code == 200
    assert created(sandbox)[0] == 1
    time.sleep(3)
    for session in sessions:  # each finds the token due; one new token for all of them
        assert get(session, sandbox, "/cards", placeholder).status_code == 200
    deadline = time.monotonic() + 5
    while created(sandbox)[0] < 2:
        assert time.monotonic() < deadline, "the token was never refreshed"
        time.sleep(0.05)
    time.sleep(0.5)  # the other replicas' refreshes found the new token: no third mint
    for session in sessions:
        assert get(session, sandbox, "/cards", placeholder).status_code == 200
    stats = sandbox.stats()
    assert stats["tokens_created"]["customer"] == 2
    assert stats["responses"].get("401", 0) == 0


def test_a_replica_killed_mid_mint_blocks_the_others_only_until_its_lease_expires(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, store: dict[str, Any]
) -> None:
    lease = 4.0
    timing = {"unit": {"token_timeout_seconds": lease / 2}}
    store = {"store": {**store["store"], "mint_lease_seconds": lease}}
    first = gateway_factory(
        sandbox, overrides={**store, **timing}, name="replica-0", exit_statuses=(-9,)
    )
    others = [
        gateway_factory(sandbox, overrides={**store, **timing}, name=f"replica-{n}") for n in (1, 2)
    ]
    placeholder = f"unitgw:customer:{CUSTOMER}"
    sandbox.faults(latency_ms=1500)  # every answer of Unit's, the token's too, takes 1.5 s

    def through_first() -> None:
        with contextlib.suppress(requests.RequestException):  # its gateway dies under it
            get(proxied_session(first), sandbox, "/cards", placeholder)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(through_first)
        deadline = time.monotonic() + 10
        while sandbox.stats()["requests"].get("POST /customers/{customerId}/token", 0) == 0:
            assert time.monotonic() < deadline, "replica 0 never asked Unit for the token"
            time.sleep(0.02)
        killed_at = time.monotonic()
        assert first.process.proc is not None
        first.process.proc.kill()  # holding the fleet's mint lease, its mint in flight

        async def spread_and_count() -> list[int]:
            answers = asyncio.ensure_future(
                harness.spread_requests(
                    [g.proxy_url for g in others], sandbox.url + "/cards", placeholder, 20
                )
            )
            await asyncio.sleep(lease / 2 + 0.5)  # the dead replica's mint has ended at Unit
            nonlocal orphaned
            orphaned = created(sandbox)[0]
            return await answers

        orphaned = 0
        statuses = asyncio.run(spread_and_count())
    assert statuses == [200] * 20
    assert time.monotonic() - killed_at < lease + 10
    assert orphaned <= 1
    assert created(sandbox)[0] == orphaned + 1, "one replica minted once the lease expired"
    waits = [
        line
        for gateway in others
        for line in gateway.metrics_text().splitlines()
        if line.startswith("unit_gateway_fleet_events_total") and 'outcome="mint_wait"' in line
    ]
    assert waits and any(not line.endswith(" 0.0") for line in waits), waits


def test_a_rolling_restart_under_load_fails_no_request(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, store: dict[str, Any]
) -> None:
    """Each replica in turn gets SIGTERM and is started again while requests keep coming, as
    a balancer sends them: to the replicas it has, the next one when a connection is refused
    (nothing was sent). Every request gets its answer."""
    fleet = _fleet(gateway_factory, sandbox, store, lifecycle={"drain_seconds": 10})
    placeholders = [f"unitgw:customer:{CUSTOMER}", "unitgw:org"]
    sandbox.faults(latency_ms=1000)  # requests are in flight when SIGTERM comes
    in_rotation = list(fleet)
    statuses: list[int] = []
    drained: list[int] = []  # requests in flight on each replica when it got SIGTERM
    stop = False

    def balanced(index: int) -> int:
        for attempt in range(20):
            gateway = in_rotation[(index + attempt) % len(in_rotation)]
            with proxied_session(gateway) as session:
                try:
                    answer = get(session, sandbox, "/cards", placeholders[index % 2])
                except requests.ConnectionError as error:
                    if not _refused(error):
                        raise  # sent, and then lost: what draining must prevent
                    time.sleep(0.01)  # refused: nothing was sent; the next replica
                    continue
            return answer.status_code
        raise AssertionError("no replica accepted the connection")

    def load(worker: int) -> None:
        index = worker
        while not stop:
            statuses.append(balanced(index))
            index += 8

    def restart_each() -> None:
        nonlocal stop
        try:
            for n, old in enumerate(list(fleet)):
                time.sleep(1)
                assert old.process.proc is not None
                old.process.proc.send_signal(signal.SIGTERM)
                in_rotation.remove(old)  # the balancer's check sees /readyz fail
                assert old.process.proc.wait(timeout=30) == 0
                drained.append(
                    int(old.process.wait_for(r"draining: no new connections, (\d+)").group(1))
                )
                new = gateway_factory(
                    sandbox,
                    overrides={**store, "lifecycle": {"drain_seconds": 10}},
                    name=f"replica-{n}-again",
                )
                in_rotation.append(new)  # at once: before /readyz says so
        finally:
            stop = True

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        workers = [pool.submit(load, worker) for worker in range(8)]
        pool.submit(restart_each).result()
        for worker in workers:
            worker.result()
    assert len(statuses) > 50
    assert set(statuses) == {200}, Counter(statuses)
    assert len(drained) == REPLICAS and all(drained), drained


def _refused(error: BaseException) -> bool:
    """The connection to the proxy was refused (a replica that stopped listening)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError | urllib3.exceptions.NewConnectionError):
            return True
        seen = (
            seen.__cause__
            or seen.__context__
            or next(
                (arg for arg in getattr(seen, "args", ()) if isinstance(arg, BaseException)), None
            )
        )
    return False
