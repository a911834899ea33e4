"""The gateway's YAML configuration: the top-level model, validation messages and loading.

Every problem is reported as ``field.path: rule`` so that ``check-config``, the gateway's
start-up and a hot reload all say the same thing. The sections' models live in the
``*_settings`` modules, secret references in ``secret_refs``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import PrivateAttr, ValidationError, model_validator

from unit_gateway.config.base import _FieldError, _Model
from unit_gateway.config.process_settings import (
    AccessLogSettings,
    LifecycleSettings,
    MetricsSettings,
    SandboxSettings,
)
from unit_gateway.config.redaction import RedactionSettings
from unit_gateway.config.secret_refs import Secret, SecretRef
from unit_gateway.config.store_settings import StoreSettings, _store_problems, store_key
from unit_gateway.config.tokens_settings import TokenKindSettings, TokenSettings
from unit_gateway.config.unit_settings import UnitSettings, Upstream
from unit_gateway.unit_api.route_settings import RouteSettings

# What other modules import from here, some of it defined in the section modules.
__all__ = [
    "ConfigError",
    "GatewayConfig",
    "LoadedConfig",
    "Secret",
    "StoreSettings",
    "TokenKindSettings",
    "Upstream",
    "load",
    "store_key",
    "validate",
]


class ConfigError(Exception):
    """A configuration that cannot be used. ``problems`` holds one ``field: rule`` per item."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class GatewayConfig(_Model):
    unit: UnitSettings
    """The Unit APIs the gateway talks to and the org token it uses with them."""
    sandbox: SandboxSettings = SandboxSettings()
    """The local Unit sandbox, optionally run inside the gateway process."""
    tokens: TokenSettings = TokenSettings()
    """How customer and cardholder tokens are minted, cached and refreshed."""
    metrics: MetricsSettings = MetricsSettings()
    """The Prometheus metrics endpoint, and the `/healthz` and `/readyz` probes."""
    lifecycle: LifecycleSettings = LifecycleSettings()
    """Start-up and shutdown: waiting for readiness, draining on SIGTERM."""
    routes: RouteSettings = RouteSettings()
    """Additions and changes to Unit's built-in route table: scopes, methods, two-factor
    scopes."""
    redaction: RedactionSettings = RedactionSettings()
    """What else to hide from flows, logs and saved files. Everything here adds to the
    built-in rules: a configuration can redact more, never less."""
    access_log: AccessLogSettings = AccessLogSettings()
    """The JSON-lines access log of flows to Unit."""
    store: StoreSettings | None = None
    """A Redis shared by gateway replicas: tokens, mints in flight, open challenges and
    verification windows (docs/deployment.md). Unset: each replica keeps its own state."""

    @model_validator(mode="after")
    def _check_cross_fields(self) -> GatewayConfig:
        if self.unit.org_token is None and not self.sandbox.embedded:
            raise _FieldError("unit.org_token", "is required unless sandbox.embedded is true")
        live = [u.url for u in self.unit.upstreams if u.environment == "live"]
        margin = self.tokens.expiry_margin_seconds
        for kind in ("customer", "cardholder"):
            expires_in = getattr(self.tokens, kind).expires_in
            if margin >= expires_in:
                raise _FieldError(
                    "tokens.expiry_margin_seconds",
                    f"must be smaller than tokens.{kind}.expires_in ({expires_in})",
                )
        for kind in ("customer", "cardholder"):
            strategy = getattr(self.tokens, kind).two_factor
            if strategy == "sandbox-otp" and live:
                raise _FieldError(
                    f"tokens.{kind}.two_factor",
                    f"sandbox-otp is refused for a live upstream ({live[0]})",
                )
            if strategy == "jwt" and kind == "cardholder":
                raise _FieldError(
                    f"tokens.{kind}.two_factor", "jwt is only available for customer tokens"
                )
            if strategy == "jwt" and self.tokens.jwt is None:
                raise _FieldError(f"tokens.{kind}.two_factor", "jwt needs a tokens.jwt section")
        store = self.store
        if store is not None and store.mint_lease_seconds < 2 * self.unit.token_timeout_seconds:
            raise _FieldError(
                "store.mint_lease_seconds",
                "must be at least twice unit.token_timeout_seconds "
                f"({2 * self.unit.token_timeout_seconds:g})",
            )
        if self.sandbox.embedded:
            sandbox = (self.sandbox.host, self.sandbox.port)
            if not any((u.host, u.port) == sandbox for u in self.unit.upstreams):
                raise _FieldError(
                    "sandbox.port",
                    f"the embedded sandbox ({sandbox[0]}:{sandbox[1]}) "
                    "must be one of unit.upstreams",
                )
            for i, up in enumerate(self.unit.upstreams):
                if up.environment == "live":
                    raise _FieldError(
                        f"unit.upstreams.{i}.environment",
                        "an embedded sandbox cannot serve a live upstream",
                    )
        return self

    #: (host, port) -> (upstream, its scheme). Read on every request, and a pydantic private
    #: attribute is slow to read: everything upstream_of needs is behind one read.
    _by_address: dict[tuple[str, int], tuple[Upstream, str]] = PrivateAttr(default_factory=dict)

    def model_post_init(self, _context: Any) -> None:
        self._by_address = {(up.host, up.port): (up, up.scheme) for up in self.unit.upstreams}

    def upstream_of(self, request: Any) -> Upstream | None:
        """The Unit upstream an HTTP request goes to, or None (then it gets no token).

        Only the address the request is sent to counts (``request.host``/``port``), never
        the Host header: a caller could name Unit there while sending elsewhere. The scheme
        must match too: nothing meant for https goes out over plain http.
        """
        return self._matching(request, request.host)

    def upstream_named_by(self, request: Any) -> Upstream | None:
        """The upstream the Host header names. Only for transparent modes, where the request
        is addressed to whatever IP the client dialed; see ``FlowRedaction.retarget``."""
        return self._matching(request, request.pretty_host)

    def _matching(self, request: Any, host: str) -> Upstream | None:
        found = self._by_address.get((host, request.port))
        if found is None or request.scheme != found[1]:
            return None
        return found[0]


class LoadedConfig:
    """A validated configuration with its secrets resolved."""

    def __init__(self, model: GatewayConfig, path: Path | None, secrets: dict[str, Secret]):
        self.model = model
        self.path = path
        self.secrets = secrets

    @property
    def org_token(self) -> Secret | None:
        return self.secrets.get("unit.org_token")


def _rule(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "missing":
        return "is required"
    if kind in ("less_than_equal", "less_than", "greater_than_equal", "greater_than"):
        op = {"less_than_equal": "<=", "less_than": "<", "greater_than_equal": ">="}.get(kind, ">")
        limit = next(iter(ctx.values()))
        return f"must be {op} {limit}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "string_pattern_mismatch":
        return "is not a valid scope name"
    if kind == "value_error":
        cause = ctx.get("error")
        if isinstance(cause, _FieldError):
            return cause.rule
        return str(cause) if cause is not None else error["msg"]
    return error["msg"][0].lower() + error["msg"][1:]


def _field(error: Any) -> str:
    cause = (error.get("ctx") or {}).get("error")
    loc = [str(part) for part in error["loc"]]
    if isinstance(cause, _FieldError):
        # Cross-field problems name their field relative to the model that raised them.
        prefix = ".".join(loc)
        return f"{prefix}.{cause.field}" if prefix else cause.field
    return ".".join(loc) or "(top level)"


def validate(data: Any, *, base_dir: Path, path: Path | None = None) -> LoadedConfig:
    """Validate parsed YAML and resolve its secrets, or raise ConfigError naming each field."""
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping with at least a `unit` section"])
    try:
        model = GatewayConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError([f"{_field(err)}: {_rule(err)}" for err in e.errors()]) from None
    secrets: dict[str, Secret] = {}
    problems: list[str] = []
    refs: dict[str, SecretRef | None] = {"unit.org_token": model.unit.org_token}
    if model.tokens.jwt is not None:
        refs["tokens.jwt.private_key"] = model.tokens.jwt.private_key
    if model.store is not None:
        refs["store.url"] = model.store.url
        refs["store.key"] = model.store.key
        refs["store.previous_key"] = model.store.previous_key
    for name, ref in refs.items():
        if ref is None:
            continue
        try:
            secrets[name] = ref.resolve(base_dir)
        except ValueError as e:
            problems.append(f"{name}: {e}")
    if model.store is not None:
        problems += _store_problems(model.store, secrets)
    if problems:
        raise ConfigError(problems)
    return LoadedConfig(model, path, secrets)


def load(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read, parse and validate a configuration file."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as e:
        raise ConfigError([f"{file}: cannot read: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{file}: not valid YAML{where}"]) from None
    return validate(data, base_dir=file.resolve().parent, path=file)
