"""What every configuration section model derives from, and the error a cross-field check
raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    # Attribute docstrings become field descriptions: docs/configuration.md is built from them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class _FieldError(ValueError):
    """A cross-field problem that belongs to a field other than the one being validated."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")
