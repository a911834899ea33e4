"""How fast is the local Unit sandbox? It must never be the bottleneck of a proxy benchmark.

Starts ``unit-gateway sandbox`` as a subprocess (this interpreter, loopback, a free port, no
rate limit), then drives ``GET /cards/{cardId}`` with the org token from an aiohttp client at
each concurrency for a bounded time, and records requests/s, p50 and p99 latency in
``benchmarks/results/sandbox_throughput.json`` and ``.md``.

    uv run python benchmarks/sandbox_throughput.py [--duration 5] [--concurrency 1 32]

Client and server share the machine: on 2 cores the numbers are a lower bound for the sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

RESULTS = Path(__file__).resolve().parent / "results"
LAUNCH = (
    "import argparse, sys\n"
    "from unit_gateway.sandbox.server import configure_parser, run_from_args\n"
    "parser = argparse.ArgumentParser()\n"
    "configure_parser(parser)\n"
    "sys.exit(run_from_args(parser.parse_args(sys.argv[1:])))\n"
)
TARGET = "GET /cards/{cardId}"
PATH = "/cards/30001"
WARMUP_SECONDS = 0.5


@dataclass
class Result:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    req_per_s: float
    p50_ms: float
    p99_ms: float


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(int(fraction * len(sorted_values)), len(sorted_values) - 1)
    return sorted_values[index]


def start_sandbox(org_token: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "UNIT_SANDBOX_ORG_TOKEN": org_token, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "--port", "0", "--rate-limit", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.match(r"^unit-gateway sandbox listening on (\S+)$", line.strip())
        if match:
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError(f"the sandbox exited with {proc.wait()} before listening")


async def drive(url: str, org_token: str, concurrency: int, duration: float) -> Result:
    headers = {"Authorization": f"Bearer {org_token}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:

        async def worker(until: float, record: bool) -> None:
            nonlocal errors
            while True:
                started = time.perf_counter()
                if started >= until:
                    return
                async with session.get(url + PATH, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                if record:
                    if ok:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1

        warm_until = time.perf_counter() + WARMUP_SECONDS
        await asyncio.gather(*(worker(warm_until, False) for _ in range(concurrency)))
        began = time.perf_counter()
        await asyncio.gather(*(worker(began + duration, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return Result(
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        seconds=round(elapsed, 3),
        req_per_s=round(len(latencies) / elapsed, 1),
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
    )


def markdown(report: dict[str, object], results: list[Result]) -> str:
    rows = "\n".join(
        f"| {r.concurrency} | {r.req_per_s:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
        f"{r.requests:,} | {r.errors} |"
        for r in results
    )
    return f"""# Local sandbox throughput

`{TARGET}` with the org token, aiohttp client, loopback, keep-alive, sandbox started with
`--rate-limit 0`; {report["duration_s"]} s per concurrency after a {WARMUP_SECONDS} s warm-up.
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
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    org_token = "v2.public." + secrets.token_urlsafe(64)
    proc, url = start_sandbox(org_token)
    try:
        results = [
            asyncio.run(drive(url, org_token, concurrency, args.duration))
            for concurrency in args.concurrency
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(15)
    if exit_code != 0:
        print(f"the sandbox exited with {exit_code}", file=sys.stderr)
        return 1

    report = {
        "benchmark": "sandbox_throughput",
        "target": TARGET,
        "duration_s": args.duration,
        "warmup_s": WARMUP_SECONDS,
        "results": [asdict(r) for r in results],
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["uv run python benchmarks/sandbox_throughput.py", *sys.argv[1:]]),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "sandbox_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results_dir / "sandbox_throughput.md").write_text(markdown(report, results))
    for r in results:
        print(
            f"concurrency {r.concurrency:>3}: {r.req_per_s:>8,.0f} req/s  "
            f"p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  ({r.errors} errors)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
