"""The `unit` section: the Unit API hosts the gateway injects tokens for, and the org token."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, field_validator, model_validator

from unit_gateway.config.base import _FieldError, _Model
from unit_gateway.config.secret_refs import SecretRef

#: Hosts that are Unit's live environment: never a target for sandbox-only behaviour.
LIVE_HOSTS = frozenset({"api.unit.co"})


class Upstream(_Model):
    """A Unit API host the gateway injects tokens for."""

    url: str
    """Scheme, host and optional port of a Unit API, without a path or credentials, e.g.
    `https://api.s.unit.sh`. Requests to exactly this scheme, host and port get tokens; any
    other host passes through untouched. Plain `http` only for a loopback host together with
    `unit.allow_plain_http_loopback: true`."""
    environment: Literal["sandbox", "live"] = "sandbox"
    """Which Unit environment the host is: labels metrics, and `live` forbids sandbox-only
    behaviour (`two_factor: sandbox-otp`, the embedded sandbox). `api.unit.co` must be
    `live`."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://api.s.unit.sh")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be a scheme, host and optional port only, without a path")
        if parts.username is not None or parts.password is not None:
            # It would show wherever the upstream is named (logs, errors, metrics labels).
            raise ValueError("must not carry a user or password: Unit takes the org token")
        return url.rstrip("/")

    def model_post_init(self, _context: Any) -> None:
        # Split once: these are read on every request.
        parts = urlsplit(self.url)
        self._scheme = parts.scheme
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)

    _scheme: str = PrivateAttr()
    _host: str = PrivateAttr()
    _port: int = PrivateAttr()

    @property
    def scheme(self) -> str:
        return self._scheme

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class UnitSettings(_Model):
    upstreams: list[Upstream] = Field(min_length=1)
    """The Unit API hosts the gateway injects tokens for. Placeholders are never sent
    anywhere else, and the org token never goes to any other host."""
    org_token: SecretRef | None = None
    """Unit org API token, used for `Bearer unitgw:org` and to mint customer and cardholder
    tokens. Required unless `sandbox.embedded` is true (the embedded sandbox gets a token made
    up at start)."""
    allow_plain_http_loopback: bool = False
    """Allow an upstream with a plain `http://` URL, for a loopback host only (a local
    sandbox). Leave off for anything else: the org token would cross the wire in clear."""
    missing_authorization: Literal["reject", "org"] = "reject"
    """What a request to Unit without an `Authorization` header gets: `reject` answers 401;
    `org` sends it with the org token (only for trusted callers)."""
    rate_limit_per_minute: int = Field(default=1000, ge=1)
    """Unit's request limit per minute for this client IP and environment (1000 is Unit's
    documented default). Only used for the rate-limit headroom metric; raise it when Unit
    raises your limit."""
    token_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """Timeout in seconds of each call to Unit's token and verification endpoints (5 is
    Unit's documented value). A timeout is answered 504 `token_endpoint_timeout`. A caller's
    own request to a token endpoint that the gateway forwards waits this long too."""
    response_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """How long the gateway waits for Unit's complete answer to a request it forwards,
    counted from when the request was sent (60 is Unit's longest documented endpoint timeout,
    for ACH payments). The caller then gets 504 `upstream_timeout`, and the request to Unit is
    cancelled (HTTP/1: the connection is closed; HTTP/2: the stream is reset). Unit may still
    have acted on the request: retry writes with an idempotency key. Requests to Unit over
    HTTP/3 or through an upstream proxy are not timed by the gateway."""

    @model_validator(mode="after")
    def _check_transport(self) -> UnitSettings:
        for i, up in enumerate(self.upstreams):
            if up.scheme == "http":
                if not up.is_loopback:
                    raise _FieldError(
                        f"upstreams.{i}.url",
                        "plain http is only allowed for a loopback upstream",
                    )
                if not self.allow_plain_http_loopback:
                    raise _FieldError(
                        f"upstreams.{i}.url",
                        "plain http needs unit.allow_plain_http_loopback: true",
                    )
            if up.environment == "sandbox" and up.host in LIVE_HOSTS:
                raise _FieldError(f"upstreams.{i}.environment", f"{up.host} is Unit's live API")
        return self
