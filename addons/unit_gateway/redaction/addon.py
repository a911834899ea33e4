"""The redaction addon: the flows mitmproxy keeps never hold a real secret.

Everything a person or a file sees of a flow (mitmweb's REST API, websocket and downloads,
the event log, ``-w``/``save_stream_file``, HAR, exports, the dumper at any ``flow_detail``)
reads the live :class:`~mitmproxy.http.HTTPFlow`. Redacting in a hook is too late or too
early: a token set in ``request`` stays in the flow for the whole upstream round trip. So a
flow only ever holds redacted values (and, to a configured Unit upstream, the caller's
placeholder), and the real bytes live in a side table keyed by the flow (:class:`FlowSecrets`),
put back only inside mitmproxy's HTTP layer on the way to the wire: for a flow to Unit only
on the way to that upstream, for any other flow wherever its request goes.

The one patch point is :meth:`mitmproxy.proxy.layers.http.HttpStream.handle_event`: every
event into a stream and every command out of it passes there, synchronously.

=========================================  ================================================
event ``ResponseHeaders`` from upstream    header values redacted before HttpStream stores
                                           the response in the flow
command ``HttpRequestHeadersHook``         request headers and URL redacted
                                           (HttpStream has just stored them, no addon ran)
command ``HttpRequestHook``/``…Response…``  HttpStream has just stored the body: it is
                                           replaced by a redacted copy, the real bytes kept
command ``HttpErrorHook``                  error text redacted (it can quote peer bytes)
command ``SendHttp(ResponseProtocolError)``
                                           mitmproxy's HTML error page: a JSON:API one
command ``SendHttp(RequestHeaders)``       to the approved upstream: a private copy with the
                                           real headers, path and ``Authorization``
command ``SendHttp(RequestData)``          the real body, if the flow still holds ours
command ``SendHttp(Response…)`` to client  the same for the response
event ``ResponseOverdue`` (injected)       Unit missed the flow's deadline: the request is
                                           cancelled upstream, the caller gets a 504
                                           (see ``unit_gateway.net.deadlines``)
=========================================  ================================================

What the caller gets when mitmproxy refuses a request before a flow holds it (an HTTP/1
request that does not parse, an HTTP/2 protocol error) is ``unit_gateway.mitm.early_errors``,
installed while this addon runs.

Header values that mitmproxy's own addons set after the gateway's hooks (``upstream_auth``,
``modify_headers``) are redacted by :class:`LateHeaders`, which runs after those addons and
before the tool's outputs; a CONNECT request is redacted in ``http_connect``. Log records are
redacted whole, tracebacks included, by a LogRecord factory.

``modify_body`` (it edits the redacted copy), ``proxy_debug`` (logs raw wire data) and
``stream_large_bodies`` (streamed bodies bypass the hooks, and a streamed 401 cannot be
retried) are refused at start-up.

Other addons read and write real values through this addon (``real_request_content``,
``set_upstream_authorization``, …), never through the flow.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.net import encoding
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.layers import http as httplayer

from unit_gateway.metrics.registry import Children
from unit_gateway.mitm import addon_order, early_errors, option_masks, patch_point
from unit_gateway.net import jsonapi
from unit_gateway.net.bodies import UndecodableBody, decode_content
from unit_gateway.net.deadlines import (
    SWEEP_SECONDS,
    ResponseOverdue,
    is_overdue,
    routable,
    timeout_message,
)
from unit_gateway.net.headers import authorization_name, has_header_field
from unit_gateway.net.modes import TRANSPARENT_MODES
from unit_gateway.redaction.engine import Redactor
from unit_gateway.redaction.flow_walk import FlowVault
from unit_gateway.redaction.stream_text import unreadable

if TYPE_CHECKING:
    from unit_gateway.config.core import GatewayCore
    from unit_gateway.config.schema import LoadedConfig, Upstream
    from unit_gateway.metrics.registry import GatewayMetrics

logger = logging.getLogger(__name__)

#: lower-case header name -> {value stored in the flow: the real values it stands for, in
#: field order} (two fields can redact to the same marker: ``X-Data: [redacted:ssn]`` twice)
HeaderSubstitutions = dict[bytes, dict[bytes, list[bytes]]]

_ENCODING = ("utf-8", "surrogateescape")
#: Clean leaves remembered across flows: at most this many, each at most this long.
_CLEAN_LEAVES = 4096
_CLEAN_LEAF_SIZE = 256
#: The most of a real body the gateway decodes to read it itself (see ``real_request_content``).
REAL_CONTENT_LIMIT = 1 << 20


@dataclass(eq=False)
class FlowSecrets:
    """The real values of one flow to Unit. Never saved, never shown."""

    #: (scheme, host, port) of the Unit upstream the real values may go to.
    destination: tuple[str, str, int]
    #: The ``Authorization`` value Unit gets (the flow keeps the caller's placeholder).
    authorization: str | None = None
    request_headers: HeaderSubstitutions = field(default_factory=dict)
    response_headers: HeaderSubstitutions = field(default_factory=dict)
    #: (path stored in the flow, real path)
    request_path: tuple[str, str] | None = None
    #: (bytes stored in the flow, real raw bytes)
    request_body: tuple[bytes, bytes] | None = None
    response_body: tuple[bytes, bytes] | None = None
    #: The configured upstream, matched once per flow for every addon (see ``upstream_of``);
    #: None for a flow to any other host, which is redacted all the same but gets no token.
    upstream: Upstream | None = None
    #: Seconds Unit has to answer once the request is sent (see ``unit_gateway.net.deadlines``);
    #: None: mitmproxy's own timeouts (any other host).
    response_timeout: float | None = None
    #: time.monotonic() when the whole request had gone to the server.
    sent_at: float | None = None
    timed_out: bool = False


_PROXY_AUTH = b"proxy-authorization"
_PROXY_CREDENTIALS = frozenset({_PROXY_AUTH})

_SECRETS: weakref.WeakKeyDictionary[http.HTTPFlow, FlowSecrets] = weakref.WeakKeyDictionary()


def _make_headers(fields: tuple[tuple[bytes, bytes], ...]) -> http.Headers:
    """Headers from fields that are already bytes pairs, without Headers.__init__'s checks."""
    headers = http.Headers.__new__(http.Headers)
    headers.fields = fields
    return headers


def _after_proxyauth(flow: http.HTTPFlow) -> None:
    """mitmproxy's proxyauth (a built-in addon, so it ran first) keeps (user, password) in
    the flow's metadata, which saved flows and mitmweb show: the user name is enough to say
    who sent the request. Its refusal is an HTML page: callers get a JSON:API error."""
    credentials = flow.metadata.get("proxyauth")
    if isinstance(credentials, tuple) and len(credentials) == 2:
        flow.metadata["proxyauth"] = (credentials[0], "[redacted]")
    response = flow.response
    if response is not None and response.status_code == 407 and "proxyauth" not in flow.metadata:
        flow.response = jsonapi.error_response(
            407,
            "proxy_authentication_required",
            "this gateway needs proxy credentials (Proxy-Authorization), and none valid came",
            headers={"Proxy-Authenticate": response.headers.get("Proxy-Authenticate", "Basic")},
        )


#: Listeners where proxyauth asks for credentials of a proxy (Proxy-Authorization, or SOCKS5's
#: own): elsewhere it takes Basic credentials from Authorization.
_PROXY_AUTH_MODES = (mode_specs.RegularMode, mode_specs.UpstreamMode, mode_specs.Socks5Mode)


def _check_proxyauth_modes(modes: Sequence[str]) -> None:
    """On any HTTP listener but a proxy's (reverse, transparent, local, WireGuard, TUN)
    mitmproxy's proxyauth wants Basic credentials in ``Authorization``, the header that carries
    the caller's Unit placeholder: no Unit client could send both. Refused at start (or when
    the option changes), not discovered as a 401 on every request."""
    for spec in modes:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError as e:
            raise exceptions.OptionsError(f"invalid mode {spec!r}: {e}") from e
        if isinstance(mode, mode_specs.DnsMode) or getattr(mode, "scheme", None) == "dns":
            continue  # a DNS listener carries no HTTP
        if not isinstance(mode, _PROXY_AUTH_MODES):
            raise exceptions.OptionsError(
                f"unit-gateway: proxyauth is refused with mode {spec}: there it takes Basic "
                "credentials from Authorization, the header that carries the Unit placeholder. "
                "Use it with regular, upstream or socks5 listeners only; limit who reaches "
                "other listeners by network (see docs/security.md)"
            )


def _wire_fields(
    fields: tuple[tuple[bytes, bytes], ...],
    substitutions: HeaderSubstitutions,
    replace: dict[bytes, bytes] | None = None,
    append: tuple[bytes, bytes] | None = None,
) -> tuple[tuple[bytes, bytes], ...]:
    """``fields`` with the real values put back, in one pass.

    ``replace`` (lower-case name -> value) does what ``headers[name] = value`` does: the first
    field of that name keeps its place and spelling and gets the value, later ones go.
    ``append`` is added at the end when no field has its name (``headers[name] = value`` on a
    header that is absent); its name must be in ``replace``.
    """
    if not substitutions and not replace:
        return fields
    out = []
    done: set[bytes] = set()
    taken: dict[tuple[bytes, bytes], int] = {}  # filled only when a value is put back
    for name, value in fields:
        lowered = name.lower()
        if replace is not None and lowered in replace:
            if lowered not in done:
                done.add(lowered)
                out.append((name, replace[lowered]))
            continue
        if substitutions.get(lowered):
            value = _real_value(substitutions, lowered, value, taken)
        out.append((name, value))
    if append is not None and append[0].lower() not in done:
        out.append(append)
    return tuple(out)


def _real_value(
    substitutions: HeaderSubstitutions,
    lowered: bytes,
    value: bytes,
    taken: dict[tuple[bytes, bytes], int],
) -> bytes:
    """The real value of the next field ``lowered: value`` of a message; ``taken`` counts the
    fields with that stored value already put back, so each gets its own real value."""
    by_value = substitutions.get(lowered)
    reals = by_value.get(value) if by_value else None
    if not reals:
        return value
    index = taken.get((lowered, value), 0)
    taken[(lowered, value)] = index + 1
    return reals[min(index, len(reals) - 1)]  # a field an addon added again: the last one


def _wire_copy(message: Any, fields: tuple[tuple[bytes, bytes], ...]) -> Any:
    """A private copy of a Request/Response for the wire: own headers, shared body. What
    copy.copy does for these classes (they keep their state in __dict__): ~1.2 µs, against
    ~5.7 µs through copy.copy and Headers()."""
    data = message.data
    real_data = object.__new__(type(data))
    real_data.__dict__.update(data.__dict__)
    real_data.headers = _make_headers(fields)
    real = object.__new__(type(message))
    real.__dict__.update(message.__dict__)
    real.data = real_data
    return real


def _wire_length(stored: Any, body: tuple[bytes, bytes] | None) -> dict[bytes, bytes] | None:
    """``content-length`` of the real body, when the message holds our redacted copy."""
    if body is not None and stored.raw_content is body[0]:
        return {b"content-length": str(len(body[1])).encode()}
    return None


def _upstream_fields(
    request: http.Request, secrets: FlowSecrets
) -> tuple[tuple[bytes, bytes], ...]:
    """The request's header fields as Unit gets them: real values, the injected
    ``Authorization`` and the real body's length. The one definition for the first send and
    the gateway's own retry."""
    replace = _wire_length(request, secrets.request_body) or {}
    append = None
    if secrets.authorization is not None:
        value = secrets.authorization.encode(*_ENCODING)
        append = (authorization_name(request).encode(), value)
        replace[b"authorization"] = value
    return _wire_fields(request.data.headers.fields, secrets.request_headers, replace, append)


#: Protocols whose header names must be lower case.
def _header_text(fields: tuple[tuple[bytes, bytes], ...], lowered: bytes) -> str | None:
    """What ``headers.get(name)`` returns (values of repeated fields joined by ", "); an
    absent field (the common case) costs one pass over the raw fields, in C."""
    if not has_header_field(fields, lowered):
        return None
    values = [value for name, value in fields if name.lower() == lowered]
    return b", ".join(values).decode(*_ENCODING)


#: mitmweb prints its own access token (``?token=…``) once at start: that URL is for the
#: operator, and it holds no Unit secret.
_UNREDACTED_LOGGERS = frozenset({"mitmproxy.tools.web.master"})


def _owned(holder: Any, name: str) -> bool:
    """An HTTP message's body: the redaction addon keeps it as a redacted copy of its own."""
    return name == "content" and isinstance(holder, http.MessageData)


#: Formats a record's traceback as logging's own formatters (and mitmproxy's) do.
_TRACEBACKS = logging.Formatter()


class _RedactingFactory:
    """LogRecord factory: a record is redacted whole before any handler sees it. Log lines
    can quote raw wire bytes (mitmproxy's own errors), and so can a traceback attached to a
    record (an exception's message, an operator's script that failed on a value)."""

    def __init__(self, previous: Callable[..., logging.LogRecord], redaction: FlowRedaction):
        self.previous = previous
        self.redaction = redaction

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        if record.name in _UNREDACTED_LOGGERS:
            return record
        redact = self.redaction.redact_text
        try:
            message = record.getMessage()
        except Exception:
            # A broken format string: logging's own report of it would print the arguments
            # as they are. They are shown (redacted) after the message instead.
            message = f"{record.msg} (unformatted arguments: {record.args!r})"
        if record.exc_info:
            # Handlers format exc_info themselves (mitmproxy's ignore exc_text): the text
            # goes into the message, where it stands in every formatter's output anyway, and
            # the exception (whose frames and arguments hold the raw values) goes.
            message = f"{message}\n{_TRACEBACKS.formatException(record.exc_info)}"
            record.exc_info = None
        # The message is final: handlers that read msg and args see the redacted text only.
        record.msg, record.args = redact(message), ()
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record


class LateHeaders:
    """Header values that mitmproxy's own addons set after the gateway's redaction
    (``upstream_auth``'s ``Proxy-Authorization`` for an upstream proxy, ``modify_headers``,
    ``stickyauth``, ``stickycookie``) are redacted before any output sees them, and kept for
    the wire like any other. It runs after mitmproxy's default addons and before the tool's
    outputs (:mod:`unit_gateway.mitm.addon_order` puts it there), for every event that can
    change a flow's headers."""

    name = "unit_gateway_late_headers"  # its name in mitmproxy's addon lookup

    def __init__(self, redaction: FlowRedaction) -> None:
        self.redaction = redaction
        #: flow -> [request, response] header fields as last seen redacted. Every change to
        #: a message's headers makes a new fields tuple, so a look at headers nobody changed
        #: since (most looks) is one identity test, not a redaction pass (~8 µs each).
        self._seen: weakref.WeakKeyDictionary[http.HTTPFlow, list[Any]] = (
            weakref.WeakKeyDictionary()
        )

    def seen(self, flow: http.HTTPFlow, message: http.Message) -> None:
        """``message`` of ``flow`` is redacted as it is now (the gateway's own hooks say so)."""
        index = 0 if message is flow.request else 1
        self._seen.setdefault(flow, [None, None])[index] = message.data.headers.fields

    def _look(self, flow: http.HTTPFlow, message: http.Message, index: int) -> None:
        seen = self._seen.get(flow)
        headers = message.data.headers
        if seen is not None and seen[index] is headers.fields:
            return
        secrets = _SECRETS.get(flow)
        if secrets is None:
            substitutions: HeaderSubstitutions = {}  # the flow has ended: nothing goes out
        elif index == 0:
            substitutions = secrets.request_headers
        else:
            substitutions = secrets.response_headers
        self.redaction.redact_headers(headers, substitutions)
        if seen is None:
            seen = self._seen[flow] = [None, None]
        seen[index] = headers.fields

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._look(flow, flow.request, 0)

    request = requestheaders

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        seen = self._seen.get(flow)
        if (
            seen is not None
            and seen[0] is flow.request.data.headers.fields
            and (response is None or seen[1] is response.data.headers.fields)
        ):
            return  # the usual case, in one look up
        self._look(flow, flow.request, 0)
        if response is not None:
            self._look(flow, response, 1)

    response = error = responseheaders


class FlowRedaction:
    """The addon. Load it first: its ``requestheaders`` view must exist before any other
    addon sees a flow (it is set up by the HTTP layer, before any hook runs)."""

    def __init__(self, core: GatewayCore, metrics: GatewayMetrics | None = None) -> None:
        self.core = core
        self.metrics = metrics
        self.redactor = Redactor()
        self._factory: _RedactingFactory | None = None
        self._late_headers = LateHeaders(self)
        self._addons: Any = None  # mitmproxy's AddonManager, while LateHeaders is in it
        self._redactions = Children(metrics.redactions) if metrics is not None else None
        self._sweeper: asyncio.Task[None] | None = None
        #: Short values found clean under the current rules, whichever flow held them.
        self._clean_leaves: dict[str | bytes, None] = {}
        #: Every other value of every flow (see unit_gateway.redaction.flow_walk).
        self.vault = FlowVault(
            self._shown_leaf, self._shown_fields, http.Headers, _owned, self.redact_data
        )

    # --- lifecycle -------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        patch_point.install(self, _SECRETS)
        early_errors.install(self.redact_text)
        option_masks.install(self.redact_text)
        if addon_order.add_after_defaults(loader.master.addons, self._late_headers):
            self._addons = loader.master.addons
        previous = logging.getLogRecordFactory()
        if isinstance(previous, _RedactingFactory):
            previous = previous.previous
        self._factory = _RedactingFactory(previous, self)
        logging.setLogRecordFactory(self._factory)
        self.core.listeners.append(self.reconfigure)

    def configure(self, updated: set[str]) -> None:
        if "proxy_debug" in updated and ctx.options.proxy_debug:
            raise exceptions.OptionsError(
                "unit-gateway: proxy_debug logs raw wire data (real tokens); it is refused"
            )
        if "stream_large_bodies" in updated and ctx.options.stream_large_bodies:
            raise exceptions.OptionsError(
                "unit-gateway: stream_large_bodies is refused: streamed bodies bypass redaction "
                "and a streamed 401 cannot be retried"
            )
        if "modify_body" in updated and getattr(ctx.options, "modify_body", None):
            raise exceptions.OptionsError(
                "unit-gateway: modify_body is refused: it would edit the redacted copy of a "
                "body the flow holds, and that copy, not the real body, would then be sent"
            )
        if updated & {"proxyauth", "mode"} and getattr(ctx.options, "proxyauth", None):
            _check_proxyauth_modes(ctx.options.mode)
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            # mitmproxy's eager strategy connects to the server before the request is read:
            # when Unit cannot be reached, the caller's CONNECT (regular mode) or TLS
            # handshake (reverse, transparent) fails, with nothing an SDK can read. Lazy
            # connects for the request, which then gets the JSON:API error saying why.
            ctx.options.update(connection_strategy="lazy")

    def reconfigure(self, config: LoadedConfig) -> None:
        self.redactor = Redactor(config.model.redaction)
        self._clean_leaves.clear()  # clean under the old rules
        if self._redactions is not None:
            # Every rule's series exists from the start (at 0), so rates and alerts see the
            # first redaction rather than a series appearing out of nothing.
            for rule in self.redactor.rule_names:
                self._redactions(rule)

    def running(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if patch_point.uninstall(self):
            early_errors.uninstall()
            option_masks.uninstall()
        if self._addons is not None:
            addon_order.remove(self._addons, self._late_headers)
            self._addons = None
        if self._factory is not None and logging.getLogRecordFactory() is self._factory:
            logging.setLogRecordFactory(self._factory.previous)

    # --- deadlines (see unit_gateway.net.deadlines) --------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                self.time_out_overdue(time.monotonic())
            except Exception:  # a bug must not end the sweep: later deadlines still count
                logger.exception("unit-gateway: checking deadlines failed")

    def time_out_overdue(self, now: float) -> None:
        for flow, secrets in list(_SECRETS.items()):
            if secrets.timed_out or not is_overdue(
                flow, secrets.sent_at, secrets.response_timeout, now
            ):
                continue
            secrets.timed_out = True
            assert secrets.response_timeout is not None
            request = flow.request
            late = f"{request.method} {request.pretty_host}{request.path}: " + timeout_message(
                secrets.response_timeout
            )
            if not routable(flow):
                logger.warning(
                    "unit-gateway: %s; the gateway cannot time out a request over HTTP/3 or "
                    "through an upstream proxy: mitmproxy's timeouts apply",
                    late,
                )
                continue
            proxyserver = ctx.master.addons.get("proxyserver")
            try:
                proxyserver.inject_event(ResponseOverdue(flow, secrets.response_timeout))
            except ValueError:
                continue  # not from a live connection (a replay): nobody waits for it
            logger.warning("unit-gateway: %s; answered 504 upstream_timeout", late)

    def set_response_timeout(self, flow: http.HTTPFlow, seconds: float) -> None:
        self.secrets(flow).response_timeout = seconds

    def response_timeout(self, flow: http.HTTPFlow) -> float | None:
        found = _SECRETS.get(flow)
        return found.response_timeout if found is not None else None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Credentials for this proxy are never shown and never sent on to Unit.
        fields = flow.request.data.headers.fields
        if flow in _SECRETS and has_header_field(fields, _PROXY_AUTH):
            flow.request.headers.pop("Proxy-Authorization", None)
        _after_proxyauth(flow)
        self._late_headers.seen(flow, flow.request)  # all redacted now

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:  # redacted as the HTTP layer stored it
            self._late_headers.seen(flow, flow.response)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        _after_proxyauth(flow)
        # A CONNECT is answered here and never forwarded (to an upstream proxy mitmproxy
        # sends a CONNECT of its own): its headers are redacted in place like any request's,
        # Proxy-Authorization too, now that proxyauth (a built-in addon, so it ran first) has
        # read it. The target stays: the tunnel goes where it says.
        self.redact_headers(flow.request.headers, {})

    # --- redaction primitives --------------------------------------------------------------

    def count(self, counts: Counter[str] | dict[str, int]) -> None:
        if self._redactions is None:
            return
        for rule, n in counts.items():
            if n:
                self._redactions(rule).inc(n)

    # --- every value of a flow (see unit_gateway.redaction.flow_walk) -----------------------------

    def conceal(self, flow: Any, *, ended: bool = False) -> None:
        """Nothing ``flow`` holds is real any more (the patch point calls this when a layer
        is done with an event, ``reveal`` when it starts the next; ``ended`` before a stream's
        end hook)."""
        self.vault.conceal(flow, ended=ended)

    def reveal(self, flow: Any) -> None:
        self.vault.reveal(flow)

    def _shown_leaf(self, value: str | bytes) -> str | bytes:
        if value in self._clean_leaves:
            return value
        if isinstance(value, str):
            shown: str | bytes | None = self.redact_text(value)
        else:
            shown = self.redact_data(value, value=True)
            if shown is None:
                return unreadable(len(value))
        if shown == value and len(value) <= _CLEAN_LEAF_SIZE:
            # Every flow holds the same methods, hosts, versions, header names: read once.
            if len(self._clean_leaves) >= _CLEAN_LEAVES:
                self._clean_leaves.clear()
            self._clean_leaves[value] = None
        return shown

    def redact_data(self, data: bytes, *, value: bool = False) -> bytes | None:
        counts: Counter[str] = Counter()
        shown = self.redactor.redact_data(data, counts=counts, value=value)
        self.count(counts)
        return shown

    def _shown_fields(
        self, fields: tuple[tuple[bytes, bytes], ...]
    ) -> tuple[tuple[bytes, bytes], ...]:
        if self.redactor.header_fields_are_clean(fields):
            return fields
        # Proxy credentials stay for mitmproxy's proxyauth, which reads them in a hook; this
        # addon takes them out once it has (see _after_proxyauth).
        checked = [f for f in fields if f[0].lower() not in _PROXY_CREDENTIALS]
        counts: Counter[str] = Counter()
        pairs = [(n.decode(*_ENCODING), v.decode(*_ENCODING)) for n, v in checked]
        shown = iter(self.redactor.redact_headers(pairs, counts=counts))
        self.count(counts)
        return tuple(
            f
            if f[0].lower() in _PROXY_CREDENTIALS
            else tuple(x.encode(*_ENCODING) for x in next(shown))
            for f in fields
        )

    def redact_text(self, text: str) -> str:
        counts: Counter[str] = Counter()
        redacted = self.redactor.redact_text(text, counts=counts)
        self.count(counts)
        return redacted

    def fingerprint(self, credential: str) -> str:
        return self.redactor.fingerprint(credential)

    def redact_headers(
        self,
        headers: http.Headers,
        substitutions: HeaderSubstitutions,
        keep: frozenset[bytes] = frozenset(),
    ) -> None:
        """Redact header values in place, except headers named (lower-case) in ``keep``;
        remember how to put the real ones back."""
        fields = headers.fields
        if self.redactor.header_fields_are_clean(fields):
            return  # the usual case: no field needs a second look
        checked = [f for f in fields if f[0].lower() not in keep] if keep else fields
        if not checked or (keep and self.redactor.header_fields_are_clean(checked)):
            return
        counts: Counter[str] = Counter()
        pairs = [(n.decode(*_ENCODING), v.decode(*_ENCODING)) for n, v in checked]
        redacted = iter(self.redactor.redact_headers(pairs, counts=counts))
        if not counts:
            return
        new_fields = []
        for name, value in fields:
            if keep and name.lower() in keep:
                new_fields.append((name, value))
                continue
            stored = next(redacted)[1].encode(*_ENCODING)
            if stored != value:
                substitutions.setdefault(name.lower(), {}).setdefault(stored, []).append(value)
            new_fields.append((name, stored))
        headers.fields = tuple(new_fields)
        self.count(counts)

    def redact_body(self, message: http.Message, path: str | None) -> tuple[bytes, bytes] | None:
        """Replace ``message``'s body by a redacted copy (same Content-Encoding); return
        (stored, real) or None when nothing in it is secret."""
        real = message.raw_content
        if not real:
            return None
        headers = message.data.headers
        content_encoding = _header_text(headers.fields, b"content-encoding")
        result = self.redactor.redact_body(
            real, _header_text(headers.fields, b"content-type"), content_encoding, path=path
        )
        if not result.changed:
            return None
        stored = result.content
        if content_encoding:
            try:
                stored = encoding.encode(stored, content_encoding)
            except ValueError:
                pass  # an encoding mitmproxy cannot write: the summary is kept as it is
        message.data.content = stored
        # keep the flow's Content-Length (if it has one) consistent (replay, HAR)
        headers.fields = _wire_fields(
            headers.fields, {}, {b"content-length": str(len(stored)).encode()}
        )
        self.count(result.counts)
        return stored, real

    # --- the HTTP layer ---------------------------------------------------------------------

    def _configured_upstream(self, request: http.Request) -> Upstream | None:
        config = self.core.config
        return config.model.upstream_of(request) if config is not None else None

    def before_hook(self, kind: type, flow: http.HTTPFlow) -> None:
        """HttpStream has just stored part of the flow; no addon has seen it yet."""
        if kind is httplayer.HttpRequestHeadersHook:
            # (also yielded a second time on some error paths: protect a flow once)
            if flow not in _SECRETS and flow.request.method != "CONNECT":
                # Every flow is redacted, whatever its host: a service's other egress can carry
                # secrets and customer data too. Only a flow to a Unit upstream gets a token.
                upstream = self._configured_upstream(flow.request) or self.retarget(flow)
                self.protect_request(flow, upstream)
            return
        if kind is httplayer.HttpErrorHook:
            if flow.error is not None:
                flow.error.msg = self.redact_text(flow.error.msg)
            return
        secrets = _SECRETS.get(flow)
        if secrets is None:
            return
        if kind is httplayer.HttpRequestHook:
            secrets.request_body = self.redact_body(flow.request, flow.request.path)
        elif flow.response is not None:
            secrets.response_body = self.redact_body(flow.response, flow.request.path)

    def retarget(self, flow: http.HTTPFlow) -> Upstream | None:
        """In a transparent mode the request is addressed to the IP the client dialed, and
        only its Host header names Unit. A token must never go to that IP (any server with a
        certificate for the name would do), so a request whose Host names an upstream is sent
        to that upstream by name, resolved by the gateway. The upstream it now goes to, if any."""
        config = self.core.config
        if config is None or not isinstance(flow.client_conn.proxy_mode, TRANSPARENT_MODES):
            return None
        upstream = config.model.upstream_named_by(flow.request)
        if upstream is not None:
            flow.request.host = upstream.host
        return upstream

    def protect_request(self, flow: http.HTTPFlow, upstream: Upstream | None) -> FlowSecrets:
        request = flow.request
        timeout = None
        if upstream is not None:
            # Unit's deadline for a forwarded request (a configured upstream has a config).
            assert self.core.config is not None
            timeout = self.core.config.model.unit.response_timeout_seconds
        secrets = FlowSecrets(
            (request.scheme, request.host, request.port),
            upstream=upstream,
            response_timeout=timeout,
        )
        _SECRETS[flow] = secrets
        # Proxy credentials stay for mitmproxy's proxyauth, a built-in addon whose
        # requestheaders hook runs before ours; ``requestheaders`` removes what is left.
        self.redact_headers(request.headers, secrets.request_headers, keep=_PROXY_CREDENTIALS)
        counts: Counter[str] = Counter()
        real_path = request.path
        stored_path = self.redactor.redact_url(real_path, counts=counts)
        if stored_path != real_path:
            request.path = stored_path
            secrets.request_path = (stored_path, real_path)
            self.count(counts)
        return secrets

    def _approved(self, secrets: FlowSecrets, request: http.Request, connection: Any) -> bool:
        if secrets.upstream is None and secrets.authorization is None:
            # Not a flow to Unit: only the caller's own values, wherever its request goes.
            return True
        return (request.scheme, request.host, request.port) == secrets.destination and (
            connection.via is not None or connection.address == (request.host, request.port)
        )

    def egress(
        self, stream: httplayer.HttpStream, secrets: FlowSecrets, command: httplayer.SendHttp
    ) -> httplayer.SendHttp:
        event = command.event
        kind = type(event)
        if command.connection is not stream.context.client:
            if kind is httplayer.RequestHeaders:
                request = event.request  # type: ignore[attr-defined]
                if not self._approved(secrets, request, command.connection):
                    if secrets.authorization is not None:
                        logger.warning(
                            "unit-gateway: no token sent: %s is not the approved upstream",
                            request.pretty_host,
                        )
                    return command
                fields = _upstream_fields(request, secrets)
                if fields is request.data.headers.fields and secrets.request_path is None:
                    return command  # nothing of it was redacted or added
                real = _wire_copy(request, fields)
                if secrets.request_path is not None and request.path == secrets.request_path[0]:
                    real.data.path = secrets.request_path[1].encode(*_ENCODING)
                return httplayer.SendHttp(
                    httplayer.RequestHeaders(event.stream_id, real, event.end_stream),  # type: ignore[attr-defined]
                    command.connection,
                )
            if kind is httplayer.RequestEndOfMessage:
                secrets.sent_at = time.monotonic()  # Unit's deadline starts
                return command
            body = secrets.request_body
            if kind is httplayer.RequestData and body is not None and event.data is body[0]:  # type: ignore[attr-defined]
                if self._approved(secrets, stream.flow.request, command.connection):
                    return httplayer.SendHttp(
                        httplayer.RequestData(event.stream_id, body[1]), command.connection
                    )
            return command
        if kind is httplayer.ResponseHeaders:
            if secrets.response_headers or secrets.response_body:
                response = event.response  # type: ignore[attr-defined]
                fields = _wire_fields(
                    response.data.headers.fields,
                    secrets.response_headers,
                    _wire_length(response, secrets.response_body),
                )
                real = _wire_copy(response, fields)
                return httplayer.SendHttp(
                    httplayer.ResponseHeaders(event.stream_id, real, event.end_stream),  # type: ignore[attr-defined]
                    command.connection,
                )
        elif kind is httplayer.ResponseData:
            body = secrets.response_body
            if body is not None and event.data is body[0]:  # type: ignore[attr-defined]
                return httplayer.SendHttp(
                    httplayer.ResponseData(event.stream_id, body[1]), command.connection
                )
        elif kind is httplayer.ResponseEndOfMessage:
            _SECRETS.pop(stream.flow, None)  # the real bytes are not kept past the response
        return command

    # --- for other addons: real values, never through the flow -----------------------------

    def upstream_of(self, flow: http.HTTPFlow) -> Upstream | None:
        """The upstream the flow goes to, as matched when it was protected."""
        found = _SECRETS.get(flow)
        if found is not None:
            return found.upstream
        return self._configured_upstream(flow.request)  # addons driven without the HTTP layer

    def secrets(self, flow: http.HTTPFlow) -> FlowSecrets:
        found = _SECRETS.get(flow)
        if found is None:
            found = self.protect_request(flow, self._configured_upstream(flow.request))
        return found

    def set_upstream_authorization(self, flow: http.HTTPFlow, value: str) -> None:
        self.secrets(flow).authorization = value

    def upstream_authorization(self, flow: http.HTTPFlow) -> str | None:
        found = _SECRETS.get(flow)
        return found.authorization if found is not None else None

    def real_request_path(self, flow: http.HTTPFlow) -> str:
        """The request target as Unit gets it (the flow may hold it redacted)."""
        found = _SECRETS.get(flow)
        if found is not None and found.request_path is not None:
            if flow.request.path == found.request_path[0]:
                return found.request_path[1]
        return flow.request.path

    def real_request_header(self, flow: http.HTTPFlow, name: str) -> str | None:
        """What ``headers.get(name)`` of the request as Unit gets it returns."""
        lowered = name.lower().encode()
        values = [v for n, v in flow.request.data.headers.fields if n.lower() == lowered]
        if not values:
            return None
        found = _SECRETS.get(flow)
        if found is not None and found.request_headers:
            taken: dict[tuple[bytes, bytes], int] = {}
            values = [_real_value(found.request_headers, lowered, v, taken) for v in values]
        return b", ".join(values).decode(*_ENCODING)

    @staticmethod
    def _real_raw(message: http.Message, body: tuple[bytes, bytes] | None) -> bytes | None:
        if body is not None and message.raw_content is body[0]:
            return body[1]
        return message.raw_content

    # The real bodies the gateway reads itself are Unit's token requests and answers, well
    # under a kilobyte: the decoding (on the event loop) stops at REAL_CONTENT_LIMIT.

    def real_request_content(self, flow: http.HTTPFlow) -> bytes | None:
        found = _SECRETS.get(flow)
        return self._decoded(
            flow.request, self._real_raw(flow.request, found and found.request_body)
        )

    def real_response_content(self, flow: http.HTTPFlow) -> bytes | None:
        assert flow.response is not None
        found = _SECRETS.get(flow)
        return self._decoded(
            flow.response, self._real_raw(flow.response, found and found.response_body)
        )

    @staticmethod
    def _decoded(message: http.Message, raw: bytes | None) -> bytes | None:
        """``raw`` without its Content-Encoding; None past ``REAL_CONTENT_LIMIT`` bytes or
        if it cannot be decoded."""
        if raw is None or len(raw) > REAL_CONTENT_LIMIT:
            return None
        try:
            decoded = decode_content(
                raw, message.headers.get("content-encoding"), REAL_CONTENT_LIMIT
            )
        except UndecodableBody:
            return None
        return decoded

    def set_real_request_content(self, flow: http.HTTPFlow, content: bytes) -> None:
        """The request Unit gets has this body; the flow shows it redacted."""
        secrets = self.secrets(flow)
        # Synchronous: the real body is in the flow only until redact_body returns.
        flow.request.set_content(content)
        secrets.request_body = self.redact_body(flow.request, flow.request.path)

    def set_real_response_content(self, flow: http.HTTPFlow, content: bytes) -> None:
        """The caller gets this body; the flow shows it redacted."""
        assert flow.response is not None
        secrets = self.secrets(flow)
        flow.response.set_content(content)
        secrets.response_body = self.redact_body(flow.response, flow.request.path)

    def real_request(self, flow: http.HTTPFlow) -> http.Request:
        """A copy of the request as Unit gets it (for the gateway's own retry)."""
        found = self.secrets(flow)
        self.vault.reveal(flow)  # the method, trailers, ... the walk redacted
        try:
            request = flow.request
            real = request.copy()
            real.headers = _make_headers(_upstream_fields(request, found))
            if found.request_path is not None and request.path == found.request_path[0]:
                real.path = found.request_path[1]
            real.raw_content = self._real_raw(request, found.request_body)
        finally:
            self.vault.conceal(flow)
        return real

    def real_response(self, flow: http.HTTPFlow) -> http.Response:
        """A copy of the response as the caller gets it (real reason, headers, trailers and
        body), to read; change it with ``set_real_response``."""
        assert flow.response is not None
        found = _SECRETS.get(flow)
        self.vault.reveal(flow)  # the reason, trailers, ... the walk redacted
        try:
            response = flow.response
            fields = response.data.headers.fields
            if found is not None and (found.response_headers or found.response_body):
                fields = _wire_fields(
                    fields, found.response_headers, _wire_length(response, found.response_body)
                )
            real = _wire_copy(response, fields)
            if response.data.trailers is not None:
                real.data.trailers = _make_headers(response.data.trailers.fields)
            if found is not None and found.response_body is not None:
                real.data.content = self._real_raw(response, found.response_body)
        finally:
            self.vault.conceal(flow)
        return real

    def set_real_response(self, flow: http.HTTPFlow, response: http.Response) -> None:
        """The caller gets ``response``; the flow holds its redacted mirror."""
        secrets = self.secrets(flow)
        secrets.response_headers = {}
        self.redact_headers(response.headers, secrets.response_headers)
        secrets.response_body = self.redact_body(response, flow.request.path)
        flow.response = response
        self.vault.conceal(flow)  # its reason, trailers, ...: before anything else sees them
