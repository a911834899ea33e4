"""Prometheus metrics: the registry, metric names, and the addon that serves ``/metrics``.

Names are a contract once dashboards use them: prefix ``unit_gateway_``, base units,
``_total`` counters, labels only from bounded sets.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Info, start_http_server

from unit_gateway import __version__

if TYPE_CHECKING:
    from unit_gateway.core import GatewayCore

logger = logging.getLogger(__name__)

PREFIX = "unit_gateway"


class GatewayMetrics:
    """Every metric the gateway exports, in one registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.build = Info(f"{PREFIX}_build", "unit-gateway build", registry=self.registry)
        self.build.info({"version": __version__})


class MetricsServer:
    """Serves the registry on its own port, apart from the proxy's listeners."""

    def __init__(self, core: GatewayCore, metrics: GatewayMetrics) -> None:
        self.core = core
        self.metrics = metrics
        self._server: Any = None
        self._thread: Any = None

    def running(self) -> None:
        if self.core.config is None:
            return
        settings = self.core.config.model.metrics
        if not settings.enabled:
            return
        try:
            # prometheus-client serves from its own thread: a scrape never waits on the proxy loop.
            self._server, self._thread = start_http_server(
                settings.port, addr=settings.host, registry=self.metrics.registry
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
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
