"""The redaction addon: the flows mitmproxy keeps never hold a real secret.

Every output (mitmweb, saved flows, HAR, dumper, event log) reads the live flow, and a hook is
too late or too early to redact in. So the flow holds only redacted values; the real bytes live
in a side table (``secrets``) and are put back only on the way to the wire (``wire``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from mitmproxy import http
from mitmproxy.proxy.layers import http as httplayer

from unit_gateway.metrics.registry import Children
from unit_gateway.mitm import addon_order, early_errors, option_masks, patch_point
from unit_gateway.net.headers import has_header_field
from unit_gateway.net.modes import TRANSPARENT_MODES
from unit_gateway.redaction import messages, options, overdue, wire
from unit_gateway.redaction.engine import Redactor
from unit_gateway.redaction.flow_walk import FlowVault
from unit_gateway.redaction.late_headers import LateHeaders
from unit_gateway.redaction.log_records import _RedactingFactory
from unit_gateway.redaction.proxy_auth import _PROXY_AUTH, _PROXY_CREDENTIALS, _after_proxyauth
from unit_gateway.redaction.secrets import _ENCODING, _SECRETS, FlowSecrets, HeaderSubstitutions
from unit_gateway.redaction.stream_text import unreadable
from unit_gateway.redaction.wire import _real_value

if TYPE_CHECKING:
    from unit_gateway.config.core import GatewayCore
    from unit_gateway.config.schema import LoadedConfig, Upstream
    from unit_gateway.metrics.registry import GatewayMetrics

#: Bounds of the cache of values found clean.
_CLEAN_LEAVES = 4096
_CLEAN_LEAF_SIZE = 256


def _owned(holder: Any, name: str) -> bool:
    """An HTTP message's body: the redaction addon keeps it as a redacted copy of its own."""
    return name == "content" and isinstance(holder, http.MessageData)


class FlowRedaction:
    """Load it first: its redacted view must exist before any other addon sees a flow."""

    def __init__(self, core: GatewayCore, metrics: GatewayMetrics | None = None) -> None:
        self.core = core
        self.metrics = metrics
        self.redactor = Redactor()
        self._factory: _RedactingFactory | None = None
        self._late_headers = LateHeaders(self)
        self._addons: Any = None
        self._redactions = Children(metrics.redactions) if metrics is not None else None
        self._sweeper: asyncio.Task[None] | None = None
        #: Short values clean under the current rules, from any flow.
        self._clean_leaves: dict[str | bytes, None] = {}
        self.vault = FlowVault(
            self._shown_leaf, self._shown_fields, http.Headers, _owned, self.redact_data
        )

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
        options.check_options(updated)

    def reconfigure(self, config: LoadedConfig) -> None:
        self.redactor = Redactor(config.model.redaction)
        self._clean_leaves.clear()  # clean under the old rules
        if self._redactions is not None:
            # Series start at 0 so rates and alerts see the first redaction.
            for rule in self.redactor.rule_names:
                self._redactions(rule)

    def running(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(overdue.sweep())

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

    def time_out_overdue(self, now: float) -> None:
        overdue.time_out_overdue(now)

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
        self._late_headers.seen(flow, flow.request)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:  # stored redacted
            self._late_headers.seen(flow, flow.response)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        _after_proxyauth(flow)
        # Never forwarded; proxyauth (built-in, ran first) has read Proxy-Authorization.
        self.redact_headers(flow.request.headers, {})

    def count(self, counts: Counter[str] | dict[str, int]) -> None:
        if self._redactions is None:
            return
        for rule, n in counts.items():
            if n:
                self._redactions(rule).inc(n)

    def conceal(self, flow: Any, *, ended: bool = False) -> None:
        """Nothing ``flow`` holds is real any more; ``ended`` before a stream's end hook."""
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
            # Methods, hosts, header names repeat in every flow: scan once.
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
        return messages.shown_fields(self.redactor, fields, self.count)

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
        messages.redact_headers(self.redactor, headers, substitutions, keep, self.count)

    def redact_body(self, message: http.Message, path: str | None) -> tuple[bytes, bytes] | None:
        """Replace ``message``'s body by a redacted copy (same Content-Encoding); return
        (stored, real) or None when nothing in it is secret."""
        return messages.redact_body(self.redactor, message, path, self.count)

    def _configured_upstream(self, request: http.Request) -> Upstream | None:
        config = self.core.config
        return config.model.upstream_of(request) if config is not None else None

    def before_hook(self, kind: type, flow: http.HTTPFlow) -> None:
        """HttpStream has just stored part of the flow; no addon has seen it yet."""
        if kind is httplayer.HttpRequestHeadersHook:
            # Yielded twice on some error paths.
            if flow not in _SECRETS and flow.request.method != "CONNECT":
                # Any egress can carry secrets: redact every flow; only Unit's gets a token.
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
        """Transparent mode: send a request whose Host names an upstream to it by name, never to
        the dialed IP a token could leak to. Returns that upstream, if any."""
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
            assert self.core.config is not None
            timeout = self.core.config.model.unit.response_timeout_seconds
        secrets = FlowSecrets(
            (request.scheme, request.host, request.port),
            upstream=upstream,
            response_timeout=timeout,
        )
        _SECRETS[flow] = secrets
        # Kept for proxyauth, which runs first; ``requestheaders`` then removes them.
        self.redact_headers(request.headers, secrets.request_headers, keep=_PROXY_CREDENTIALS)
        counts: Counter[str] = Counter()
        real_path = request.path
        stored_path = self.redactor.redact_url(real_path, counts=counts)
        if stored_path != real_path:
            request.path = stored_path
            secrets.request_path = (stored_path, real_path)
            self.count(counts)
        return secrets

    def egress(
        self, stream: httplayer.HttpStream, secrets: FlowSecrets, command: httplayer.SendHttp
    ) -> httplayer.SendHttp:
        return wire.egress(stream, secrets, command)

    # --- for other addons: real values, never through the flow

    def upstream_of(self, flow: http.HTTPFlow) -> Upstream | None:
        """The upstream the flow goes to, as matched when it was protected."""
        found = _SECRETS.get(flow)
        if found is not None:
            return found.upstream
        return self._configured_upstream(flow.request)  # driven without the HTTP layer

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

    def real_request_content(self, flow: http.HTTPFlow) -> bytes | None:
        found = _SECRETS.get(flow)
        return wire.decoded_body(
            flow.request, wire.real_raw(flow.request, found and found.request_body)
        )

    def real_response_content(self, flow: http.HTTPFlow) -> bytes | None:
        assert flow.response is not None
        found = _SECRETS.get(flow)
        return wire.decoded_body(
            flow.response, wire.real_raw(flow.response, found and found.response_body)
        )

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
        self.vault.reveal(flow)
        try:
            real = wire.real_request_copy(flow.request, found)
        finally:
            self.vault.conceal(flow)
        return real

    def real_response(self, flow: http.HTTPFlow) -> http.Response:
        """A copy of the response as the caller gets it, to read (see ``set_real_response``)."""
        assert flow.response is not None
        found = _SECRETS.get(flow)
        self.vault.reveal(flow)
        try:
            real = wire.real_response_copy(flow.response, found)
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
        self.vault.conceal(flow)  # before anything else sees it
