"""The committed Grafana dashboard is exactly what dashboards/build.py writes, so the JSON that
Grafana provisioning and the Prometheus tests read never drifts from its source."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"
HOW = "edit dashboards/build.py, run `uv run python dashboards/build.py` and commit both"


def load_generator() -> ModuleType:
    # dashboards/ is not a package: load the script by its path.
    spec = importlib.util.spec_from_file_location("dashboard_build", DASHBOARDS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dashboard_is_the_generators_output() -> None:
    generator = load_generator()
    assert generator.OUTPUT == DASHBOARDS / "unit-gateway.json"
    committed = generator.OUTPUT.read_text()
    assert committed == generator.render(), f"unit-gateway.json was edited by hand: {HOW}"


def test_generator_is_deterministic() -> None:
    generator = load_generator()
    first, second = generator.render(), generator.render()
    assert first == second
    dashboard = json.loads(first)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert ids == list(range(1, len(ids) + 1)), "panel ids number the panels in page order"
