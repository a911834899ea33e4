"""What the demo prints: its record of it (scanned for secrets) and the summary from /metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .demo_gateway import Environment
    from .testing.leakscan import Leak

#: Everything the demo printed: its own output is scanned for secrets with the files it wrote.
_printed: list[str] = []


def print_line(text: str = "") -> None:
    _printed.append(text)
    print(text, flush=True)


def find_leaks_in_outputs(secrets: Mapping[str, str], run_dir: Path) -> list[Leak]:
    """Where any of ``secrets`` shows in the run's files or in what the demo printed."""
    from .testing.leakscan import find_leaks  # reads flow files: imports mitmproxy.io

    return find_leaks(secrets, [run_dir], [("the demo's output", "\n".join(_printed))])


# --- the summary -------------------------------------------------------------------------


def metric_samples(env: Environment) -> list[tuple[str, dict[str, str], float]]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(env.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metric_total(
    samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str
) -> float:
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def histogram_quantile(quantile: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative bucket counts keyed by ``le``."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] == 0:
        return None
    rank = quantile * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def latency_buckets(
    samples: list[tuple[str, dict[str, str], float]], name: str
) -> dict[float, float]:
    """Cumulative buckets of one histogram, summed over its routes."""
    buckets: dict[float, float] = {}
    for sample_name, labels, value in samples:
        if sample_name == f"{name}_bucket":
            bound = float(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def summary_rows(
    samples: list[tuple[str, dict[str, str], float]], stats: Mapping[str, Any]
) -> list[tuple[str, str]]:
    requests = latency_buckets(samples, "unit_gateway_request_duration_seconds")
    overhead = latency_buckets(samples, "unit_gateway_overhead_seconds")
    by_status: dict[str, float] = {}
    for name, labels, value in samples:
        if name == "unit_gateway_requests_total":
            group = labels["status"][0] + "xx"
            by_status[group] = by_status.get(group, 0) + value
    statuses = ", ".join(f"{n:.0f} {group}" for group, n in sorted(by_status.items()))

    def per_kind(name: str, **labels: str) -> str:
        counts = [
            f"{kind} {metric_total(samples, name, kind=kind, **labels):.0f}"
            for kind in ("customer", "cardholder")
        ]
        return ", ".join(counts)

    created = stats.get("tokens_created", {})
    return [
        ("requests through the gateway", f"{sum(by_status.values()):.0f} ({statuses})"),
        ("tokens minted", per_kind("unit_gateway_token_mints_total", outcome="ok")),
        (
            "  created at Unit (sandbox count)",
            ", ".join(f"{k} {v}" for k, v in created.items()),
        ),
        ("tokens reused from the cache", per_kind("unit_gateway_token_cache_hits_total")),
        ("two-factor verifications", per_kind("unit_gateway_verifications_started_total")),
        (
            "values redacted from outputs",
            f"{metric_total(samples, 'unit_gateway_redactions_total'):.0f}",
        ),
        (
            "429s from Unit",
            f"{metric_total(samples, 'unit_gateway_upstream_rate_limited_total'):.0f}",
        ),
        (
            "latency p50 / p99 (whole request)",
            f"{milliseconds(histogram_quantile(0.5, requests))} / "
            f"{milliseconds(histogram_quantile(0.99, requests))}",
        ),
        (
            "gateway's own time p50 / p99",
            f"{milliseconds(histogram_quantile(0.5, overhead))} / "
            f"{milliseconds(histogram_quantile(0.99, overhead))}",
        ),
    ]


def redacted_excerpt(output: str) -> list[str]:
    """What a person reading the gateway's output sees where the caller got secrets."""
    wanted = ("authorization: Bearer unitgw:customer", '"pan":', '"ssn":')
    lines = output.splitlines()
    return [next((line.strip() for line in lines if key in line), "") for key in wanted]


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)
