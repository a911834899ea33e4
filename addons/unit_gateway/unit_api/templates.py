"""Route templates and the names in them: shapes, parameters, scope names, HTTP methods."""

from __future__ import annotations

import re
from collections.abc import Iterable

READ_METHODS: frozenset[str] = frozenset({"GET", "HEAD"})
WRITE_METHODS: frozenset[str] = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HTTP_METHODS: frozenset[str] = READ_METHODS | WRITE_METHODS | {"OPTIONS"}

# A parameter name that says nothing about what it names; the other spelling is preferred.
_GENERIC_PARAM_NAMES = frozenset({"id"})
_SCOPE_RE = re.compile(r"[a-z][a-z-]*[a-z]")
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LITERAL_FORBIDDEN = re.compile(r"[{}?#%\s]")
# A route's shape: its segments with every parameter written "{}". Two spellings of a route
# (`/accounts/{id}`, `/accounts/{accountId}`) have the same shape.
PARAM = "{}"

Shape = tuple[str, ...]


def parse_template(template: str) -> tuple[Shape, tuple[str, ...]]:
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
            shape.append(PARAM)
        elif _LITERAL_FORBIDDEN.search(segment):
            raise ValueError(
                f"template {template!r}: segment {segment!r} must not contain "
                "spaces, %, ?, # or braces"
            )
        else:
            shape.append(segment)
    return tuple(shape), tuple(names)


def shape_of(template: str) -> Shape:
    return parse_template(template)[0]


def covers(prefix: Shape, shape: Shape) -> bool:
    return shape[: len(prefix)] == prefix


def check_scope(scope: str, what: str) -> str:
    if not isinstance(scope, str) or _SCOPE_RE.fullmatch(scope) is None:
        raise ValueError(
            f"{what} {scope!r} is not a scope name "
            "(lowercase letters and -, starting and ending with a letter)"
        )
    return scope


def canonical_spelling(spellings: Iterable[str]) -> str:
    """The spelling a route is known by: the one with the fewest bare ``{id}`` parameters
    (``{accountId}`` says what it names), ties broken alphabetically, so the choice never
    depends on the order of the sources."""

    def generic(template: str) -> int:
        return sum(name in _GENERIC_PARAM_NAMES for name in parse_template(template)[1])

    return min(spellings, key=lambda template: (generic(template), template))
