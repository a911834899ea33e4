"""One replica's connection to Redis: every call within a deadline, down after a refusal or
repeated timeouts (calls then return :data:`UNAVAILABLE` at once), a probe that brings it back
with fresh connections and the scripts loaded, and the subscription to the fleet's channel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from unit_gateway.tokens.store_scripts import SCRIPTS

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Unavailable:
    """The store could not answer in time: fall back to this replica's own state."""

    _instance: Unavailable | None = None

    def __new__(cls) -> Unavailable:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE: Final = Unavailable()


#: Connections per replica to a single Redis: requests wait for one (within the deadline).
MAX_CONNECTIONS = 64

# What counts as the store failing (anything else is a bug and propagates). The cluster
# client's own errors (a cluster no node of which answers) do not derive from RedisError.
_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)
#: Calls in a row past their deadline that take the store down (each alone falls back).
DOWN_AFTER_TIMEOUTS = 3
#: Connecting before the replica takes requests may take this long: a cluster client maps
#: the cluster on its first call, which an operation's deadline does not allow for.
WARM_UP_SECONDS = 5.0


class RedisLink:
    def __init__(
        self,
        url: str,
        channel: str,
        *,
        cluster: bool = False,
        tls: dict[str, str] | None = None,
        operation_timeout: float = 0.1,
        probe_interval: float = 1.0,
    ) -> None:
        self._url = url
        self.channel = channel
        self._cluster = cluster
        self._tls = tls or {}
        self.timeout = operation_timeout
        self.probe_interval = probe_interval
        self.client: Redis | RedisCluster = self._connect()
        self._up = True
        #: Calls in a row that failed (see DOWN_AFTER_TIMEOUTS).
        self._failures = 0
        self._probe_task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._on_message: Callable[[bytes], None] = lambda data: None
        self._on_gap: Callable[[], None] | None = None
        #: ``op:outcome`` -> count (outcomes: ok, error, timeout, skipped while down); the
        #: store adds its own counts.
        self.counts: Counter[str] = Counter()
        #: Called with (operation, outcome, seconds) after every call: the metrics hook.
        self.on_operation: Callable[[str, str, float], None] | None = None
        #: Called with True/False when the store comes back / goes down.
        self.on_state: Callable[[bool], None] | None = None

    def _connect(self) -> Redis | RedisCluster:
        if self._cluster:
            return RedisCluster.from_url(self._url, **self._tls)
        pool = BlockingConnectionPool.from_url(
            self._url, max_connections=MAX_CONNECTIONS, timeout=None, **self._tls
        )
        return Redis(connection_pool=pool)

    @property
    def up(self) -> bool:
        """Whether the replica shares through Redis now (False: it runs on its own state)."""
        return self._up

    @property
    def subscribed(self) -> bool:
        """Whether other replicas' messages reach this one now."""
        return self._subscribed.is_set()

    async def start(
        self, on_message: Callable[[bytes], None], on_gap: Callable[[], None] | None
    ) -> None:
        """Subscribe to the channel (``on_message`` gets each message; ``on_gap()``: messages
        may have been missed while the subscription was down), connect and load the scripts."""
        self._on_message = on_message
        self._on_gap = on_gap
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())
        await self._warm_up()

    async def _warm_up(self) -> None:
        """Connect to every node and load the scripts, so that the first requests pay
        neither. A store that does not answer is down from the start (the probe follows)."""
        started = time.perf_counter()
        try:
            await self._prepare()
        except _FAILURES as e:
            outcome = "timeout" if isinstance(e, TimeoutError) else "error"
            self.record("warm_up", outcome, time.perf_counter() - started)
            self._went_down(e)
            return
        self.record("warm_up", "ok", time.perf_counter() - started)

    async def _prepare(self) -> None:
        async with asyncio.timeout(WARM_UP_SECONDS):
            if isinstance(self.client, RedisCluster):
                await self.client.initialize()
            await self.client.ping()
            for script in SCRIPTS.values():
                await self.client.script_load(script.source)

    async def wait_subscribed(self, seconds: float) -> bool:
        """Whether the subscription is up, waiting at most ``seconds`` for it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._subscribed.wait()
        return self.subscribed

    async def close(self) -> None:
        for task in (self._listener, self._probe_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = self._probe_task = None
        with contextlib.suppress(*_FAILURES):
            await self.client.aclose()

    def _went_down(self, error: BaseException) -> None:
        if self._up:
            self._up = False
            # The error's kind only: a message could name the URL, which may hold a password.
            logger.warning(
                "unit-gateway: the shared store (Redis) is unavailable (%s); each replica "
                "uses its own tokens, challenges and limits until it is back",
                _describe(error),
            )
            self._notify_state(False)
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.create_task(self._probe())

    def _notify_state(self, up: bool) -> None:
        if self.on_state is not None:
            try:
                self.on_state(up)
            except Exception:
                logger.exception("unit-gateway: shared store state callback failed")

    async def _probe(self) -> None:
        while not self._up:
            await asyncio.sleep(self.probe_interval)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.ping()
                # The pool's other connections died with the old server, and a restarted
                # Redis has no scripts: replace both before requests use the store again.
                await self._drop_connections()
                await self._prepare()
            except _FAILURES:
                continue
            self._up = True
            self._failures = 0
            logger.info("unit-gateway: the shared store (Redis) is back; replicas share again")
            self._notify_state(True)
            if self._on_gap is not None:
                # Drops published while it was down reached nobody.
                self._call_gap()

    async def _drop_connections(self) -> None:
        if isinstance(self.client, RedisCluster):
            await self.client.aclose()  # the next call maps the cluster again
        else:
            await self.client.connection_pool.disconnect()

    def _call_gap(self) -> None:
        if self._on_gap is not None:
            try:
                self._on_gap()
            except Exception:
                logger.exception("unit-gateway: shared store gap callback failed")

    async def run(self, op: str, work: Callable[[], Awaitable[T]]) -> T | Unavailable:
        """``work`` within the deadline, or UNAVAILABLE (and the store is down)."""
        if not self._up:
            self.record(op, "skipped", 0.0)
            return UNAVAILABLE
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                result = await work()
        except _FAILURES as e:
            outcome = "timeout" if isinstance(e, TimeoutError) else "error"
            self.record(op, outcome, time.perf_counter() - started)
            self._failures += 1
            # One slow answer under load is not an outage; a refused connection is.
            if not isinstance(e, TimeoutError) or self._failures >= DOWN_AFTER_TIMEOUTS:
                self._went_down(e)
            return UNAVAILABLE
        self._failures = 0
        self.record(op, "ok", time.perf_counter() - started)
        return result

    def record(self, op: str, outcome: str, seconds: float) -> None:
        self.counts[f"{op}:{outcome}"] += 1
        if self.on_operation is not None:
            try:
                self.on_operation(op, outcome, seconds)
            except Exception:
                logger.exception("unit-gateway: shared store metrics callback failed")

    async def eval(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = SCRIPTS[name]
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # First use on this node (or after a restart): EVAL loads it.
            return await self.client.eval(script.source, len(keys), *keys, *args)

    async def _listen(self) -> None:
        """Keep a subscription to the channel; after a break, report a gap."""
        broken = False
        nodes = self._subscription_urls()
        attempt = 0
        while True:
            url = nodes[attempt % len(nodes)]
            attempt += 1
            client: Redis = Redis.from_url(url, **self._tls)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(max(self.timeout, 1.0)):
                    await pubsub.subscribe(self.channel)
                self._subscribed.set()
                if broken:
                    # While the store is down the replica runs on its local tokens; dropping
                    # them now would mint per replica. The probe reports the gap on return.
                    if self._up:
                        self._call_gap()
                    broken = False
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
            except _FAILURES as e:
                if self._subscribed.is_set():
                    broken = True
                    self._went_down(e)
                self._subscribed.clear()
            finally:
                with contextlib.suppress(*_FAILURES):
                    await pubsub.aclose()
                with contextlib.suppress(*_FAILURES):
                    await client.aclose()
            if self._cluster:
                nodes = self._subscription_urls()
            await asyncio.sleep(self.probe_interval)

    def _subscription_urls(self) -> list[str]:
        """Where to subscribe: the URL, or for a cluster any known node (a message published
        on one node reaches subscribers on every node)."""
        if not self._cluster:
            return [self._url]
        urls = [self._url]
        try:
            nodes = self.client.get_nodes()  # type: ignore[union-attr]
        except Exception:
            nodes = []
        for node in nodes:
            urls.append(_with_address(self._url, node.host, node.port))
        return urls


def _with_address(url: str, host: str, port: int) -> str:
    """``url`` with another host and port, its scheme and credentials kept."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}:{port}", path=""))


def _describe(error: BaseException) -> str:
    """An error's kind, with Redis's error code (NOPERM, OOM, READONLY...) but no text."""
    name = type(error).__name__
    if isinstance(error, ResponseError):
        code = str(error).split(" ", 1)[0]
        if code.isupper() and code.isalpha():
            return f"{name} {code}"
    if isinstance(error, TimeoutError) and not isinstance(error, RedisError):
        return "no answer within the deadline"
    return name
