"""Sections about the gateway process itself: the embedded sandbox, the metrics endpoint, the
access log, start-up and shutdown."""

from __future__ import annotations

from pydantic import Field

from unit_gateway.config.base import _Model


class SandboxSettings(_Model):
    """The local Unit sandbox the gateway can run inside its own process."""

    embedded: bool = False
    """Run the local Unit sandbox inside the gateway process, for development and demos.
    `host:port` must then be one of `unit.upstreams` and no upstream may be `live`."""
    host: str = "127.0.0.1"
    """Address the embedded sandbox listens on."""
    port: int = Field(default=8181, ge=0, le=65535)
    """TCP port the embedded sandbox listens on."""
    rate_limit_per_minute: int = Field(default=1000, ge=1)
    """Requests per minute per client IP the embedded sandbox accepts before answering 429,
    like Unit. Lower it to exercise rate-limit handling."""


class MetricsSettings(_Model):
    enabled: bool = True
    """Serve Prometheus metrics at `http://host:port/metrics`; `false`: no metrics endpoint."""
    host: str = "127.0.0.1"
    """Address the metrics endpoint listens on; `0.0.0.0` where a cluster Prometheus scrapes
    the gateway."""
    port: int = Field(default=9464, ge=0, le=65535)
    """TCP port of the metrics endpoint."""


class AccessLogSettings(_Model):
    path: str | None = Field(default=None, min_length=1)
    """File that gets one JSON line per flow to Unit (time, route template, method, status,
    durations, identity kind, token fingerprint; never an id, body or secret). Relative to
    the configuration file; appended to. Unset: no access log."""


class LifecycleSettings(_Model):
    start_wait_seconds: float = Field(default=10.0, gt=0, le=300)
    """How long a request that arrives while the gateway is still starting waits for it
    (mitmproxy listens before the gateway is ready); then `503 gateway_not_configured`."""
    drain_seconds: float = Field(default=25.0, ge=0, le=3600)
    """On SIGTERM the gateway stops listening and gives the requests in flight this long to
    finish before it exits (keep it under your orchestrator's grace period). A second SIGTERM
    exits at once."""
