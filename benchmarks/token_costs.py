"""What token handling costs: the hot path, a cold mint, a stampede, memory per cached token.

    uv run python benchmarks/token_costs.py

- hot path: the token addon's ``requestheaders`` on a request whose token is cached, in
  microseconds (mitmproxy's own test context, no network), minus the cost of resetting the
  placeholder header between calls;
- cold mint: ``TokenService.token_for`` against the local sandbox with an empty cache;
- stampede: 500 concurrent ``token_for`` calls for one cold identity, counting the sandbox's
  token creations and verifications (plain and two-factor scopes);
- memory: bytes per cached token, from tracemalloc over 10,000 entries;
- shared-store hit: a token another replica put in a real ``redis-server`` on loopback, fetched
  by this one (a local miss that the fleet answers: one Redis read and a decryption), in
  microseconds; skipped where ``redis-server`` is not installed.

Writes ``benchmarks/results/token_costs.json`` and ``.md``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from mitmproxy.test import taddons, tflow

from report import heading, write
from report import machine as report_machine
from unit_gateway.config.core import GatewayCore
from unit_gateway.metrics import events
from unit_gateway.metrics.registry import GatewayMetrics
from unit_gateway.redaction.addon import FlowRedaction
from unit_gateway.testing import harness
from unit_gateway.testing.redis_server import RedisNotInstalled, RedisProcess
from unit_gateway.tokens.addon import TokenInjector
from unit_gateway.tokens.cache import TokenCache
from unit_gateway.tokens.fleet import Fleet
from unit_gateway.tokens.store import SharedStore
from unit_gateway.unit_api.identity import Identity

CUSTOMER = Identity("customer", "10001")


async def hot_path(
    core: GatewayCore, injector: TokenInjector, upstream_url: str
) -> dict[str, float]:
    assert injector.service is not None
    upstream = core.config.model.unit.upstreams[0]  # type: ignore[union-attr]
    await injector.service.token_for(CUSTOMER, frozenset({"cards"}), upstream)  # now cached
    flow = tflow.tflow()
    flow.request.scheme, flow.request.host, flow.request.port = "http", upstream.host, upstream.port
    flow.request.path = "/cards/30001"
    placeholder = f"Bearer {CUSTOMER.placeholder}"
    rounds, per_round = 7, 5000

    def reset() -> None:
        flow.request.headers["Authorization"] = placeholder

    samples, baseline = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round):
            reset()
        baseline.append((time.perf_counter() - started) / per_round)
        started = time.perf_counter()
        for _ in range(per_round):
            reset()
            waiting = injector.requestheaders(flow)
            if waiting is not None:
                await waiting
        samples.append((time.perf_counter() - started) / per_round)
        injector._flows.clear()
    # The flow keeps the placeholder; the real token waits in the redaction side table.
    assert flow.request.headers["Authorization"] == placeholder
    authorization = injector.redaction.upstream_authorization(flow)
    assert authorization is not None and authorization.startswith("Bearer v2.public.")
    return {
        "requestheaders_us_median": round(
            (statistics.median(samples) - statistics.median(baseline)) * 1e6, 2
        ),
        "requestheaders_us_best": round((min(samples) - min(baseline)) * 1e6, 2),
    }


async def cold_mints(
    injector: TokenInjector, core: GatewayCore, count: int = 20
) -> dict[str, float]:
    assert injector.service is not None
    upstream = core.config.model.unit.upstreams[0]  # type: ignore[union-attr]
    timings = []
    for _ in range(count):
        injector.service.cache = TokenCache(100)
        started = time.perf_counter()
        await injector.service.token_for(CUSTOMER, frozenset({"accounts"}), upstream)
        timings.append(time.perf_counter() - started)
    timings.sort()
    return {
        "cold_mint_ms_median": round(statistics.median(timings) * 1000, 2),
        "cold_mint_ms_max": round(timings[-1] * 1000, 2),
    }


async def stampede(
    injector: TokenInjector, core: GatewayCore, sandbox: harness.Sandbox, scope: str
) -> dict[str, int]:
    assert injector.service is not None
    upstream = core.config.model.unit.upstreams[0]  # type: ignore[union-attr]
    injector.service.cache = TokenCache(100)
    before = sandbox.stats()
    identity = Identity("customer", "10003")
    tokens = await asyncio.gather(
        *(injector.service.token_for(identity, frozenset({scope}), upstream) for _ in range(500))
    )
    after = sandbox.stats()
    return {
        "requests": len(tokens),
        "distinct_tokens": len({t.value for t in tokens}),
        "tokens_created": after["tokens_created"]["customer"]
        - before["tokens_created"]["customer"],
        "verifications_created": after["verifications_created"]["customer"]
        - before["verifications_created"]["customer"],
    }


def memory_per_token(entries: int = 10_000) -> float:
    sample = "v2.public." + "x" * 330 + "signature" * 10  # a Unit token is ~430 characters
    tracemalloc.start()
    cache = TokenCache(entries * 2)
    before = tracemalloc.take_snapshot()
    for i in range(entries):
        identity = Identity("customer", str(100000 + i))
        value = sample[:-6] + f"{i:06d}"
        cache.put(cache.make(identity, frozenset({"customers", "accounts", "cards"}), value, 3600))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return round(grown / entries, 1)


async def measure(run_dir: Path) -> dict[str, Any]:
    sandbox = harness.start_sandbox(run_dir, extra_args=["--rate-limit", "0"])
    config = harness.write_gateway_config(
        run_dir / "gateway.yaml",
        upstream_url=sandbox.url,
        overrides={"tokens": {"customer": {"two_factor": "sandbox-otp"}}},
    )
    os.environ["UNIT_ORG_TOKEN"] = sandbox.org_token
    core = GatewayCore()
    metrics = GatewayMetrics()
    injector = TokenInjector(core, metrics, FlowRedaction(core, metrics))
    try:
        with taddons.context(core, injector) as tctx:
            tctx.configure(core, unit_gateway_config=str(config))
            await injector.running()
            results: dict[str, Any] = {}
            results.update(await hot_path(core, injector, sandbox.url))
            results.update(await cold_mints(injector, core))
            results["stampede_plain"] = await stampede(injector, core, sandbox, "cards")
            results["stampede_two_factor"] = await stampede(
                injector, core, sandbox, "cards-sensitive"
            )
            await injector.done()
    finally:
        sandbox.process.stop()
    results["memory_bytes_per_cached_token"] = memory_per_token()
    try:
        results.update(await store_hit(run_dir))
    except RedisNotInstalled as missing:
        print(f"shared-store hit skipped: {missing}", file=sys.stderr)
    return results


async def store_hit(run_dir: Path, calls: int = 2000) -> dict[str, float]:
    server = RedisProcess(run_dir / "redis")
    key = os.urandom(32)
    putting = SharedStore(server.url, key)
    fetching = SharedStore(server.url, key)
    cache = TokenCache(1000)
    fleet = Fleet(fetching, cache, events.ignore)
    try:
        await putting.start()
        await fleet.start()
        await putting.put_token(
            CUSTOMER, frozenset({"cards"}), "v2.public." + "x" * 120, time.time() + 3600
        )
        samples = []
        for _ in range(calls):
            cache.evict_where(lambda token: True)  # a local miss each time
            started = time.perf_counter()
            found = await fleet.fetch(CUSTOMER, frozenset({"cards"}))
            samples.append(time.perf_counter() - started)
            assert found is not None
        samples.sort()
        return {
            "store_hit_us_median": round(statistics.median(samples) * 1e6, 1),
            "store_hit_us_p99": round(samples[int(len(samples) * 0.99)] * 1e6, 1),
        }
    finally:
        await fleet.close()
        await putting.close()
        server.stop()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="unit-gateway-bench-") as tmp:
        results = asyncio.run(measure(Path(tmp)))
    report = {
        "benchmark": "token_costs",
        "command": "uv run python benchmarks/token_costs.py",
        **report_machine(),
        "results": results,
    }
    lines = [
        "# Token handling costs",
        "",
        heading(report),
        "",
        "| measure | value |",
        "|---|---|",
    ]
    for key, value in results.items():
        lines.append(f"| {key} | {value} |")
    write("token_costs", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
