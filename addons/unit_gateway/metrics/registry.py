"""Prometheus metrics: the registry every part of the gateway records into, and the metric names.

Names are a contract once dashboards use them: prefix ``unit_gateway_``, base units,
``_total`` counters, labels only from bounded sets (route template, method, status code,
token kind, strategy, outcome, environment, rule) - never an id.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)

from unit_gateway import __version__
from unit_gateway.metrics import events

PREFIX = "unit_gateway"
#: Unit answers in tens to hundreds of milliseconds; token endpoints time out at 5 s and ACH
#: payments at 60 s, so the buckets reach that far.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: The gateway's own work is well under a millisecond per request when a token is cached.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1)
#: Calls to the shared store (store.operation_timeout_seconds bounds them).
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number_text(value: float) -> str:
    return repr(float(value)) if value != int(value) else f"{int(value)}.0"


class RouteHistogram:
    """A labelled histogram that renders itself straight to Prometheus' text format.

    Per-route latency histograms are most of what a scrape carries (three of them for every
    route and method). prometheus-client builds an object per sample and takes ~8 us a line,
    over 100 ms for every route; rendering from plain lists keeps a full scrape well under
    50 ms. Observations and rendering share a lock, so a scrape sees whole observations.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.buckets = buckets
        self._bucket_texts = [_number_text(b) for b in buckets] + ["+Inf"]
        self._children: dict[tuple[str, ...], RouteHistogramChild] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str) -> RouteHistogramChild:
        child = self._children.get(values)
        if child is None:
            labels = ",".join(
                f'{name}="{_escape(value)}"'
                for name, value in sorted(zip(self.labelnames, values, strict=True))
            )
            with self._lock:
                child = self._children.setdefault(values, RouteHistogramChild(self, labels))
        return child

    def render(self) -> str:
        lines = [
            f"# HELP {self.name} {self.documentation}",
            f"# TYPE {self.name} histogram",
        ]
        with self._lock:
            children = [(c.label_text, list(c.counts), c.sum) for c in self._children.values()]
        for labels, counts, total in children:
            prefix = f'{self.name}_bucket{{{labels},le="'
            cumulative = 0
            for le, count in zip(self._bucket_texts, counts, strict=True):
                cumulative += count
                lines.append(f'{prefix}{le}"}} {cumulative}.0')
            lines.append(f"{self.name}_count{{{labels}}} {cumulative}.0")
            lines.append(f"{self.name}_sum{{{labels}}} {total!r}")
        return "\n".join(lines) + "\n"


class RouteHistogramChild:
    __slots__ = ("counts", "histogram", "label_text", "sum")

    def __init__(self, histogram: RouteHistogram, label_text: str) -> None:
        self.histogram = histogram
        self.label_text = label_text
        self.counts = [0] * (len(histogram.buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.histogram.buckets, value)
        with self.histogram._lock:
            self.counts[index] += 1
            self.sum += value


class Children:
    """A prometheus-client metric's children by label values, each looked up once:
    ``labels()`` validates and locks on every call, microseconds a request should not pay."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class GatewayMetrics:
    """Every metric the gateway exports, in one registry of its own."""

    def __init__(self) -> None:
        # The _created series double the size of a scrape and no dashboard uses them. A switch
        # of prometheus-client for the whole process: thrown here, not when this is imported.
        disable_created_metrics()
        r = self.registry = CollectorRegistry(auto_describe=True)
        #: Set gauges that follow state a feature owns; called in the event loop's thread.
        self._refreshers: list[Callable[[], None]] = []
        p = PREFIX
        self.build = Info(f"{p}_build", "unit-gateway build", registry=r)
        self.build.info({"version": __version__})
        route = ["route", "method"]
        self.requests = Counter(
            f"{p}_requests",
            "Requests to Unit by the status the caller got",
            [*route, "status"],
            registry=r,
        )
        self.non_unit_requests = Counter(
            f"{p}_non_unit_requests", "Requests for hosts that are not Unit upstreams", registry=r
        )
        self.request_duration = RouteHistogram(
            f"{p}_request_duration_seconds",
            "Whole request as the caller sees it",
            route,
            LATENCY_BUCKETS,
        )
        self.upstream_duration = RouteHistogram(
            f"{p}_upstream_duration_seconds", "Time Unit took to answer", route, LATENCY_BUCKETS
        )
        self.overhead = RouteHistogram(
            f"{p}_overhead_seconds",
            "Time the gateway itself added, excluding Unit and token minting",
            route,
            OVERHEAD_BUCKETS,
        )
        self.route_histograms = (self.request_duration, self.upstream_duration, self.overhead)
        self.mint_duration = Histogram(
            f"{p}_token_mint_duration_seconds",
            "Time to get a new token from Unit",
            ["kind", "strategy", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            f"{p}_upstream_rate_limited", "429 answers from Unit", ["route"], registry=r
        )
        self.retry_after = Gauge(
            f"{p}_upstream_retry_after_seconds", "The last Retry-After Unit sent", registry=r
        )
        self.unit_limit = Gauge(
            f"{p}_upstream_ratelimit_limit",
            "Request limit Unit reports in its headers",
            ["environment"],
            registry=r,
        )
        self.unit_remaining = Gauge(
            f"{p}_upstream_ratelimit_remaining",
            "Requests left that Unit reports in its headers",
            ["environment"],
            registry=r,
        )
        self.window_requests = Gauge(
            f"{p}_rate_limit_requests_per_minute",
            "Requests the gateway sent to Unit in the last 60 s",
            ["environment"],
            registry=r,
        )
        self.configured_limit = Gauge(
            f"{p}_rate_limit_configured_per_minute",
            "Unit's per-minute limit as configured",
            ["environment"],
            registry=r,
        )
        self.headroom = Gauge(
            f"{p}_rate_limit_headroom_ratio",
            "Share of the per-minute limit still unused (1 - sent/limit)",
            ["environment"],
            registry=r,
        )
        self.verification_refusals = Counter(
            f"{p}_verification_limit_refusals",
            "Verifications refused locally (5 per 10 minutes)",
            ["kind"],
            registry=r,
        )
        self.cache_hits = Counter(f"{p}_token_cache_hits", "Token cache hits", ["kind"], registry=r)
        self._cache_hit = Children(self.cache_hits)
        self.cache_misses = Counter(
            f"{p}_token_cache_misses", "Token cache misses", ["kind"], registry=r
        )
        self.cache_entries = Gauge(
            f"{p}_token_cache_entries", "Tokens in the cache", ["kind"], registry=r
        )
        self.mints = Counter(
            f"{p}_token_mints", "Tokens minted", ["kind", "strategy", "outcome"], registry=r
        )
        self.verifications = Counter(
            f"{p}_verifications_started", "Two-factor verifications started", ["kind"], registry=r
        )
        self.challenges = Counter(
            f"{p}_challenges",
            "Two-factor challenges by outcome (issued, reissued, completed, refused, error, "
            "unknown)",
            ["kind", "outcome"],
            registry=r,
        )
        self.refreshes = Counter(
            f"{p}_token_refreshes",
            "Background refreshes ahead of expiry",
            ["kind", "outcome"],
            registry=r,
        )
        self.retries_401 = Counter(
            f"{p}_upstream_401_retries",
            "Requests retried after Unit refused an injected token",
            ["kind", "outcome"],
            registry=r,
        )
        self.learned = Counter(
            f"{p}_learned_tokens",
            "Tokens callers created that the gateway learned",
            ["kind"],
            registry=r,
        )
        self.config_reloads = Counter(
            f"{p}_config_reloads", "Configuration reloads by outcome", ["outcome"], registry=r
        )
        self.config_reload_success = Gauge(
            f"{p}_config_last_reload_success_timestamp_seconds",
            "When the configuration last loaded successfully",
            registry=r,
        )
        self.redactions = Counter(
            f"{p}_redactions",
            "Values redacted from what people see, by rule",
            ["rule"],
            registry=r,
        )
        # Labelled, so that a gateway without a store exports no series (and no alert fires).
        self.store_up = Gauge(
            f"{p}_store_up",
            "1 while the shared store answers, 0 while the replica runs on its own",
            ["store"],
            registry=r,
        )
        self.store_operations = Counter(
            f"{p}_store_operations",
            "Calls to the shared store by outcome (ok, error, timeout, skipped while down)",
            ["operation", "outcome"],
            registry=r,
        )
        self.store_duration = Histogram(
            f"{p}_store_operation_duration_seconds",
            "Time calls to the shared store took",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.fleet_events = Counter(
            f"{p}_fleet_events",
            "What replicas share: tokens found in the store (shared_hit), waits for another "
            "replica's mint (mint_wait), tokens dropped because another replica saw them "
            "refused (invalidated)",
            ["outcome"],
            registry=r,
        )
        self.redirect_loops = Counter(
            f"{p}_redirect_loops",
            "Connections of the gateway's own that a firewall rule sent back to it (closed)",
            registry=r,
        )

    def add_refresher(self, refresh: Callable[[], None]) -> None:
        self._refreshers.append(refresh)

    def refresh(self) -> None:
        """Bring the gauges that follow a feature's state up to date (the metrics addon
        calls this in the loop every few seconds, never from the scrape thread)."""
        for refresh in self._refreshers:
            refresh()

    def exposition(self) -> bytes:
        """The whole scrape in Prometheus' text format."""
        rendered = "".join(h.render() for h in self.route_histograms)
        return generate_latest(self.registry) + rendered.encode()

    def token_event(self, event: events.TokenEvent) -> None:
        """What the token features report (see :mod:`unit_gateway.metrics.events`)."""
        match event:
            case events.CacheLookup(kind, hit=True):  # on every request with a cached token
                self._cache_hit(kind).inc()
            case events.CacheLookup(kind, hit=False):
                self.cache_misses.labels(kind).inc()
            case events.Mint(kind, strategy, outcome, seconds):
                self.mints.labels(kind, strategy, outcome).inc()
                self.mint_duration.labels(kind, strategy, outcome).observe(seconds)
            case events.Verification(kind, refused=False):
                self.verifications.labels(kind).inc()
            case events.Verification(kind, refused=True):
                self.verification_refusals.labels(kind).inc()
            case events.Challenge(kind, outcome):
                self.challenges.labels(kind, outcome).inc()
            case events.Learned(kind):
                self.learned.labels(kind).inc()
            case events.Refresh(kind, outcome):
                self.refreshes.labels(kind, outcome).inc()
            case events.Retry(kind, outcome):
                self.retries_401.labels(kind, outcome).inc()
            case events.Fleet(_, outcome):
                self.fleet_events.labels(outcome).inc()

    def store_operation(self, operation: str, outcome: str, seconds: float) -> None:
        """What the shared store reports after each call."""
        self.store_operations.labels(operation, outcome).inc()
        if outcome != "skipped":
            self.store_duration.labels(operation).observe(seconds)
