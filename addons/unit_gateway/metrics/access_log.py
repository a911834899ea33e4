"""The JSON access log: one line per flow to a Unit upstream, in the file ``access_log.path``.

A line holds no id, no body and no secret: the time, the route template (never the path),
method, status, durations, the kind of identity and the fingerprint of the token Unit got
(``[token …a1b2c3]``, the same fingerprint mitmweb and the dumper show for it).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from unit_gateway.config.schema import LoadedConfig

logger = logging.getLogger(__name__)


def log_path(config: LoadedConfig) -> Path | None:
    """The configured file; a relative path is relative to the configuration file."""
    configured = config.model.access_log.path
    if configured is None:
        return None
    path = Path(configured).expanduser()
    if not path.is_absolute() and config.path is not None:
        path = config.path.parent / path
    return path


class AccessLog:
    """Appends lines to one file, flushed per line so a crash loses nothing written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = path.open("a", encoding="utf-8", buffering=1)

    def write(
        self,
        *,
        route: str,
        method: str,
        status: int | str,
        duration: float,
        upstream: float,
        mint: float,
        identity: str,
        token: str | None,
        environment: str,
    ) -> None:
        if self._file is None:
            return
        line: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "route": route,
            "method": method,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "upstream_ms": round(upstream * 1000, 3),
            "mint_ms": round(mint * 1000, 3),
            "identity": identity,
            "token": token,
            "environment": environment,
        }
        try:
            self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        except OSError as e:
            logger.error("unit-gateway: cannot write the access log %s: %s", self.path, e)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
