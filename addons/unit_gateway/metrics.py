"""Prometheus metrics: the registry, metric names, and the addons that record and serve them.

Names are a contract once dashboards use them: prefix ``unit_gateway_``, base units,
``_total`` counters, labels only from bounded sets (route template, method, status code,
token kind, strategy, outcome, environment, rule) - never an id.
"""

from __future__ import annotations

import asyncio
import bisect
import gzip
import logging
import re
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from mitmproxy import http
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import ThreadingWSGIServer

from unit_gateway import __version__, identity
from unit_gateway.access_log import AccessLog, log_path
from unit_gateway.lifecycle import Health, probe_answer
from unit_gateway.limits import retry_after_seconds
from unit_gateway.routes import HTTP_METHODS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from unit_gateway.config import LoadedConfig
    from unit_gateway.core import GatewayCore
    from unit_gateway.inject import TokenInjector

logger = logging.getLogger(__name__)
# The _created series double the size of a scrape and no dashboard uses them.
disable_created_metrics()

PREFIX = "unit_gateway"
#: Unit answers in tens to hundreds of milliseconds; token endpoints time out at 5 s and ACH
#: payments at 60 s, so the buckets reach that far.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: The gateway's own work is well under a millisecond per request when a token is cached.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1)
#: Calls to the shared store (store.operation_timeout_seconds bounds them).
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
RATE_WINDOW_SECONDS = 60.0
#: The key under which the token addon leaves the seconds a request waited for a mint.
MINT_SECONDS_KEY = "unit_gateway.mint_seconds"
#: Set on flows the gateway answered itself: they never reached Unit.
LOCAL_RESPONSE_KEY = "unit_gateway.answered_locally"


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
        r = self.registry = CollectorRegistry(auto_describe=True)
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

    def exposition(self) -> bytes:
        """The whole scrape in Prometheus' text format."""
        rendered = "".join(h.render() for h in self.route_histograms)
        return generate_latest(self.registry) + rendered.encode()

    def token_event(self, name: str, labels: dict[str, str]) -> None:
        """What the token service reports (see ``TokenService``)."""
        kind = labels.get("kind", "customer")
        if name == "cache_hit":  # on every request with a cached token
            self._cache_hit(kind).inc()
        elif name == "cache_miss":
            self.cache_misses.labels(kind).inc()
        elif name == "mint":
            self.mints.labels(kind, labels["strategy"], labels["outcome"]).inc()
            if "seconds" in labels:
                self.mint_duration.labels(kind, labels["strategy"], labels["outcome"]).observe(
                    float(labels["seconds"])
                )
        elif name == "verification":
            self.verifications.labels(kind).inc()
        elif name == "verification_refused":
            self.verification_refusals.labels(kind).inc()
        elif name == "challenge":
            self.challenges.labels(kind, labels["outcome"]).inc()
        elif name == "learned":
            self.learned.labels(kind).inc()
        elif name == "refresh":
            self.refreshes.labels(kind, labels["outcome"]).inc()
        elif name == "retry_401":
            self.retries_401.labels(kind, labels["outcome"]).inc()
        elif name == "fleet":
            self.fleet_events.labels(labels["outcome"]).inc()

    def store_operation(self, operation: str, outcome: str, seconds: float) -> None:
        """What the shared store reports after each call."""
        self.store_operations.labels(operation, outcome).inc()
        if outcome != "skipped":
            self.store_duration.labels(operation).observe(seconds)


class RecentRequests:
    """Requests sent in the last minute, for the rate-limit headroom estimate."""

    def __init__(self, seconds: float = RATE_WINDOW_SECONDS) -> None:
        self.seconds = seconds
        self._times: deque[float] = deque()

    def add(self, now: float) -> None:
        self._times.append(now)

    def count(self, now: float) -> int:
        cutoff = now - self.seconds
        times = self._times
        while times and times[0] <= cutoff:
            times.popleft()
        return len(times)


_REPORTED_LIMIT_HEADERS = frozenset({b"x-ratelimit-limit", b"x-ratelimit-remaining", b"ratelimit"})
_RATE_LIMIT_HEADERS = _REPORTED_LIMIT_HEADERS | {b"retry-after"}
_RATELIMIT_FIELD = re.compile(r"(limit|remaining)\s*=\s*(\d+)", re.IGNORECASE)


def reported_limits(headers: http.Headers) -> tuple[float | None, float | None]:
    """Limit and remaining from ``X-RateLimit-*`` or the IETF ``RateLimit`` header."""
    limit = headers.get("X-RateLimit-Limit")
    remaining = headers.get("X-RateLimit-Remaining")
    combined = headers.get("RateLimit")
    if combined:
        fields = {k.lower(): v for k, v in _RATELIMIT_FIELD.findall(combined)}
        limit = limit or fields.get("limit")
        remaining = remaining or fields.get("remaining")
    return _number(limit), _number(remaining)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class MetricsExporter:
    """Counts and times every flow, and serves ``/metrics`` on its own port."""

    def __init__(self, core: GatewayCore, metrics: GatewayMetrics, tokens: TokenInjector) -> None:
        self.core = core
        self.metrics = metrics
        self.tokens = tokens
        self.windows: dict[str, RecentRequests] = {}
        self._requests = Children(metrics.requests)
        self._refresher: asyncio.Task[None] | None = None
        self._server: ThreadingWSGIServer | None = None
        self.access_log: AccessLog | None = None

    def load(self, loader: Any) -> None:
        self.core.listeners.append(self.reconfigure)

    def reconfigure(self, config: LoadedConfig) -> None:
        limit = config.model.unit.rate_limit_per_minute
        for up in config.model.unit.upstreams:
            self.windows.setdefault(up.environment, RecentRequests())
            self.metrics.configured_limit.labels(up.environment).set(limit)
            self.metrics.headroom.labels(up.environment).set(1.0)
            self.metrics.window_requests.labels(up.environment).set(0)

    def running(self) -> None:
        if self.core.config is None:
            return
        # Gauges that decay with time (window, cache entries) are refreshed in the loop
        # thread, never from the scrape thread.
        self._refresher = asyncio.ensure_future(self._refresh_gauges())
        path = log_path(self.core.config)
        if path is not None:
            try:
                self.access_log = AccessLog(path)
            except OSError as e:
                logger.error("unit-gateway: cannot open the access log %s: %s", path, e)
            else:
                logger.info("unit-gateway: access log %s", path)
        settings = self.core.config.model.metrics
        if not settings.enabled:
            return
        try:
            self._server = serve_metrics(
                self.metrics, settings.host, settings.port, self.core.health
            )
        except OSError as e:
            logger.error(
                "unit-gateway: cannot serve metrics on %s:%s: %s",
                settings.host,
                settings.port,
                e.strerror or e,
            )
            return
        host, port = self._server.server_address[:2]
        logger.info("unit-gateway: metrics on http://%s:%s/metrics", host, port)

    def done(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None

    async def _refresh_gauges(self, every: float = 5.0) -> None:
        while True:
            self.core.health.beat()  # /healthz: the loop turns
            self.update_window_gauges()
            self.core_cache_gauges()
            await asyncio.sleep(every)

    def core_cache_gauges(self) -> None:
        service = self.tokens.service
        if service is None:
            return
        counts = service.cache.count_by_kind()
        for kind in ("customer", "cardholder"):
            self.metrics.cache_entries.labels(kind).set(counts.get(kind, 0))

    def update_window_gauges(self) -> None:
        config = self.core.config
        if config is None:
            return
        limit = config.model.unit.rate_limit_per_minute
        now = time.monotonic()
        for environment, window in self.windows.items():
            sent = window.count(now)
            self.metrics.window_requests.labels(environment).set(sent)
            self.metrics.headroom.labels(environment).set(max(0.0, 1.0 - sent / limit))

    def response(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def _record(self, flow: http.HTTPFlow) -> None:
        # The token addon already matched the upstream and route; it hands them over here.
        state = self.tokens.finish(flow)
        if state is None:
            if self.core.config is not None:
                self.metrics.non_unit_requests.inc()
            return
        request = flow.request
        route = state.route
        method = request.method if request.method in HTTP_METHODS else "OTHER"
        response = flow.response
        status = str(response.status_code) if response is not None else "error"
        m = self.metrics
        self._requests(route, method, status).inc()
        now = time.time()
        total = max(0.0, now - request.timestamp_start)
        m.request_duration.labels(route, method).observe(total)
        mint = float(flow.metadata.get(MINT_SECONDS_KEY, 0.0))
        upstream_seconds = 0.0
        if response is not None and not flow.metadata.get(LOCAL_RESPONSE_KEY):
            sent = request.timestamp_end or request.timestamp_start
            upstream_seconds = max(0.0, (response.timestamp_end or now) - sent)
            m.upstream_duration.labels(route, method).observe(upstream_seconds)
            self._rate_limit(flow, state.upstream.environment, route)
        m.overhead.labels(route, method).observe(max(0.0, total - upstream_seconds - mint))
        self._note_reachability(flow, state.upstream.environment)
        if self.access_log is not None:
            self.access_log.write(
                route=route,
                method=method,
                status=response.status_code if response is not None else "error",
                duration=total,
                upstream=upstream_seconds,
                mint=mint,
                identity=state.identity.kind if state.identity is not None else "caller",
                token=self._token_fingerprint(flow),
                environment=state.upstream.environment,
            )

    def _note_reachability(self, flow: http.HTTPFlow, environment: str) -> None:
        """/readyz reports whether Unit answered the last request to each environment."""
        response = flow.response
        if response is not None and not flow.metadata.get(LOCAL_RESPONSE_KEY):
            self.core.health.unit[environment] = "reachable"
        elif flow.error is not None or (response is not None and response.status_code >= 502):
            self.core.health.unit[environment] = "unreachable"

    def _token_fingerprint(self, flow: http.HTTPFlow) -> str | None:
        """The fingerprint of the credential Unit got (injected, or the caller's own)."""
        redaction = self.tokens.redaction
        value = redaction.upstream_authorization(flow) or redaction.real_request_header(
            flow, "Authorization"
        )
        if not value:
            return None
        scheme, _, credential = value.strip().partition(" ")
        credential = credential.strip() or scheme
        if credential.startswith(identity.PREFIX):
            return None  # refused before a token was attached
        return redaction.redactor.fingerprint(credential)

    def _rate_limit(self, flow: http.HTTPFlow, environment: str, route: str) -> None:
        window = self.windows.get(environment)
        if window is None:
            window = self.windows[environment] = RecentRequests()
        window.add(time.monotonic())
        assert flow.response is not None
        if flow.response.status_code == 429:
            self.metrics.rate_limited.labels(route).inc()
        # One pass over the raw header names: most responses carry none of these.
        names = {name.lower() for name, _ in flow.response.headers.fields}
        if not names & _RATE_LIMIT_HEADERS:
            return
        headers = flow.response.headers
        retry_after = headers.get("Retry-After")
        if retry_after:
            seconds = retry_after_seconds(retry_after)
            if seconds is not None:
                self.metrics.retry_after.set(seconds)
        if names & _REPORTED_LIMIT_HEADERS:
            limit, remaining = reported_limits(headers)
            if limit is not None:
                self.metrics.unit_limit.labels(environment).set(limit)
            if remaining is not None:
                self.metrics.unit_remaining.labels(environment).set(remaining)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood the proxy's log


def metrics_app(
    metrics: GatewayMetrics, health: Health | None = None
) -> Callable[..., Iterable[bytes]]:
    """The WSGI app that answers ``/metrics`` (gzip when the scraper accepts it), and the
    ``/healthz`` and ``/readyz`` probes."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        probe = probe_answer(health, path) if health is not None and path else None
        if probe is not None:
            status, answer = probe
            start_response(status, [("Content-Type", "application/json")])
            return [answer]
        if path not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"see /metrics, /healthz, /readyz\n"]
        body = metrics.exposition()
        headers = [("Content-Type", CONTENT_TYPE_LATEST)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    return app


def serve_metrics(
    metrics: GatewayMetrics, host: str, port: int, health: Health | None = None
) -> ThreadingWSGIServer:
    """Listen and serve from a daemon thread, apart from the proxy's loop: a scrape never
    waits on it. Returns the server (its address; ``shutdown`` to stop)."""
    app = metrics_app(metrics, health)
    server = make_server(host, port, app, ThreadingWSGIServer, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
