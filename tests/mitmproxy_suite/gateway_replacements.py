"""A pytest plugin (``-p gateway_replacements``) for mitmproxy's own test suite: every part of
mitmproxy the gateway replaces is replaced for the whole session, as a running gateway has it
(``unit_gateway.redaction.addon.FlowRedaction.load`` and
``unit_gateway.mitm.hook_table.HookTable``), so that the suite tests mitmproxy as the gateway
runs it. run.py compares that run with one without the plugin.

The redaction addon is a real one with its default rules and no configuration: no flow is to
Unit, and every flow is redacted all the same, as a gateway redacts flows to other hosts."""

from __future__ import annotations

from typing import Any

import pytest

from unit_gateway.config.core import GatewayCore
from unit_gateway.mitm import early_errors, gate, hook_table, option_masks, patch_point
from unit_gateway.redaction.addon import FlowRedaction
from unit_gateway.redaction.secrets import _SECRETS

#: The redaction addon the patch point and the early errors call, while installed.
_guard: FlowRedaction | None = None
#: (the test, what was found gone before it ran): each was put back.
_put_back: list[tuple[str, list[str]]] = []


def install() -> None:
    global _guard
    _guard = FlowRedaction(GatewayCore())
    if not (
        hook_table.install()
        and early_errors.install(_guard.redact_text)
        and patch_point.install(_guard, _SECRETS)
        and option_masks.install(_guard.redact_text)
    ):
        raise pytest.UsageError("gateway_replacements: the gate did not approve this mitmproxy")


def uninstall() -> None:
    global _guard
    if _guard is not None:
        patch_point.uninstall(_guard)
        option_masks.uninstall()
        early_errors.uninstall()
        hook_table.uninstall()
        _guard = None


def _name(owner: Any, name: str) -> str:
    return f"{getattr(owner, '__name__', owner)}.{name}"


def missing() -> list[str]:
    """Each replacement that is not in place right now (a test put mitmproxy's back, say)."""
    replaced = (
        *hook_table._INSTALLED,
        *early_errors._PATCHES,
        *patch_point._PATCH_POINT,
        *option_masks._PATCHES,
    )
    gone = [
        _name(owner, name)
        for owner, name, replacement in replaced
        if owner.__dict__.get(name) is not replacement
    ]
    if not hook_table.installed():
        gone.append("the hook table")
    if early_errors._redact is None or patch_point._GUARD is not _guard:
        gone.append("the redaction addon")
    return gone


def pytest_configure(config: pytest.Config) -> None:
    if not gate.approve_if_supported():
        found = gate.problems()
        raise pytest.UsageError(
            "gateway_replacements: " + gate.refusal(found, gate.mitmproxy_version())
        )
    install()


def pytest_runtest_setup(item: pytest.Item) -> None:
    # mitmproxy's tests patch and restore things themselves: each test starts with all of
    # the gateway's replacements in place, or the run would test mitmproxy's own code.
    gone = missing()
    if gone:
        _put_back.append((item.nodeid, gone))
        uninstall()
        install()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for nodeid, gone in _put_back:
        terminalreporter.write_line(
            f"gateway_replacements: put back before {nodeid}: {', '.join(gone)}"
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    uninstall()
