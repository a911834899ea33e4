"""A soak of three replicas sharing one Redis under mixed traffic, with a replica killed
(SIGKILL, then started again) a third of the way through and Redis restarted two thirds of
the way through. Clients reach the replicas as an L4 balancer sends them: round robin over the
replicas it has, the next one when a connection is refused (nothing was sent).

Counts every request that got no answer, and where: on the killed replica while it died
(those in flight), or anywhere else (a loss). Samples each replica's resident memory.

    uv run python benchmarks/fleet_soak.py [--minutes 20] [--quick]

Writes benchmarks/results/fleet_soak.json|.md (not with --quick)."""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from memory_soak import rss_mb, slope_per_100k
from report import heading, machine, write
from unit_gateway.testing import harness
from unit_gateway.testing.redis_server import RedisProcess

REPLICAS = 3
WORKERS = 12
#: org and customer reads, as a service's traffic mostly is
PATHS = (
    ("unitgw:org", "/customers?page[limit]=5"),
    ("unitgw:customer:10001", "/accounts?page[limit]=5"),
    ("unitgw:customer:10002", "/accounts?page[limit]=5"),
    ("unitgw:org", "/cards?page[limit]=5"),
)


class Balancer:
    """The replicas in rotation, and what happened to the requests sent through them."""

    def __init__(self, gateways: list[harness.Gateway]) -> None:
        self.gateways = list(gateways)
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.lost: Counter[str] = Counter()  # where: "killed replica" or "elsewhere"
        self.dying: harness.Gateway | None = None
        self.sent = 0

    def one(self, sandbox_url: str, index: int) -> None:
        placeholder, path = PATHS[index % len(PATHS)]
        for attempt in range(50):
            with self.lock:
                gateway = self.gateways[(index + attempt) % len(self.gateways)]
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({"http": gateway.proxy_url})
            )
            request = urllib.request.Request(
                sandbox_url + path, headers={"Authorization": f"Bearer {placeholder}"}
            )
            try:
                with opener.open(request, timeout=30) as response:
                    response.read()
                    status = response.status
            except urllib.error.HTTPError as answer:
                status = answer.code
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                # HTTPException: an answer cut short (IncompleteRead) by a replica that died
                reason = getattr(error, "reason", error)
                if isinstance(reason, ConnectionRefusedError):
                    time.sleep(0.01)  # refused: nothing was sent; the next replica
                    continue
                with self.lock:
                    where = "killed replica" if gateway is self.dying else "elsewhere"
                    self.lost[where] += 1
                return
            with self.lock:
                self.statuses[status] += 1
                self.sent += 1
            return
        with self.lock:
            self.lost["no replica accepted"] += 1


def measure(minutes: float, run_dir: Path) -> dict[str, Any]:
    sandbox = harness.start_sandbox(run_dir, extra_args=["--rate-limit", "0"])
    redis = RedisProcess(run_dir / "redis")
    store = harness.store_overrides(run_dir, redis.url)
    config = harness.write_gateway_config(
        run_dir / "gateway.yaml", upstream_url=sandbox.url, overrides=store
    )

    def start(name: str) -> harness.Gateway:
        return harness.start_gateway(
            run_dir,
            config,
            org_token=sandbox.org_token,
            extra_args=("--set", "flow_detail=0"),
            name=name,
        )

    gateways = [start(f"replica-{n}") for n in range(REPLICAS)]
    balancer = Balancer(gateways)
    memory: dict[str, list[tuple[int, float]]] = {g.process.name: [] for g in gateways}
    events: list[str] = []
    stop = threading.Event()

    def work(worker: int) -> None:
        index = worker
        while not stop.is_set():
            try:
                balancer.one(sandbox.url, index)
            except Exception as error:  # counted, and the worker goes on: its load stays
                with balancer.lock:
                    balancer.lost[f"client error {type(error).__name__}"] += 1
            index += WORKERS

    threads = [threading.Thread(target=work, args=(w,)) for w in range(WORKERS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    kill_at, redis_at, end = minutes * 20, minutes * 40, minutes * 60
    killed = redis_restarted = False
    try:
        while (elapsed := time.monotonic() - began) < end:
            time.sleep(min(30.0, end / 20))
            for gateway in balancer.gateways:
                if gateway.process.proc is not None and gateway.process.proc.poll() is None:
                    memory.setdefault(gateway.process.name, []).append(
                        (balancer.sent, rss_mb(gateway.process.proc.pid))
                    )
            if not killed and elapsed >= kill_at:
                victim = balancer.gateways[0]
                balancer.dying = victim
                assert victim.process.proc is not None
                victim.process.proc.kill()
                victim.process.proc.wait()
                with balancer.lock:
                    balancer.gateways.remove(victim)
                replacement = start("replica-0-again")
                with balancer.lock:
                    balancer.gateways.append(replacement)
                events.append(f"{elapsed:.0f} s: replica-0 killed (SIGKILL) and started again")
                killed = True
            if killed and not redis_restarted and elapsed >= redis_at:
                redis.stop()
                time.sleep(2)
                redis.start()
                events.append(f"{elapsed:.0f} s: Redis stopped for 2 s and started again")
                redis_restarted = True
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        duration = time.monotonic() - began
        stats = sandbox.stats()
        for gateway in balancer.gateways:
            gateway.process.stop()
        redis.stop()
        sandbox.process.stop()
    slopes = {
        name: round(slope_per_100k(points[len(points) // 2 :]), 2)
        for name, points in memory.items()
        if len(points) >= 4
    }
    return {
        "minutes": minutes,
        "replicas": REPLICAS,
        "workers": WORKERS,
        "events": events,
        "answered": balancer.sent,
        "requests_per_second": round(balancer.sent / duration, 1),
        "statuses": {str(k): v for k, v in sorted(balancer.statuses.items())},
        "lost": dict(balancer.lost),
        "tokens_created": stats["tokens_created"],
        "rss_mb_first_last": {
            n: (round(p[0][1], 1), round(p[-1][1], 1)) for n, p in memory.items() if p
        },
        "rss_mb_per_100k_requests_second_half": slopes,
        "median_rss_slope": round(statistics.median(slopes.values()), 2) if slopes else None,
    }


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Three replicas, a replica killed, Redis restarted",
        "",
        heading(report),
        "",
        f"{report['minutes']:g} minutes, {report['workers']} clients dealing requests over "
        f"{report['replicas']} replicas sharing one Redis (org and two customers' reads).",
        "",
        *(f"- {event}" for event in report["events"]),
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests answered | {report['answered']} ({report['requests_per_second']}/s) |",
        f"| answers by status | {report['statuses']} |",
        f"| requests without an answer | {report['lost'] or 'none'} |",
        f"| tokens created at Unit | {report['tokens_created']} |",
        f"| RSS first, last (MB) | {report['rss_mb_first_last']} |",
        f"| RSS MB per 100k requests, second half | "
        f"{report['rss_mb_per_100k_requests_second_half']} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="length of the soak")
    parser.add_argument("--quick", action="store_true", help="two minutes; results not written")
    args = parser.parse_args()
    minutes = 2.0 if args.quick else args.minutes
    with tempfile.TemporaryDirectory(prefix="unit-gateway-bench-") as tmp:
        report = {**machine(), **measure(minutes, Path(tmp))}
    report["command"] = "uv run python benchmarks/fleet_soak.py" + (
        f" --minutes {args.minutes:g}" if args.minutes != 20.0 else ""
    )
    write("fleet_soak", report, render_markdown(report), keep=not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
