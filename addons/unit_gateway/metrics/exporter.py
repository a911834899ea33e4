"""Prometheus metrics: the registry, metric names, and the addons that record and serve them.

Names are a contract once dashboards use them: prefix ``unit_gateway_``, base units,
``_total`` counters, labels only from bounded sets (route template, method, status code,
token kind, strategy, outcome, environment, rule) - never an id.
"""

from __future__ import annotations

import asyncio
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
)
from prometheus_client.exposition import ThreadingWSGIServer

from unit_gateway.config.health import Health, probe_answer
from unit_gateway.flows import FlowRecord, record_of
from unit_gateway.metrics.access_log import AccessLog, log_path
from unit_gateway.metrics.registry import Children, GatewayMetrics
from unit_gateway.net.limits import retry_after_seconds
from unit_gateway.unit_api import identity
from unit_gateway.unit_api.routes import HTTP_METHODS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from unit_gateway.config.core import GatewayCore
    from unit_gateway.config.schema import LoadedConfig
    from unit_gateway.flows import RealValues

logger = logging.getLogger(__name__)

RATE_WINDOW_SECONDS = 60.0


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

    def __init__(self, core: GatewayCore, metrics: GatewayMetrics, real: RealValues) -> None:
        self.core = core
        self.metrics = metrics
        self.real = real
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
            self.metrics.refresh()
            await asyncio.sleep(every)

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
        # The token addon matched the upstream and route; its record says so.
        record = record_of(flow)
        if record is None:
            if self.core.config is not None:
                self.metrics.non_unit_requests.inc()
            return
        request = flow.request
        route = record.route
        method = request.method if request.method in HTTP_METHODS else "OTHER"
        response = flow.response
        status = str(response.status_code) if response is not None else "error"
        m = self.metrics
        self._requests(route, method, status).inc()
        now = time.time()
        total = max(0.0, now - request.timestamp_start)
        m.request_duration.labels(route, method).observe(total)
        mint = record.mint_seconds
        upstream_seconds = 0.0
        if response is not None and not record.answered_locally:
            sent = request.timestamp_end or request.timestamp_start
            upstream_seconds = max(0.0, (response.timestamp_end or now) - sent)
            m.upstream_duration.labels(route, method).observe(upstream_seconds)
            self._rate_limit(flow, record.environment, route)
        m.overhead.labels(route, method).observe(max(0.0, total - upstream_seconds - mint))
        self._note_reachability(flow, record)
        if self.access_log is not None:
            self.access_log.write(
                route=route,
                method=method,
                status=response.status_code if response is not None else "error",
                duration=total,
                upstream=upstream_seconds,
                mint=mint,
                identity=record.identity_kind or "caller",
                token=self._token_fingerprint(flow),
                environment=record.environment,
            )

    def _note_reachability(self, flow: http.HTTPFlow, record: FlowRecord) -> None:
        """/readyz reports whether Unit answered the last request to each environment."""
        response = flow.response
        if response is not None and not record.answered_locally:
            self.core.health.unit[record.environment] = "reachable"
        elif flow.error is not None or (response is not None and response.status_code >= 502):
            self.core.health.unit[record.environment] = "unreachable"

    def _token_fingerprint(self, flow: http.HTTPFlow) -> str | None:
        """The fingerprint of the credential Unit got (injected, or the caller's own)."""
        real = self.real
        value = real.upstream_authorization(flow) or real.real_request_header(flow, "Authorization")
        if not value:
            return None
        scheme, _, credential = value.strip().partition(" ")
        credential = credential.strip() or scheme
        if credential.startswith(identity.PREFIX):
            return None  # refused before a token was attached
        return real.fingerprint(credential)

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
