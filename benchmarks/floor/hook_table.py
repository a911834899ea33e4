"""mitmdump script: the gateway's hook table and nothing else (a benchmark floor).

The gateway dispatches mitmproxy's hooks from a table instead of walking the addon tree for
every event (``unit_gateway.mitm.hook_table``), once the gate has checked mitmproxy.
proxy_overhead.py loads this script first in every floor, so each floor's cost over this one
is the part of the gateway's own work it runs, and bare mitmdump against this one is what the
table saves.
"""

from unit_gateway.mitm.gate import MitmproxyGate
from unit_gateway.mitm.hook_table import HookTable

addons = [MitmproxyGate(), HookTable()]
