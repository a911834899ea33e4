"""Counters behind ``GET /__sandbox/stats`` (a contract: tests and the demo read them)."""

from __future__ import annotations

from collections import Counter
from typing import Any


class Stats:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        # "<METHOD> <route template>" -> count; unknown paths are counted as "<METHOD> ?".
        self.requests: Counter[str] = Counter()
        self.responses: Counter[int] = Counter()
        self.tokens_created: Counter[str] = Counter(customer=0, cardholder=0)
        self.verifications_created: Counter[str] = Counter(customer=0, cardholder=0)
        # Requests that reached a protected route with no Authorization header at all: the
        # proof that the gateway never forwards a request without a token.
        self.unauthenticated: Counter[str] = Counter()
        self.jwt_tokens_accepted = 0
        self.rate_limited = 0
        self.verifications_rate_limited = 0
        self.faults_injected: Counter[str] = Counter(latency=0, error=0, token_outage=0)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "responses": {str(status): n for status, n in sorted(self.responses.items())},
            "tokens_created": dict(self.tokens_created),
            "verifications_created": dict(self.verifications_created),
            "unauthenticated": dict(self.unauthenticated),
            "jwt_tokens_accepted": self.jwt_tokens_accepted,
            "rate_limited": self.rate_limited,
            "verifications_rate_limited": self.verifications_rate_limited,
            "faults_injected": dict(self.faults_injected),
            "total_requests": self.requests.total(),
        }
