"""The token addon: swaps a caller's placeholder for the real Unit token before a request
leaves, handles Unit's token endpoints, and retries once when Unit rejects an injected token.

Per-flow state (tokens among it) stays here, never in ``flow.metadata``, which is saved
with the flow; real values go through :class:`~unit_gateway.flows.RealValues`.
"""

from __future__ import annotations

import logging
import ssl
import time
import weakref
from collections.abc import Awaitable
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, http

from unit_gateway.config.schema import LoadedConfig
from unit_gateway.flows import RealValues, open_record
from unit_gateway.metrics import events
from unit_gateway.metrics.registry import GatewayMetrics
from unit_gateway.net.headers import authorization_name, has_header_field
from unit_gateway.net.jsonapi import error_response
from unit_gateway.tokens.answer_guard import guard_answer
from unit_gateway.tokens.fleet import Fleet
from unit_gateway.tokens.flow_state import (
    FlowState,
    answered_locally,
    fail_closed,
    internal_error,
    token_endpoint_identity,
)
from unit_gateway.tokens.service import TokenError, TokenService
from unit_gateway.tokens.store import SharedStore
from unit_gateway.tokens.token_requests import TokenRequests
from unit_gateway.unit_api.identity import (
    ORG,
    AmbiguousAuthorization,
    Identity,
    PlaceholderError,
    RealToken,
    check_authorization_fields,
    parse_authorization,
)
from unit_gateway.unit_api.routes import (
    CARDHOLDER_SCOPES,
    RouteMatch,
    RouteTable,
    UnreadableTarget,
    route_label,
)

if TYPE_CHECKING:
    from unit_gateway.config.core import GatewayCore

logger = logging.getLogger(__name__)

SCOPE_HEADER = "X-Unit-Gateway-Scope"
_SCOPE_HEADER_NAME = SCOPE_HEADER.lower().encode()
_UPGRADE = b"upgrade"
_FIELD_NAME = itemgetter(0)


class TokenInjector:
    def __init__(
        self,
        core: GatewayCore,
        metrics: GatewayMetrics,
        redaction: RealValues,
    ) -> None:
        self.core = core
        self.metrics = metrics
        self.redaction = redaction
        self.routes = RouteTable.default()
        self.service: TokenService | None = None
        self.token_requests = TokenRequests(redaction, metrics)
        # Holds tokens: freed in response or error, or with the flow.
        self._flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = (
            weakref.WeakKeyDictionary()
        )

    def load(self, loader: Any) -> None:
        self.core.listeners.append(self.reconfigure)

    def reconfigure(self, config: LoadedConfig) -> None:
        """Apply routes and scopes; cached tokens survive a reload."""
        self.routes = RouteTable.from_settings(config.model.routes)
        if self.service is not None:
            self.service.reconfigure(
                config, two_factor_scopes=frozenset(self.routes.two_factor_scopes)
            )

    async def running(self) -> None:
        config = self.core.config
        org_token = self.core.org_token
        if config is None or org_token is None:
            return
        service = TokenService(
            config,
            org_token,
            ssl_context=self._ssl_context(),
            two_factor_scopes=frozenset(self.routes.two_factor_scopes),
            on_event=self.metrics.token_event,
        )
        store = SharedStore.from_config(config)
        if store is not None:
            store.on_state = self._store_state
            store.on_operation = self.metrics.store_operation
            service.fleet = Fleet(store, service.cache, self.metrics.token_event)
            await service.fleet.start()
            self._store_state(store.up)
        self.service = self.token_requests.service = service
        self.metrics.add_refresher(self._cache_gauges)

    def _cache_gauges(self) -> None:
        if self.service is None:
            return
        counts = self.service.cache.count_by_kind()
        for kind in ("customer", "cardholder"):
            self.metrics.cache_entries.labels(kind).set(counts.get(kind, 0))

    def _store_state(self, up: bool) -> None:
        self.core.health.store = "up" if up else "down"
        self.metrics.store_up.labels("redis").set(1 if up else 0)

    def _ssl_context(self) -> ssl.SSLContext:
        # The gateway's own calls trust what mitmproxy trusts for upstreams.
        if ctx.options.ssl_insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(
            cafile=ctx.options.ssl_verify_upstream_trusted_ca or None,
            capath=ctx.options.ssl_verify_upstream_trusted_confdir or None,
        )

    async def done(self) -> None:
        if self.service is not None:
            await self.service.close()

    # --- requests
    # Hooks return a coroutine only when they must wait (a mint); cache hits stay synchronous.

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None:
            return None
        if self.service is None:
            if self.core.config is not None and not self.core.health.ready:
                return self._when_started(flow)
            self._not_configured(flow)
            return None
        return self._route(flow)

    async def _when_started(self, flow: http.HTTPFlow) -> None:
        """A request that arrived while starting (mitmproxy listens first)."""
        assert self.core.config is not None
        seconds = self.core.config.model.lifecycle.start_wait_seconds
        if not await self.core.health.wait_ready(seconds) or self.service is None:
            self._not_configured(flow)
            return
        waiting = self._route(flow)
        if waiting is not None:
            await waiting

    @staticmethod
    def _not_configured(flow: http.HTTPFlow) -> None:
        # No valid configuration: nothing leaves, with or without a token.
        flow.response = error_response(
            503,
            "gateway_not_configured",
            "unit-gateway has no valid configuration; see its log",
        )

    def _route(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        try:
            waiting = self._route_request(flow)
        except Exception:
            fail_closed(flow, "choosing the token")
            waiting = None
        if flow.response is not None:
            answered_locally(flow)
        return waiting

    def _route_request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        assert self.core.config is not None
        request = flow.request
        model = self.core.config.model
        upstream = self.redaction.upstream_of(flow)
        state = None
        if upstream is not None:
            # Counted as Unit's from here, refused or not.
            record = open_record(flow, upstream.environment)
            state = self._flows[flow] = FlowState(upstream, record)
        try:
            check_authorization_fields(map(_FIELD_NAME, request.data.headers.fields))
            credential = self._credential(flow)
        except AmbiguousAuthorization as e:
            # Whatever the host: a placeholder may hide in the reading not taken.
            flow.response = error_response(400, "ambiguous_authorization", str(e))
            return None
        if state is None:
            if isinstance(credential, Identity | PlaceholderError):
                flow.response = error_response(
                    403,
                    "placeholder_for_unknown_host",
                    f"{request.scheme}://{request.host}:{request.port} is not a configured "
                    "Unit upstream; unitgw placeholders are only sent to Unit",
                )
            return None
        try:
            # The flow may hold the path redacted.
            route = self.routes.match(request.method, self.redaction.real_request_path(flow))
        except UnreadableTarget as e:
            flow.response = error_response(
                400, "invalid_request", f"the gateway could not take this request: {e}"
            )
            return None
        state.record.route = route_label(route)
        if route is not None and route.token_endpoint is not None:
            state.token_identity = token_endpoint_identity(route)
            self.redaction.set_response_timeout(flow, model.unit.token_timeout_seconds)
        if isinstance(credential, PlaceholderError):
            flow.response = error_response(401, "invalid_placeholder", str(credential))
            return None
        if isinstance(credential, RealToken):
            # The caller's own credential goes through untouched.
            return None
        if credential is None:
            if model.unit.missing_authorization == "reject":
                flow.response = error_response(
                    401,
                    "missing_authorization",
                    "no Authorization header: send Bearer unitgw:org, unitgw:customer:<id> "
                    "or unitgw:cardholder:<cardId>",
                )
                return None
            credential = ORG
            flow.request.headers[authorization_name(flow.request)] = f"Bearer {ORG.placeholder}"
        if has_header_field(request.data.headers.fields, _UPGRADE):
            # After a switch Unit's bytes escape the token check; Unit has no such endpoint.
            flow.response = error_response(
                400,
                "upgrade_refused",
                "a request with a unitgw placeholder cannot switch protocols (Upgrade): what "
                "Unit sent after the switch could not be checked for tokens",
            )
            return None
        state.identity = credential
        state.record.identity_kind = credential.kind
        return self._inject(flow, state, route)

    def _credential(self, flow: http.HTTPFlow) -> Identity | RealToken | PlaceholderError | None:
        """Raises AmbiguousAuthorization."""
        try:
            return parse_authorization(self.redaction.real_request_header(flow, "Authorization"))
        except PlaceholderError as e:
            return e

    def _inject(
        self, flow: http.HTTPFlow, state: FlowState, route: RouteMatch | None
    ) -> Awaitable[None] | None:
        request = flow.request
        identity = state.identity
        assert identity is not None
        extra = ""
        if has_header_field(request.data.headers.fields, _SCOPE_HEADER_NAME):
            extra = request.headers.pop(SCOPE_HEADER, "")
        if state.token_identity is not None:
            # Unit's token endpoints take the org token, whoever the caller speaks for.
            state.placeholder_caller = True
            self._authorize(flow, self._org_token())
            return None
        if identity == ORG:
            self._authorize(flow, self._org_token())
            return None
        if route is not None and route.org_only:
            flow.response = error_response(
                403,
                "org_only_route",
                f"only the org token may call {request.method} {route.template}; "
                f"send Bearer unitgw:org, not {identity.placeholder}",
            )
            return None
        if identity.kind == "cardholder" and route is not None:
            if not route.allows_cardholder(identity.subject or ""):
                flow.response = error_response(
                    403,
                    "cardholder_route_refused",
                    f"a cardholder token for card {identity.subject} cannot be used for "
                    f"{request.method} {route.template}",
                )
                return None
        needed = frozenset(extra.replace(",", " ").split())
        if route is not None and route.scope is not None:
            needed |= {route.scope}
        if identity.kind == "cardholder":
            needed &= CARDHOLDER_SCOPES
        state.needed = needed
        assert self.service is not None
        token = self.service.cached(identity, needed, state.upstream)
        if token is not None:
            state.token = token
            self._authorize(flow, token.value)
            return None
        return self._mint_and_attach(flow, state)

    async def _mint_and_attach(self, flow: http.HTTPFlow, state: FlowState) -> None:
        started = time.perf_counter()
        try:
            await self._attach_token(flow, state)
        except Exception:
            fail_closed(flow, "getting a token")
        state.record.mint_seconds = time.perf_counter() - started
        if flow.response is not None:
            state.record.answered_locally = True

    async def _attach_token(self, flow: http.HTTPFlow, state: FlowState) -> bool:
        assert self.service is not None and state.identity is not None
        try:
            token = await self.service.token_for(state.identity, state.needed, state.upstream)
        except TokenError as e:
            flow.response = self._token_error_response(e)
            return False
        state.token = token
        self._authorize(flow, token.value)
        return True

    def _token_error_response(self, error: TokenError) -> http.Response:
        """The caller's JSON:API error; redacted, as the detail may quote Unit's text."""
        detail = self.redaction.redact_text(error.detail)
        return error_response(
            error.status, error.code, detail, headers=error.headers, meta=error.meta
        )

    def _authorize(self, flow: http.HTTPFlow, token: str) -> None:
        """Unit gets this token; the flow keeps the placeholder."""
        self.redaction.set_upstream_authorization(flow, f"Bearer {token}")

    def _org_token(self) -> str:
        org = self.core.org_token
        assert org is not None
        return org.reveal()

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        state = self._flows.get(flow)
        if state is None or state.token_identity is None or flow.response is not None:
            return None
        if self.service is None:
            return None
        return self.token_requests.take(flow, state)

    # --- responses

    def error(self, flow: http.HTTPFlow) -> None:
        state = self._flows.pop(flow, None)
        if state is not None and state.challenge_id is not None and flow.response is None:
            if self.service is not None:  # no answer: the challenge is still open
                self.service.reopen_challenge(state.challenge_id)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        state = self._flows.pop(flow, None)
        if state is None or flow.response is None or self.service is None:
            return None
        if state.token_identity is not None:
            self.token_requests.answered(flow, state)
        elif flow.response.status_code == 401 and state.token is not None and not state.retried:
            return self._retry_with_new_token(flow, state)
        self._guard(flow, state)
        return None

    def _guard(self, flow: http.HTTPFlow, state: FlowState) -> None:
        assert self.core.config is not None
        guard_answer(flow, state, self.redaction, self.core.config.model.redaction.max_body_bytes)

    async def _retry_with_new_token(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Evict the rejected token and send once more with another; a second 401 is passed on."""
        assert state.token is not None
        kind = state.token.identity.kind
        try:
            await self._retry(flow, state)
        except Exception:
            step = "retrying with a new token"
            logger.exception("unit-gateway: internal error %s for %s", step, flow.request.path)
            self.redaction.set_real_response(
                flow, internal_error(flow, step, "Unit's first answer (401) is not passed on")
            )
            self.metrics.token_event(events.Retry(kind, "error"))
        self._guard(flow, state)  # the retry's answer needs checking too

    async def _retry(self, flow: http.HTTPFlow, state: FlowState) -> None:
        assert self.service is not None and state.token is not None
        await self.service.evict(state.token)
        state.retried = True
        kind = state.token.identity.kind
        if not await self._attach_token(flow, state):
            assert flow.response is not None
            self.redaction.set_real_response(flow, flow.response)
            self.metrics.token_event(events.Retry(kind, "error"))
            return
        client = self.service.clients[state.upstream.url]
        try:
            # The real request exists only in this copy.
            timeout = self.redaction.response_timeout(flow)
            assert timeout is not None
            response = await client.forward(self.redaction.real_request(flow), timeout)
        except TokenError as e:
            self.redaction.set_real_response(flow, self._token_error_response(e))
            self.metrics.token_event(events.Retry(kind, "error"))
            return
        self.redaction.set_real_response(flow, response)
        assert flow.response is not None
        refused_again = flow.response.status_code == 401
        self.metrics.token_event(events.Retry(kind, "refused" if refused_again else "ok"))
        if refused_again and state.token is not None:
            await self.service.evict(state.token)
