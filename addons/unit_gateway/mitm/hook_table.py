"""Hooks dispatched from a table rather than by walking the addon tree for every event.

mitmproxy's ``AddonManager.trigger_event`` walks every addon's subtree for every event, which
costs a large share of a request's CPU (benchmarks/results/). While the gateway runs, it looks
the hook up in a table (per hook name, the callables of each top-level addon, in mitmproxy's
order) and calls them as mitmproxy would: one ``safecall`` per addon, awaiting results,
stopping at ``AddonHalt``. Setup events, unknown events and an event during which the tree
changed go through mitmproxy's own walk; the table is dropped whenever the tree may change.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Sequence
from typing import Any

from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager, safecall, traverse

from unit_gateway.mitm import gate, patches

#: The events in which an addon may set itself up differently: mitmproxy's walk runs them.
SETUP_EVENTS = frozenset({"load", "configure", "running", "done"})
#: Where each AddonManager keeps its table and how often its tree changed (instance
#: attributes: one of each per manager).
_TABLE = "_unit_gateway_hook_table"
_CHANGES = "_unit_gateway_tree_changes"

Hook = Callable[..., Any]
#: A top-level addon and its hooks in walk order, or None: walk it as mitmproxy does.
Row = tuple[Any, tuple[Hook, ...] | None]


def hook_table(manager: AddonManager, name: str) -> tuple[Row, ...]:
    """The rows for hook ``name``: one per top-level addon that has any, in mitmproxy's
    order (the addon, then its children depth-first)."""
    state = manager.__dict__.get(_TABLE)
    if state is None or state[0] != _epoch:
        # A table from an earlier install may predate changes made while none was installed.
        state = manager.__dict__[_TABLE] = (_epoch, {})
    table: dict[str, tuple[Row, ...]] = state[1]
    rows = table.get(name)
    if rows is None:
        rows = table[name] = tuple(
            (top, hooks_of) for top in manager.chain if (hooks_of := _hooks(top, name)) != ()
        )
    return rows


def _hooks(top: Any, name: str) -> tuple[Hook, ...] | None:
    found: list[Hook] = []
    try:
        for addon in traverse([top]):
            func = getattr(addon, name, None)
            if not func:
                continue
            if callable(func):
                found.append(func)
            elif not isinstance(func, types.ModuleType):
                # mitmproxy passes over a module of the hook's name (``from mitmproxy import
                # log``); anything else is an error, logged for each event
                found.append(_not_callable(addon, name))
    except Exception:
        return None  # looking up raised: mitmproxy's walk logs it, for each event
    return tuple(found)


def _not_callable(addon: Any, name: str) -> Hook:
    def fail(*args: Any) -> None:
        raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")

    return fail


def forget(manager: AddonManager) -> None:
    """The tree may have changed: drop the table; the next event builds it again."""
    manager.__dict__.pop(_TABLE, None)
    manager.__dict__[_CHANGES] = manager.__dict__.get(_CHANGES, 0) + 1


def _is_setup(event: object) -> bool:
    """A setup event. mitmproxy takes any object as an event and logs, for each addon, that it
    is not a hook: such an object is not one either, and must not raise here."""
    return isinstance(event, hooks.Hook) and event.name in SETUP_EVENTS


async def _trigger_event(self: AddonManager, event: hooks.Hook) -> None:
    if not isinstance(event, hooks.Hook):
        await _walk(self, event, self.chain)  # mitmproxy logs it for each addon
        return
    if event.name in SETUP_EVENTS:
        forget(self)
        try:
            await _walk(self, event, self.chain)
        finally:
            forget(self)
        return
    rows = hook_table(self, event.name)
    if not rows:
        return
    changes = self.__dict__.get(_CHANGES)
    args = event.args()
    for index, (top, row) in enumerate(rows):
        try:
            with safecall():
                if row is None:
                    await self.invoke_addon(top, event)
                else:
                    for func in row:
                        result = func(*args)
                        if result is not None and inspect.isawaitable(result):
                            await result
        except exceptions.AddonHalt:
            return
        if self.__dict__.get(_CHANGES) != changes:
            # The tree changed while this event ran: the rest of it walks the tree as it is.
            await _walk(self, event, _after(self.chain, top, rows[: index + 1]))
            return


def _after(chain: list[Any], top: Any, called: Sequence[Row]) -> list[Any]:
    """The addons of ``chain`` after ``top``; if ``top`` is gone, those not yet called."""
    for index, addon in enumerate(chain):
        if addon is top:
            return chain[index + 1 :]
    seen = {id(addon) for addon, _ in called}
    return [addon for addon in chain if id(addon) not in seen]


async def _walk(manager: AddonManager, event: hooks.Hook, chain: Sequence[Any]) -> None:
    """mitmproxy's own dispatch of ``event`` over ``chain``."""
    for addon in chain:
        try:
            with safecall():
                await manager.invoke_addon(addon, event)
        except exceptions.AddonHalt:
            return


#: What changes the tree, and what dispatches an event (its last argument) another way.
_CHANGING = ("register", "add", "remove", "clear")
_DISPATCHING = ("trigger", "invoke_addon_sync", "invoke_addon")


def _forgetting(name: str) -> Callable[..., Any]:
    """``AddonManager.name`` as mitmproxy has it, then the table dropped: always after a
    change to the tree, after a dispatch only for a setup event (mitmproxy triggers every log
    record and flow edit through ``trigger``: dropping it for each would rebuild it always)."""
    kept = patches.original(AddonManager, name)
    always = name in _CHANGING
    replacement: Callable[..., Any]
    if inspect.iscoroutinefunction(kept):

        async def replacement(self: AddonManager, addon: Any, event: hooks.Hook) -> None:
            try:
                await kept(self, addon, event)
            finally:
                if _is_setup(event):
                    forget(self)

    else:

        def replacement(self: AddonManager, *args: Any, **kwargs: Any) -> Any:
            try:
                return kept(self, *args, **kwargs)
            finally:
                # (the event: the last parameter of trigger and invoke_addon_sync)
                if always or _is_setup(kwargs.get("event", args[-1] if args else None)):
                    forget(self)

    replacement.__name__ = replacement.__qualname__ = name
    return replacement


def _patches() -> Sequence[patches.Patch]:
    return (
        (AddonManager, "trigger_event", _trigger_event),
        *((AddonManager, name, _forgetting(name)) for name in _CHANGING + _DISPATCHING),
    )


_users = 0  # how many HookTables asked for it; it stays until the last one is done
_epoch = 0  # one per install: a table from an earlier one is not used
_INSTALLED: list[patches.Patch] = []


def install() -> bool:
    """Dispatch from the table, if the gate let the gateway start (then True)."""
    global _users, _epoch
    if not gate.approved():
        return False
    _users += 1
    if not _INSTALLED:
        _epoch += 1
        _INSTALLED.extend(_patches())
        patches.install(_INSTALLED)
    return True


def installed() -> bool:
    return bool(_INSTALLED)


def uninstall() -> None:
    global _users
    _users = max(0, _users - 1)
    if _users == 0 and _INSTALLED:
        patches.uninstall(_INSTALLED)
        _INSTALLED.clear()


class HookTable:
    """Installs the table dispatch while the gateway runs. Its own addon, ahead of the
    gateway's chain: ``done`` must run synchronously when mitmproxy removes the script."""

    def __init__(self) -> None:
        self._installed = False

    def load(self, loader: Any) -> None:
        self._installed = install()

    def done(self) -> None:
        if self._installed:
            self._installed = False
            uninstall()
