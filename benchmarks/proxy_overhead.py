"""Throughput and latency of the gateway against bare mitmdump and a direct connection.

    uv run python benchmarks/proxy_overhead.py            # full run, writes results/
    uv run python benchmarks/proxy_overhead.py --quick    # short smoke run, writes nothing

One run drives the same request mix (TLS on both sides, keep-alive) directly at the local
sandbox, through bare mitmdump, and through the gateway, at concurrency 1 and 32, and records
req/s, p50/p99 latency and the gateway/bare ratio in ``benchmarks/results/proxy_overhead.*``.
Every process runs on loopback and stops when the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from loadgen import Call, LoadResult, median_result, run_load
from report import write
from unit_gateway.testing import harness

CONCURRENCIES = (1, 32)
CUSTOMER_SCOPES = ("customers", "accounts", "cards")
# Output per flow costs mitmdump CPU: every proxy runs with the same quiet setting.
PROXY_ARGS = ("--set", "flow_detail=0")


CUSTOMER = "10001"


def request_mix(sandbox: harness.Sandbox) -> list[Call]:
    """A customer's reads of its card, its accounts and itself, as a service's traffic mostly is."""
    cards = sandbox_get(sandbox, f"/cards?filter[customerId]={CUSTOMER}")["data"]
    card_id = cards[0]["id"]
    return [
        Call("GET", f"/cards/{card_id}"),
        Call("GET", f"/cards/{card_id}"),
        Call("GET", "/accounts?page[limit]=10"),
        Call("GET", f"/customers/{CUSTOMER}"),
    ]


def customer_token(sandbox: harness.Sandbox) -> str:
    """A real customer token, for the runs that do not go through the gateway."""
    body = {
        "data": {
            "type": "customerToken",
            "attributes": {"scope": " ".join(CUSTOMER_SCOPES), "expiresIn": 86400},
        }
    }
    return sandbox_get(sandbox, f"/customers/{CUSTOMER}/token", body)["data"]["attributes"]["token"]


def sandbox_get(sandbox: harness.Sandbox, path: str, body: dict[str, Any] | None = None) -> Any:
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(sandbox.cert_path))
    request = urllib.request.Request(
        sandbox.url + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Authorization": f"Bearer {sandbox.org_token}",
            "Content-Type": "application/vnd.api+json",
        },
    )
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(request, timeout=10) as response:
        return json.loads(response.read())


async def measure(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    sandbox = harness.start_sandbox(run_dir, tls=True, extra_args=["--rate-limit", "0"])
    assert sandbox.cert_path is not None
    upstream_ca = ("--set", f"ssl_verify_upstream_trusted_ca={sandbox.cert_path}")
    bare = harness.start_bare_mitmdump(run_dir, extra_args=[*PROXY_ARGS, *upstream_ca])
    config = harness.write_gateway_config(
        run_dir / "gateway.yaml",
        upstream_url=sandbox.url,
        overrides={"tokens": {"customer": {"default_scopes": list(CUSTOMER_SCOPES)}}},
    )
    gateway = harness.start_gateway(
        run_dir,
        config,
        org_token=sandbox.org_token,
        extra_args=PROXY_ARGS,
        upstream_ca=sandbox.cert_path,
    )
    try:
        calls = request_mix(sandbox)
        token = customer_token(sandbox)
        # The same customer's traffic everywhere: a real token without the gateway, the
        # placeholder through it (the gateway mints once, then serves from its cache).
        targets = {
            "direct": (None, [sandbox.cert_path], token),
            "bare mitmdump": (bare.proxy_url, [bare.ca_path], token),
            "gateway": (gateway.proxy_url, [gateway.ca_path], f"unitgw:customer:{CUSTOMER}"),
        }
        runs: list[LoadResult] = []
        for concurrency in CONCURRENCIES:
            for _ in range(args.repeats):
                # Interleave targets so drift on the machine hits each of them alike.
                for label, (proxy, cas, credential) in targets.items():
                    runs.append(
                        await run_load(
                            label,
                            sandbox.url,
                            calls,
                            token=credential,
                            concurrency=concurrency,
                            seconds=args.seconds,
                            proxy=proxy,
                            ca_files=cas,
                        )
                    )
    finally:
        for process in (gateway.process, bare.process, sandbox.process):
            process.stop()
    return summarize(runs, args)


def summarize(runs: list[LoadResult], args: argparse.Namespace) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for concurrency in CONCURRENCIES:
        row: dict[str, Any] = {}
        for label in ("direct", "bare mitmdump", "gateway"):
            chosen = median_result(
                [r for r in runs if r.label == label and r.concurrency == concurrency]
            )
            row[label] = chosen.as_dict()
        bare, gateway = row["bare mitmdump"], row["gateway"]
        row["gateway/bare ratio"] = round(
            gateway["requests_per_second"] / bare["requests_per_second"], 3
        )
        row["gateway added p50 ms"] = round(gateway["p50_ms"] - bare["p50_ms"], 3)
        table[f"concurrency {concurrency}"] = row
    return {
        "benchmark": "proxy_overhead",
        "command": "uv run python benchmarks/proxy_overhead.py",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "mitmproxy": version("mitmproxy"),
            "unit-gateway": version("unit-gateway"),
        },
        "settings": {
            "seconds_per_run": args.seconds,
            "repeats": args.repeats,
            "tls": "both sides, keep-alive",
            "proxy_args": " ".join(PROXY_ARGS),
            "mix": "one customer: GET /cards/{id} x2, GET /accounts, GET /customers/{id}",
            "credentials": "direct and bare: a real customer token; gateway: the placeholder",
        },
        "results": table,
        "all_runs": [r.as_dict() for r in runs],
    }


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Proxy overhead: direct vs bare mitmdump vs unit-gateway",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; machine: {report['machine']}  ",
        f"Settings: {report['settings']}",
        "",
        "Median of the repeated runs; each run is a fixed time at a fixed concurrency.",
        "",
        "| concurrency | target | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in report["results"].items():
        for label in ("direct", "bare mitmdump", "gateway"):
            r = row[label]
            lines.append(
                f"| {r['concurrency']} | {label} | {r['requests_per_second']} | "
                f"{r['p50_ms']} | {r['p99_ms']} | {r['errors']} |"
            )
        lines.append(
            f"| {key.split()[-1]} | **gateway/bare** | **{row['gateway/bare ratio']}** | "
            f"+{row['gateway added p50 ms']} | | |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one measured run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per target and concurrency")
    parser.add_argument("--quick", action="store_true", help="short run; results not written")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats = 1.5, 1
    with tempfile.TemporaryDirectory(prefix="unit-gateway-bench-") as tmp:
        report = asyncio.run(measure(args, Path(tmp)))
    markdown = render_markdown(report)
    print(markdown)
    if not args.quick:
        write("proxy_overhead", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
