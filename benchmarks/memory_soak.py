"""Memory under steady load: the gateway's resident set, beside bare mitmdump's under the same
traffic in the same run, sampled between equal slices of load (interleaved, so drift on the
machine hits both alike). What matters is the slope after warm-up, in MB per 100k requests.

    uv run python benchmarks/memory_soak.py [--minutes 10] [--quick]

Writes benchmarks/results/memory_soak.json|.md (not with --quick)."""

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

#: Load between two samples of each process.
SLICE_SECONDS = 15.0
CONCURRENCY = 16


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def slope_per_100k(samples: list[tuple[int, float]]) -> float:
    """Least-squares MB per 100k requests over ``samples`` of (requests so far, RSS MB)."""
    xs = [float(n) for n, _ in samples]
    ys = [mb for _, mb in samples]
    if len(samples) < 2 or max(xs) == min(xs):
        return 0.0
    return statistics.linear_regression(xs, ys).slope * 100_000


async def measure(minutes: float, run_dir: Path) -> dict[str, Any]:
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
    targets = {
        "bare mitmdump": (bare, customer_token(sandbox)),
        "gateway": (gateway, f"unitgw:customer:{CUSTOMER}"),
    }
    samples: dict[str, list[tuple[int, float]]] = {label: [] for label in targets}
    sent = dict.fromkeys(targets, 0)
    errors = dict.fromkeys(targets, 0)
    try:
        calls = request_mix(sandbox)
        slices = max(2, round(minutes * 60 / SLICE_SECONDS / len(targets)))
        for _ in range(slices):
            for label, (proxy, credential) in targets.items():
                assert proxy.process.proc is not None
                result = await run_load(
                    label,
                    sandbox.url,
                    calls,
                    token=credential,
                    concurrency=CONCURRENCY,
                    seconds=SLICE_SECONDS,
                    warmup_seconds=0.0,
                    proxy=proxy.proxy_url,
                    ca_files=[proxy.ca_path],
                )
                sent[label] += result.requests
                errors[label] += result.errors
                samples[label].append((sent[label], rss_mb(proxy.process.proc.pid)))
                print(f"{label:14} {sent[label]:8} requests  {samples[label][-1][1]:6.1f} MB")
    finally:
        for target in (gateway, bare):
            target.process.stop()
        sandbox.process.stop()
    summary = {}
    for label, points in samples.items():
        later = points[len(points) // 2 :]  # after warm-up: the second half
        summary[label] = {
            "requests": sent[label],
            "errors": errors[label],
            "rss_first_mb": points[0][1],
            "rss_last_mb": points[-1][1],
            "mb_per_100k_requests_second_half": round(slope_per_100k(later), 2),
            "samples": points,
        }
    return {"minutes": minutes, "concurrency": CONCURRENCY, "targets": summary}


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Memory under steady load",
        "",
        heading(report),
        "",
        f"{report['minutes']} minutes of load, interleaved in {SLICE_SECONDS:.0f} s slices at "
        f"concurrency {report['concurrency']} (a customer's reads of its card, accounts and "
        "itself). Resident set size of each proxy after each slice.",
        "",
        "| | requests | errors | RSS first | RSS last | MB per 100k requests, second half |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in report["targets"].items():
        lines.append(
            f"| {label} | {row['requests']} | {row['errors']} | {row['rss_first_mb']:.1f} MB "
            f"| {row['rss_last_mb']:.1f} MB | {row['mb_per_100k_requests_second_half']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the whole run")
    parser.add_argument("--quick", action="store_true", help="one minute; results not written")
    args = parser.parse_args()
    minutes = 1.0 if args.quick else args.minutes
    with tempfile.TemporaryDirectory(prefix="unit-gateway-bench-") as tmp:
        report = {**machine(), **asyncio.run(measure(minutes, Path(tmp)))}
    report["command"] = "uv run python benchmarks/memory_soak.py" + (
        f" --minutes {args.minutes:g}" if args.minutes != 10.0 else ""
    )
    write("memory_soak", report, render_markdown(report), keep=not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
