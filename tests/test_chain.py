"""The gateway's addons shown to mitmproxy as one node (unit_gateway.mitm.chain), driven through
mitmproxy's own AddonManager: members run in order, each hook waits for the one before it,
and mitmproxy walks one node instead of five."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import traverse
from mitmproxy.proxy.layers.http import _hooks as http_hooks
from mitmproxy.test import taddons, tflow

from unit_gateway.mitm.chain import AddonChain


class Recorder:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def requestheaders(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.requestheaders")


class Slow(Recorder):
    """Answers ``response`` with an awaitable, like the token addon's 401 retry."""

    def response(self, flow: Any) -> Any:
        self.calls.append(f"{self.name}.response started")
        return self._finish()

    async def _finish(self) -> None:
        await asyncio.sleep(0.01)
        self.calls.append(f"{self.name}.response finished")


class Counting(Recorder):
    def load(self, loader: Any) -> None:
        loader.add_option("chain_test_option", int, 1, "for the test")

    def response(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.response")

    async def running(self) -> None:
        await asyncio.sleep(0)
        self.calls.append(f"{self.name}.running")


class Plain(Recorder):
    def running(self) -> None:
        self.calls.append(f"{self.name}.running")


async def test_members_run_in_order_and_each_waits_for_the_one_before() -> None:
    calls: list[str] = []
    chain = AddonChain(Recorder("a", calls), Slow("b", calls), Counting("c", calls))
    with taddons.context(chain) as tctx:
        assert tctx.options.chain_test_option == 1  # a member's load declared it
        flow = tflow.tflow(resp=True)
        await tctx.master.addons.handle_lifecycle(http_hooks.HttpRequestHeadersHook(flow))
        await tctx.master.addons.handle_lifecycle(http_hooks.HttpResponseHook(flow))
    assert calls == [
        "a.requestheaders",
        "b.requestheaders",
        "c.requestheaders",
        "b.response started",
        "b.response finished",
        "c.response",
    ]


async def test_mitmproxy_walks_one_node_and_finds_only_the_members_hooks() -> None:
    calls: list[str] = []
    members = (Recorder("a", calls), Counting("b", calls))
    chain = AddonChain(*members)
    assert list(traverse([chain])) == [chain]
    assert getattr(chain, "tcp_message", None) is None
    assert getattr(chain, "error", None) is None
    # One member has the hook: it is the member's own method, no layer in between.
    assert chain.load == members[1].load  # type: ignore[attr-defined]
    # No member hands back an awaitable: the hook stays synchronous.
    assert chain.requestheaders(tflow.tflow()) is None  # type: ignore[attr-defined]
    assert calls == ["a.requestheaders", "b.requestheaders"]


async def test_a_coroutine_hook_keeps_its_kind_and_its_order() -> None:
    calls: list[str] = []
    chain = AddonChain(Counting("a", calls), Plain("b", calls))
    assert inspect.iscoroutinefunction(chain.running)  # type: ignore[attr-defined]
    with taddons.context(chain) as tctx:
        await tctx.master.addons.trigger_event(hooks.RunningHook())
        # mitmproxy refuses a coroutine hook from a synchronous trigger, for the chain too
        with pytest.raises(exceptions.AddonManagerError, match="cannot be called from sync"):
            tctx.master.addons.invoke_addon_sync(chain, hooks.RunningHook())
    assert calls == ["a.running", "b.running"]


def test_a_member_with_addons_of_its_own_is_refused() -> None:
    class Parent:
        addons: list[object] = []

    with pytest.raises(ValueError, match="addons of its own"):
        AddonChain(Parent())


class Failing(Recorder):
    def requestheaders(self, flow: Any) -> None:
        raise RuntimeError("a bug in a member")

    async def response(self, flow: Any) -> None:
        raise RuntimeError("a bug after a wait")


async def test_a_failing_member_is_logged_and_the_next_ones_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # mitmproxy's rule for separate addons (safecall): the metrics must still see a flow
    # whose token addon failed.
    calls: list[str] = []
    chain = AddonChain(Failing("a", calls), Counting("b", calls))
    with taddons.context(chain) as tctx:
        flow = tflow.tflow(resp=True)
        await tctx.master.addons.handle_lifecycle(http_hooks.HttpRequestHeadersHook(flow))
        await tctx.master.addons.handle_lifecycle(http_hooks.HttpResponseHook(flow))
    assert calls == ["b.requestheaders", "b.response"]
    assert "Addon error: a bug in a member" in caplog.text
    assert "Addon error: a bug after a wait" in caplog.text


def test_a_refused_option_still_stops_the_chain() -> None:
    class Refusing:
        def configure(self, updated: set[str]) -> None:
            raise exceptions.OptionsError("refused")

    calls: list[str] = []

    class After:
        def configure(self, updated: set[str]) -> None:
            calls.append("after")

    chain = AddonChain(Refusing(), After())
    with pytest.raises(exceptions.OptionsError, match="refused"):
        chain.configure(set())  # type: ignore[attr-defined]
    assert calls == []
