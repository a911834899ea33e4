"""The patch point: every event into an HTTP stream and every command out of it passes
through the gateway's redaction, synchronously (see docs/architecture.md for what
it does there). Also the routing of a :class:`~unit_gateway.net.deadlines.ResponseOverdue` to
the stream of its flow; a protocol error's answer is built in ``stream_errors``."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Generator
from typing import Any, Protocol

from mitmproxy import http
from mitmproxy.connection import ConnectionState
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


#: The running guard and its per-flow store; the patched stream does nothing extra while None.
_GUARD: StreamGuard | None = None
_SECRETS: weakref.WeakKeyDictionary[http.HTTPFlow, Any] = weakref.WeakKeyDictionary()

_HOOKS = (
    httplayer.HttpRequestHeadersHook,
    httplayer.HttpRequestHook,
    httplayer.HttpResponseHook,
    httplayer.HttpErrorHook,
)
_PROTOCOL_ERRORS = (httplayer.ResponseProtocolError, UpstreamTimedOut)
#: The server states of a stream that waits for its response.
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
    # HttpStream sets self.flow once, on its first event (None before: no weak reference to
    # None); it is read again only while still None.
    flow = self.__dict__.get("flow")
    if "_handle_event" in self.__dict__ and flow is not None and flow not in _SECRETS:
        # An open tunnel (HttpStream has switched itself to passthrough) of a flow with no
        # real values: all it yields is its inner streams' commands, which those streams'
        # own calls here have handled. Half of all calls per request are these. (A CONNECT
        # flow is never protected, see before_hook: so a ResponseOverdue for a flow inside
        # the tunnel passes here to the inner stream.)
        yield from _original_handle_event(self, event)
        return
    if type(event) is ResponseOverdue:
        yield from _answer_overdue(self, event)
        return
    if flow is not None:
        # The real values of what the last event left redacted, for the stream to send.
        active.reveal(flow)
        if type(event) is httplayer.ResponseHeaders:
            secrets = _SECRETS.get(flow)
            if secrets is not None:  # before HttpStream stores it as flow.response
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
                    # mitmproxy's own error page is HTML and quotes peer bytes unredacted; also
                    # for a flow with no secrets (a CONNECT), which HTTP/2 and /3 answer so too.
                    _SECRETS.pop(flow, None)  # the flow ends here: egress never sees its end
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
                # Only this stream's own flow: a tunnelled flow's hooks pass the CONNECT stream too.
                hooked = command.flow  # type: ignore[attr-defined]
                if hooked is flow:
                    active.before_hook(kind, hooked)
            elif kind is httplayer.DropStream and flow is not None:
                # The flow has ended, also when it failed before its response: its real values go
                # (mitmweb keeps the flow itself).
                _SECRETS.pop(flow, None)
            if flow is None:
                yield command
                continue
            if isinstance(command, commands.StartHook):
                active.conceal(flow)
            yield command
            # What ran meanwhile (a hook, this stream again for a reply) may have concealed it
            active.reveal(flow)

    finally:
        # Whatever this event stored in the flow is redacted before anything else runs.
        if (flow := self.__dict__.get("flow")) is not None:
            active.conceal(flow)


def _layer_handle_event(self: httplayer.HttpLayer, event: events.Event) -> Commands:
    """HttpLayer's own handling, except that a ResponseOverdue goes to the stream of its
    flow, and that whatever mitmproxy or the gateway raises while handling a connection's
    HTTP gets the caller an answer (see ``_answer_failure``)."""
    if _BROKEN in self.__dict__:
        return _nothing()  # answered and closed: what is still in flight is dropped
    if type(event) is ResponseOverdue:
        return _route_overdue(self, event)
    if isinstance(event, events.Start):
        # Setting the layer up, before any request: mitmproxy's own (client playback, for
        # one, relies on carrying on past a failure here).
        return _original_layer_event(self, event)
    return _failures_answered(self, _original_layer_event(self, event))


def _nothing() -> Commands:
    yield from ()


#: Set on an HttpLayer that failed: its connection has been answered and closed.
_BROKEN = "_unit_gateway_broken"


def _failures_answered(layer: httplayer.HttpLayer, handled: Commands) -> Commands:
    try:
        yield from handled
    except Exception as e:
        if _GUARD is None:
            raise
        yield from _answer_failure(layer, e)


def _answer_failure(layer: httplayer.HttpLayer, error: Exception) -> Commands:
    """mitmproxy would log "mitmproxy has crashed!" (at start-up that ends the process) and
    leave the caller without an answer. The caller gets a JSON:API error, unless a response
    has begun, and the connection closes; the log says what failed, redacted."""
    assert _GUARD is not None
    layer.__dict__[_BROKEN] = True
    client = layer.context.client
    message = _GUARD.redact_text(f"{type(error).__name__}: {error}")
    connected = layer.context.server.timestamp_start is not None
    status = 502 if connected else 400
    answered = any(
        stream.__dict__.get("flow") is not None and stream.flow.response is not None
        for stream in layer.streams.values()
    )
    http1 = (
        client.alpn in (None, b"", b"http/1.1", b"http/1.0") and client.transport_protocol == "tcp"
    )
    if http1 and not answered and client.state & ConnectionState.CAN_WRITE:
        yield commands.SendData(client, early_errors.error_page(status, message))
        outcome = f"answered {status} and closed the connection"
    else:
        outcome = "closed the connection"
    yield commands.Log(
        f"unit-gateway: {human.format_address(client.peername)}: the request could not be "
        f"handled ({message}); {outcome}",
        logging.WARNING,
    )
    yield commands.CloseConnection(client)
    for connection in list(layer.connections):
        if connection is not client and connection.state is not ConnectionState.CLOSED:
            yield commands.CloseConnection(connection)


def _route_overdue(layer: httplayer.HttpLayer, event: ResponseOverdue) -> Commands:
    """mitmproxy routes an injected event by the flow's server connection, which finds the
    stream only on an HTTP/1 connection (an HTTP/2 one carries many streams, and the lookup
    fails). The layer that holds the flow's stream hands the event to it; a layer that does
    not (the one a CONNECT tunnel runs in) passes it on as mitmproxy does."""
    for stream in layer.streams.values():
        if stream.__dict__.get("flow") is event.flow:
            yield from layer.event_to_child(stream, event)
            return
    yield from _original_layer_event(layer, event)


#: The layers of the other flows mitmproxy keeps: WebSocket messages, TCP and UDP streams,
#: DNS. They hold their flows in ``flow`` (``flows`` for DNS).
FLOW_LAYERS: tuple[type[layer.Layer], ...] = (
    websocket.WebsocketLayer,
    tcp.TCPLayer,
    udp.UDPLayer,
    dns.DNSLayer,
)


#: Hooks after which a stream has nothing more to say (mitmproxy clears ``live`` only after
#: they ran, and addons save and print the flow in them).
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
    """``original`` with the layer's flows real while it handles an event (it sends what
    they hold), and redacted before it hands on a hook and once it is done: a hook may run
    as soon as it is handed on (mitmproxy starts hooks as eager tasks), and hooks, mitmweb and
    files read the flow afterwards."""

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


#: What the patch point replaces in mitmproxy.
_PATCH_POINT: tuple[patches.Patch, ...] = (
    (httplayer.HttpStream, "handle_event", _handle_event),
    (httplayer.HttpLayer, "_handle_event", _layer_handle_event),
    *(
        (kind, "handle_event", _flow_layer_handler(patches.original(kind, "handle_event")))
        for kind in FLOW_LAYERS
    ),
)


def _answer_overdue(stream: httplayer.HttpStream, event: ResponseOverdue) -> Commands:
    """Unit did not answer ``event.flow`` in time: cancel the request upstream (HTTP/1 closes
    the connection, so no late answer is read as the next one's) and end the stream with
    UpstreamTimedOut, which the caller gets as a 504."""
    if event.flow is not stream.__dict__.get("flow"):
        # This stream has moved on to the next request: that flow has ended. (A tunnel the
        # flow is inside has passed the event on in _handle_event.)
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
    """A final response: not an interim one (100 Continue, 102, 103), after which the stream
    still answers. 101 is final: the connection is another protocol's from then on."""
    return status_code >= 200 or status_code == 101
