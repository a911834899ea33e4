"""The start-up gate for mitmproxy's internals (unit_gateway.mitm.gate): it refuses a mitmproxy
the gateway was not tested on, or one without a name it replaces or reads, before anything is
replaced; an operator can override a version at their own risk."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from conftest import GatewayFactory, Planted, proxied_session
from unit_gateway.mitm import early_errors, gate, hook_table, option_masks, patch_point
from unit_gateway.testing import harness

REPO = Path(__file__).resolve().parent.parent
_REFUSAL = r"^.*unit-gateway: refusing to start on mitmproxy .*$"


def test_the_installed_mitmproxy_passes() -> None:
    assert gate.problems() == []


def test_the_supported_range_is_the_declared_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (declared,) = (d for d in project["dependencies"] if d.startswith("mitmproxy"))
    assert declared == f"mitmproxy{gate.SUPPORTED_TEXT}"
    low, high = gate.SUPPORTED
    assert gate.SUPPORTED_TEXT == f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("12.1.2", False),
        ("12.2.3", False),
        ("12.3.0", True),
        ("12.3.1", True),
        ("12.3.9.dev0", True),
        ("12.4.0", False),
        ("13.0.0", False),
        ("11.99", False),
    ],
)
def test_versions_outside_the_range_are_refused(version: str, supported: bool) -> None:
    found = gate.problems(version)
    assert (found == []) is supported
    assert not any(problem.missing for problem in found)


def _replaced() -> set[tuple[object, str]]:
    """Every (owner, name) the gateway's replacements stand in for."""
    every = [
        *early_errors._PATCHES,
        *patch_point._PATCH_POINT,
        *hook_table._patches(),
        *option_masks._PATCHES,
    ]
    return {(owner, name) for owner, name, _ in every}


def test_every_replacement_is_checked_by_the_gate() -> None:
    import importlib

    checked = set()
    for need in gate.NEEDS:
        owner = importlib.import_module(need.module)
        *path, name = need.path.split(".")
        for part in path:
            owner = getattr(owner, part)
        checked.add((owner, name))
    missing = {f"{getattr(o, '__name__', o)}.{n}" for o, n in _replaced() - checked}
    assert not missing, f"replaced but not checked by the gate: {missing}"


def test_a_changed_signature_is_named() -> None:
    need = gate.Need("mitmproxy.addonmanager", "AddonManager.trigger_event", "(self, hook)")
    (problem,) = gate.problems(needs=[need])
    assert not problem.missing
    assert "AddonManager.trigger_event(self, event) is not" in problem.text


@pytest.mark.parametrize(
    "need",
    [
        gate.Need("mitmproxy.proxy.layers.http._http9", "Http9Server.read_body"),
        gate.Need("mitmproxy.proxy.layers.http", "HttpStream.no_such_method", "(self)"),
        gate.Need("mitmproxy.proxy.layers.http", "HttpStream", attributes=("no_such_state",)),
    ],
)
def test_a_missing_name_cannot_be_overridden(need: gate.Need) -> None:
    found = gate.problems("12.3.1", needs=[need])
    assert [problem.missing for problem in found] == [True]
    line = gate.refusal(found, "12.3.1")
    assert "\n" not in line
    assert gate.OVERRIDE_OPTION not in line
    assert "mitmproxy>=12.3,<12.4" in line


def test_the_refusal_is_one_line_naming_version_range_and_override() -> None:
    line = gate.refusal(gate.problems("12.4.0"), "12.4.0")
    assert "\n" not in line
    assert "mitmproxy 12.4.0" in line and ">=12.3,<12.4" in line
    assert f"--set {gate.OVERRIDE_OPTION}=12.4.0" in line


def test_nothing_is_replaced_before_the_gate_approves() -> None:
    from unit_gateway.mitm import patches

    gate._approved = False
    try:
        assert not hook_table.install()
        assert not hook_table.installed()
        with pytest.raises(patches.NotApproved):
            patches.install(list(early_errors._PATCHES))
    finally:
        gate.approve_if_supported()


# --- a real gateway process on a mitmproxy that is not what the gateway was tested on ---


def _site(tmp_path: Path, code: str) -> Path:
    """A sitecustomize that changes mitmproxy in the gateway's process before it starts."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(code)
    return site


def _run_refused(run_dir: Path, sandbox: harness.Sandbox, extra: tuple[str, ...] = ()) -> str:
    config = harness.write_gateway_config(run_dir / "gate.yaml", upstream_url=sandbox.url)
    argv = harness.gateway_command(
        config, mitmproxy_args=["--set", f"confdir={run_dir / 'confdir'}", *extra]
    )
    process = harness.ManagedProcess("refused", argv, run_dir, env={"UNIT_ORG_TOKEN": "x"})
    process.start()
    assert process.proc is not None
    assert process.proc.wait(timeout=60) == 1
    return process.output()


REMOVED = "from mitmproxy.proxy.layers.http import _http1\ndel _http1.Http1Connection.read_body\n"
NEWER = "import mitmproxy.version\nmitmproxy.version.VERSION = '12.4.0'\n"


def test_a_removed_private_name_refuses_to_start(
    run_dir: Path, sandbox: harness.Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(_site(run_dir, REMOVED)))
    # Not even the override starts it: the gateway cannot work without the name.
    output = _run_refused(run_dir, sandbox, ("--set", f"{gate.OVERRIDE_OPTION}=12.3.1"))
    (line,) = [ln for ln in output.splitlines() if "refusing to start" in ln]
    assert "mitmproxy.proxy.layers.http._http1.Http1Server.read_body is missing" in line
    assert "supported: mitmproxy>=12.3,<12.4" in line
    assert "unit-gateway: proxy listening" not in output


def test_an_unsupported_version_refuses_to_start(
    run_dir: Path, sandbox: harness.Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(_site(run_dir, NEWER)))
    output = _run_refused(run_dir, sandbox)
    (line,) = [ln for ln in output.splitlines() if "refusing to start" in ln]
    assert "mitmproxy 12.4.0" in line
    assert f"--set {gate.OVERRIDE_OPTION}=12.4.0" in line
    assert "unit-gateway: proxy listening" not in output


def test_the_override_starts_it_with_a_warning(
    run_dir: Path,
    sandbox: harness.Sandbox,
    gateway_factory: GatewayFactory,
    planted: Planted,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(_site(run_dir, NEWER)))
    gateway = gateway_factory(sandbox, extra_args=("--set", f"{gate.OVERRIDE_OPTION}=12.4.0"))
    output = gateway.process.output()
    assert "running on mitmproxy 12.4.0, outside what it was tested on" in output
    with proxied_session(gateway) as session:
        answer = session.get(
            sandbox.url + "/cards", headers={"Authorization": "Bearer unitgw:customer:10001"}
        )
    assert answer.status_code == 200
    planted.blobs.append(("answer through the overridden gate", answer.content))
    assert "v2.public." not in answer.text


def test_the_override_names_one_version_only(
    run_dir: Path, sandbox: harness.Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An override written for one upgrade does not carry over to the next."""
    monkeypatch.setenv("PYTHONPATH", str(_site(run_dir, NEWER)))
    output = _run_refused(run_dir, sandbox, ("--set", f"{gate.OVERRIDE_OPTION}=12.3.9"))
    assert "refusing to start on mitmproxy 12.4.0" in output


def test_a_refused_gate_answers_every_request_and_lets_nothing_else_see_it() -> None:
    """A script loaded into a running mitmproxy (mitmweb) is not stopped by mitmproxy's
    start-up check: the refused gate answers each request itself."""
    from mitmproxy.test import taddons, tflow

    refused = gate.MitmproxyGate(gate.problems("12.4.0"))
    seen: list[str] = []

    class After:
        def requestheaders(self, flow: object) -> None:
            seen.append("requestheaders")

        def request(self, flow: object) -> None:
            seen.append("request")

    try:
        with taddons.context(refused, After()) as tctx:
            flow = tflow.tflow()
            for hook in ("requestheaders", "request"):
                tctx.master.addons.trigger(_hook(hook, flow))
            assert not gate.approved()
        assert flow.response is not None and flow.response.status_code == 503
        assert b"gateway_not_started" in (flow.response.content or b"")
        assert seen == []
    finally:
        gate.approve_if_supported()


def _hook(name: str, flow: object) -> object:
    from mitmproxy.proxy.layers import http as httplayer

    kind = {
        "requestheaders": httplayer.HttpRequestHeadersHook,
        "request": httplayer.HttpRequestHook,
    }
    return kind[name](flow)


# --- only unit_gateway.mitm reaches into mitmproxy ---

PACKAGE = REPO / "addons" / "unit_gateway"
#: Public names of mitmproxy.addonmanager (the type of ``load``'s argument).
_PUBLIC_ADDONMANAGER = {"Loader"}


def _private_uses(source: str) -> list[str]:
    """Imports of private mitmproxy (or h11) modules or names, of mitmproxy.addonmanager's
    internals, and of the gateway's own replacement machinery; private attributes read from
    an imported mitmproxy module."""
    import ast

    found: list[str] = []
    modules: set[str] = set()  # local names bound to mitmproxy modules

    def private(dotted: str) -> bool:
        return any(part.startswith("_") for part in dotted.split("."))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("mitmproxy", "h11"):
                    modules.add(alias.asname or alias.name.split(".")[0])
                    if private(alias.name):
                        found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            names = [alias.name for alias in node.names]
            if node.module.startswith("unit_gateway.mitm") and (
                node.module == "unit_gateway.mitm.patches" or "patches" in names
            ):
                found.append(f"from {node.module} import {', '.join(names)}")
            if top not in ("mitmproxy", "h11"):
                continue
            modules.update(alias.asname or alias.name for alias in node.names)
            bad = [n for n in names if n.startswith("_")]
            if node.module == "mitmproxy.addonmanager":
                bad += [n for n in names if n not in _PUBLIC_ADDONMANAGER]
            if private(node.module) or bad:
                found.append(f"from {node.module} import {', '.join(names)}")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_only_the_mitm_package_uses_mitmproxy_internals() -> None:
    outside = [REPO / "addons" / "gateway.py"] + [
        path for path in PACKAGE.rglob("*.py") if PACKAGE / "mitm" not in path.parents
    ]
    uses = {
        str(path.relative_to(REPO)): found
        for path in outside
        if (found := _private_uses(path.read_text()))
    }
    assert uses == {}


@pytest.mark.parametrize(
    "source",
    [
        "from mitmproxy.proxy.layers.http import _hooks as hooks",
        "from mitmproxy.proxy.layers.http._http1 import Http1Server",
        "import mitmproxy.proxy.layers.http._http2",
        "from mitmproxy.addonmanager import safecall",
        "from mitmproxy.proxy.layers import http\nhttp._http1",
        "from h11._receivebuffer import ReceiveBuffer",
        "from unit_gateway.mitm import patches",
        "from unit_gateway.mitm.patches import install",
    ],
)
def test_the_internals_check_finds_each_kind_of_use(source: str) -> None:
    assert _private_uses(source)


def test_the_internals_check_passes_public_uses() -> None:
    source = (
        "from mitmproxy.addonmanager import Loader\n"
        "from mitmproxy.proxy.layers import http as httplayer\n"
        "httplayer.HttpRequestHook\n"
        "from unit_gateway.mitm import early_errors, patch_point\n"
    )
    assert _private_uses(source) == []
