"""The token addon's state of one flow to Unit, and the refusals it answers with when the
gateway itself fails (never a request forwarded without the token it needs)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from mitmproxy import http

from unit_gateway.config.schema import Upstream
from unit_gateway.flows import FlowRecord, record_of
from unit_gateway.net.jsonapi import error_response
from unit_gateway.tokens.cache import CachedToken
from unit_gateway.unit_api.identity import Identity
from unit_gateway.unit_api.routes import RouteMatch

logger = logging.getLogger(__name__)


@dataclass
class FlowState:
    """What the gateway learned about a request to Unit, for its response and its metrics."""

    upstream: Upstream
    #: What the metrics addon reads of the flow (route, identity kind, mint time).
    record: FlowRecord
    identity: Identity | None = None
    token: CachedToken | None = None
    needed: frozenset[str] = frozenset()
    #: The caller used a placeholder on a token endpoint: it gets a placeholder back.
    placeholder_caller: bool = False
    token_identity: Identity | None = None
    retried: bool = False
    #: The gateway's challenge a caller completes with this request, and the real
    #: verification token sent to Unit in its place.
    challenge_id: str | None = None
    verification_token: str | None = field(default=None, repr=False)
    #: The scopes a token request asked for, when the token may serve the identity's other
    #: requests; None when the request could not be read or restricts it to ``resources``.
    learnable_scopes: frozenset[str] | None = None


def token_endpoint_identity(route: RouteMatch) -> Identity | None:
    """The identity a token endpoint creates a token (or verification) for."""
    if route.token_endpoint in ("customer", "customer-verification"):
        return Identity("customer", route.params.get("customerId"))
    if route.token_endpoint in ("cardholder", "cardholder-verification"):
        return Identity("cardholder", route.params.get("cardId"))
    return None


def answered_locally(flow: http.HTTPFlow) -> None:
    record = record_of(flow)
    if record is not None:
        record.answered_locally = True


def internal_error(flow: http.HTTPFlow, step: str, consequence: str) -> http.Response:
    """The caller's answer to a bug in the gateway, while handling an exception: the step and
    the kind of failure (the log has the traceback), and what became of the request."""
    failure = sys.exc_info()[0]
    kind = failure.__name__ if failure is not None else "error"
    return error_response(
        500,
        "gateway_internal_error",
        f"unit-gateway failed {step} for {flow.request.method} {flow.request.host} ({kind}); "
        f"{consequence}; see the gateway log",
    )


def fail_closed(flow: http.HTTPFlow, step: str) -> None:
    """mitmproxy would log the exception and forward the request as it is: refuse instead."""
    logger.exception("unit-gateway: internal error %s for %s", step, flow.request.path)
    flow.response = internal_error(flow, step, "the request was not forwarded")
    answered_locally(flow)
