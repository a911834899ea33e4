"""The unit-gateway mitmproxy script.

    mitmdump -s addons/gateway.py --set unit_gateway_config=config/local.yaml

loads every unit-gateway addon in the order they must run.
"""

from unit_gateway.core import GatewayCore
from unit_gateway.inject import TokenInjector
from unit_gateway.metrics import GatewayMetrics, MetricsServer

core = GatewayCore()
metrics = GatewayMetrics()

addons = [
    core,
    TokenInjector(core),
    MetricsServer(core, metrics),
]
