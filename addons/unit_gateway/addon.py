"""The gateway's addons, in the order mitmproxy must run them (``script.py`` hands them to
mitmproxy)."""

from __future__ import annotations

from typing import Any

from unit_gateway.mitm.gate import MitmproxyGate


def make_addons() -> list[Any]:
    gate = MitmproxyGate()
    if gate.cannot_run:
        # Nothing that reaches into mitmproxy is even imported; the gate refuses to start.
        return [gate]

    from unit_gateway.config.core import GatewayCore
    from unit_gateway.lifecycle import InFlight, Lifecycle
    from unit_gateway.metrics.exporter import MetricsExporter
    from unit_gateway.metrics.registry import GatewayMetrics
    from unit_gateway.mitm.chain import AddonChain
    from unit_gateway.mitm.hook_table import HookTable
    from unit_gateway.net.loops import RedirectLoopGuard
    from unit_gateway.redaction.addon import FlowRedaction
    from unit_gateway.tokens.addon import TokenInjector

    metrics = GatewayMetrics()
    core = GatewayCore(metrics)
    redaction = FlowRedaction(core, metrics)
    tokens = TokenInjector(core, metrics, redaction)
    in_flight = InFlight()
    return [
        # First: it checks the running mitmproxy before anything of it is replaced.
        gate,
        # mitmproxy's hooks from a table while the gateway runs. Not in the chain: its done
        # must run when mitmproxy removes the script, and the chain's is asynchronous.
        HookTable(),
        AddonChain(
            core,
            # Before every addon that reads flows: it keeps real secrets out of them.
            redaction,
            # A request counts as in flight (a drain waits for it) before a token is minted.
            in_flight,
            tokens,
            # After the token addon, so a retried request is recorded with its final answer.
            MetricsExporter(core, metrics, redaction),
            RedirectLoopGuard(metrics),
            # Last: its running hook marks the gateway ready, after every other one ran.
            Lifecycle(core, in_flight),
        ),
    ]
