"""The unit-gateway mitmproxy script, shipped in the package:

    mitmdump -s "$(python -c 'import unit_gateway.script as s; print(s.__file__)')" \
        --set unit_gateway_config=config/local.yaml

(``unit-gateway run`` does this.)"""

from unit_gateway.addon import make_addons

addons = make_addons()
