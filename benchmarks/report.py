"""Where and how every benchmark records its results: ``benchmarks/results/<name>.json|.md``,
with the command that produced them and the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        # other work on the machine skews every figure: the 1-minute load average as it began
        "load_average": round(os.getloadavg()[0], 2),
    }


def heading(report: dict[str, Any]) -> str:
    """The line every results page starts with: command, time and machine."""
    return (
        f"Command: `{report['command']}`; recorded {report['recorded_at']} on "
        f"{report['platform']}, Python {report['python']}, {report['cpus']} CPUs"
        + (
            f", load average {report['load_average']} at the start."
            if "load_average" in report
            else "."
        )
    )


def write(name: str, report: dict[str, Any], markdown: str, *, keep: bool = True) -> None:
    """Print ``markdown``; with ``keep`` (a full run, not a quick one), record both files."""
    print(markdown)
    if not keep:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
