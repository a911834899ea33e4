"""Importing the gateway changes nothing outside it: no module of the package replaces or adds
anything in mitmproxy, or switches anything of prometheus-client. Replacements are installed
by the addons' hooks, after the gate let the gateway start. (``unit_gateway.script`` is left
out: importing it is mitmproxy loading the gateway, and it builds the addons.)"""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = r"""
import importlib, json, pkgutil, sys
import prometheus_client.metrics
import unit_gateway

# test helpers are not the gateway; the script builds the addons
names = sorted(
    info.name
    for info in pkgutil.walk_packages(unit_gateway.__path__, "unit_gateway.")
    if not info.name.startswith("unit_gateway.testing") and info.name != "unit_gateway.script"
)

def mitmproxy_state():
    state = {}
    for name, module in sorted(sys.modules.items()):
        if name != "mitmproxy" and not name.startswith("mitmproxy."):
            continue
        for owner_name, owner in [(name, module), *vars(module).items()]:
            if owner is not module and getattr(owner, "__module__", None) != name:
                continue
            attrs = getattr(owner, "__dict__", {})
            state[f"{name}:{owner_name}"] = sorted(
                f"{key}={id(value)}" for key, value in attrs.items() if not key.startswith("__")
            )
    return state

if sys.argv[1] == "list":
    for name in names:
        importlib.import_module(name)
    print(json.dumps(sorted(name for name in sys.modules if name.startswith("mitmproxy"))))
else:
    # mitmproxy as the gateway's modules will find it, loaded first, so only changes show
    for name in json.loads(sys.argv[2]):
        importlib.import_module(name)
    created = prometheus_client.metrics._use_created
    before = mitmproxy_state()
    for name in names:
        importlib.import_module(name)
    after = mitmproxy_state()
    changed = sorted(key for key in before if before[key] != after.get(key))
    switched = created != prometheus_client.metrics._use_created
    print(json.dumps({"modules": len(names), "changed": changed, "switched": switched}))
"""


def _probe(*args: str) -> object:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_every_module_changes_nothing_in_mitmproxy_or_prometheus() -> None:
    mitmproxy_modules = _probe("list")
    report = _probe("check", json.dumps(mitmproxy_modules))
    assert isinstance(report, dict)
    assert report["modules"] > 40
    assert report["changed"] == []
    assert not report["switched"]
