"""The unit-gateway mitmproxy script, for a checkout:

mitmdump -s addons/gateway.py --set unit_gateway_config=config/local.yaml
"""

from unit_gateway.addon import make_addons

addons = make_addons()
