"""A bounded async load generator: a fixed request mix at a fixed concurrency for a fixed time.

Used by every benchmark so that direct, bare-mitmdump and gateway runs are driven the same way.
Traffic goes to loopback only, and every run stops by itself.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import ssl
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json_body: dict[str, Any] | None = None


@dataclass
class LoadResult:
    label: str
    concurrency: int
    seconds: float
    requests: int
    errors: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    #: CPU seconds (user + system) the measured process spent during the run, and per
    #: request: unlike req/s, barely moved by other load on a shared machine.
    cpu_seconds: float | None = None
    cpu_us_per_request: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # fields after the ")" that closes the command name; utime and stime are fields 14, 15
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run_load(
    label: str,
    base_url: str,
    calls: Sequence[Call],
    *,
    token: str,
    concurrency: int,
    seconds: float,
    warmup_seconds: float = 1.0,
    proxy: str | None = None,
    ca_files: Sequence[Path] = (),
    max_requests: int = 1_000_000,
    cpu_pid: int | None = None,
) -> LoadResult:
    """Send ``calls`` round-robin from ``concurrency`` workers for ``seconds`` after a warm-up.

    With ``cpu_pid``, also the CPU time that process (the proxy) spent in the measured part."""
    context = ssl.create_default_context()
    for ca in ca_files:
        context.load_verify_locations(cafile=str(ca))
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=context)
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/vnd.api+json",
        "Accept": "application/vnd.api+json",
    }
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors = 0
    mix = itertools.cycle(calls)
    timeout = aiohttp.ClientTimeout(total=30)

    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout, trust_env=False
    ) as session:

        async def one(call: Call) -> tuple[float, str]:
            start = time.perf_counter()
            async with session.request(
                call.method, base_url + call.path, json=call.json_body, proxy=proxy
            ) as response:
                await response.read()
                return time.perf_counter() - start, str(response.status)

        async def worker(until: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < until and len(latencies) < max_requests:
                try:
                    elapsed, status = await one(next(mix))
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                if record:
                    latencies.append(elapsed)
                    statuses[status] += 1

        warm_until = time.perf_counter() + warmup_seconds
        await asyncio.gather(*(worker(warm_until, False) for _ in range(concurrency)))
        cpu_before = process_cpu_seconds(cpu_pid) if cpu_pid is not None else 0.0
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = process_cpu_seconds(cpu_pid) - cpu_before if cpu_pid is not None else None

    latencies.sort()
    return LoadResult(
        label=label,
        concurrency=concurrency,
        seconds=round(elapsed, 3),
        requests=len(latencies),
        errors=errors,
        requests_per_second=round(len(latencies) / elapsed, 1),
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        statuses=dict(statuses),
        cpu_seconds=round(cpu, 3) if cpu is not None else None,
        cpu_us_per_request=(
            round(cpu / len(latencies) * 1e6, 1) if cpu is not None and latencies else None
        ),
    )


def median_result(results: Sequence[LoadResult]) -> LoadResult:
    """The run with the median throughput, so one noisy run does not decide a figure."""
    ordered = sorted(results, key=lambda r: r.requests_per_second)
    return ordered[len(ordered) // 2]


def summary_rps(results: Sequence[LoadResult]) -> float:
    return statistics.median(r.requests_per_second for r in results)
