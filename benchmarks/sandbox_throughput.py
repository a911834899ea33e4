"""How fast is the local Unit sandbox? It must never be the bottleneck of a proxy benchmark.

    uv run python benchmarks/sandbox_throughput.py [--seconds 5] [--concurrency 1 32]

Starts ``unit-gateway sandbox`` (loopback, a free port, no rate limit), drives
``GET /cards/{cardId}`` with the org token at each concurrency for a bounded time, and records
req/s, p50 and p99 in ``benchmarks/results/sandbox_throughput.json`` and ``.md``. Client and
sandbox share the machine: on 2 cores the numbers are a lower bound for the sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from loadgen import Call, LoadResult, run_load
from report import write
from unit_gateway.testing import harness

CALL = Call("GET", "/cards/30001")


def markdown(report: dict[str, object], results: list[LoadResult]) -> str:
    rows = "\n".join(
        f"| {r.concurrency} | {r.requests_per_second:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
        f"{r.requests:,} | {r.errors} |"
        for r in results
    )
    return f"""# Local sandbox throughput

`GET /cards/{{cardId}}` with the org token, aiohttp client, loopback, keep-alive, sandbox
started with `--rate-limit 0`; {report["seconds"]} s per concurrency after a warm-up.
Client and sandbox share the machine ({report["cpus"]} CPUs), so these are lower bounds for
the sandbox alone.

| concurrency | req/s | p50 ms | p99 ms | requests | errors |
|---:|---:|---:|---:|---:|---:|
{rows}

Recorded {report["recorded_at"]} on {report["platform"]}, Python {report["python"]}.

Command:

    {report["command"]}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="unit-gateway-bench-") as tmp:
        sandbox = harness.start_sandbox(Path(tmp), extra_args=["--rate-limit", "0"])
        try:
            results = [
                asyncio.run(
                    run_load(
                        "sandbox",
                        sandbox.url,
                        [CALL],
                        token=sandbox.org_token,
                        concurrency=concurrency,
                        seconds=args.seconds,
                        warmup_seconds=0.5,
                    )
                )
                for concurrency in args.concurrency
            ]
        finally:
            exit_code = sandbox.process.stop()
    if exit_code != 0:
        print(f"the sandbox exited with {exit_code}", file=sys.stderr)
        return 1

    report = {
        "benchmark": "sandbox_throughput",
        "target": "GET /cards/{cardId}",
        "seconds": args.seconds,
        "results": [r.as_dict() for r in results],
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["uv run python benchmarks/sandbox_throughput.py", *sys.argv[1:]]),
    }
    write("sandbox_throughput", report, markdown(report, results))
    for r in results:
        print(
            f"concurrency {r.concurrency:>3}: {r.requests_per_second:>8,.0f} req/s  "
            f"p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  ({r.errors} errors)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
