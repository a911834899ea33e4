"""The token guard applied to an answer from Unit before a placeholder caller gets it (what
it checks: :mod:`unit_gateway.tokens.guard`)."""

from __future__ import annotations

import logging

from mitmproxy import http

from unit_gateway.flows import RealValues
from unit_gateway.net.jsonapi import error_response
from unit_gateway.tokens.flow_state import FlowState, internal_error
from unit_gateway.tokens.guard import check_response

logger = logging.getLogger(__name__)


def guard_answer(
    flow: http.HTTPFlow, state: FlowState, real: RealValues, max_body_bytes: int
) -> None:
    """Last word on any answer to a placeholder caller: Unit tokens become placeholders,
    an answer that cannot be checked is withheld."""
    if state.identity is None or flow.response is None:
        return  # the caller's own credential, or no answer
    if flow.response.status_code == 101:
        # mitmproxy already pipes what follows a 101: nothing can be checked, so close.
        logger.warning(
            "unit-gateway: Unit switched protocols (101) on %s %s for %s; the caller's "
            "connection is closed",
            flow.request.method,
            state.record.route,
            state.identity.placeholder,
        )
        flow.kill()
        return
    try:
        verdict = check_response(real.real_response(flow), max_body_bytes)
    except Exception:
        step = "checking Unit's answer for tokens"
        logger.exception("unit-gateway: internal error %s for %s", step, flow.request.path)
        real.set_real_response(flow, internal_error(flow, step, "Unit's answer is not passed on"))
        return
    where = f"{flow.request.method} {state.record.route}"
    if verdict.withheld is not None:
        logger.warning(
            "unit-gateway: Unit's answer to %s for %s is withheld: %s",
            where,
            state.identity.placeholder,
            verdict.withheld,
        )
        real.set_real_response(
            flow,
            error_response(
                502,
                "unit_answer_withheld",
                f"Unit's answer is not passed on to a caller that used a placeholder: "
                f"{verdict.withheld}",
            ),
        )
    elif verdict.replacement is not None:
        # A gap in the route table: say so.
        logger.warning(
            "unit-gateway: Unit's answer to %s for %s held %d Unit token(s); the caller "
            "got %s in their place",
            where,
            state.identity.placeholder,
            len(verdict.placeholders),
            ", ".join(sorted(set(verdict.placeholders))),
        )
        real.set_real_response(flow, verdict.replacement)
