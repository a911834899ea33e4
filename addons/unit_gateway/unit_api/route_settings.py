"""The `routes:` section of the gateway's configuration: routes to add, scopes to change."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unit_gateway.unit_api.route_data import default_shapes
from unit_gateway.unit_api.templates import (
    HTTP_METHODS,
    Shape,
    check_scope,
    parse_template,
    shape_of,
)


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
        parse_template(template)
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
        return None if scope is None else check_scope(scope, "scope")

    @model_validator(mode="after")
    def _check_rule(self) -> RouteRule:
        given = self.model_fields_set - {"template"}
        if not given:
            raise ValueError(
                f"rule for {self.template} changes nothing: give methods, read, write or org_only"
            )
        if not self.methods and shape_of(self.template) not in default_shapes():
            raise ValueError(
                f"{self.template} is not a known Unit route: a new route needs methods"
            )
        return self

    @property
    def shape(self) -> Shape:
        return shape_of(self.template)


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
            check_scope(scope, "scope")
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
