"""Hooks dispatched from a table (unit_gateway.mitm.hook_table), driven through mitmproxy's own
AddonManager: the same calls in the same order as mitmproxy's walk of the addon tree, with the
same rules for failures, and a tree that changes is seen at the next event."""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager
from mitmproxy.addons import script
from mitmproxy.proxy.layers.http import _hooks as http_hooks
from mitmproxy.test import taddons, tflow

from unit_gateway.mitm import hook_table
from unit_gateway.mitm.chain import AddonChain

Calls = list[str]


class Node:
    """An addon that records its hooks; ``children`` become its ``addons``."""

    def __init__(self, name: str, calls: Calls, *children: Node) -> None:
        self.name = name
        self.calls = calls
        if children:
            self.addons = list(children)

    def __repr__(self) -> str:
        return self.name

    def requestheaders(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.requestheaders")

    def update(self, flows: Any) -> None:
        self.calls.append(f"{self.name}.update")


class Awaiting(Node):
    """Answers ``request`` with an awaitable: the next call waits for it."""

    def request(self, flow: Any) -> Any:
        self.calls.append(f"{self.name}.request started")
        return self._finish()

    async def _finish(self) -> None:
        await asyncio.sleep(0.01)
        self.calls.append(f"{self.name}.request finished")


class Failing(Node):
    def request(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.request failed")
        raise ValueError("planted failure")


class Halting(Node):
    def response(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.response halted")
        raise exceptions.AddonHalt


class Answering(Node):
    async def request(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.request")

    def response(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.response")


class OddAttributes(Node):
    """``error`` holds a module (mitmproxy passes over it), ``responseheaders`` a value that
    cannot be called (mitmproxy logs an error)."""

    error = types.ModuleType("error")
    responseheaders = "not a hook"


class Unreadable(Node):
    """Once a flow started, its ``error`` hook cannot be looked up: mitmproxy logs that for
    each event. (Before, mitmproxy reads every attribute to find commands.)"""

    started = False

    def requestheaders(self, flow: Any) -> None:
        super().requestheaders(flow)
        self.started = True

    @property
    def error(self) -> Any:
        if self.started:
            raise KeyError("lookup failed")
        return None


def tree(calls: Calls) -> list[Any]:
    """Top-level addons with children, grandchildren, and every rule of mitmproxy's walk."""
    return [
        Node("plain", calls),
        Answering("parent", calls, Failing("child-fails", calls), Answering("child-after", calls)),
        Node(
            "deep", calls, Node("deep.1", calls, Awaiting("deep.1.1", calls)), Node("deep.2", calls)
        ),
        OddAttributes("odd", calls),
        Unreadable("unreadable", calls),
        Halting("halts", calls),
        Answering("after-halt", calls),
    ]


@pytest.fixture
def table() -> Iterator[None]:
    hook_table.install()
    try:
        yield
    finally:
        hook_table.uninstall()


async def one_flow(manager: AddonManager, calls: Calls) -> None:
    flow = tflow.tflow(resp=True, err=True)
    for hook in (
        http_hooks.HttpRequestHeadersHook(flow),
        http_hooks.HttpRequestHook(flow),
        http_hooks.HttpResponseHeadersHook(flow),
        http_hooks.HttpResponseHook(flow),
        http_hooks.HttpErrorHook(flow),
    ):
        await manager.handle_lifecycle(hook)


Scenario = Callable[[AddonManager, Calls], Awaitable[None]]


async def calls_and_log(
    caplog: pytest.LogCaptureFixture, addons: Callable[[Calls], list[Any]], scenario: Scenario
) -> tuple[Calls, list[str]]:
    calls: Calls = []
    caplog.clear()
    looked_up: list[str] = []
    real = hook_table.hook_table

    def spy(manager: AddonManager, name: str) -> Any:
        looked_up.append(name)
        return real(manager, name)

    hook_table.hook_table = spy  # type: ignore[assignment]
    try:
        with caplog.at_level(logging.ERROR), taddons.context(*addons(calls)) as tctx:
            await scenario(tctx.master.addons, calls)
    finally:
        hook_table.hook_table = real  # type: ignore[assignment]
    assert bool(looked_up) == hook_table.installed()  # the table ran the scenario, or did not
    return calls, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def both_ways(
    caplog: pytest.LogCaptureFixture, addons: Callable[[Calls], list[Any]], scenario: Scenario
) -> tuple[Calls, list[str]]:
    """The calls and logged errors of ``scenario`` under mitmproxy's walk and under the table,
    which must be the same."""
    assert not hook_table.installed()
    walked = await calls_and_log(caplog, addons, scenario)
    hook_table.install()
    try:
        tabled = await calls_and_log(caplog, addons, scenario)
    finally:
        hook_table.uninstall()
    assert tabled == walked
    return tabled


async def test_the_table_makes_the_calls_mitmproxy_makes(caplog: pytest.LogCaptureFixture) -> None:
    calls, errors = await both_ways(caplog, tree, one_flow)
    # What mitmproxy's rules give, spelled out so that a change in both cannot pass unseen:
    assert calls[: calls.index("plain.update")] == [
        "plain.requestheaders",
        "parent.requestheaders",
        "child-fails.requestheaders",
        "child-after.requestheaders",
        "deep.requestheaders",
        "deep.1.requestheaders",
        "deep.1.1.requestheaders",
        "deep.2.requestheaders",
        "odd.requestheaders",
        "unreadable.requestheaders",
        "halts.requestheaders",
        "after-halt.requestheaders",
    ]
    # A failing child ends its own top-level addon's turn; the next addon still runs.
    assert "child-fails.request failed" in calls
    assert "child-after.request" not in calls
    started = calls.index("deep.1.1.request started")
    assert calls[started : started + 3] == [
        "deep.1.1.request started",
        "deep.1.1.request finished",
        "after-halt.request",
    ]
    # AddonHalt stops the event: after-halt never sees a response; update still follows.
    assert "after-halt.response" not in calls
    assert calls[calls.index("halts.response halted") + 1] == "plain.update"
    assert errors == [
        "Addon error: planted failure",
        "Addon error: Addon handler responseheaders (odd) not callable",
        "Addon error: 'lookup failed'",
    ]


class Adder(Node):
    """Adds an addon to the chain from inside its ``request`` hook."""

    def __init__(self, name: str, calls: Calls, manager: AddonManager | None = None) -> None:
        super().__init__(name, calls)
        self.manager = manager

    def request(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.request")
        assert self.manager is not None
        self.manager.add(Answering("added", self.calls))


async def test_an_addon_added_during_an_event_gets_the_rest_of_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(manager: AddonManager, calls: Calls) -> None:
        adder = Adder("adder", calls, manager)
        manager.add(adder)
        await manager.trigger_event(http_hooks.HttpRequestHook(tflow.tflow()))

    calls, _ = await both_ways(caplog, lambda calls: [Answering("before", calls)], scenario)
    assert calls == ["before.request", "adder.request", "added.request"]


async def test_a_script_reloaded_while_an_earlier_hook_awaits_gets_its_new_hook(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """As when the token addon awaits a mint and the operator's own script is reloaded."""
    path = tmp_path / "user_script.py"

    async def scenario(manager: AddonManager, calls: Calls) -> None:
        path.write_text("def request(flow):\n    flow.comment = 'first version'\n")
        manager.master.options.update(scripts=[str(path)])
        user_script = await loaded(manager, path)
        flow = tflow.tflow()
        await manager.trigger_event(http_hooks.HttpRequestHook(flow))
        calls.append(flow.comment)

        async def reload() -> None:
            path.write_text("def request(flow):\n    flow.comment = 'second version'\n")
            user_script.loadscript()  # what the script's file watcher does on a change

        waiting.then = reload
        await manager.trigger_event(http_hooks.HttpRequestHook(flow))
        calls.append(flow.comment)
        manager.master.options.update(scripts=[])

    waiting = Awaits()
    calls, _ = await both_ways(caplog, lambda calls: [waiting, script.ScriptLoader()], scenario)
    assert calls == ["first version", "second version"]


class Awaits:
    """A ``request`` hook that awaits, and runs ``then`` while it waits."""

    then: Callable[[], Awaitable[None]] | None = None

    async def request(self, flow: Any) -> None:
        await asyncio.sleep(0)
        if self.then is not None:
            await self.then()
        await asyncio.sleep(0)


async def loaded(manager: AddonManager, path: Path) -> script.Script:
    user_script = manager.get(f"scriptmanager:{path}")
    for _ in range(100):  # its watcher loads it on the loop's next turns
        if user_script.ns is not None:
            return user_script
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} did not load")


async def test_log_records_and_flow_edits_keep_the_table(table: None) -> None:
    """mitmproxy sends every log record and every edit in mitmweb through ``trigger``: the
    table stays; a setup event through it drops the table."""
    with taddons.context(Node("a", [])) as tctx:
        manager = tctx.master.addons
        await manager.trigger_event(http_hooks.HttpRequestHeadersHook(tflow.tflow()))
        built = manager.__dict__[hook_table._TABLE]
        manager.trigger(hooks.UpdateHook([tflow.tflow()]))
        logging.getLogger("test").info("a record mitmproxy passes to its add_log hook")
        await asyncio.sleep(0)
        await manager.trigger_event(http_hooks.HttpRequestHeadersHook(tflow.tflow()))
        assert manager.__dict__[hook_table._TABLE] is built
        manager.trigger(hooks.ConfigureHook(set()))
        assert hook_table._TABLE not in manager.__dict__


async def test_a_table_from_an_earlier_install_is_not_used() -> None:
    calls: Calls = []
    hook_table.install()
    try:
        with taddons.context(Node("first", calls)) as tctx:
            manager = tctx.master.addons
            await manager.trigger_event(http_hooks.HttpRequestHeadersHook(tflow.tflow()))
            hook_table.uninstall()
            manager.add(Node("added while none was installed", calls))
            hook_table.install()
            await manager.trigger_event(http_hooks.HttpRequestHeadersHook(tflow.tflow()))
    finally:
        hook_table.uninstall()
    assert calls == [
        "first.requestheaders",
        "first.requestheaders",
        "added while none was installed.requestheaders",
    ]


@pytest.mark.parametrize("dispatch", ["mitmproxy's walk", "the table"])
async def test_an_event_that_is_not_a_hook_is_logged_as_mitmproxy_logs_it(
    dispatch: str, caplog: pytest.LogCaptureFixture
) -> None:
    """mitmproxy takes any object as an event (its own test triggers ``"nonexistent"``): each
    addon's turn fails on it, is logged, and the call returns; called for one addon, it
    raises to the caller. The table does the same, and never raises anything else."""
    with_table = dispatch == "the table"
    if with_table:
        hook_table.install()
    try:
        addons = (Node("a", []), Node("b", []))
        with caplog.at_level(logging.ERROR), taddons.context(*addons, loadcore=False) as tctx:
            manager = tctx.master.addons
            manager.trigger("nonexistent")  # type: ignore[arg-type]
            await manager.trigger_event("nonexistent")  # type: ignore[arg-type]
            with pytest.raises(AssertionError):
                manager.invoke_addon_sync(manager.chain[0], "nonexistent")  # type: ignore[arg-type]
            with pytest.raises(AssertionError):
                await manager.invoke_addon(manager.chain[0], "nonexistent")  # type: ignore[arg-type]
            assert hook_table.installed() is with_table
    finally:
        if with_table:
            hook_table.uninstall()
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.exc_info[0] if r.exc_info else None for r in logged] == [AssertionError] * 4
    assert {r.getMessage() for r in logged} == {"Addon error: "}


def test_it_stays_until_the_last_user_is_done() -> None:
    first, second = hook_table.HookTable(), hook_table.HookTable()
    first.load(None)
    second.load(None)
    try:
        first.done()
        assert hook_table.installed()
    finally:
        second.done()
    assert not hook_table.installed()


async def test_an_addon_added_or_removed_is_seen_at_the_next_event(table: None) -> None:
    calls: Calls = []
    first, later = Node("first", calls), Node("later", calls)
    with taddons.context(first) as tctx:
        manager = tctx.master.addons
        await manager.trigger_event(http_hooks.HttpRequestHeadersHook(tflow.tflow()))
        manager.add(later)
        await manager.trigger_event(http_hooks.HttpRequestHeadersHook(tflow.tflow()))
        manager.remove(first)
        await manager.trigger_event(http_hooks.HttpRequestHeadersHook(tflow.tflow()))
    assert calls == [
        "first.requestheaders",
        "first.requestheaders",
        "later.requestheaders",
        "later.requestheaders",
    ]


class GrowsAHook:
    """Takes on a ``request`` hook when an option says so (set up in ``configure``)."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def load(self, loader: Any) -> None:
        loader.add_option("dispatch_test_hook", bool, False, "for the test")

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx

        if ctx.options.dispatch_test_hook:
            self.request: Callable[[Any], None] = lambda flow: self.calls.append("grown")
        elif "request" in self.__dict__:
            del self.request


async def test_a_hook_an_addon_sets_up_in_configure_is_seen(table: None) -> None:
    calls: Calls = []
    with taddons.context(GrowsAHook(calls)) as tctx:
        manager = tctx.master.addons
        await manager.trigger_event(http_hooks.HttpRequestHook(tflow.tflow()))
        tctx.options.update(dispatch_test_hook=True)
        await manager.trigger_event(http_hooks.HttpRequestHook(tflow.tflow()))
        tctx.options.update(dispatch_test_hook=False)
        await manager.trigger_event(http_hooks.HttpRequestHook(tflow.tflow()))
    assert calls == ["grown"]


class StartsListening:
    """Takes on a ``request`` hook once mitmproxy is running."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def running(self) -> None:
        self.request: Callable[[Any], None] = lambda flow: self.calls.append("listening")


async def test_a_hook_an_addon_sets_up_when_running_is_seen(table: None) -> None:
    calls: Calls = []
    with taddons.context(StartsListening(calls)) as tctx:
        manager = tctx.master.addons
        await manager.trigger_event(http_hooks.HttpRequestHook(tflow.tflow()))
        await manager.trigger_event(hooks.RunningHook())
        await manager.trigger_event(http_hooks.HttpRequestHook(tflow.tflow()))
    assert calls == ["listening"]


async def test_a_script_reloaded_from_disk_replaces_its_hooks(table: None, tmp_path: Path) -> None:
    """An operator's own ``-s`` script next to the gateway: loaded, reloaded, unloaded."""
    path = tmp_path / "user_script.py"
    path.write_text("def request(flow):\n    flow.comment = 'first version'\n")
    with taddons.context(script.ScriptLoader()) as tctx:
        manager = tctx.master.addons
        flow = tflow.tflow()
        tctx.options.update(scripts=[str(path)])
        user_script = manager.get(f"scriptmanager:{path}")
        for _ in range(100):  # its watcher loads it on the loop's next turns
            if user_script.ns is not None:
                break
            await asyncio.sleep(0.01)
        await manager.trigger_event(http_hooks.HttpRequestHook(flow))
        assert flow.comment == "first version"
        path.write_text("def request(flow):\n    flow.comment = 'second version'\n")
        user_script.loadscript()  # what the watcher does when the file changes
        await manager.trigger_event(http_hooks.HttpRequestHook(flow))
        assert flow.comment == "second version"
        tctx.options.update(scripts=[])
        flow.comment = ""
        await manager.trigger_event(http_hooks.HttpRequestHook(flow))
        assert flow.comment == ""


def mitmproxy_own() -> dict[str, Any]:
    """AddonManager's attributes, less the originals the gateway keeps aside for a reload."""
    return {k: v for k, v in vars(AddonManager).items() if not k.startswith("_unit_gateway_")}


class AsyncDone:
    """A chain member whose ``done`` is asynchronous, like the gateway's core."""

    async def done(self) -> None:
        await asyncio.sleep(0)


@pytest.mark.parametrize("ending", ["removed", "shut down"])
async def test_the_gateway_installs_it_while_it_runs(ending: str) -> None:
    originals = mitmproxy_own()
    table = hook_table.HookTable()
    try:
        # Laid out as unit_gateway.addon lays it out.
        with taddons.context(table, AddonChain(AsyncDone(), Node("member", []))) as tctx:
            assert hook_table.installed()
            assert AddonManager.trigger_event is not originals["trigger_event"]
            if ending == "removed":
                tctx.master.addons.remove(table)
            else:
                await tctx.master.addons.trigger_event(hooks.DoneHook())
        assert not hook_table.installed()
        assert mitmproxy_own() == originals
    finally:
        while hook_table.installed():
            hook_table.uninstall()


def test_uninstall_puts_mitmproxy_back_exactly() -> None:
    originals = mitmproxy_own()
    hook_table.install()
    replaced = {name for name, value in mitmproxy_own().items() if originals[name] is not value}
    hook_table.uninstall()
    assert replaced == {
        "trigger_event",
        "register",
        "add",
        "remove",
        "clear",
        "trigger",
        "invoke_addon_sync",
        "invoke_addon",
    }
    assert mitmproxy_own() == originals
