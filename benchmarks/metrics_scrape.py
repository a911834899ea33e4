"""How long a Prometheus scrape of the gateway's /metrics takes with every route populated.

    uv run python benchmarks/metrics_scrape.py

Fills the gateway's registry as a busy gateway would (every route template of the route table
with each of its methods, three statuses each, all three latency histograms, token and
rate-limit metrics), serves it with the gateway's own WSGI app, and times HTTP GETs of
/metrics as Prometheus sends them (gzip accepted). Writes
``benchmarks/results/metrics_scrape.json`` and ``.md``. Target: < 50 ms.
"""

from __future__ import annotations

import gzip
import statistics
import sys
import time
import urllib.request

from report import heading, write
from report import machine as report_machine
from unit_gateway.metrics.exporter import serve_metrics
from unit_gateway.metrics.registry import GatewayMetrics
from unit_gateway.unit_api.routes import RouteTable


def populate(metrics: GatewayMetrics) -> int:
    routes = 0
    for route in RouteTable.default().routes():
        routes += 1
        for method in sorted(route.methods):
            for status in ("200", "404", "429"):
                metrics.requests.labels(route.template, method, status).inc()
            for histogram in (
                metrics.request_duration,
                metrics.upstream_duration,
                metrics.overhead,
            ):
                histogram.labels(route.template, method).observe(0.05)
        metrics.rate_limited.labels(route.template).inc()
    for kind in ("customer", "cardholder"):
        for strategy in ("none", "sandbox-otp", "jwt", "challenge"):
            for outcome in ("ok", "error"):
                metrics.mints.labels(kind, strategy, outcome).inc()
                metrics.mint_duration.labels(kind, strategy, outcome).observe(0.2)
        metrics.cache_hits.labels(kind).inc()
        metrics.cache_entries.labels(kind).set(100)
    return routes


def main() -> int:
    metrics = GatewayMetrics()
    routes = populate(metrics)
    server = serve_metrics(metrics, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    timings, size = [], 0
    try:
        for _ in range(30):
            started = time.perf_counter()
            request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
            with opener.open(request, timeout=10) as response:
                body = response.read()
            timings.append(time.perf_counter() - started)
            size = len(body)
    finally:
        server.shutdown()
        server.server_close()
    text = gzip.decompress(body).decode()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    report = {
        "benchmark": "metrics_scrape",
        "command": "uv run python benchmarks/metrics_scrape.py",
        **report_machine(),
        "routes": routes,
        "samples": len(lines),
        "bytes": size,
        "scrape_ms_median": round(statistics.median(timings) * 1000, 2),
        "scrape_ms_max": round(max(timings) * 1000, 2),
        "target_ms": 50,
    }
    markdown = (
        "# /metrics scrape time, every route populated\n\n"
        f"{heading(report)}\n\n"
        "| routes | samples | bytes | median ms | max ms | target ms |\n"
        "|---|---|---|---|---|---|\n"
        f"| {routes} | {len(lines)} | {size} | {report['scrape_ms_median']} | "
        f"{report['scrape_ms_max']} | 50 |\n"
    )
    write("metrics_scrape", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
