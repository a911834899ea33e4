"""The gateway's YAML configuration: schema, secret references and validation messages.

Every problem is reported as ``field.path: rule`` so that ``check-config``, the gateway's
start-up and a hot reload all say the same thing. Secrets are never written in the YAML: a
secret field holds ``{env: NAME}`` or ``{file: PATH}`` and is resolved at load time.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from unit_gateway.config.redaction import RedactionSettings
from unit_gateway.unit_api.route_settings import RouteSettings

#: Hosts that are Unit's live environment: never a target for sandbox-only behaviour.
LIVE_HOSTS = frozenset({"api.unit.co"})
MAX_TOKEN_LIFETIME = 86400


class ConfigError(Exception):
    """A configuration that cannot be used. ``problems`` holds one ``field: rule`` per item."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class Secret:
    """A resolved secret. Its repr never shows the value, so it cannot leak through logging."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class _Model(BaseModel):
    # Attribute docstrings become field descriptions: docs/configuration.md is built from them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SecretRef(_Model):
    """Where a secret lives: an environment variable or a file (relative to the config file)."""

    env: str | None = None
    """Name of an environment variable holding the secret (surrounding whitespace is
    stripped). Set exactly one of `env` and `file`."""
    file: str | None = None
    """Path of a file holding the secret (surrounding whitespace is stripped); a relative path
    is relative to the configuration file, `~` is expanded. Set exactly one of `env` and
    `file`."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_inline(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(
                "must be a reference {env: NAME} or {file: PATH}; "
                "secrets are never written in the configuration itself"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def resolve(self, base_dir: Path) -> Secret:
        """Read the secret. Raises ValueError with a message that never contains the value."""
        if self.env is not None:
            value = os.environ.get(self.env, "").strip()
            if not value:
                raise ValueError(f"environment variable {self.env} is not set or empty")
            return Secret(value, f"env {self.env}")
        assert self.file is not None
        path = Path(self.file).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        try:
            value = path.read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read secret file {path}: {e.strerror}") from None
        if not value:
            raise ValueError(f"secret file {path} is empty")
        return Secret(value, f"file {path}")


Scope = Annotated[str, Field(pattern=r"^[a-z][a-z-]*[a-z]$")]


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


class SandboxSettings(_Model):
    """The local Unit sandbox the gateway can run inside its own process."""

    embedded: bool = False
    """Run the local Unit sandbox inside the gateway process, for development and demos.
    `host:port` must then be one of `unit.upstreams` and no upstream may be `live`."""
    host: str = "127.0.0.1"
    """Address the embedded sandbox listens on."""
    port: int = Field(default=8181, ge=0, le=65535)
    """TCP port the embedded sandbox listens on."""
    rate_limit_per_minute: int = Field(default=1000, ge=1)
    """Requests per minute per client IP the embedded sandbox accepts before answering 429,
    like Unit. Lower it to exercise rate-limit handling."""


TwoFactorStrategy = Literal["sandbox-otp", "jwt", "challenge"]


class TokenKindSettings(_Model):
    default_scopes: list[Scope] = Field(default_factory=list)
    """Scopes every minted token of this kind gets, besides the scope the route needs; a
    broader token is reused for more routes. Writing the section without this key means no
    default scopes. Cardholder tokens accept only `cards`, `cards-sensitive`, `cards-write`
    and `cards-sensitive-write`."""
    expires_in: int = Field(default=3600, ge=1, le=MAX_TOKEN_LIFETIME)
    """Lifetime in seconds requested for minted tokens (Unit's `expiresIn`; Unit allows at
    most 86400). Shorter means more mints; it must exceed `tokens.expiry_margin_seconds`."""
    two_factor: TwoFactorStrategy = "challenge"
    """How a token with a two-factor scope is obtained: `challenge` asks the caller to get
    the person's code; `sandbox-otp` answers with Unit's sandbox passcode (refused with a
    `live` upstream); `jwt` signs a JWT with `tokens.jwt` (customer tokens only)."""


class CardholderSettings(TokenKindSettings):
    @field_validator("default_scopes")
    @classmethod
    def _card_scopes_only(cls, scopes: list[str]) -> list[str]:
        allowed = {"cards", "cards-sensitive", "cards-write", "cards-sensitive-write"}
        bad = [s for s in scopes if s not in allowed]
        if bad:
            raise ValueError(f"cardholder tokens allow only {' '.join(sorted(allowed))}")
        return scopes


class JwtSettings(_Model):
    private_key: SecretRef
    """PEM private key that signs the JWTs; Unit verifies them with the matching public key
    configured for your org."""
    algorithm: Literal["RS256", "RS384", "RS512", "ES256", "ES384"] = "RS256"
    """JWT signing algorithm; must fit the key type (RS* for RSA, ES* for EC keys)."""
    subject_template: str = "{customerId}"
    """The JWT `sub` claim: `{customerId}` is replaced by the customer's id; the result must
    be that customer's `jwtSubject` at Unit. Must contain `{customerId}`."""
    issuer: str | None = None
    """The JWT `iss` claim, if your Unit JWT settings expect one; unset: no `iss` claim."""
    lifetime_seconds: int = Field(default=60, ge=10, le=3600)
    """Seconds each signed JWT stays valid (its `exp`). It is used once, right away, so keep
    it short."""

    @field_validator("subject_template")
    @classmethod
    def _has_customer_id(cls, template: str) -> str:
        if "{customerId}" not in template:
            raise ValueError("must contain {customerId}")
        return template


class TokenSettings(_Model):
    cache_size: int = Field(default=10_000, ge=1, le=10_000_000)
    """Most tokens kept in the in-memory cache (one per identity and scope set); the least
    recently used go first. Raise it when more identities are active within a token's
    lifetime."""
    expiry_margin_seconds: int = Field(default=30, ge=0, le=3600)
    """Seconds before its expiry a cached token counts as expired, so no request leaves with
    a token that expires on the way. Must be smaller than each kind's `expires_in`."""
    refresh_ahead_seconds: int = Field(default=300, ge=0, le=MAX_TOKEN_LIFETIME)
    """Once a cached token has less than this many seconds left (and at least half of its
    usable lifetime has passed), a replacement is minted in the background while requests
    keep using it (not for a token with a two-factor scope under `two_factor: challenge`,
    which needs a person). 0: no early refresh."""
    customer: TokenKindSettings = TokenKindSettings(default_scopes=["customers", "accounts"])
    """Customer tokens, minted for `Bearer unitgw:customer:<customerId>`."""
    cardholder: CardholderSettings = CardholderSettings(default_scopes=["cards"])
    """Cardholder tokens, minted for `Bearer unitgw:cardholder:<cardId>` on card routes."""
    jwt: JwtSettings | None = None
    """JWT signing for `two_factor: jwt`; required when a kind uses `jwt`, unused
    otherwise."""


class MetricsSettings(_Model):
    enabled: bool = True
    """Serve Prometheus metrics at `http://host:port/metrics`; `false`: no metrics endpoint."""
    host: str = "127.0.0.1"
    """Address the metrics endpoint listens on; `0.0.0.0` where a cluster Prometheus scrapes
    the gateway."""
    port: int = Field(default=9464, ge=0, le=65535)
    """TCP port of the metrics endpoint."""


class AccessLogSettings(_Model):
    path: str | None = Field(default=None, min_length=1)
    """File that gets one JSON line per flow to Unit (time, route template, method, status,
    durations, identity kind, token fingerprint; never an id, body or secret). Relative to
    the configuration file; appended to. Unset: no access log."""


class LifecycleSettings(_Model):
    start_wait_seconds: float = Field(default=10.0, gt=0, le=300)
    """How long a request that arrives while the gateway is still starting waits for it
    (mitmproxy listens before the gateway is ready); then `503 gateway_not_configured`."""
    drain_seconds: float = Field(default=25.0, ge=0, le=3600)
    """On SIGTERM the gateway stops listening and gives the requests in flight this long to
    finish before it exits (keep it under your orchestrator's grace period). A second SIGTERM
    exits at once."""


STORE_SCHEMES = ("redis", "rediss")
#: Bytes of an encryption key for values in the shared store (AES-256-GCM).
STORE_KEY_BYTES = 32
_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class StoreSettings(_Model):
    """A Redis that gateway replicas share cached tokens, open challenges, verification
    windows and mint leases through."""

    url: SecretRef
    """URL of the Redis: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. A
    secret reference, as the URL may carry the password. With `cluster: true`, any one node of
    the cluster (the others are discovered; the database must be 0)."""
    cluster: bool = False
    """The URL names a node of a Redis Cluster rather than a single Redis (or a primary with
    replicas behind one address). Each identity's keys share one hash slot either way."""
    ca_file: str | None = Field(default=None, min_length=1)
    """PEM file of the certificate authorities that a `rediss://` server's certificate is
    checked against, relative to the configuration file; unset: the system's. Only with
    `rediss://`."""
    key: SecretRef
    """32 random bytes in base64 (`openssl rand -base64 32`): encrypts every value the
    gateway puts in Redis (AES-256-GCM) and keys the hashes that name identities there, so
    Redis holds no token and no customer or card id in the clear."""
    previous_key: SecretRef | None = None
    """The key used before `key`, while rotating: values it encrypted are still read (and
    identities' tokens and challenges are still found under the names it made), nothing is
    written with it. Remove it once every replica runs with the new `key` and the values it
    wrote have expired (a token's lifetime). Replicas with different keys share no mint leases
    or verification windows: roll a new key out quickly."""
    operation_timeout_seconds: float = Field(default=0.25, gt=0, le=5)
    """Deadline of each call to Redis. A call that misses it falls back to the replica's own
    state (never failing a request for it); three in a row, or a refused connection, count as
    Redis being down: the replica stops asking until a probe finds it back."""
    probe_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    """While Redis is down, how often the replica checks whether it is back."""
    key_prefix: str = "unitgw:"
    """Prefix of every key and channel the gateway uses in Redis: lets gateways of several
    environments share one Redis, and an ACL user be limited to keys `~unitgw:*` and
    channels `&unitgw:*`. No `{` or `}` (they would move keys between cluster slots)."""
    mint_lease_seconds: float = Field(default=15.0, gt=0, le=600)
    """How long a replica minting a token holds the identity's lease, during which other
    replicas wait for its token instead of minting their own. A replica that dies mid-mint
    blocks the others at most this long. Must be at least twice `unit.token_timeout_seconds`
    (a mint can take a verification call and a token call)."""

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        # Braces would change the hash slot of every key (Redis Cluster hash tags).
        if not _PREFIX_PATTERN.fullmatch(prefix):
            raise ValueError("must be 1 to 64 letters, digits or _ . : -")
        return prefix


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

    #: (host, port) -> (upstream, its scheme). Read on every request: a pydantic private
    #: attribute costs ~1 µs per read, so everything upstream_of needs is behind one read.
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


class _FieldError(ValueError):
    """A cross-field problem that belongs to a field other than the one being validated."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


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


def store_key(secret: Secret) -> bytes:
    """A store key's bytes. Raises ValueError (never naming the value) unless it is 32 bytes
    in base64."""
    try:
        key = base64.b64decode(secret.reveal(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != STORE_KEY_BYTES:
        raise ValueError(
            f"must be {STORE_KEY_BYTES} random bytes in base64 (openssl rand -base64 32)"
        )
    return key


def _store_problems(store: StoreSettings, secrets: dict[str, Secret]) -> list[str]:
    """Checks of the store's resolved secrets. Messages never quote the URL: it may hold the
    password."""
    problems: list[str] = []
    url = secrets.get("store.url")
    if url is not None:
        try:
            parts = urlsplit(url.reveal())
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
            scheme, host, database = parts.scheme, parts.hostname, parts.path.strip("/")
        except ValueError:
            scheme, host, database = "", None, ""
        if scheme not in STORE_SCHEMES or not host:
            problems.append(
                "store.url: must be a redis://host:port or rediss://host:port URL "
                "(the value is not shown: it may hold a password)"
            )
        elif database and not database.isdigit():
            problems.append("store.url: the path must be a database number, such as /0")
        elif store.cluster and database not in ("", "0"):
            problems.append("store.url: Redis Cluster has database 0 only")
        elif store.ca_file is not None and scheme != "rediss":
            problems.append("store.ca_file: only applies to a rediss:// URL")
    for name in ("store.key", "store.previous_key"):
        secret = secrets.get(name)
        if secret is None:
            continue
        try:
            store_key(secret)
        except ValueError as e:
            problems.append(f"{name}: {e}")
    return problems


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
