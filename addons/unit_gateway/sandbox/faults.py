"""Fault switches: what the sandbox does wrong on purpose, changeable while it runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


class FaultError(ValueError):
    """A fault update that names an unknown switch or gives it a bad value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(slots=True)
class Faults:
    latency_ms: float = 0.0
    # Fraction of ordinary API requests (not token endpoints, not /__sandbox) answered 500/503.
    error_rate: float = 0.0
    # Token and verification endpoints answer 503.
    token_outage: bool = False
    # Every customer and cardholder token is answered 401, as if Unit had revoked them all.
    reject_user_tokens: bool = False
    # Per client IP per sliding minute; 0 turns the limit off.
    rate_limit_per_minute: int = 1000
    # Unit documents no rate-limit headers; the gateway must work with and without them.
    rate_limit_headers: bool = False
    # Read request paths as the most lenient HTTP server would (see routes.lenient_path):
    # Unit does not document how its servers read a path, so tests assume the worst.
    lenient_paths: bool = False

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, changes: Any) -> None:
        """Apply a partial update from JSON; all or nothing."""
        if not isinstance(changes, dict):
            raise FaultError("faults", "expected a JSON object")
        checked = {name: _check(name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self, name, value)

    def validate(self) -> None:
        for name, value in self.as_json().items():
            _check(name, value)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultError(name, "expected a number")
    return float(value)


def _check(name: str, value: Any) -> Any:
    if name == "latency_ms":
        number = _number(name, value)
        if not 0 <= number <= 600_000:
            raise FaultError(name, "must be between 0 and 600000")
        return number
    if name == "error_rate":
        number = _number(name, value)
        if not 0 <= number <= 1:
            raise FaultError(name, "must be between 0 and 1")
        return number
    if name in ("token_outage", "rate_limit_headers", "reject_user_tokens", "lenient_paths"):
        if not isinstance(value, bool):
            raise FaultError(name, "expected true or false")
        return value
    if name == "rate_limit_per_minute":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FaultError(name, "expected a whole number >= 0 (0 = no limit)")
        return value
    raise FaultError(name, "unknown fault switch")
