"""The packaged route data, validated so that a mistake fails loudly at start-up.

``data/unit-routes.txt`` is Unit's routes (merged from its OpenAPI spec, unit-openapi-python-sdk
and the documented secure-data endpoints); ``data/route-scopes.yaml`` the scope each needs
(path-prefix rules with per-route exceptions) and its flags.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from unit_gateway.unit_api.templates import (
    HTTP_METHODS,
    Shape,
    check_scope,
    covers,
    parse_template,
    shape_of,
)

TokenEndpointKind = Literal[
    "customer", "customer-verification", "cardholder", "cardholder-verification"
]
TOKEN_ENDPOINT_KINDS: frozenset[str] = frozenset(
    {"customer", "customer-verification", "cardholder", "cardholder-verification"}
)


class _ScopePair(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    read: str | None = None
    write: str | None = None

    @field_validator("read", "write")
    @classmethod
    def _check(cls, scope: str | None) -> str | None:
        return None if scope is None else check_scope(scope, "scope")


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
            check_scope(scope, "scope")
        return scopes

    @field_validator("prefixes", "routes", "org_only", "token_endpoints")
    @classmethod
    def _check_templates(cls, entries: dict[str, Any]) -> dict[str, Any]:
        for template in entries:
            parse_template(template)
        return entries


@dataclass(frozen=True, slots=True)
class Rules:
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
            if covers(prefix[0], shape) and (best is None or len(prefix[0]) > len(best[0])):
                best = prefix
        exception = self.exceptions.get(shape, {})
        read = exception["read"] if "read" in exception else (best[1] if best else None)
        write = exception["write"] if "write" in exception else (best[2] if best else None)
        return read, write, best is not None or len(exception) == 2

    def is_org_only(self, shape: Shape) -> bool:
        return any(covers(prefix, shape) for prefix in self.org_only)


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
        parse_template(template)
        spellings.append((frozenset(methods), template))
    return spellings


@functools.cache
def default_rules() -> Rules:
    data = _ScopeData.model_validate(yaml.safe_load(_read_data("route-scopes.yaml")))
    return Rules(
        two_factor_scopes=frozenset(data.two_factor_scopes),
        prefixes=tuple(
            (shape_of(template), pair.read, pair.write) for template, pair in data.prefixes.items()
        ),
        exceptions={
            shape_of(template): {key: getattr(pair, key) for key in pair.model_fields_set}
            for template, pair in data.routes.items()
        },
        org_only=tuple(shape_of(template) for template in data.org_only),
        token_endpoints={shape_of(t): kind for t, kind in data.token_endpoints.items()},
    )


@functools.cache
def default_spellings() -> tuple[tuple[frozenset[str], str], ...]:
    return tuple(parse_route_list(_read_data("unit-routes.txt")))


@functools.cache
def default_shapes() -> frozenset[Shape]:
    return frozenset(shape_of(template) for _, template in default_spellings())


def default_two_factor_scopes() -> frozenset[str]:
    return default_rules().two_factor_scopes
