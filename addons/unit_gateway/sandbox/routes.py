"""Route table matching: path -> route template, precomputed as a tree of path segments.

Literal segments win over parameters (``/payments/bulk`` before ``/payments/{paymentId}``),
as in Unit's own routing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote


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

    def match(self, path: str, *, fold_case: bool = False) -> Match | None:
        """The route of a decoded path; ``fold_case``: literals in any case (the sandbox's
        templates are lower case)."""
        segments = path.split("/")
        if len(segments) < 2 or segments[0] != "":
            return None
        params: dict[str, str] = {}
        node = self._walk(self._root, segments, 1, params, fold_case)
        if node is None:
            return None
        template = next(iter(node.methods.values())).template
        return Match(template, node.methods, params)

    def _walk(
        self,
        node: _Node,
        segments: list[str],
        index: int,
        params: dict[str, str],
        fold_case: bool = False,
    ) -> _Node | None:
        if index == len(segments):
            return node if node.methods else None
        segment = segments[index]
        literal = node.literals.get(segment.lower() if fold_case else segment)
        if literal is not None:
            found = self._walk(literal, segments, index + 1, params, fold_case)
            if found is not None:
                return found
        if node.param is not None and segment:
            name, child = node.param
            found = self._walk(child, segments, index + 1, params, fold_case)
            if found is not None:
                params[name] = segment
                return found
        return None


def lenient_path(target: str) -> str:
    """The path of a request target as the most lenient of HTTP servers reads it, taking
    every liberty some server takes: fragment and query dropped, percent-escapes decoded
    until none is left (``%2F`` is ``/``; servers that decode twice), cut at a NUL (C
    strings), ``\\`` read as ``/``, ``;params`` stripped from segments (Java servers), dots
    and spaces at the end of a segment dropped (Windows), dot segments resolved (RFC 3986),
    empty segments merged (nginx). Literal segments then match in any case
    (``Router.match(fold_case=True)``, as Express does by default).

    A gateway that reads a path as Unit will must agree with this reading, or refuse the
    path. One reading is left out as it contradicts merging: ``//host/path`` as a network
    path reference (the gateway refuses a leading ``//``)."""
    path = target.partition("#")[0].partition("?")[0]
    for _ in range(8):
        decoded = unquote(path, errors="replace")
        if decoded == path:
            break
        path = decoded
    path = path.partition("\x00")[0].replace("\\", "/")
    resolved: list[str] = []
    for segment in path.split("/"):
        segment = segment.partition(";")[0]
        if segment == "..":
            if resolved:
                resolved.pop()
            continue
        segment = segment.rstrip(". ")
        if segment:  # "" and "." go
            resolved.append(segment)
    return "/" + "/".join(resolved)
