"""The patch point: every event into an HTTP stream and every command out of it passes
through redaction, synchronously (see docs/architecture.md)."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Generator
from typing import Any, Protocol

from mitmproxy import http
from mitmproxy.connection import ConnectionState, Server
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import dns, tcp, udp, websocket
from mitmproxy.proxy.layers import http as httplayer
from mitmproxy.utils import human

from unit_gateway.mitm import early_errors, gate, patches
from unit_gateway.mitm.stream_errors import _RESPONDED, _answer_error
from unit_gateway.net.deadlines import ResponseOverdue, UpstreamTimedOut, timeout_message

Commands = Generator[commands.Command, Any, None]


class FlowSecrets(Protocol):
    """What the patch point reads of a flow's real values (``redact.FlowSecrets``)."""

    response_headers: Any
    upstream: Any


class StreamGuard(Protocol):
    """The redaction addon, as the patch point calls it."""

    def redact_text(self, text: str) -> str: ...

    def redact_headers(self, headers: http.Headers, substitutions: Any) -> Any: ...

    def before_hook(self, kind: type, flow: http.HTTPFlow) -> None: ...

    def egress(
        self, stream: httplayer.HttpStream, secrets: Any, command: httplayer.SendHttp
    ) -> httplayer.SendHttp: ...

    def conceal(self, flow: Any, *, ended: bool = False) -> None: ...

    def reveal(self, flow: Any) -> None: ...


_GUARD: StreamGuard | None = None
_SECRETS: weakref.WeakKeyDictionary[http.HTTPFlow, Any] = weakref.WeakKeyDictionary()

_HOOKS = (
    httplayer.HttpRequestHeadersHook,
    httplayer.HttpRequestHook,
    httplayer.HttpResponseHook,
    httplayer.HttpErrorHook,
)
_PROTOCOL_ERRORS = (httplayer.ResponseProtocolError, UpstreamTimedOut)
_WAITING = ("state_wait_for_response_headers", "state_consume_response_body")


def install(guard: StreamGuard, store: weakref.WeakKeyDictionary[http.HTTPFlow, Any]) -> bool:
    """Route every stream through ``guard``, if the gate let the gateway start (then True)."""
    global _GUARD, _SECRETS
    if not gate.approved():
        return False
    patches.install(_PATCH_POINT)
    _GUARD, _SECRETS = guard, store
    return True


def uninstall(guard: StreamGuard) -> bool:
    """mitmproxy's own stream again, if ``guard`` is the one installed (then True)."""
    global _GUARD
    if _GUARD is not guard:
        return False
    _GUARD = None
    patches.uninstall(_PATCH_POINT)
    return True


_original_handle_event: Callable[..., Commands] = patches.original(
    httplayer.HttpStream, "handle_event"
)
_original_layer_event: Callable[..., Commands] = patches.original(
    httplayer.HttpLayer, "_handle_event"
)


def _handle_event(self: httplayer.HttpStream, event: events.Event) -> Commands:
    active = _GUARD
    if active is None:
        yield from _original_handle_event(self, event)
        return
    # Absent until HttpStream's first event.
    flow = self.__dict__.get("flow")
    if "_handle_event" in self.__dict__ and flow is not None and flow not in _SECRETS:
        # An open tunnel: its inner streams handle their commands.
        yield from _original_handle_event(self, event)
        return
    if type(event) is ResponseOverdue:
        yield from _answer_overdue(self, event)
        return
    if flow is not None:
        active.reveal(flow)
        if type(event) is httplayer.ResponseHeaders:
            secrets = _SECRETS.get(flow)
            if secrets is not None:  # before it is stored as flow.response
                active.redact_headers(event.response.headers, secrets.response_headers)
    try:
        for command in _original_handle_event(self, event):
            kind = type(command)
            if flow is None:
                flow = self.__dict__.get("flow")
            if kind is httplayer.SendHttp:
                secrets = _SECRETS.get(flow) if flow is not None else None
                sent = command.event  # type: ignore[attr-defined]
                if type(sent) in _PROTOCOL_ERRORS and flow is not None:
                    # mitmproxy's page quotes peer bytes unredacted, even for a CONNECT.
                    _SECRETS.pop(flow, None)  # ends here
                    yield from _answer_error(
                        self,
                        command,  # type: ignore[arg-type]
                        flow,
                        active,
                        unit=secrets is not None and secrets.upstream is not None,
                    )
                    continue
                if type(sent) is httplayer.ResponseHeaders and _final(sent.response.status_code):
                    self.__dict__[_RESPONDED] = True
                if secrets is not None:
                    command = active.egress(self, secrets, command)  # type: ignore[arg-type]
            elif kind in _HOOKS:
                # A tunnelled flow's hooks pass the CONNECT stream too.
                hooked = command.flow  # type: ignore[attr-defined]
                if hooked is flow:
                    active.before_hook(kind, hooked)
            elif kind is httplayer.DropStream and flow is not None:
                # Real values must not outlive the flow (mitmweb keeps it).
                _SECRETS.pop(flow, None)
            if flow is None:
                yield command
                continue
            if isinstance(command, commands.StartHook):
                active.conceal(flow)
            yield command
            # A hook or reply may have concealed it.
            active.reveal(flow)

    finally:
        # Nothing else may run while the flow holds real values.
        if (flow := self.__dict__.get("flow")) is not None:
            active.conceal(flow)


def _layer_handle_event(self: httplayer.HttpLayer, event: events.Event) -> Commands:
    """HttpLayer's own, except that a ResponseOverdue goes to its flow's stream and any
    exception still gets the caller an answer."""
    if _BROKEN in self.__dict__:
        return _nothing()
    if type(event) is ResponseOverdue:
        return _route_overdue(self, event)
    if isinstance(event, events.Start):
        # Client playback carries on past a setup failure.
        return _original_layer_event(self, event)
    return _failures_answered(self, _original_layer_event(self, event))


def _nothing() -> Commands:
    yield from ()


#: Marks an HttpLayer answered and closed.
_BROKEN = "_unit_gateway_broken"


def _failures_answered(layer: httplayer.HttpLayer, handled: Commands) -> Commands:
    try:
        yield from handled
    except Exception as e:
        if _GUARD is None:
            raise
        yield from _answer_failure(layer, e)


def _answer_failure(layer: httplayer.HttpLayer, error: Exception) -> Commands:
    """Instead of mitmproxy's "has crashed!" (fatal at start-up) and no answer: a JSON:API
    error unless a response has begun, then close; the log is redacted."""
    assert _GUARD is not None
    layer.__dict__[_BROKEN] = True
    client = layer.context.client
    message = _GUARD.redact_text(f"{type(error).__name__}: {error}")
    # The layer's own server, or one it opened for a stream (reverse mode, HTTP/2).
    connected = any(
        isinstance(peer, Server) and peer.timestamp_start is not None
        for peer in (layer.context.server, *layer.connections)
    )
    status = 502 if connected else 400
    streams = list(layer.streams.items())
    # Begun for the caller: a response received but not yet sent (not streamed) has not.
    answered = any(stream.__dict__.get(_RESPONDED) for _, stream in streams)
    http1 = (
        client.alpn in (None, b"", b"http/1.1", b"http/1.0") and client.transport_protocol == "tcp"
    )
    outcome = "closed the connection"
    if not client.state & ConnectionState.CAN_WRITE:
        pass
    elif http1:
        if not answered:
            yield commands.SendData(client, early_errors.error_page(status, message))
            outcome = f"answered {status} and closed the connection"
    elif (answers := _answer_streams(layer, streams, status, message)) is not None:
        count = yield from answers
        if count:
            outcome = f"answered {status} on {count} stream(s) and closed the connection"
    yield commands.Log(
        f"unit-gateway: {human.format_address(client.peername)}: the request could not be "
        f"handled ({message}); {outcome}",
        logging.WARNING,
    )
    yield commands.CloseConnection(client)
    for connection in list(layer.connections):
        if connection is not client and connection.state is not ConnectionState.CLOSED:
            yield commands.CloseConnection(connection)


def _answer_streams(
    layer: httplayer.HttpLayer, streams: list[tuple[int, Any]], status: int, message: str
) -> Generator[commands.Command, Any, int] | None:
    """HTTP/2 (or 3): the error on each of the caller's streams no final response has begun
    on, through the connection's own layer; None if the caller's connection has none."""
    connection = layer.connections.get(layer.context.client)
    if connection is None or isinstance(connection, httplayer.HttpStream):
        return None
    return _send_answers(layer, connection, streams, status, message)


def _send_answers(
    layer: httplayer.HttpLayer,
    connection: Any,
    streams: list[tuple[int, Any]],
    status: int,
    message: str,
) -> Generator[commands.Command, Any, int]:
    count = 0
    for stream_id, stream in streams:
        if stream.__dict__.get(_RESPONDED):
            continue
        response = early_errors.error_response(status, message)
        try:
            # all of it or nothing: the layer that raised may be in any state
            sent = [
                *layer.event_to_child(
                    connection, httplayer.ResponseHeaders(stream_id, response, False)
                ),
                *layer.event_to_child(
                    connection, httplayer.ResponseData(stream_id, response.raw_content or b"")
                ),
                *layer.event_to_child(connection, httplayer.ResponseEndOfMessage(stream_id)),
            ]
        except Exception:
            continue
        stream.__dict__[_RESPONDED] = True
        count += 1
        yield from sent
    return count


def _route_overdue(layer: httplayer.HttpLayer, event: ResponseOverdue) -> Commands:
    """mitmproxy routes an injected event by server connection, which fails on HTTP/2:
    hand it to the stream holding the flow, else pass it on as mitmproxy does."""
    for stream in layer.streams.values():
        if stream.__dict__.get("flow") is event.flow:
            yield from layer.event_to_child(stream, event)
            return
    yield from _original_layer_event(layer, event)


FLOW_LAYERS: tuple[type[layer.Layer], ...] = (
    websocket.WebsocketLayer,
    tcp.TCPLayer,
    udp.UDPLayer,
    dns.DNSLayer,
)


#: Last hooks, where addons save and print the flow.
_END_HOOKS = (
    tcp.TcpEndHook,
    tcp.TcpErrorHook,
    udp.UdpEndHook,
    udp.UdpErrorHook,
    websocket.WebsocketEndHook,
)


def _flows_of(held: layer.Layer) -> list[Any]:
    state = held.__dict__
    if (flow := state.get("flow")) is not None:
        return [flow]
    return list(state.get("flows", {}).values())


def _flow_layer_handler(original: Callable[..., Commands]) -> Callable[..., Commands]:
    """``original`` with the flows real while it sends them, redacted before each hook
    (hooks start as eager tasks) and once done."""

    def handle_event(self: layer.Layer, event: events.Event) -> Commands:
        active = _GUARD
        if active is None:
            yield from original(self, event)
            return
        for flow in _flows_of(self):
            active.reveal(flow)
        try:
            for command in original(self, event):
                hook = isinstance(command, commands.StartHook)
                if hook:
                    ended = isinstance(command, _END_HOOKS)
                    for flow in _flows_of(self):
                        active.conceal(flow, ended=ended)
                yield command
                if hook:
                    for flow in _flows_of(self):
                        active.reveal(flow)
        finally:
            for flow in _flows_of(self):
                active.conceal(flow)

    return handle_event


_PATCH_POINT: tuple[patches.Patch, ...] = (
    (httplayer.HttpStream, "handle_event", _handle_event),
    (httplayer.HttpLayer, "_handle_event", _layer_handle_event),
    *(
        (kind, "handle_event", _flow_layer_handler(patches.original(kind, "handle_event")))
        for kind in FLOW_LAYERS
    ),
)


def _answer_overdue(stream: httplayer.HttpStream, event: ResponseOverdue) -> Commands:
    """Cancel upstream (HTTP/1 closes, so a late answer is not read as the next one's) and
    end the stream with UpstreamTimedOut, a 504."""
    if event.flow is not stream.__dict__.get("flow"):
        # The stream has moved on; that flow ended.
        return
    waiting = getattr(stream.server_state, "__name__", None) in _WAITING
    if not waiting or stream.client_state == stream.state_errored:
        return
    message = timeout_message(event.message)
    yield httplayer.SendHttp(
        httplayer.RequestProtocolError(stream.stream_id, message, httplayer.ErrorCode.CANCEL),
        stream.context.server,
    )
    timed_out = UpstreamTimedOut(
        stream.stream_id, message, httplayer.ErrorCode.GENERIC_SERVER_ERROR
    )
    yield from _handle_event(stream, timed_out)


def _final(status_code: int) -> bool:
    """Not interim (1xx); 101 is final: the connection changes protocol."""
    return status_code >= 200 or status_code == 101
