"""Secrets in the configuration. They are never written in the YAML: a secret field holds
``{env: NAME}`` or ``{file: PATH}``, resolved at load time into a :class:`Secret`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import model_validator

from unit_gateway.config.base import _Model


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
