"""Every value a flow holds is redacted, found by walking mitmproxy's own flow state: a secret
planted in every string field that ``flow.get_state()`` has, for each kind of flow mitmproxy
keeps, is gone after the gateway conceals the flow, and back (exactly) when it reveals it."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from ipaddress import IPv6Address
from typing import Any

import pytest
from mitmproxy import dns
from mitmproxy import flow as mflow
from mitmproxy.http import Headers
from mitmproxy.test import tflow

from unit_gateway.config.core import GatewayCore
from unit_gateway.redaction.addon import FlowRedaction
from unit_gateway.redaction.flow_walk import SKIPPED

Leaf = tuple[tuple[Any, ...], str | bytes]

#: Walked by other parts of the gateway: HTTP bodies (the redaction addon's own copies).
OWNED = {("request", "content"), ("response", "content")}


def _token() -> str:
    return "v2.public." + secrets.token_urlsafe(60)


def _leaves(state: Any, path: tuple[Any, ...] = ()) -> Iterator[Leaf]:
    if isinstance(state, str | bytes):
        yield path, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(state, list | tuple):
        for index, value in enumerate(state):
            yield from _leaves(value, (*path, index))


def _walked(path: tuple[Any, ...]) -> bool:
    """Fields the gateway's walk covers (the rest are left out by design, see flow_walk)."""
    return (
        path[0] not in SKIPPED
        and path[0] not in ("id", "type", "version", "backup")
        and path[-1] != "id"
        and path[:2] not in OWNED
    )


def _planted(state: Any, path: tuple[Any, ...], secret: str) -> Any:
    """``state`` with the value at ``path`` holding ``secret`` (same type)."""
    if not path:
        return secret.encode() if isinstance(state, bytes) else secret
    head, *rest = path
    if isinstance(state, dict):
        return {**state, head: _planted(state[head], tuple(rest), secret)}
    items = list(state)
    items[head] = _planted(items[head], tuple(rest), secret)
    return type(state)(items)


FLOWS: dict[str, Callable[[], mflow.Flow]] = {
    "http": lambda: _with_connections(tflow.tflow(resp=True, err=True)),
    "http with trailers": lambda: _with_trailers(tflow.tflow(resp=True)),
    "websocket": lambda: _with_connections(tflow.twebsocketflow()),
    "tcp": lambda: _with_connections(tflow.ttcpflow(err=True)),
    "udp": lambda: _with_connections(tflow.tudpflow(err=True)),
    "dns": lambda: _with_connections(tflow.tdnsflow(resp=True, err=True)),
}


def _with_connections(flow: Any) -> Any:
    """Text in every field of the connections that a TLS handshake or a failure fills."""
    for conn in (flow.client_conn, flow.server_conn):
        conn.error = "connection reset"
        conn.tls_version = "TLSv1.3"
        conn.alpn_offers = [b"h2", b"http/1.1"]
        conn.cipher_list = ["TLS_AES_128_GCM_SHA256"]
    return flow


def _with_trailers(flow: Any) -> Any:
    flow.request.trailers = Headers(x_checksum="abc")
    flow.response.trailers = Headers(x_checksum="def")
    flow.comment = "a comment"
    flow.metadata["note"] = "a note"
    return flow


def _plantable(kind: str) -> tuple[mflow.Flow, dict[tuple[Any, ...], str]]:
    """A flow of ``kind`` built from a state with a different secret in every walked string
    field that takes one (a field whose type or values are fixed is left as it was)."""
    state = FLOWS[kind]().get_state()
    planted: dict[tuple[Any, ...], str] = {}
    for path, _ in list(_leaves(state)):
        if not _walked(path):
            continue
        secret = _token()
        candidate = _planted(state, path, secret)
        try:
            type(FLOWS[kind]()).from_state(_copy(candidate))
        except (ValueError, TypeError, KeyError, AssertionError):
            continue  # an enum-like field (a DNS type, a WebSocket opcode, ...)
        state, planted[path] = candidate, secret
    return type(FLOWS[kind]()).from_state(_copy(state)), planted


def _copy(state: Any) -> Any:
    import copy

    return copy.deepcopy(state)


@pytest.mark.parametrize("kind", list(FLOWS))
def test_a_secret_in_any_field_is_concealed_and_revealed(kind: str) -> None:
    flow, planted = _plantable(kind)
    assert len(planted) >= 5, planted  # the fields a person sees: method, host, messages, ...
    before = flow.get_state()
    redaction = FlowRedaction(GatewayCore())

    redaction.conceal(flow)
    shown = flow.get_state()
    left = [
        (path, secret)
        for path, value in _leaves(shown)
        for secret in planted.values()
        if secret in (value.decode("latin-1") if isinstance(value, bytes) else value)
        and _walked(path)
    ]
    assert left == []
    # Nothing the walk leaves out holds a planted secret either (all were planted in walked
    # fields): the fields left out are those listed in _walked and flow_walk.SKIPPED.
    redaction.reveal(flow)
    assert flow.get_state() == before


def test_every_kind_of_flow_mitmproxy_keeps_is_covered() -> None:
    kinds = {type(make()) for make in FLOWS.values()}
    kept = {k for k in mflow.Flow.__subclasses__() if not k.__module__.startswith("mitmproxy.test")}
    assert kinds == kept


def test_an_edit_made_after_concealing_wins_over_the_real_value() -> None:
    flow = tflow.ttcpflow()
    real = _token().encode()
    flow.messages[0].content = real
    redaction = FlowRedaction(GatewayCore())
    redaction.conceal(flow)
    assert real not in flow.messages[0].content
    flow.messages[0].content = b"an addon's own edit"
    redaction.reveal(flow)
    assert flow.messages[0].content == b"an addon's own edit"


def _dns_with_addresses() -> mflow.Flow:
    """A DNS flow whose answers are binary addresses, each with control bytes in it."""
    flow = tflow.tdnsflow(resp=True)
    flow.response.answers = [
        dns.ResourceRecord("a.example", dns.types.A, dns.classes.IN, 60, bytes([8, 8, 4, 4])),
        dns.ResourceRecord("a.example", dns.types.A, dns.classes.IN, 60, bytes([10, 0, 0, 1])),
        dns.ResourceRecord(
            "a.example", dns.types.AAAA, dns.classes.IN, 60, IPv6Address("2001:db8::1").packed
        ),
    ]
    return flow


@pytest.mark.parametrize("make", [*FLOWS.values(), _dns_with_addresses], ids=[*FLOWS, "dns a+aaaa"])
def test_a_flow_without_secrets_is_left_as_it_is(make: Callable[[], mflow.Flow]) -> None:
    """Concealing changes nothing that holds no secret: a DNS answer's binary address stays
    an address (mitmweb shows it, a saved flow replays it)."""
    flow = make()
    before = flow.get_state()
    redaction = FlowRedaction(GatewayCore())
    redaction.conceal(flow)
    assert flow.get_state() == before


@pytest.mark.parametrize(
    "data",
    # a card number split by a control byte, as an attacker would hide one in an address
    [b"ip=\x01\x02", b"\x01pin:1234\x02", b"\x02\x03ssn=12\x04", b"411111111111\x011111"],
)
def test_a_short_binary_value_gets_the_text_rules(data: bytes) -> None:
    """A binary value too short to be summarised (an address) is still read as text."""
    flow = _dns_with_addresses()
    flow.response.answers[0].data = data
    redaction = FlowRedaction(GatewayCore())
    redaction.conceal(flow)
    assert flow.response.answers[0].data != data
    redaction.reveal(flow)
    assert flow.response.answers[0].data == data


def test_a_longer_binary_value_is_summarised() -> None:
    flow = _dns_with_addresses()
    data = bytes(range(1, 18))
    flow.response.answers[0].data = data
    FlowRedaction(GatewayCore()).conceal(flow)
    assert flow.response.answers[0].data.startswith(b"[stream data redacted: 17 bytes")


def test_a_connection_with_a_secret_is_shown_as_a_copy_and_never_edited() -> None:
    """mitmproxy reads a flow's connections itself (the address it connects to, the name it
    sends upstream), so one with a secret is replaced in the flow by a redacted copy that
    addons still find as the same connection, and the connection itself is left as it is."""
    flow = tflow.tflow(resp=True)
    client, server = flow.client_conn, flow.server_conn
    client.sni = "4111111111111111.example"
    authenticated = {client: "user"}  # as mitmproxy's proxyauth keeps it
    redaction = FlowRedaction(GatewayCore())

    redaction.conceal(flow)
    shown = flow.client_conn
    assert shown is not client and shown.sni is not None and "4111" not in shown.sni
    assert client.sni == "4111111111111111.example"
    assert authenticated[shown] == "user"
    assert flow.server_conn is server  # nothing to redact: not copied
    redaction.conceal(flow)
    assert flow.client_conn is shown

    redaction.reveal(flow)
    assert flow.client_conn is client
    client.sni = "api.s.unit.sh"  # what mitmproxy sets later is read again
    redaction.conceal(flow)
    assert flow.client_conn is client
