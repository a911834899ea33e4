"""Unit's token endpoints called through the gateway: a caller completing a two-factor
challenge gets the real verification token sent in its place, a placeholder caller gets its
placeholder back instead of Unit's token, and a new token is cached for its identity."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from typing import Any

from mitmproxy import http

from unit_gateway.flows import RealValues
from unit_gateway.metrics import events
from unit_gateway.metrics.registry import GatewayMetrics
from unit_gateway.net.jsonapi import error_response
from unit_gateway.tokens.flow_state import FlowState, fail_closed, internal_error
from unit_gateway.tokens.service import CHALLENGE_PREFIX, TokenService

logger = logging.getLogger(__name__)


class TokenRequests:
    def __init__(self, real: RealValues, metrics: GatewayMetrics) -> None:
        self.real = real
        self.metrics = metrics
        #: Set by the token addon once it runs.
        self.service: TokenService | None = None

    def take(self, flow: http.HTTPFlow, state: FlowState) -> Awaitable[None] | None:
        """The caller's create-token (or verification) request, before it goes to Unit."""
        try:
            return self._take_token_request(flow, state)
        except Exception:
            self._token_request_failed(flow)
            return None

    def answered(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Unit's answer to it, before the caller gets it."""
        step = "ending the challenge"
        try:
            if state.challenge_id is not None:
                self._end_challenge(flow, state)
            step = "taking up Unit's new token"
            self._learn(flow, state)
        except Exception:
            # mitmproxy would log it and pass Unit's answer on: a token, or a verification
            # token the caller never sent.
            logger.exception("unit-gateway: internal error %s for %s", step, flow.request.path)
            if state.placeholder_caller or state.challenge_id is not None:
                self.real.set_real_response(
                    flow, internal_error(flow, step, "Unit's answer is not passed on")
                )

    def _token_request_failed(self, flow: http.HTTPFlow) -> None:
        # Half-way through, the flow may hold a real verification token: it keeps no body.
        flow.request.content = None
        fail_closed(flow, "reading the token request")

    def _take_token_request(self, flow: http.HTTPFlow, state: FlowState) -> Awaitable[None] | None:
        """A create-token request: a challenge being completed gets the real verification
        token; what the new token may be cached for is noted."""
        assert self.service is not None and state.token_identity is not None
        try:
            body = json.loads(self.real.real_request_content(flow) or b"null")
            attributes = body["data"]["attributes"]
        except (ValueError, KeyError, TypeError):
            return None  # Unit answers a malformed create-token request itself
        if not isinstance(attributes, dict):
            return None
        if state.placeholder_caller and attributes.get("resources"):
            # The caller would get the placeholder back, and it names the whole customer or
            # card: the restriction could not be kept.
            state.record.answered_locally = True
            flow.response = error_response(
                400,
                "resources_not_supported",
                "a token restricted to resources cannot be handed out as a placeholder, which "
                "names the whole customer or card: create it with your own org token, or leave "
                "resources out",
                meta={"pointer": "/data/attributes/resources"},
            )
            return None
        offered = attributes.get("verificationToken")
        if isinstance(offered, str) and offered.startswith(CHALLENGE_PREFIX):
            return self._complete_challenge(flow, state, body, offered)
        self._note_learnable(state, attributes)
        return None

    async def _complete_challenge(
        self, flow: http.HTTPFlow, state: FlowState, body: Any, offered: str
    ) -> None:
        """A caller completing a challenge: swap in the real verification token."""
        assert self.service is not None and state.token_identity is not None
        try:
            challenge = await self.service.open_challenge(offered, state.token_identity)
            if challenge is None:
                self.metrics.token_event(events.Challenge(state.token_identity.kind, "unknown"))
                state.record.answered_locally = True
                flow.response = error_response(
                    400,
                    "unknown_challenge",
                    "verificationToken names no open challenge for this customer or card "
                    "(a challenge lasts 10 minutes, takes 5 codes at most, and is used up once "
                    "Unit accepts one)",
                    meta={"pointer": "/data/attributes/verificationToken"},
                )
                return
            state.challenge_id = offered
            state.verification_token = challenge.verification_token
            attributes = body["data"]["attributes"]
            attributes["verificationToken"] = challenge.verification_token
            attributes.setdefault("scope", " ".join(sorted(challenge.scopes)))
            self.real.set_real_request_content(flow, json.dumps(body).encode())
            self._note_learnable(state, attributes)
        except Exception:
            self._token_request_failed(flow)

    @staticmethod
    def _note_learnable(state: FlowState, attributes: dict[str, Any]) -> None:
        if not attributes.get("resources"):
            # A token restricted to some accounts or cards must not serve the identity's
            # other requests: the cache knows identities and scopes, not resources.
            state.learnable_scopes = frozenset(str(attributes.get("scope", "")).split())

    def _end_challenge(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Unit accepted the code: the challenge is used. Refused (a mistyped code, say): it
        stays open for another try, until it expires."""
        assert flow.response is not None and self.service is not None
        assert state.token_identity is not None and state.challenge_id is not None
        status = flow.response.status_code
        if status in (200, 201):
            self.service.close_challenge(state.challenge_id)
            outcome = "completed"
        else:
            outcome = "error" if status >= 500 else "refused"
            self.service.reopen_challenge(state.challenge_id)
            self._hide_verification_token(flow, state)
        kind = state.token_identity.kind
        self.metrics.token_event(events.Challenge(kind, outcome))

    def _hide_verification_token(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Unit's refusal goes to a caller who knows the challenge id, never the verification
        token the gateway sent in its place: should Unit quote it, the caller sees the id."""
        assert state.challenge_id is not None and state.verification_token is not None
        content = self.real.real_response_content(flow)
        if content is None:
            self._withhold_token_answer(flow)
            return
        real = state.verification_token.encode()
        if real in content:
            hidden = content.replace(real, state.challenge_id.encode())
            self.real.set_real_response_content(flow, hidden)

    def _learn(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Cache a token created through the gateway; a placeholder caller gets the
        placeholder in place of the token."""
        assert flow.response is not None and self.service is not None
        identity = state.token_identity
        if identity is None or flow.response.status_code not in (200, 201):
            return
        content = self.real.real_response_content(flow)
        if content is None and state.placeholder_caller:
            # Too large or in an encoding the gateway cannot read: it might hold a token,
            # which a caller with a placeholder must never get.
            self._withhold_token_answer(flow)
            return
        try:
            body = json.loads(content or b"null")
            attributes = body["data"]["attributes"]
            value = attributes["token"]
        except (ValueError, KeyError, TypeError):
            return  # verification answers carry no token
        if not isinstance(value, str):
            return
        if state.placeholder_caller:
            # First, so that nothing below can leave the caller with the token itself.
            attributes["token"] = identity.placeholder
            self.real.set_real_response_content(flow, json.dumps(body).encode())
        if state.learnable_scopes is None:
            return
        try:
            self.service.learn(identity, value, state.learnable_scopes, attributes.get("expiresIn"))
        except (TypeError, ValueError):  # an expiresIn that is no number
            logger.warning(
                "unit-gateway: Unit's new %s token has an unreadable expiresIn; not cached",
                identity.kind,
            )

    def _withhold_token_answer(self, flow: http.HTTPFlow) -> None:
        self.real.set_real_response(
            flow,
            error_response(
                502,
                "token_answer_unreadable",
                "the gateway could not read Unit's answer to this token request, so it does "
                "not pass it on",
            ),
        )
