"""The gateway's core addon: loads the configuration and runs the embedded sandbox.

Other addons get the configuration from here (``core.config``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets as pysecrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mitmproxy import ctx, exceptions

from unit_gateway.config import schema
from unit_gateway.config.health import Health
from unit_gateway.config.schema import ConfigError, LoadedConfig, Secret

if TYPE_CHECKING:
    from mitmproxy.addonmanager import Loader

    from unit_gateway.metrics.registry import GatewayMetrics
    from unit_gateway.sandbox.server import RunningSandbox

logger = logging.getLogger(__name__)

OPTION = "unit_gateway_config"
RELOAD_CHECK_SECONDS = 1.0
#: Set up only at start: a reload cannot change them.
RESTART_SECTIONS = ("metrics", "sandbox", "access_log", "store")


def _stamp_of(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def describe_problems(path: str, error: ConfigError) -> str:
    """The one wording of a refused configuration, shared by check-config and the addon."""
    lines = [f"invalid unit-gateway configuration {path}:"]
    lines += [f"  {problem}" for problem in error.problems]
    return "\n".join(lines)


def _freeze_startup_objects() -> None:
    """Hide start-up objects, which live as long as the process, from the garbage collector,
    so full collections stop walking them; garbage is collected first so it is not kept."""
    gc.collect()
    gc.freeze()


class GatewayCore:
    def __init__(self, metrics: GatewayMetrics | None = None) -> None:
        self.metrics = metrics
        self.config: LoadedConfig | None = None
        #: Called with each configuration applied, reloads too.
        self.listeners: list[Callable[[LoadedConfig], None]] = []
        self._watcher: asyncio.Task[None] | None = None
        self._stamp: tuple[int, int] | None = None
        self.sandbox: RunningSandbox | None = None
        self._org_token: Secret | None = None
        self._running = False
        self.health = Health()

    @property
    def org_token(self) -> Secret | None:
        """The configured org token, or the one made up for the embedded sandbox."""
        if self.config is not None and self.config.org_token is not None:
            return self.config.org_token
        return self._org_token

    def load(self, loader: Loader) -> None:
        loader.add_option(
            OPTION,
            str,
            "",
            "Path of the unit-gateway YAML configuration file.",
        )

    def configure(self, updated: set[str]) -> None:
        if OPTION not in updated:
            return
        path = ctx.options.unit_gateway_config
        if not path:
            self._refuse(
                "the option unit_gateway_config is not set (--set unit_gateway_config=FILE)"
            )
            return
        try:
            loaded = schema.load(path)
        except ConfigError as e:
            self._count_load("error")
            self._refuse(describe_problems(path, e))
            return
        self._apply(loaded)
        logger.info("unit-gateway: configuration %s loaded", path)

    def _apply(self, loaded: LoadedConfig) -> None:
        self.config = loaded
        self._stamp = _stamp_of(loaded.path)
        self._count_load("ok")
        for listener in self.listeners:
            # One failing addon must not keep it from the others.
            try:
                listener(loaded)
            except Exception:
                logger.exception("unit-gateway: applying configuration %s failed", loaded.path)

    def _count_load(self, outcome: str) -> None:
        if self.metrics is None:
            return
        if self._running:  # the first load is not a reload
            self.metrics.config_reloads.labels(outcome).inc()
        if outcome == "ok":
            self.metrics.config_reload_success.set_to_current_time()

    def _refuse(self, message: str) -> None:
        if self._running:
            # mitmproxy rolls the change back; the running config stays.
            raise exceptions.OptionsError(message)
        # ErrorCheck exits before any server binds, with no traceback burying the message.
        logger.error(message)

    async def running(self) -> None:
        self._running = True
        if self.config is None:
            return
        self._watcher = asyncio.ensure_future(self._watch())
        settings = self.config.model.sandbox
        if settings.embedded:
            await self._start_embedded_sandbox()
        self._announce()
        # after every addon's running hook: their state is start-up state too
        asyncio.get_running_loop().call_soon(_freeze_startup_objects)

    async def _start_embedded_sandbox(self) -> None:
        from unit_gateway.sandbox import server

        assert self.config is not None
        settings = self.config.model.sandbox
        if self.config.org_token is None:
            self._org_token = Secret("v2.public." + pysecrets.token_urlsafe(48), "generated")
        assert self.org_token is not None
        try:
            self.sandbox = await server.start(
                server.SandboxSettings(
                    host=settings.host,
                    port=settings.port,
                    org_token=self.org_token.reveal(),
                    rate_limit_per_minute=settings.rate_limit_per_minute,
                )
            )
        except OSError as e:
            logger.error(
                "unit-gateway: cannot start the embedded sandbox on %s:%s: %s",
                settings.host,
                settings.port,
                e.strerror or e,
            )

    def _announce(self) -> None:
        assert self.config is not None
        proxyserver = ctx.master.addons.get("proxyserver")
        for server in proxyserver.servers if proxyserver else []:
            for host, port, *_ in server.listen_addrs:
                spec = server.mode
                mode = f"{spec.type_name}:{spec.data}" if spec.data else spec.type_name
                shown = f"[{host}]" if ":" in host else host  # IPv6
                logger.info("unit-gateway: proxy listening on %s:%s (%s)", shown, port, mode)
        for up in self.config.model.unit.upstreams:
            logger.info("unit-gateway: upstream %s (%s)", up.url, up.environment)
        if self.sandbox is not None:
            logger.info("unit-gateway: embedded sandbox on %s", self.sandbox.url)
        ca = Path(os.path.expanduser(ctx.options.confdir)) / "mitmproxy-ca-cert.pem"
        logger.info("unit-gateway: CA certificate %s", ca)

    async def _watch(self, every: float = RELOAD_CHECK_SECONDS) -> None:
        """Reload the file when it changes; a broken one is reported, the running one stays."""
        while True:
            await asyncio.sleep(every)
            if self.config is None or self.config.path is None:
                continue
            stamp = _stamp_of(self.config.path)
            if stamp is None or stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                self.reload()
            except Exception:  # a bug must not end the watch
                logger.exception("unit-gateway: reloading %s failed", self.config.path)

    def reload(self) -> bool:
        assert self.config is not None and self.config.path is not None
        path = self.config.path
        try:
            loaded = schema.load(path)
        except ConfigError as e:
            self._count_load("error")
            logger.error(
                "%s\nunit-gateway: the running configuration stays in force",
                describe_problems(str(path), e).replace("invalid", "not reloading invalid", 1),
            )
            return False
        for section in RESTART_SECTIONS:
            if getattr(loaded.model, section) != getattr(self.config.model, section):
                logger.warning("unit-gateway: a change to %s takes effect after a restart", section)
        self._apply(loaded)
        logger.info("unit-gateway: configuration %s reloaded", path)
        return True

    async def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.sandbox is not None:
            await self.sandbox.stop()
            self.sandbox = None
