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
literal ``back`` leads nowhere.

The path matched is the one Unit's server will read (:func:`read_target`). HTTP servers
disagree on parts of a request target: whether a fragment belongs to it, whether ``%2F`` is a
``/``, whether ``..`` is resolved, ``//`` merged, ``;params`` stripped, case ignored. A
target whose route would depend on that choice is refused (:class:`UnreadableTarget`) rather
than guessed, so the gateway and Unit never disagree on which route, and which token endpoint,
a request names.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

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
# An empty segment (from `//`) never fills a parameter: no Unit id is empty.
_EMPTY = ""

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
# Reading a request target as Unit's server will


class UnreadableTarget(ValueError):
    """A request target that HTTP servers read in more than one way: the gateway refuses it
    (400) before anything is sent. The message says what is wrong without quoting the target,
    which may carry ids or secrets."""


# Letters, digits, "-._~" (RFC 3986 unreserved): an escape of one of them means the character
# itself to every server that decodes, so it is decoded before matching.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# What a path may hold: RFC 3986 pchar and "/", less ";" (Java servers strip `;params` from a
# segment, so `/token;x` is `/token` to them). Everything else (space, controls, backslash,
# non-ASCII, quotes, brackets...) is read differently by some server, or by none.
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/%]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})?")
_ENCODED_NAMES = {
    "/": "an encoded / (%2F): servers differ on whether it separates segments",
    "\\": "an encoded backslash (%5C): some servers read it as /",
    "%": "an encoded % (%25): a server that decodes twice reads another path",
    "?": "an encoded ? (%3F)",
    "#": "an encoded # (%23)",
    ";": "an encoded ; (%3B)",
}


def _describe(char: str) -> str:
    if char == "\\":
        return "a backslash: some servers read it as /"
    if char == ";":
        return "a ; (some servers strip ;parameters from a path segment)"
    if char == " " or char == "\t":
        return "white space"
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return "a control character"
    if ord(char) > 0x7F:
        return "a character that is not ASCII"
    return f"the character {char!r}, which RFC 3986 does not allow in a path"


def _decode_escape(escape: re.Match[str]) -> str:
    digits = escape.group(1)
    if digits is None:
        raise UnreadableTarget("its path has a % that is not followed by two hex digits")
    char = chr(int(digits, 16))
    if char in _UNRESERVED:
        return char
    named = _ENCODED_NAMES.get(char)
    if named is None:
        named = f"an encoded character (%{digits.upper()}) that is not a letter, digit or -._~"
    raise UnreadableTarget(f"its path has {named}")


def read_target(target: str) -> tuple[str, ...]:
    """The path segments of a request target as Unit's server reads them (query string and
    one trailing slash left out, escapes of letters, digits and ``-._~`` decoded); an empty
    segment stands for ``//``. Raises :class:`UnreadableTarget` for anything servers read in
    different ways: a fragment, a dot segment (``.``, ``..``, escaped or not), an escape of
    any other character (``%2F``...), ``;``, a backslash, white space, controls, non-ASCII,
    a leading ``//``, a segment ending in ``.``. Clients send none of these to Unit: refusing
    them costs a caller nothing.
    """
    if "#" in target:
        # RFC 9112 allows no fragment in a request target; servers drop it or keep it.
        raise UnreadableTarget(
            "it has a fragment (#): servers differ on whether it is part of the path"
        )
    path = target.partition("?")[0]
    if not path.startswith("/"):
        raise UnreadableTarget("its path does not start with /")
    if path.startswith("//"):
        # `//a/customers/1/token` is host `a` and path `/customers/1/token` to a server that
        # resolves the target as a URL reference (Node's `new URL(target, base)`).
        raise UnreadableTarget("its path starts with //, which some servers read as a host name")
    if _PATH.fullmatch(path) is None:
        bad = next(c for c in path if _PATH.fullmatch(c) is None)
        raise UnreadableTarget(f"its path has {_describe(bad)}")
    if "%" in path:
        path = _ESCAPE.sub(_decode_escape, path)
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    segments = tuple(path[1:].split("/")) if len(path) > 1 else ()
    if "." in path:  # rare in Unit's paths: the common case skips the walk
        for segment in segments:
            if segment in (".", ".."):
                # Most servers resolve dot segments (RFC 3986 5.2.4), some do not (aiohttp).
                raise UnreadableTarget(
                    "its path has a dot segment (. or ..): servers differ on resolving it"
                )
            if segment.endswith("."):
                raise UnreadableTarget(
                    "its path has a segment ending in . (Windows servers drop the dot)"
                )
    return segments


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
    return resources.files("unit_gateway.unit_api").joinpath("data", name).read_text("utf-8")


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


#: The leaf of a path that names more than one route (never the route a match found).
_AMBIGUOUS = _Leaf(Route("/", frozenset(), None, None), (), {})


def _insert(root: _Node, shape: Shape, leaf: _Leaf) -> None:
    """Put ``leaf`` at ``shape``'s node."""
    node = root
    for segment in shape:
        if segment == _PARAM:
            if node.param is None:
                node.param = _Node()
            node = node.param
        else:
            node = node.literals.setdefault(segment, _Node())
    node.leaf = leaf


def _walk(node: _Node, segments: tuple[str, ...], index: int, values: list[str]) -> _Leaf | None:
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
    if child is not None and segment != _EMPTY:
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
        # The same routes with lower-case literals: which route a path names on a server
        # that ignores case (many do), to refuse a path whose route depends on it.
        self._folded_root = _Node()
        folded_shapes: dict[Shape, int] = {}
        for route in routes:
            shape, names = _parse_template(route.template)
            if shape in self._routes:
                raise ValueError(f"{route.template} and {self._routes[shape].template} clash")
            self._routes[shape] = route
            # Facts for every method, precomputed: match() only looks them up.
            facts = {method: self._facts(route, method) for method in HTTP_METHODS}
            leaf = _Leaf(route, names, facts)
            _insert(self._root, shape, leaf)
            folded = tuple(s.lower() for s in shape)
            _insert(self._folded_root, folded, leaf)
            folded_shapes[folded] = folded_shapes.get(folded, 0) + 1
        for folded, count in folded_shapes.items():
            if count > 1:
                # Routes that differ only in case: a server that ignores case reads either,
                # so no path to them agrees with it.
                _insert(self._folded_root, folded, _AMBIGUOUS)
        # A route spelled with capitals differs from what a lower-case path reads as.
        self._upper_literals = any(s != s.lower() for shape in self._routes for s in shape)

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

    def match(self, method: str, target: str) -> RouteMatch | None:
        """The route of ``method target`` as Unit's server reads the target
        (:func:`read_target`), or None for a path Unit does not have.

        Raises :class:`UnreadableTarget` for a target servers read in different ways, and for
        one whose route depends on choices servers make differently: merging ``//`` into
        ``/``, or ignoring case. Such a path either names no route however it is read, or is
        refused.
        """
        segments = read_target(target)
        values: list[str] = []
        leaf = _walk(self._root, segments, 0, values) if _EMPTY not in segments else None
        found = leaf.route if leaf is not None else None
        if _EMPTY in segments:
            merged = tuple(s for s in segments if s)
            if self._route_of(self._root, merged) is not found:
                raise UnreadableTarget(
                    "its path has an empty segment (//): servers differ on merging it, and "
                    "merged it names a Unit route"
                )
            segments = merged
        folded = tuple(s.lower() for s in segments)
        if (folded != segments or self._upper_literals) and self._route_of(
            self._folded_root, folded
        ) is not found:
            raise UnreadableTarget(
                "its path names a different Unit route when upper and lower case are not "
                "told apart, as some servers do: write it as Unit's routes are spelled"
            )
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

    @staticmethod
    def _route_of(root: _Node, segments: tuple[str, ...]) -> Route | None:
        leaf = _walk(root, segments, 0, [])
        return leaf.route if leaf is not None else None

    def scopes_needed(self, method: str, path: str) -> frozenset[str]:
        """The scopes a token needs for this request: empty for unknown paths and for routes
        Unit publishes no scope for. Raises :class:`UnreadableTarget` as ``match`` does."""
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
