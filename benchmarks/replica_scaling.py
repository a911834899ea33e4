"""Requests per second through one gateway, and through two replicas sharing one Redis, on the
same request mix and total concurrency, beside bare mitmdump (one and two processes) in the
same run. The ratio two/one says what a second replica buys on this machine, where the load
generator and the local Unit sandbox take their share of the same cores.

    uv run python benchmarks/replica_scaling.py [--seconds 10] [--repeats 3] [--quick]

Writes benchmarks/results/replica_scaling.json|.md (not with --quick)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadgen import run_load
from proxy_overhead import CUSTOMER, CUSTOMER_SCOPES, PROXY_ARGS, customer_token, request_mix
from report import heading, machine, write
from unit_gateway.testing import harness
from unit_gateway.testing.redis_server import RedisProcess

CONCURRENCY = 32


async def rate(
    sandbox: harness.Sandbox, proxies: list[Any], credential: str, seconds: float
) -> float:
    """Requests per second, the concurrency dealt evenly over ``proxies``, all at once."""
    calls = request_mix(sandbox)
    results = await asyncio.gather(
        *(
            run_load(
                "scaling",
                sandbox.url,
                calls,
                token=credential,
                concurrency=CONCURRENCY // len(proxies),
                seconds=seconds,
                proxy=proxy.proxy_url,
                ca_files=[proxy.ca_path],
            )
            for proxy in proxies
        )
    )
    if any(result.errors for result in results):
        raise RuntimeError(f"errors under load: {[r.errors for r in results]}")
    return sum(result.requests_per_second for result in results)


async def measure(seconds: float, repeats: int, run_dir: Path) -> dict[str, Any]:
    sandbox = harness.start_sandbox(run_dir, tls=True, extra_args=["--rate-limit", "0"])
    assert sandbox.cert_path is not None
    redis = RedisProcess(run_dir / "redis")
    store = harness.store_overrides(run_dir, redis.url)
    upstream_ca = ("--set", f"ssl_verify_upstream_trusted_ca={sandbox.cert_path}")
    bares = [
        harness.start_bare_mitmdump(
            run_dir, extra_args=[*PROXY_ARGS, *upstream_ca], name=f"bare-{n}"
        )
        for n in range(2)
    ]
    config = harness.write_gateway_config(
        run_dir / "gateway.yaml",
        upstream_url=sandbox.url,
        overrides={
            "tokens": {"customer": {"default_scopes": list(CUSTOMER_SCOPES)}},
            **store,
        },
    )
    gateways = [
        harness.start_gateway(
            run_dir,
            config,
            org_token=sandbox.org_token,
            extra_args=PROXY_ARGS,
            upstream_ca=sandbox.cert_path,
            name=f"gateway-{n}",
        )
        for n in range(2)
    ]
    token, placeholder = customer_token(sandbox), f"unitgw:customer:{CUSTOMER}"
    runs: dict[str, list[float]] = {
        "bare mitmdump, 1": [],
        "bare mitmdump, 2": [],
        "gateway, 1 replica": [],
        "gateway, 2 replicas": [],
    }
    try:
        for _ in range(repeats):  # interleaved, so drift on the machine hits each alike
            runs["bare mitmdump, 1"].append(await rate(sandbox, bares[:1], token, seconds))
            runs["bare mitmdump, 2"].append(await rate(sandbox, bares, token, seconds))
            runs["gateway, 1 replica"].append(
                await rate(sandbox, gateways[:1], placeholder, seconds)
            )
            runs["gateway, 2 replicas"].append(await rate(sandbox, gateways, placeholder, seconds))
    finally:
        for proxy in (*gateways, *bares):
            proxy.process.stop()
        sandbox.process.stop()
        redis.stop()
    medians = {label: round(statistics.median(rates), 1) for label, rates in runs.items()}
    return {
        "seconds": seconds,
        "repeats": repeats,
        "concurrency": CONCURRENCY,
        "requests_per_second": medians,
        "runs": runs,
        "two_over_one": {
            "bare mitmdump": round(medians["bare mitmdump, 2"] / medians["bare mitmdump, 1"], 2),
            "gateway": round(medians["gateway, 2 replicas"] / medians["gateway, 1 replica"], 2),
        },
    }


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# One replica or two",
        "",
        heading(report),
        "",
        f"Total concurrency {report['concurrency']}, dealt evenly over the processes; "
        f"{report['repeats']} interleaved runs of {report['seconds']:g} s each, medians. The "
        "two gateways share one Redis (`store:`); the load generator and the local sandbox run "
        "on the same machine.",
        "",
        "| | requests/s |",
        "|---|---|",
    ]
    for label, value in report["requests_per_second"].items():
        lines.append(f"| {label} | {value} |")
    lines += [
        "",
        "| two processes over one | ratio |",
        "|---|---|",
    ]
    for label, value in report["two_over_one"].items():
        lines.append(f"| {label} | {value} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per target")
    parser.add_argument("--quick", action="store_true", help="short run; results not written")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats = 2.0, 1
    with tempfile.TemporaryDirectory(prefix="unit-gateway-bench-") as tmp:
        report = {**machine(), **asyncio.run(measure(args.seconds, args.repeats, Path(tmp)))}
    report["command"] = "uv run python benchmarks/replica_scaling.py"
    write("replica_scaling", report, render_markdown(report), keep=not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
