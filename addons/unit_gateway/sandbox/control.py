"""``/__sandbox/*``: the test and demo controls. No token, no rate limit, no faults.

- ``GET /__sandbox/stats`` (a contract): counts of requests per route, responses per status,
  tokens and verifications created, requests that arrived without any Authorization.
- ``GET|POST /__sandbox/faults``: read or partially update the fault switches.
- ``GET|POST /__sandbox/clock``: read, or move forward with ``{"advance_seconds": N}``.
- ``POST /__sandbox/reset``: clear stats, limits and the clock (not the data).
- ``GET /__sandbox/health``: liveness.
- ``GET /__sandbox/issued``: the customer/cardholder tokens and verification tokens issued, so
  tests can look for them in everything a gateway wrote.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..unit_api.paseto import format_time
from .context import SandboxState
from .faults import FaultError
from .wire import ApiError, error_response, plain_json, read_body

PREFIX = "/__sandbox"


def is_control_path(path: str) -> bool:
    return path.startswith(PREFIX) and (len(path) == len(PREFIX) or path[len(PREFIX)] == "/")


async def _json_body(request: web.BaseRequest) -> Any:
    raw = await read_body(request)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "Malformed JSON", code="malformed_json", detail=str(e)) from None


def _clock(state: SandboxState) -> dict[str, Any]:
    return {
        "now": format_time(state.clock.now_datetime()),
        "offset_seconds": state.clock.offset,
    }


async def _issued(state: SandboxState, request: web.BaseRequest) -> web.Response:
    return plain_json(
        {
            "tokens": list(state.authority.issued),
            "verificationTokens": state.verifications.issued(),
        }
    )


async def _stats(state: SandboxState, request: web.BaseRequest) -> web.Response:
    return plain_json(state.stats.as_json())


async def _faults(state: SandboxState, request: web.BaseRequest) -> web.Response:
    if request.method == "POST":
        try:
            state.faults.update(await _json_body(request))
        except FaultError as e:
            raise ApiError(400, "Bad Request", code="invalid_fault", detail=str(e)) from None
        state.rate_limiter.limit = state.faults.rate_limit_per_minute
    return plain_json(state.faults.as_json())


async def _clock_handler(state: SandboxState, request: web.BaseRequest) -> web.Response:
    if request.method == "POST":
        body = await _json_body(request)
        seconds = body.get("advance_seconds") if isinstance(body, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ApiError(
                400,
                "Bad Request",
                code="invalid_clock",
                detail='expected {"advance_seconds": N} with N >= 0',
            )
        state.clock.advance(float(seconds))
    return plain_json(_clock(state))


async def _reset(state: SandboxState, request: web.BaseRequest) -> web.Response:
    state.reset()
    return plain_json({"reset": True, "clock": _clock(state)})


async def _health(state: SandboxState, request: web.BaseRequest) -> web.Response:
    return plain_json({"status": "ok"})


_ENDPOINTS = {
    "stats": (("GET",), _stats),
    "faults": (("GET", "POST"), _faults),
    "clock": (("GET", "POST"), _clock_handler),
    "reset": (("POST",), _reset),
    "health": (("GET",), _health),
    "issued": (("GET",), _issued),
}


async def handle(state: SandboxState, request: web.BaseRequest) -> web.Response:
    name = request.path[len(PREFIX) :].strip("/")
    endpoint = _ENDPOINTS.get(name)
    try:
        if endpoint is None:
            raise ApiError(404, "Not Found", detail=f"no sandbox control at {request.path}")
        methods, handler = endpoint
        if request.method not in methods:
            raise ApiError(405, "Method Not Allowed", headers={"Allow": ", ".join(methods)})
        return await handler(state, request)
    except ApiError as e:
        return error_response(e)
