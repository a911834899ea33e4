"""Unit's route table: method + path -> route template, the scope the route needs, its flags.

Step 1 of every request (docs/design.md). The routes and scopes come from the packaged data
(:mod:`.route_data`), which the configuration may change (:mod:`.route_settings`); the path
matched is the one Unit's server will read (:mod:`.targets`). Matching walks a tree of path
segments, literal children before the parameter child (``/payments/bulk`` beats
``/payments/{paymentId}``), backtracking when a literal leads nowhere.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from unit_gateway.unit_api.route_data import (
    Rules,
    TokenEndpointKind,
    default_rules,
    default_spellings,
)
from unit_gateway.unit_api.route_settings import RouteRule, RouteSettings
from unit_gateway.unit_api.targets import UnreadableTarget, read_target
from unit_gateway.unit_api.templates import (
    HTTP_METHODS,
    PARAM,
    READ_METHODS,
    WRITE_METHODS,
    Shape,
    canonical_spelling,
    parse_template,
    shape_of,
)

#: The route label of a request that matches no known route (metrics must stay bounded).
OTHER_ROUTE = "other"

# "Only cards (cards cards-sensitive cards-write cards-sensitive-write) scopes are allowed."
CARDHOLDER_SCOPES: frozenset[str] = frozenset(
    {"cards", "cards-sensitive", "cards-write", "cards-sensitive-write"}
)

# An empty segment (from `//`) never fills a parameter: no Unit id is empty.
_EMPTY = ""


def _method_kind(method: str) -> Literal["read", "write"] | None:
    if method in READ_METHODS:
        return "read"
    if method in WRITE_METHODS:
        return "write"
    return None


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
        return shape_of(self.template)

    def cardholder_eligible(self, method: str) -> bool:
        """A cardholder token may call it: under /cards/{cardId}, with a card scope."""
        shape = self.shape
        return (
            len(shape) >= 2
            and shape[0] == "cards"
            and shape[1] == PARAM
            and self.token_endpoint is None
            and not self.org_only
            and self.scope_for(method) in CARDHOLDER_SCOPES
        )


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """What one request's method and path matched. ``scope``: what the route needs for this
    method (None: Unit publishes none, or neither read nor write); ``two_factor``: whether that
    scope needs a one-time password or JWT in a customer or cardholder token."""

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


def _unit_routes(rules: Rules) -> dict[Shape, Route]:
    grouped: dict[Shape, tuple[set[str], list[str]]] = {}
    for methods, template in default_spellings():
        entry = grouped.setdefault(shape_of(template), (set(), []))
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


def _apply_rule(routes: dict[Shape, Route], rule: RouteRule, rules: Rules) -> None:
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
        if segment == PARAM:
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
            shape, names = parse_template(route.template)
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
        rules = default_rules()
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
        """The route of ``method target`` as Unit's server reads the target (:func:`read_target`),
        or None for a path Unit does not have. Raises :class:`UnreadableTarget` for a target
        servers read in different ways, or whose route depends on merging ``//`` or on case."""
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
        return self._routes.get(shape_of(template))

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
    rules = default_rules()
    return RouteTable(_unit_routes(rules).values(), rules.two_factor_scopes)
