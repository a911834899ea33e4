"""The redirect-loop guard: a connection the gateway opened that a firewall rule sends back
to the gateway itself is closed, and the log says why (docs/transparent-mode.md).

A looped connection's two ends are those of one of the gateway's own server connections,
swapped; both ends are compared, since Linux lets connections to different places share a
local port. A server connection's local end is known only once it is connected, so a
connection from this host to a transparent listener waits briefly while server connections
that started just before it are still opening. The gateway's own token calls use
:func:`own_socket`, known from the moment it starts connecting.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import weakref
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from time import monotonic  # its own name: tests move this clock, not asyncio's
from typing import TYPE_CHECKING, Any

from mitmproxy import connection
from mitmproxy.proxy import server_hooks
from mitmproxy.utils import human

from unit_gateway.net.modes import TRANSPARENT_MODES

if TYPE_CHECKING:
    from unit_gateway.metrics.registry import GatewayMetrics

logger = logging.getLogger(__name__)

#: How long a connection from this host waits for the gateway's own connects to settle, and
#: how recent a connect must be to be waited for.
SETTLE_SECONDS = 1.0
#: A connect neither reported connected nor failed after this long (cancelled at shutdown,
#: say) is forgotten.
_FORGET_SECONDS = 600.0
_LOCAL_CACHE_LIMIT = 1024


def is_local_address(ip: str) -> bool:
    """Whether ``ip`` is an address of this host (of this network namespace): only a local
    address can be bound."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((ip, 0))
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class _OwnSocket:
    #: (host, port) the socket connects to
    remote: tuple[Any, ...]
    #: called when a redirect sends this socket back to the gateway
    on_loop: Callable[[], None]


#: The gateway's own sockets opened outside mitmproxy.
_OWN_SOCKETS: weakref.WeakKeyDictionary[socket.socket, _OwnSocket] = weakref.WeakKeyDictionary()


def own_socket(addr_info: tuple[Any, ...], *, on_loop: Callable[[], None]) -> socket.socket:
    """A socket for one of the gateway's own connections (aiohttp's ``socket_factory``):
    known to the guard, which closes it (and calls ``on_loop``) if a redirect sends it back
    to the gateway."""
    family, type_, proto, _, address = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    _OWN_SOCKETS[sock] = _OwnSocket((address[0], address[1]), on_loop)
    return sock


def _own_socket(local: tuple[Any, ...], remote: tuple[Any, ...]) -> _OwnSocket | None:
    """The :func:`own_socket` socket that connects from ``local`` to ``remote``, if any."""
    for sock, own in list(_OWN_SOCKETS.items()):
        if own.remote != remote or sock.fileno() == -1:
            continue
        try:
            name = sock.getsockname()
        except OSError:
            continue
        if (name[0], name[1]) == local:
            return own
    return None


class RedirectLoopGuard:
    def __init__(self, metrics: GatewayMetrics | None = None) -> None:
        self.metrics = metrics
        #: (local (ip, port), remote (ip, port)) of each connected server connection
        self._own: set[tuple[tuple[Any, ...], tuple[Any, ...]]] = set()
        #: server connections being opened (-> when that started), and an event set whenever
        #: one settles
        self._opening: dict[Hashable, float] = {}
        self._settled = asyncio.Event()
        self._local: dict[str, bool] = {}

    # --- the gateway's own server connections ----------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._opening[data.server.id] = monotonic()

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        ends = _ends(server.sockname, server.peername)
        if ends is not None:
            self._own.add(ends)
        self._settle(server)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._settle(data.server)

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        # (only ever after server_connected, which settled it)
        ends = _ends(data.server.sockname, data.server.peername)
        if ends is not None:
            self._own.discard(ends)

    def _settle(self, server: connection.Server) -> None:
        if self._opening.pop(server.id, None) is not None:
            self._settled.set()
            self._settled = asyncio.Event()

    # --- clients -----------------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> Awaitable[None] | None:
        # A coroutine only when the client must wait: most connections cost a lookup or two.
        peer = client.peername
        # Seen from a looped client, the server connection's ends are swapped.
        key = _ends(peer, client.sockname)
        if key is None:
            return None
        if (
            key not in self._own
            and self._opening
            and isinstance(client.proxy_mode, TRANSPARENT_MODES)
            and self._from_this_host(peer[0])
        ):
            waiting = self._recent_connects()
            if waiting:
                return self._settle_then_check(client, key, waiting)
        self._check(client, key)
        return None

    def _recent_connects(self) -> set[Hashable]:
        """The gateway's own connects that started too recently to rule out; stale ones go."""
        now = monotonic()
        recent: set[Hashable] = set()
        for server_id, started in list(self._opening.items()):
            if now - started < SETTLE_SECONDS:
                recent.add(server_id)
            elif now - started > _FORGET_SECONDS:
                del self._opening[server_id]
        return recent

    async def _settle_then_check(
        self, client: connection.Client, key: tuple[tuple[Any, ...], ...], waiting: set[Hashable]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_SECONDS
        while key not in self._own and not waiting.isdisjoint(self._opening):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._settled.wait(), remaining)
            except TimeoutError:
                break
        self._check(client, key)

    def _check(self, client: connection.Client, key: tuple[tuple[Any, ...], ...]) -> None:
        if key not in self._own:
            # A token-client socket that came back comes from this host: others need no walk.
            own = _own_socket(*key) if _OWN_SOCKETS and self._from_this_host(key[0][0]) else None
            if own is None:
                return
            own.on_loop()
        if self.metrics is not None:
            self.metrics.redirect_loops.inc()
        client.error = "redirect loop: a connection of the gateway's own came back to it"
        logger.error(
            "unit-gateway: redirect loop: the gateway's own connection to %s was sent back "
            "to it (from %s) and is closed. A firewall rule redirects the gateway's "
            "traffic too: exclude the gateway's user from it (docs/transparent-mode.md)",
            human.format_address(key[1]),
            human.format_address(key[0]),
        )

    def _from_this_host(self, ip: str) -> bool:
        found = self._local.get(ip)
        if found is None:
            if len(self._local) >= _LOCAL_CACHE_LIMIT:
                self._local.clear()
            found = self._local[ip] = is_local_address(ip)
        return found


def _ends(local: Any, remote: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """A connection's (local, remote) (host, port) pair; IPv6 addresses carry flow info and
    scope id, which say nothing about the socket."""
    if not local or not remote:
        return None
    return (local[0], local[1]), (remote[0], remote[1])
