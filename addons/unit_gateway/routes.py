"""Unit's route table: method + path -> route template, the scope the route needs, its flags.

Step 1 of every request (docs/design.md): the gateway matches the path against Unit's routes
to learn the route template (``/cards/{cardId}``, the metrics label), which token scope the
route needs for that method, whether that scope needs two-factor authentication, whether only
the org token may call it, and whether it is one of Unit's token endpoints.

The routes come from ``data/unit-routes.txt`` (a copy of the merged route list: Unit's OpenAPI
spec, unit-openapi-python-sdk and the documented secure-data endpoints), the scopes and flags
from ``data/route-scopes.yaml`` (path-prefix rules with per-route exceptions), and a
configuration may add routes or override either through :class:`RouteSettings`.

Matching walks a tree of path segments built once per table: a dict lookup per segment, literal
children before the parameter child (``/payments/bulk`` beats ``/payments/{paymentId}``), with
backtracking so ``/check-payments/1/back/pdf`` still reaches ``/{side}/{type}`` after the
literal ``back`` leads nowhere. No regular expression runs per request.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal
from urllib.parse import unquote

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The route label of a request that matches no known route (metrics must stay bounded).
OTHER_ROUTE = "other"

TokenEndpointKind = Literal[
    "customer", "customer-verification", "cardholder", "cardholder-verification"
]
TOKEN_ENDPOINT_KINDS: frozenset[str] = frozenset(
    {"customer", "customer-verification", "cardholder", "cardholder-verification"}
)

READ_METHODS: frozenset[str] = frozenset({"GET", "HEAD"})
WRITE_METHODS: frozenset[str] = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HTTP_METHODS: frozenset[str] = READ_METHODS | WRITE_METHODS | {"OPTIONS"}

# "Only cards (cards cards-sensitive cards-write cards-sensitive-write) scopes are allowed."
CARDHOLDER_SCOPES: frozenset[str] = frozenset(
    {"cards", "cards-sensitive", "cards-write", "cards-sensitive-write"}
)

# A parameter name that says nothing about what it names; the other spelling is preferred.
_GENERIC_PARAM_NAMES = frozenset({"id"})
_SCOPE_RE = re.compile(r"[a-z][a-z-]*[a-z]")
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LITERAL_FORBIDDEN = re.compile(r"[{}?#%\s]")
# A route's shape: its segments with every parameter written "{}". Two spellings of a route
# (`/accounts/{id}`, `/accounts/{accountId}`) have the same shape.
_PARAM = "{}"
# Segments that servers and proxies may collapse (RFC 3986 dot segments): Unit could route
# `/cards/../payments` somewhere else than the template we matched, so they never fill a
# parameter.
_DOT_SEGMENTS = frozenset({"", ".", ".."})

Shape = tuple[str, ...]


def _parse_template(template: str) -> tuple[Shape, tuple[str, ...]]:
    """A template's shape and parameter names, or ValueError saying what is wrong with it."""
    if not isinstance(template, str) or not template.startswith("/"):
        raise ValueError(f"template {template!r} must start with /")
    if template == "/" or template.endswith("/"):
        raise ValueError(f"template {template!r} must not end with /")
    shape: list[str] = []
    names: list[str] = []
    for segment in template[1:].split("/"):
        if not segment:
            raise ValueError(f"template {template!r} has an empty segment (//)")
        if "{" in segment or "}" in segment:
            param = _PARAM_RE.fullmatch(segment)
            if param is None:
                raise ValueError(
                    f"template {template!r}: segment {segment!r} must be a whole parameter "
                    "{name} (letters, digits, _) or a literal without braces"
                )
            if param.group(1) in names:
                raise ValueError(f"template {template!r} repeats parameter {segment}")
            names.append(param.group(1))
            shape.append(_PARAM)
        elif _LITERAL_FORBIDDEN.search(segment):
            raise ValueError(
                f"template {template!r}: segment {segment!r} must not contain "
                "spaces, %, ?, # or braces"
            )
        else:
            shape.append(segment)
    return tuple(shape), tuple(names)


def _shape_of(template: str) -> Shape:
    return _parse_template(template)[0]


def _covers(prefix: Shape, shape: Shape) -> bool:
    return shape[: len(prefix)] == prefix


def _check_scope(scope: str, what: str) -> str:
    if not isinstance(scope, str) or _SCOPE_RE.fullmatch(scope) is None:
        raise ValueError(
            f"{what} {scope!r} is not a scope name "
            "(lowercase letters and -, starting and ending with a letter)"
        )
    return scope


def _method_kind(method: str) -> Literal["read", "write"] | None:
    if method in READ_METHODS:
        return "read"
    if method in WRITE_METHODS:
        return "write"
    return None


# --------------------------------------------------------------------------------------------
# Routes and matches


@dataclass(frozen=True, slots=True)
class Route:
    """One route: a template (its canonical spelling), its methods and what it needs."""

    template: str
    methods: frozenset[str]
    #: Scope for GET/HEAD, and for POST/PUT/PATCH/DELETE. None: Unit publishes none.
    read_scope: str | None
    write_scope: str | None
    #: Only the org token may call it (customer and cardholder placeholders are refused).
    org_only: bool = False
    token_endpoint: TokenEndpointKind | None = None
    #: Every spelling of the template seen, canonical first.
    spellings: tuple[str, ...] = ()
    #: Added or changed by the configuration's `routes:` section.
    from_config: bool = False

    def scope_for(self, method: str) -> str | None:
        kind = _method_kind(method.upper())
        if kind == "read":
            return self.read_scope
        if kind == "write":
            return self.write_scope
        return None

    @property
    def shape(self) -> Shape:
        return _shape_of(self.template)

    def cardholder_eligible(self, method: str) -> bool:
        """A cardholder token may call it: under /cards/{cardId}, with a card scope."""
        shape = self.shape
        return (
            len(shape) >= 2
            and shape[0] == "cards"
            and shape[1] == _PARAM
            and self.token_endpoint is None
            and not self.org_only
            and self.scope_for(method) in CARDHOLDER_SCOPES
        )


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """What one request's method and path matched.

    ``scope`` is the scope the route needs for this method (None when Unit publishes none, or
    for a method that is neither a read nor a write). ``two_factor`` says whether that scope
    needs a one-time password or JWT in a customer/cardholder token. Token endpoints are
    called with the org token and handled by the gateway before any of that applies.
    """

    template: str
    params: dict[str, str]
    scope: str | None
    two_factor: bool
    org_only: bool
    token_endpoint: TokenEndpointKind | None
    method_allowed: bool
    #: The card id in the path when a cardholder token may call this route with this method.
    cardholder_card_id: str | None = None

    @property
    def cardholder_allowed(self) -> bool:
        return self.cardholder_card_id is not None

    def allows_cardholder(self, card_id: str) -> bool:
        """A cardholder token for ``card_id`` may make this call: right route, same card."""
        return self.cardholder_card_id is not None and self.cardholder_card_id == card_id


def route_label(match: RouteMatch | None) -> str:
    """The bounded metrics label of a request: its template, or ``other``."""
    return match.template if match is not None else OTHER_ROUTE


# --------------------------------------------------------------------------------------------
# Configuration: the `routes:` section of the gateway's YAML


class RouteRule(BaseModel):
    """A route to add, or changes to an existing one (found by shape: parameter names are
    ignored, so `/accounts/{id}` changes `/accounts/{accountId}`).

    Fields left out keep what the route had; for a new route, scopes left out come from the
    built-in prefix rules (a new `/cards/...` route needs `cards`/`cards-write`), and
    ``read: null`` says explicitly that no scope is needed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    template: str
    """The route's path with `{name}` parameters, e.g. `/cards/{cardId}/limits`. An existing
    route is found whatever its parameter names; anything else is a new route. At most one
    rule per route."""
    methods: list[str] = Field(default_factory=list)
    """HTTP methods the route accepts (`GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE`,
    `OPTIONS`; any case, no repeats). Added to an existing route's methods; required for a
    new route."""
    read: str | None = None
    """Scope a token needs for `GET`/`HEAD` on this route; `null` says no scope is needed.
    Left out: the existing route's scope, or for a new route the built-in prefix rules'."""
    write: str | None = None
    """Scope a token needs for `POST`/`PUT`/`PATCH`/`DELETE` on this route; `null` and left
    out work as for `read`."""
    org_only: bool | None = None
    """`true`: only the org token may call the route (customer and cardholder placeholders
    are refused); `false` lifts that. Left out: unchanged (built-in rules for a new
    route)."""

    @field_validator("template")
    @classmethod
    def _check_template(cls, template: str) -> str:
        _parse_template(template)
        return template

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, methods: list[str]) -> list[str]:
        normalized: list[str] = []
        for method in methods:
            upper = method.upper()
            if upper not in HTTP_METHODS:
                raise ValueError(
                    f"method {method!r} is not one of {' '.join(sorted(HTTP_METHODS))}"
                )
            if upper in normalized:
                raise ValueError(f"method {upper} is listed twice")
            normalized.append(upper)
        return normalized

    @field_validator("read", "write")
    @classmethod
    def _check_scope(cls, scope: str | None) -> str | None:
        return None if scope is None else _check_scope(scope, "scope")

    @model_validator(mode="after")
    def _check_rule(self) -> RouteRule:
        given = self.model_fields_set - {"template"}
        if not given:
            raise ValueError(
                f"rule for {self.template} changes nothing: give methods, read, write or org_only"
            )
        if not self.methods and _shape_of(self.template) not in _default_shapes():
            raise ValueError(
                f"{self.template} is not a known Unit route: a new route needs methods"
            )
        return self

    @property
    def shape(self) -> Shape:
        return _shape_of(self.template)


class RouteSettings(BaseModel):
    """The `routes:` section of the gateway configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    extra: list[RouteRule] = Field(default_factory=list)
    """Routes to add to Unit's built-in route table, or changes to built-in routes: use it
    when Unit ships an endpoint the gateway does not know yet or documents a different
    scope. A path matching no route is still forwarded, but gets no route scope and is
    labelled `other` in metrics."""
    two_factor_scopes: list[str] | None = None
    """Replaces the built-in list of scopes that need two-factor authentication (see below).
    Unset: the built-in list."""
    extra_two_factor_scopes: list[str] = Field(default_factory=list)
    """Scopes added to the two-factor scopes (the built-in list, or `two_factor_scopes` when
    given)."""

    @field_validator("two_factor_scopes", "extra_two_factor_scopes")
    @classmethod
    def _check_scopes(cls, scopes: list[str] | None) -> list[str] | None:
        for scope in scopes or ():
            _check_scope(scope, "scope")
        return scopes

    @field_validator("extra")
    @classmethod
    def _one_rule_per_route(cls, rules: list[RouteRule]) -> list[RouteRule]:
        seen: dict[Shape, int] = {}
        for index, rule in enumerate(rules):
            earlier = seen.setdefault(rule.shape, index)
            if earlier != index:
                raise ValueError(
                    f"items {earlier} and {index} ({rules[earlier].template}, {rule.template}) "
                    "are the same route: merge them into one rule"
                )
        return rules


# --------------------------------------------------------------------------------------------
# The packaged data


class _ScopePair(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    read: str | None = None
    write: str | None = None

    @field_validator("read", "write")
    @classmethod
    def _check(cls, scope: str | None) -> str | None:
        return None if scope is None else _check_scope(scope, "scope")


class _ScopeData(BaseModel):
    """route-scopes.yaml, validated so that a mistake in it fails loudly at start-up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    two_factor_scopes: list[str]
    prefixes: dict[str, _ScopePair]
    routes: dict[str, _ScopePair] = Field(default_factory=dict)
    org_only: dict[str, str] = Field(default_factory=dict)
    token_endpoints: dict[str, TokenEndpointKind] = Field(default_factory=dict)

    @field_validator("two_factor_scopes")
    @classmethod
    def _check_scopes(cls, scopes: list[str]) -> list[str]:
        for scope in scopes:
            _check_scope(scope, "scope")
        return scopes

    @field_validator("prefixes", "routes", "org_only", "token_endpoints")
    @classmethod
    def _check_templates(cls, entries: dict[str, Any]) -> dict[str, Any]:
        for template in entries:
            _parse_template(template)
        return entries


@dataclass(frozen=True, slots=True)
class _Rules:
    """The scope rules, keyed by shape, ready to resolve a route."""

    two_factor_scopes: frozenset[str]
    prefixes: tuple[tuple[Shape, str | None, str | None], ...]
    # shape -> {"read": scope, "write": scope}, only the keys the entry gives.
    exceptions: Mapping[Shape, Mapping[str, str | None]]
    org_only: tuple[Shape, ...]
    token_endpoints: Mapping[Shape, TokenEndpointKind]

    def resolve(self, shape: Shape) -> tuple[str | None, str | None, bool]:
        """(read scope, write scope, whether any rule covers the shape)."""
        best: tuple[Shape, str | None, str | None] | None = None
        for prefix in self.prefixes:
            if _covers(prefix[0], shape) and (best is None or len(prefix[0]) > len(best[0])):
                best = prefix
        exception = self.exceptions.get(shape, {})
        read = exception["read"] if "read" in exception else (best[1] if best else None)
        write = exception["write"] if "write" in exception else (best[2] if best else None)
        return read, write, best is not None or len(exception) == 2

    def is_org_only(self, shape: Shape) -> bool:
        return any(_covers(prefix, shape) for prefix in self.org_only)


def _read_data(name: str) -> str:
    return resources.files(__package__ or "unit_gateway").joinpath("data", name).read_text("utf-8")


def parse_route_list(text: str) -> list[tuple[frozenset[str], str]]:
    """unit-routes.txt as (methods, template) pairs, one per line, in file order."""
    spellings: list[tuple[frozenset[str], str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        *methods, template = words
        bad = [m for m in methods if m not in HTTP_METHODS]
        if not methods or bad:
            raise ValueError(f"unit-routes.txt:{number}: bad methods {' '.join(bad) or '(none)'}")
        _parse_template(template)
        spellings.append((frozenset(methods), template))
    return spellings


@functools.cache
def _default_rules() -> _Rules:
    data = _ScopeData.model_validate(yaml.safe_load(_read_data("route-scopes.yaml")))
    return _Rules(
        two_factor_scopes=frozenset(data.two_factor_scopes),
        prefixes=tuple(
            (_shape_of(template), pair.read, pair.write) for template, pair in data.prefixes.items()
        ),
        exceptions={
            _shape_of(template): {key: getattr(pair, key) for key in pair.model_fields_set}
            for template, pair in data.routes.items()
        },
        org_only=tuple(_shape_of(template) for template in data.org_only),
        token_endpoints={_shape_of(t): kind for t, kind in data.token_endpoints.items()},
    )


@functools.cache
def _default_spellings() -> tuple[tuple[frozenset[str], str], ...]:
    return tuple(parse_route_list(_read_data("unit-routes.txt")))


@functools.cache
def _default_shapes() -> frozenset[Shape]:
    return frozenset(_shape_of(template) for _, template in _default_spellings())


def default_two_factor_scopes() -> frozenset[str]:
    return _default_rules().two_factor_scopes


def canonical_spelling(spellings: Iterable[str]) -> str:
    """The spelling a route is known by: the one with the fewest bare ``{id}`` parameters
    (``{accountId}`` says what it names), ties broken alphabetically, so the choice never
    depends on the order of the sources."""

    def generic(template: str) -> int:
        return sum(name in _GENERIC_PARAM_NAMES for name in _parse_template(template)[1])

    return min(spellings, key=lambda template: (generic(template), template))


def _unit_routes(rules: _Rules) -> dict[Shape, Route]:
    grouped: dict[Shape, tuple[set[str], list[str]]] = {}
    for methods, template in _default_spellings():
        entry = grouped.setdefault(_shape_of(template), (set(), []))
        entry[0].update(methods)
        if template not in entry[1]:
            entry[1].append(template)
    routes: dict[Shape, Route] = {}
    for shape, (methods, spellings) in grouped.items():
        canonical = canonical_spelling(spellings)
        read, write, covered = rules.resolve(shape)
        if not covered:
            # A route Unit added to the list without a rule here: fail at start-up, not by
            # quietly minting tokens without the scope it needs.
            raise ValueError(f"route-scopes.yaml has no rule for {canonical}")
        routes[shape] = Route(
            template=canonical,
            methods=frozenset(methods),
            read_scope=read,
            write_scope=write,
            org_only=rules.is_org_only(shape),
            token_endpoint=rules.token_endpoints.get(shape),
            spellings=(canonical, *sorted(set(spellings) - {canonical})),
        )
    return routes


def _apply_rule(routes: dict[Shape, Route], rule: RouteRule, rules: _Rules) -> None:
    given = rule.model_fields_set
    existing = routes.get(rule.shape)
    if existing is None:
        read, write, _ = rules.resolve(rule.shape)
        existing = Route(
            template=rule.template,
            methods=frozenset(),
            read_scope=read,
            write_scope=write,
            org_only=rules.is_org_only(rule.shape),
            spellings=(rule.template,),
        )
    routes[rule.shape] = Route(
        template=existing.template,
        methods=existing.methods | set(rule.methods),
        read_scope=rule.read if "read" in given else existing.read_scope,
        write_scope=rule.write if "write" in given else existing.write_scope,
        org_only=rule.org_only if rule.org_only is not None else existing.org_only,
        token_endpoint=existing.token_endpoint,
        spellings=existing.spellings,
        from_config=True,
    )


# --------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True, slots=True)
class _MethodFacts:
    scope: str | None
    two_factor: bool
    method_allowed: bool
    cardholder: bool


@dataclass(slots=True)
class _Leaf:
    route: Route
    param_names: tuple[str, ...]
    facts: dict[str, _MethodFacts]


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    leaf: _Leaf | None = None


def _walk(node: _Node, segments: list[str], index: int, values: list[str]) -> _Leaf | None:
    """Depth-first, literal before parameter; parameter values are pushed onto ``values``."""
    if index == len(segments):
        return node.leaf
    segment = segments[index]
    child = node.literals.get(segment)
    if child is not None:
        found = _walk(child, segments, index + 1, values)
        if found is not None:
            return found
    child = node.param
    if child is not None and segment not in _DOT_SEGMENTS:
        values.append(segment)
        found = _walk(child, segments, index + 1, values)
        if found is not None:
            return found
        values.pop()
    return None


class RouteTable:
    """Every Unit route with its scopes; ``match`` finds the route of a request."""

    def __init__(self, routes: Iterable[Route], two_factor_scopes: Iterable[str]) -> None:
        self.two_factor_scopes: frozenset[str] = frozenset(two_factor_scopes)
        self._routes: dict[Shape, Route] = {}
        self._root = _Node()
        for route in routes:
            shape, names = _parse_template(route.template)
            if shape in self._routes:
                raise ValueError(f"{route.template} and {self._routes[shape].template} clash")
            self._routes[shape] = route
            node = self._root
            for segment in shape:
                if segment == _PARAM:
                    if node.param is None:
                        node.param = _Node()
                    node = node.param
                else:
                    node = node.literals.setdefault(segment, _Node())
            # Facts for every method, precomputed: match() only looks them up.
            facts = {method: self._facts(route, method) for method in HTTP_METHODS}
            node.leaf = _Leaf(route, names, facts)

    @classmethod
    def default(cls) -> RouteTable:
        return _default_table()

    @classmethod
    def from_settings(cls, settings: RouteSettings | None) -> RouteTable:
        if settings is None:
            return cls.default()
        rules = _default_rules()
        routes = _unit_routes(rules)
        for rule in settings.extra:
            _apply_rule(routes, rule, rules)
        two_factor = (
            set(settings.two_factor_scopes)
            if settings.two_factor_scopes is not None
            else set(rules.two_factor_scopes)
        )
        two_factor.update(settings.extra_two_factor_scopes)
        return cls(routes.values(), two_factor)

    def _facts(self, route: Route, method: str) -> _MethodFacts:
        scope = route.scope_for(method)
        return _MethodFacts(
            scope=scope,
            two_factor=scope is not None and scope in self.two_factor_scopes,
            method_allowed=method in route.methods,
            cardholder=route.cardholder_eligible(method),
        )

    def match(self, method: str, path: str) -> RouteMatch | None:
        """The route of ``method path`` (query string and one trailing slash ignored), or None.

        Segments are split before percent-decoding, so an id containing ``%2F`` stays one
        segment; literal segments are compared decoded, as Unit's server would see them.
        """
        query = path.find("?")
        if query >= 0:
            path = path[:query]
        if not path.startswith("/"):
            return None
        if path.endswith("/"):
            path = path[:-1]
        segments = path[1:].split("/")
        if "%" in path:
            segments = [unquote(s) if "%" in s else s for s in segments]
        values: list[str] = []
        leaf = _walk(self._root, segments, 0, values)
        if leaf is None:
            return None
        facts = leaf.facts.get(method)
        if facts is None:
            facts = self._facts(leaf.route, method.upper())
        route = leaf.route
        return RouteMatch(
            route.template,
            dict(zip(leaf.param_names, values, strict=False)),
            facts.scope,
            facts.two_factor,
            route.org_only,
            route.token_endpoint,
            facts.method_allowed,
            values[0] if facts.cardholder else None,
        )

    def scopes_needed(self, method: str, path: str) -> frozenset[str]:
        """The scopes a token needs for this request: empty for unknown paths and for routes
        Unit publishes no scope for."""
        match = self.match(method, path)
        if match is None or match.scope is None:
            return frozenset()
        return frozenset({match.scope})

    def is_two_factor(self, scope: str) -> bool:
        return scope in self.two_factor_scopes

    def routes(self) -> list[Route]:
        """Every route with its scopes and flags, sorted by template."""
        return sorted(self._routes.values(), key=lambda route: route.template)

    def templates(self) -> list[str]:
        return [route.template for route in self.routes()]

    def route(self, template: str) -> Route | None:
        """The route a template (any spelling of it) names."""
        return self._routes.get(_shape_of(template))

    def describe(self) -> list[str]:
        """One human-readable line per route, e.g. for a `routes` listing command."""
        lines = []
        for route in self.routes():
            flags = [
                f"read={route.read_scope or '-'}",
                f"write={route.write_scope or '-'}",
            ]
            two_factor = sorted(
                {s for s in (route.read_scope, route.write_scope) if s} & self.two_factor_scopes
            )
            if two_factor:
                flags.append("two-factor=" + ",".join(two_factor))
            if route.org_only:
                flags.append("org-only")
            if route.token_endpoint:
                flags.append(f"token-endpoint={route.token_endpoint}")
            if route.from_config:
                flags.append("config")
            methods = " ".join(sorted(route.methods))
            lines.append(f"{methods:<17} {route.template:<62} {' '.join(flags)}")
        return lines


@functools.cache
def _default_table() -> RouteTable:
    rules = _default_rules()
    return RouteTable(_unit_routes(rules).values(), rules.two_factor_scopes)
