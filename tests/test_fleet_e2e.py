"""Three real gateway processes sharing one real Redis (the ``store:`` section): a token is
minted once for the fleet, a token Unit refused on one replica is dropped on all, a challenge
started through one replica is completed through another, Unit's verification limit holds
fleet-wide, and a Redis that goes away fails no request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from conftest import GatewayFactory, Planted, proxied_session
from test_tokens_e2e import (
    CUSTOMER,
    challenge_of,
    complete_challenge,
    created,
    customer_two_factor,
    get,
)
from unit_gateway.testing import harness

if TYPE_CHECKING:
    from redis_fixtures import RedisCluster
    from unit_gateway.testing.redis_server import RedisProcess

pytest_plugins = ["redis_fixtures"]

REPLICAS = 3


@pytest.fixture(autouse=True)
def issued_tokens_planted(planted: Planted, sandbox: harness.Sandbox) -> Iterator[None]:
    """Every token the replicas minted is planted before the leak scan reads the outputs."""
    yield
    planted.add_issued(sandbox.url)


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


def test_a_redis_that_goes_away_fails_no_request(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    store: dict[str, Any],
    redis_server: RedisProcess,
) -> None:
    gateways = _fleet(gateway_factory, sandbox, store)
    redis_server.kill()
    statuses = _spread(gateways, sandbox.url + "/cards", f"unitgw:customer:{CUSTOMER}", 60)
    assert statuses == [200] * 60
    assert 1 <= created(sandbox)[0] <= REPLICAS, "each replica minted on its own, once"
    for gateway in gateways:
        text = gateway.metrics_text()
        assert 'unit_gateway_store_up{store="redis"} 0.0' in text
        gateway.process.wait_for(r"the shared store \(Redis\) is unavailable", timeout=5)


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
