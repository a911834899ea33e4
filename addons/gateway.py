"""The unit-gateway mitmproxy script.

    mitmdump -s addons/gateway.py --set unit_gateway_config=config/local.yaml

loads every unit-gateway addon in the order they must run.
"""

from unit_gateway.chain import AddonChain
from unit_gateway.core import GatewayCore
from unit_gateway.dispatch import HookTable
from unit_gateway.inject import TokenInjector
from unit_gateway.loops import RedirectLoopGuard
from unit_gateway.metrics import GatewayMetrics, MetricsExporter
from unit_gateway.redact import FlowRedaction

metrics = GatewayMetrics()
core = GatewayCore(metrics)
redaction = FlowRedaction(core, metrics)
tokens = TokenInjector(core, metrics, redaction)

addons = [
    # mitmproxy's hooks from a table while the gateway runs (see its module). Not in the chain:
    # its done must run when mitmproxy removes the script, and the chain's is asynchronous.
    HookTable(),
    AddonChain(
        core,
        # Before every addon that reads flows: it keeps real secrets out of them.
        redaction,
        tokens,
        # After the token addon, so a retried request is recorded with its final answer.
        MetricsExporter(core, metrics, tokens),
        RedirectLoopGuard(metrics),
    )
]
