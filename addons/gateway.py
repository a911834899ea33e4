"""The unit-gateway mitmproxy script.

    mitmdump -s addons/gateway.py --set unit_gateway_config=config/local.yaml

loads every unit-gateway addon in the order they must run.
"""

from unit_gateway.core import GatewayCore
from unit_gateway.inject import TokenInjector
from unit_gateway.metrics import GatewayMetrics, MetricsExporter

metrics = GatewayMetrics()
core = GatewayCore(metrics)
tokens = TokenInjector(core, metrics)

addons = [
    core,
    tokens,
    # After the token addon, so a retried request is recorded with its final answer.
    MetricsExporter(core, metrics, tokens),
]
