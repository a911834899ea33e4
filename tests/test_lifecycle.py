"""The probes' answers and the in-flight count a drain waits for, without a proxy."""

from __future__ import annotations

import asyncio
import json

from mitmproxy.test import tflow

from unit_gateway.config.health import STALLED_AFTER_SECONDS, Health, probe_answer
from unit_gateway.lifecycle import InFlight


def _answer(health: Health, path: str) -> tuple[str, bytes]:
    found = probe_answer(health, path)
    assert found is not None
    return found


def test_readyz_is_ready_only_once_started_and_until_draining() -> None:
    health = Health()
    assert _answer(health, "/readyz")[0].startswith("503")
    health.mark_ready()
    status, body = _answer(health, "/readyz")
    assert status == "200 OK"
    assert json.loads(body)["ready"] is True
    health.draining = True
    status, body = _answer(health, "/readyz")
    assert status.startswith("503")
    assert json.loads(body)["draining"] is True


def test_healthz_fails_when_the_loop_stops_beating() -> None:
    health = Health()
    assert probe_answer(health, "/healthz") == ("200 OK", b'{"alive": true}')
    health.beat_at -= STALLED_AFTER_SECONDS + 1
    status, body = _answer(health, "/healthz")
    assert status.startswith("503")
    assert json.loads(body) == {"alive": False, "problem": "event loop stalled"}
    assert probe_answer(health, "/metrics") is None


def test_waiting_for_ready_ends_when_ready_or_after_the_bound() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        health = Health()
        late = await health.wait_ready(0.05)
        waiter = asyncio.ensure_future(health.wait_ready(5))
        await asyncio.sleep(0.01)
        health.mark_ready()
        return late, await waiter, await health.wait_ready(0)

    assert asyncio.run(scenario()) == (False, True, True)


def test_in_flight_counts_until_response_or_error() -> None:
    async def scenario() -> tuple[int, bool, bool]:
        in_flight = InFlight()
        answered, failed = tflow.tflow(), tflow.tflow()
        in_flight.requestheaders(answered)
        in_flight.requestheaders(failed)
        counted = len(in_flight)
        in_flight.response(answered)
        timed_out = await in_flight.wait_empty(0.01)
        waiter = asyncio.ensure_future(in_flight.wait_empty(5))
        await asyncio.sleep(0.01)
        in_flight.error(failed)
        return counted, timed_out, await waiter

    assert asyncio.run(scenario()) == (2, False, True)
