"""Throughput and latency of the gateway against bare mitmdump and a direct connection.

    uv run python benchmarks/proxy_overhead.py            # full run, writes results/
    uv run python benchmarks/proxy_overhead.py --quick    # short smoke run, writes nothing

One run drives the same request mix (TLS on both sides, keep-alive) directly at the local
sandbox, through bare mitmdump, and through the gateway, at concurrency 1 and 32, and records
req/s, p50/p99 latency and the gateway/bare ratio in ``benchmarks/results/proxy_overhead.*``.
Every process runs on loopback and stops when the run ends.

It also records the CPU time (user + system, from /proc) each proxy process spends per request.
On a shared machine that is the fairer comparison: req/s moves with whatever else runs, CPU
per request much less. Bare CPU / gateway CPU is the throughput ratio a CPU-bound proxy would
reach with the machine to itself.

The gateway dispatches mitmproxy's hooks from a table (``unit_gateway.mitm.hook_table``), which
saves mitmproxy work that bare mitmdump does. ``mitmdump + hook table`` (``floor/hook_table.py``)
runs that table alone, and is the base of three floors that split the gateway's own cost:
the gateway's patch point (``floor/patch_point.py``), the patch point plus the redaction of
every response body by the gateway's own Redactor (``floor/body_redaction.py``), both carrying
the caller's real token like bare mitmdump; and the gateway's token injection without its
redaction rules or metrics export (``floor/token_injection.py``), which gets the placeholder
like the gateway. The gateway against ``mitmdump + hook table`` is what the gateway's own work
costs; against bare mitmdump, what a user sees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
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
FLOORS = Path(__file__).parent / "floor"
#: Every target, in the order runs interleave and tables list them.
LABELS = (
    "direct",
    "bare mitmdump",
    "mitmdump + hook table",
    "hook table + patch point",
    "hook table + body redaction",
    "hook table + token injection",
    "gateway",
)
#: The base of the floors: mitmdump dispatching hooks as the gateway does.
TABLE = "mitmdump + hook table"


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
    table = ("-s", str(FLOORS / "hook_table.py"))
    floors = {
        label: harness.start_bare_mitmdump(
            run_dir,
            extra_args=[*PROXY_ARGS, *table, *scripts, *upstream_ca, *gateway_args],
            name=name,
            env={"UNIT_ORG_TOKEN": sandbox.org_token} if gateway_args else None,
        )
        for label, name, scripts, gateway_args in (
            (TABLE, "hook_table", (), ()),
            ("hook table + patch point", "patch_point", ("-s", str(FLOORS / "patch_point.py")), ()),
            (
                "hook table + body redaction",
                "body_redaction",
                ("-s", str(FLOORS / "body_redaction.py")),
                (),
            ),
            (
                "hook table + token injection",
                "token_injection",
                ("-s", str(FLOORS / "token_injection.py")),
                ("--set", f"unit_gateway_config={config}"),
            ),
        )
    }
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
        # The same customer's traffic everywhere: a real token without the gateway's token
        # addon, the placeholder with it (it mints once, then serves from its cache).
        placeholder = f"unitgw:customer:{CUSTOMER}"
        targets = {
            "direct": (None, [sandbox.cert_path], token, None),
            "bare mitmdump": (bare.proxy_url, [bare.ca_path], token, bare.process.proc.pid),
            **{
                label: (
                    floor.proxy_url,
                    [floor.ca_path],
                    placeholder if label == "hook table + token injection" else token,
                    floor.process.proc.pid,
                )
                for label, floor in floors.items()
            },
            "gateway": (
                gateway.proxy_url,
                [gateway.ca_path],
                placeholder,
                gateway.process.proc.pid,
            ),
        }
        runs: list[LoadResult] = []
        for concurrency in args.concurrency:
            for _ in range(args.repeats):
                # Interleave targets so drift on the machine hits each of them alike.
                for label, (proxy, cas, credential, pid) in targets.items():
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
                            cpu_pid=pid,
                        )
                    )
    finally:
        for target in (gateway, bare, *floors.values()):
            target.process.stop()
        sandbox.process.stop()
    return summarize(runs, args)


def summarize(runs: list[LoadResult], args: argparse.Namespace) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for concurrency in args.concurrency:
        row: dict[str, Any] = {}
        cpu: dict[str, float] = {}
        spread: dict[str, float] = {}
        for label in LABELS:
            mine = [r for r in runs if r.label == label and r.concurrency == concurrency]
            row[label] = median_result(mine).as_dict()
            per_request = [r.cpu_us_per_request for r in mine if r.cpu_us_per_request]
            if per_request:
                cpu[label] = statistics.median(per_request)
                spread[label] = round(max(per_request) - min(per_request), 1)
        bare, gateway = row["bare mitmdump"], row["gateway"]
        row["gateway/bare ratio"] = round(
            gateway["requests_per_second"] / bare["requests_per_second"], 3
        )
        row["gateway added p50 ms"] = round(gateway["p50_ms"] - bare["p50_ms"], 3)
        # Median over the repeats of each target's own CPU per request.
        row["cpu us/request"] = {label: round(value, 1) for label, value in cpu.items()}
        row["cpu bare/gateway ratio"] = round(cpu["bare mitmdump"] / cpu["gateway"], 3)
        row["gateway added cpu us/request"] = round(cpu["gateway"] - cpu["bare mitmdump"], 1)
        row["cpu added us/request"] = {
            label: round(value - cpu["bare mitmdump"], 1) for label, value in cpu.items()
        }
        # The gateway's own work, and each floor's part of it: over mitmdump with the table.
        row["cpu added to hook table us/request"] = {
            label: round(value - cpu[TABLE], 1) for label, value in cpu.items()
        }
        row["cpu hook table/gateway ratio"] = round(cpu[TABLE] / cpu["gateway"], 3)
        # How far one target's repeats lie apart: what a difference must exceed to mean much.
        row["cpu spread of repeats us/request"] = spread
        # What a target may add to bare mitmdump's CPU per request and keep a 0.95 ratio.
        row["cpu budget at 0.95 us/request"] = round(cpu["bare mitmdump"] * (1 / 0.95 - 1), 1)
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
            "credentials": (
                "direct, bare, hook table, patch point and body redaction: a real customer "
                "token; token injection and gateway: the placeholder"
            ),
            "cpu": "proxy process utime+stime from /proc over the measured part of each run",
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
        for label in LABELS:
            r = row[label]
            lines.append(
                f"| {r['concurrency']} | {label} | {r['requests_per_second']} | "
                f"{r['p50_ms']} | {r['p99_ms']} | {r['errors']} |"
            )
        lines.append(
            f"| {key.split()[-1]} | **gateway/bare** | **{row['gateway/bare ratio']}** | "
            f"+{row['gateway added p50 ms']} | | |"
        )
    lines += [
        "",
        "CPU time of the proxy process per request (user + system, median of the repeats). On",
        "a shared machine this is the fairer figure: bare/gateway is the throughput ratio a",
        "CPU-bound proxy reaches when nothing else competes for the cores.",
        "",
        "| concurrency | bare mitmdump µs/req | gateway µs/req | gateway added µs/req | "
        "**bare/gateway** |",
        "|---|---|---|---|---|",
    ]
    for key, row in report["results"].items():
        cpu = row["cpu us/request"]
        lines.append(
            f"| {key.split()[-1]} | {cpu['bare mitmdump']} | {cpu['gateway']} | "
            f"{row['gateway added cpu us/request']:+} | **{row['cpu bare/gateway ratio']}** |"
        )
    lines += [
        "",
        "Where the gateway's CPU goes. The gateway dispatches mitmproxy's hooks from a table;",
        "`mitmdump + hook table` runs only that, and what it saves against bare mitmdump is",
        "mitmproxy's own work. Each floor runs a part of the gateway's per-request work on",
        "top of the table (see the module docstring): its cost over `mitmdump + hook table` is",
        "the gateway's own work in that part. The budget is what a target may add to bare",
        "mitmdump and keep bare/target at 0.95. Spread is how far that target's own repeats",
        "lie apart (max - min): a difference smaller than the spreads involved says little.",
        "",
        "| concurrency | budget at 0.95 | target | CPU µs/req | added to bare µs/req | "
        "bare/target | added to hook table µs/req | hook table/target | spread µs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in report["results"].items():
        cpu, added = row["cpu us/request"], row["cpu added us/request"]
        own = row["cpu added to hook table us/request"]
        spread = row["cpu spread of repeats us/request"]
        for label in LABELS[1:]:
            lines.append(
                f"| {key.split()[-1]} | +{row['cpu budget at 0.95 us/request']} | {label} | "
                f"{cpu[label]} | {added[label]:+} | "
                f"{round(cpu['bare mitmdump'] / cpu[label], 3)} | {own[label]:+} | "
                f"{round(cpu[TABLE] / cpu[label], 3)} | {spread[label]} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one measured run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per target and concurrency")
    parser.add_argument("--quick", action="store_true", help="short run; results not written")
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help="concurrency to run (repeatable; default 1 and 32); results not written",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats = 1.5, 1
    partial = args.quick or args.concurrency is not None
    args.concurrency = tuple(args.concurrency or CONCURRENCIES)
    with tempfile.TemporaryDirectory(prefix="unit-gateway-bench-") as tmp:
        report = asyncio.run(measure(args, Path(tmp)))
    write("proxy_overhead", report, render_markdown(report), keep=not partial)
    return 0


if __name__ == "__main__":
    sys.exit(main())
