"""A place in mitmproxy's addon chain after mitmproxy's own addons and before the tool's.

mitmdump and mitmweb add mitmproxy's default addons first (``mitmproxy.addons.default_addons``:
scripts, and so the gateway, run in the middle of them), then their outputs: the dumper,
mitmweb's view and event store, intercept. Some default addons after the scripts change a
flow: ``upstream_auth`` adds the upstream proxy's ``Proxy-Authorization``, ``modify_headers``
and ``stickyauth``/``stickycookie`` add headers. An addon placed here runs for each event
after all of them and before any output of the tool sees the flow. (``save`` and ``savehar``
are default addons, but they write a flow only at its end, after the events that change it.)

The chain is mitmproxy's (``AddonManager.chain``, which the gate checks); an addon goes in and
out of it with ``AddonManager.register`` and ``remove``, as addons that manage addons do.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import addons
from mitmproxy.addonmanager import AddonManager

from unit_gateway.mitm import gate, hook_table

_default_types: frozenset[type] | None = None


def default_types() -> frozenset[type]:
    """The classes of mitmproxy's default addons (made once: their constructors only set
    fields, ~0.1 ms)."""
    global _default_types
    if _default_types is None:
        _default_types = frozenset(type(addon) for addon in addons.default_addons())
    return _default_types


def add_after_defaults(manager: AddonManager, addon: Any) -> bool:
    """Load ``addon`` and put it right after the last of mitmproxy's default addons (at the
    end of a chain without them), if the gate let the gateway start (then True)."""
    if not gate.approved():
        return False
    manager.register(addon)
    defaults = default_types()
    chain = manager.chain
    index = max((i + 1 for i, top in enumerate(chain) if type(top) in defaults), default=len(chain))
    # In place: an event being dispatched now (a script loads during ``configure``) walks
    # this list, and an addon inserted after the one it is at is visited like the rest.
    chain.insert(index, addon)
    hook_table.forget(manager)  # the table was built without it
    return True


def remove(manager: AddonManager, addon: Any) -> None:
    """Take ``addon`` out of the chain again (mitmproxy calls its ``done``)."""
    if any(top is addon for top in manager.chain):
        manager.remove(addon)
