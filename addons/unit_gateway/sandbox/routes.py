"""Route table matching: path -> route template, precomputed as a tree of path segments.

Literal segments win over parameters (``/payments/bulk`` before ``/payments/{paymentId}``),
as in Unit's own routing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str
    # Takes a sandbox Call, returns a response.
    handler: Callable[[Any], Any]
    # The scope a token needs for this route.
    scope: str
    # Token and verification endpoints: exempt from error_rate, hit by token_outage.
    token_endpoint: bool = False
    # "<METHOD> <template>", the key stats are counted under.
    key: str = ""


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    param: tuple[str, _Node] | None = None
    methods: dict[str, Route] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Match:
    template: str
    methods: dict[str, Route]
    params: dict[str, str]


class Router:
    def __init__(self) -> None:
        self._root = _Node()

    def add(self, route: Route) -> None:
        node = self._root
        for segment in route.template.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                name = segment[1:-1]
                if node.param is None:
                    node.param = (name, _Node())
                elif node.param[0] != name:
                    raise ValueError(f"{route.template}: parameter {name} vs {node.param[0]}")
                node = node.param[1]
            else:
                node = node.literals.setdefault(segment, _Node())
        if route.method in node.methods:
            raise ValueError(f"duplicate route {route.method} {route.template}")
        node.methods[route.method] = route

    def match(self, path: str) -> Match | None:
        segments = path.split("/")
        if len(segments) < 2 or segments[0] != "":
            return None
        params: dict[str, str] = {}
        node = self._walk(self._root, segments, 1, params)
        if node is None:
            return None
        template = next(iter(node.methods.values())).template
        return Match(template, node.methods, params)

    def _walk(
        self, node: _Node, segments: list[str], index: int, params: dict[str, str]
    ) -> _Node | None:
        if index == len(segments):
            return node if node.methods else None
        segment = segments[index]
        literal = node.literals.get(segment)
        if literal is not None:
            found = self._walk(literal, segments, index + 1, params)
            if found is not None:
                return found
        if node.param is not None and segment:
            name, child = node.param
            found = self._walk(child, segments, index + 1, params)
            if found is not None:
                params[name] = segment
                return found
        return None
