"""The sandbox's aiohttp application: the route table and the pipeline every request takes.

aiohttp's low-level server hands every request to :meth:`SandboxApp.dispatch`, which does, in
order: count it, rate-limit it (per client IP, sliding minute), apply latency, answer 404/405,
apply the token outage and the injected 5xx errors, authenticate (401), check the route's
scope (403), parse the body, run the handler. Keeping the whole pipeline in one function (no
aiohttp application, router or middlewares; a precomputed route tree) keeps the hot path short.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
from collections.abc import Callable

from aiohttp import web

from ..net.limits import Decision, whole_seconds
from . import control, resource_api, token_api
from .context import Call, SandboxState
from .routes import Match, Route, Router, lenient_path
from .wire import ApiError, error_response, parse_json_body, read_body

logger = logging.getLogger("unit_gateway.sandbox")
access_logger = logging.getLogger("unit_gateway.sandbox.access")

_BODY_METHODS = frozenset({"POST", "PATCH", "PUT"})

# (method, template, handler, scope)
_API: list[tuple[str, str, Callable[[Call], web.StreamResponse], str]] = [
    ("GET", "/customers", resource_api.list_customers, "customers"),
    ("POST", "/customers", resource_api.not_implemented, "customers-write"),
    ("GET", "/customers/{customerId}", resource_api.get_customer, "customers"),
    ("PATCH", "/customers/{customerId}", resource_api.not_implemented, "customers-write"),
    ("GET", "/accounts", resource_api.list_accounts, "accounts"),
    ("POST", "/accounts", resource_api.create_account, "accounts-write"),
    ("GET", "/accounts/{accountId}", resource_api.get_account, "accounts"),
    ("PATCH", "/accounts/{accountId}", resource_api.not_implemented, "accounts-write"),
    (
        "GET",
        "/accounts/{accountId}/transactions/{transactionId}",
        resource_api.get_account_transaction,
        "transactions",
    ),
    (
        "PATCH",
        "/accounts/{accountId}/transactions/{transactionId}",
        resource_api.not_implemented,
        "transactions-write",
    ),
    ("GET", "/cards", resource_api.list_cards, "cards"),
    ("POST", "/cards", resource_api.create_card, "cards-write"),
    ("GET", "/cards/{cardId}", resource_api.get_card, "cards"),
    ("PATCH", "/cards/{cardId}", resource_api.not_implemented, "cards-write"),
    ("POST", "/cards/{cardId}/freeze", resource_api.freeze_card, "cards-write"),
    ("POST", "/cards/{cardId}/unfreeze", resource_api.unfreeze_card, "cards-write"),
    ("POST", "/cards/{cardId}/close", resource_api.close_card, "cards-write"),
    ("GET", "/cards/{cardId}/secure-data/pan", resource_api.card_pan, "cards-sensitive"),
    ("GET", "/cards/{cardId}/secure-data/cvv2", resource_api.card_cvv2, "cards-sensitive"),
    (
        "GET",
        "/cards/{cardId}/secure-data/pin/status",
        resource_api.card_pin_status,
        "cards-sensitive",
    ),
    ("POST", "/cards/{cardId}/secure-data/pin", resource_api.set_card_pin, "cards-sensitive-write"),
    ("GET", "/payments", resource_api.list_payments, "payments"),
    ("POST", "/payments", resource_api.create_payment, "payments-write"),
    ("GET", "/payments/{paymentId}", resource_api.get_payment, "payments"),
    ("PATCH", "/payments/{paymentId}", resource_api.not_implemented, "payments-write"),
    ("GET", "/transactions", resource_api.list_transactions, "transactions"),
    ("GET", "/applications", resource_api.list_applications, "applications"),
    ("POST", "/applications", resource_api.create_application, "applications-write"),
    ("GET", "/applications/{applicationId}", resource_api.get_application, "applications"),
    ("PATCH", "/applications/{applicationId}", resource_api.not_implemented, "applications-write"),
]

_TOKEN_ENDPOINTS: list[tuple[str, str, Callable[[Call], web.StreamResponse], str]] = [
    (
        "POST",
        "/customers/{customerId}/token",
        token_api.create_customer_token,
        "customer-token-write",
    ),
    (
        "POST",
        "/customers/{customerId}/token/verification",
        token_api.create_customer_token_verification,
        "customer-token-write",
    ),
    ("POST", "/cards/{cardId}/cardholder/token", token_api.create_cardholder_token, "cards-write"),
    (
        "POST",
        "/cards/{cardId}/cardholder/token/verification",
        token_api.create_cardholder_token_verification,
        "cards-write",
    ),
]


def build_router() -> Router:
    router = Router()
    for table, token_endpoint in ((_API, False), (_TOKEN_ENDPOINTS, True)):
        for method, template, handler, scope in table:
            router.add(
                Route(method, template, handler, scope, token_endpoint, f"{method} {template}")
            )
    return router


class SandboxApp:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.router = build_router()
        self._errors_injected = 0

    def make_server(self) -> web.Server:
        # access_log=None: aiohttp's access log would write raw request lines (ids, query
        # strings); dispatch writes its own, with route templates only.
        return web.Server(self.dispatch, access_log=None)

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if control.is_control_path(path):
            return await control.handle(self.state, request)
        started = time.perf_counter() if self.state.access_log else 0.0
        state = self.state
        stats = state.stats
        method = request.method
        if state.faults.lenient_paths:
            match = self.router.match(lenient_path(request.raw_path), fold_case=True)
        else:
            match = self.router.match(path)
        route = match.methods.get(method) if match is not None else None
        if route is not None:
            key = route.key
        else:
            key = f"{method} {match.template if match is not None else '?'}"
        stats.requests[key] += 1
        authorization = request.headers.get("Authorization")
        if route is not None and authorization is None:
            stats.unauthenticated[key] += 1

        decision = state.rate_limiter.hit(request.remote or "", state.clock.now())
        try:
            if not decision.allowed:
                stats.rate_limited += 1
                raise ApiError(
                    429, "Too Many Requests", code="rate_limited", detail="API rate limit exceeded"
                )
            response = await self._serve(request, match, route, authorization)
        except ApiError as e:
            response = error_response(e)
        except Exception as e:
            # The caller gets a plain 500; the log gets where it failed but not the exception's
            # message, which could quote request data.
            frames = "".join(traceback.format_tb(e.__traceback__))
            logger.error("sandbox: %s failed with %s\n%s", key, type(e).__name__, frames)
            response = error_response(ApiError(500, code="internal_error"))
        if state.faults.rate_limit_headers:
            self._add_rate_limit_headers(response, decision)
        stats.responses[response.status] += 1
        if state.access_log:
            # Route templates only: paths carry ids, and tokens never belong in a log.
            elapsed = (time.perf_counter() - started) * 1000
            access_logger.info("%s %s %.1fms", key, response.status, elapsed)
        return response

    def _add_rate_limit_headers(self, response: web.StreamResponse, decision: Decision) -> None:
        if decision.limit <= 0:
            return
        now = self.state.clock.now()
        response.headers["X-RateLimit-Limit"] = str(decision.limit)
        response.headers["X-RateLimit-Remaining"] = str(decision.remaining)
        # Epoch seconds (sandbox clock) at which the oldest request leaves the window.
        response.headers["X-RateLimit-Reset"] = str(int(now + whole_seconds(decision.reset_after)))
        if not decision.allowed:
            response.headers["Retry-After"] = str(whole_seconds(decision.reset_after))

    async def _serve(
        self,
        request: web.BaseRequest,
        match: Match | None,
        route: Route | None,
        authorization: str | None,
    ) -> web.StreamResponse:
        state = self.state
        faults = state.faults
        if faults.latency_ms > 0:
            state.stats.faults_injected["latency"] += 1
            await asyncio.sleep(faults.latency_ms / 1000)
        if match is None:
            raise ApiError(404, "Not Found", code="not_found", detail="no such route")
        if route is None:
            allowed = ", ".join(sorted(match.methods))
            raise ApiError(405, "Method Not Allowed", headers={"Allow": allowed})
        if route.token_endpoint:
            if faults.token_outage:
                state.stats.faults_injected["token_outage"] += 1
                raise ApiError(503, "Service Unavailable", code="token_outage")
        elif faults.error_rate > 0 and random.random() < faults.error_rate:
            state.stats.faults_injected["error"] += 1
            self._errors_injected += 1
            status = 500 if self._errors_injected % 2 else 503
            raise ApiError(status, code="injected_fault")
        principal = state.authority.authenticate(authorization)
        if faults.reject_user_tokens and principal.role != "org":
            state.stats.faults_injected["rejected_token"] += 1
            raise ApiError(
                401, "Unauthorized", code="token_revoked", detail="the token was revoked"
            )
        if route.scope not in principal.scopes:
            raise ApiError(
                403,
                "Forbidden",
                code="insufficient_scope",
                detail=f"this route needs scope {route.scope}",
            )
        body = None
        if request.method in _BODY_METHODS and request.body_exists:
            raw = await read_body(request)
            body = parse_json_body(raw, request.headers.get("Content-Type", ""))
        if request.method != "GET":
            # Only writes change data; handlers are synchronous, so nothing runs in between.
            state.documents.clear()
        call = Call(state, request, match.params, principal, body)
        response: web.StreamResponse = route.handler(call)
        return response
