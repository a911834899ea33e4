"""The redirect-loop guard's logic, driven without a proxy (the end-to-end case is in
test_transparent_e2e.py)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from mitmproxy import connection
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.mode_specs import ProxyMode

from unit_gateway.metrics.registry import GatewayMetrics
from unit_gateway.net import loops
from unit_gateway.net.loops import RedirectLoopGuard, is_local_address

UNIT = ("198.18.0.10", 443)


def client(
    peer: tuple[str, int], mode: str = "transparent", going_to: tuple[str, int] = UNIT
) -> connection.Client:
    """A client connection; in transparent mode its sockname is where it was going."""
    return connection.Client(
        peername=peer,
        sockname=going_to,
        timestamp_start=0,
        proxy_mode=ProxyMode.parse(mode),
    )


def server_data(local: tuple[str, int] | None) -> server_hooks.ServerConnectionHookData:
    """One of the gateway's own connections to Unit, from ``local`` (None: not yet known)."""
    server = connection.Server(address=UNIT)
    server.sockname = local
    server.peername = UNIT
    return server_hooks.ServerConnectionHookData(server, client(("192.0.2.1", 1)))


async def admitted(guard: RedirectLoopGuard, client: connection.Client) -> None:
    """The hook as mitmproxy runs it: awaited when it returns something."""
    waiting = guard.client_connected(client)
    if waiting is not None:
        await waiting


def test_local_addresses_are_told_by_binding() -> None:
    assert is_local_address("127.0.0.1")
    assert not is_local_address("192.0.2.1")  # TEST-NET-1: on no host
    assert not is_local_address("not an address")


async def test_a_client_whose_peer_is_a_connected_server_socket_is_killed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = GatewayMetrics()
    guard = RedirectLoopGuard(metrics)
    data = server_data(("127.0.0.1", 40001))
    guard.server_connect(data)
    guard.server_connected(data)
    looped = client(("127.0.0.1", 40001))
    await admitted(guard, looped)
    assert looped.error and "redirect loop" in looped.error
    assert metrics.registry.get_sample_value("unit_gateway_redirect_loops_total") == 1
    assert "exclude the gateway's user" in caplog.text
    assert "198.18.0.10:443" in caplog.text

    # Another local client is let in, without waiting: nothing is being opened.
    other = client(("127.0.0.1", 40002))
    await asyncio.wait_for(admitted(guard, other), 0.1)
    assert other.error is None

    # Once the server connection is gone, its port may be any client's.
    guard.server_disconnected(data)
    reused = client(("127.0.0.1", 40001))
    await admitted(guard, reused)
    assert reused.error is None


async def test_the_looped_client_can_arrive_before_the_connect_is_reported() -> None:
    guard = RedirectLoopGuard()
    data = server_data(None)
    guard.server_connect(data)
    looped = client(("127.0.0.1", 40003))
    check = asyncio.create_task(admitted(guard, looped))
    await asyncio.sleep(0.01)
    assert not check.done()  # waits while the gateway's own connect is still opening
    data.server.sockname = ("127.0.0.1", 40003)
    guard.server_connected(data)
    await asyncio.wait_for(check, 1)
    assert looped.error is not None


async def test_a_client_from_this_host_waits_only_for_connects_that_were_opening() -> None:
    guard = RedirectLoopGuard()
    first = server_data(None)
    guard.server_connect(first)
    local = client(("127.0.0.1", 40004))
    check = asyncio.create_task(admitted(guard, local))
    await asyncio.sleep(0.01)
    later = server_data(None)
    guard.server_connect(later)  # opened after the client came: not waited for
    guard.server_connect_error(first)
    await asyncio.wait_for(check, 0.5)
    assert local.error is None


async def test_a_connect_that_never_settles_delays_a_local_client_by_at_most_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loops, "SETTLE_SECONDS", 0.05)
    guard = RedirectLoopGuard()
    guard.server_connect(server_data(None))
    local = client(("127.0.0.1", 40005))
    started = time.monotonic()
    await asyncio.wait_for(admitted(guard, local), 1)
    assert 0.04 <= time.monotonic() - started < 0.5  # it waited, and no longer than the limit
    assert local.error is None


async def test_remote_clients_never_wait() -> None:
    guard = RedirectLoopGuard()
    guard.server_connect(server_data(None))
    remote = client(("192.0.2.7", 50000))
    await asyncio.wait_for(admitted(guard, remote), 0.05)
    assert remote.error is None


async def test_regular_listeners_check_without_waiting() -> None:
    guard = RedirectLoopGuard()
    opening = server_data(None)
    guard.server_connect(opening)
    local = client(("127.0.0.1", 40006), mode="regular")
    await asyncio.wait_for(admitted(guard, local), 0.05)
    assert local.error is None
    connected = server_data(("127.0.0.1", 40007))
    guard.server_connected(connected)
    looped = client(("127.0.0.1", 40007), mode="regular")
    await admitted(guard, looped)
    assert looped.error is not None


async def test_a_connect_opening_for_long_is_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A connect to this host completes at once; one that was never reported (cancelled at
    # shutdown, say) must not hold every later local client up.
    guard = RedirectLoopGuard()
    stale = server_data(None)
    guard.server_connect(stale)
    started = loops.monotonic()
    monkeypatch.setattr(loops, "monotonic", lambda: started + loops.SETTLE_SECONDS + 1)
    local = client(("127.0.0.1", 40008))
    await asyncio.wait_for(admitted(guard, local), 0.05)
    assert local.error is None
    # ... and after long enough it is forgotten.
    monkeypatch.setattr(loops, "monotonic", lambda: started + loops._FORGET_SECONDS + 1)
    await admitted(guard, client(("127.0.0.1", 40009)))
    assert guard._opening == {}


async def test_a_client_sharing_a_local_port_with_a_connection_to_unit_is_let_in() -> None:
    # Linux gives connections to different places the same local port: 500 concurrent
    # clients on this host met the gateway's own connections' ports and were reset.
    guard = RedirectLoopGuard()
    guard.server_connected(server_data(("127.0.0.1", 40010)))
    neighbour = client(("127.0.0.1", 40010), mode="regular", going_to=("127.0.0.1", 8080))
    await admitted(guard, neighbour)
    assert neighbour.error is None
    transparent = client(("127.0.0.1", 40010), going_to=("198.18.0.99", 443))
    await admitted(guard, transparent)
    assert transparent.error is None


async def test_a_client_whose_peer_is_one_of_the_gateways_own_sockets_is_killed() -> None:
    # The gateway's token calls connect through own_socket (aiohttp's socket_factory): the
    # guard knows each such socket from the moment it connects, with no server hooks.
    guard = RedirectLoopGuard(GatewayMetrics())
    with socket.create_server(("127.0.0.1", 0)) as unit:
        address = unit.getsockname()
        info = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0]
        loops_seen: list[bool] = []
        own = loops.own_socket(info, on_loop=lambda: loops_seen.append(True))
        own.connect(address)
        local = own.getsockname()
        elsewhere = client(local, going_to=("127.0.0.1", address[1] + 1))
        await admitted(guard, elsewhere)
        assert elsewhere.error is None  # the same local end, another destination
        looped = client(local, going_to=address)
        await admitted(guard, looped)
        assert looped.error and "redirect loop" in looped.error
        assert loops_seen == [True]  # the token client names the loop in its error
        own.close()
        reused = client(local, going_to=address)
        await admitted(guard, reused)
        assert reused.error is None  # closed: its port may be any client's
