"""Secret options shown masked wherever mitmproxy shows options.

mitmweb serves every option with its value (``GET /options``) and sends each change to every
open UI (the ``options/update`` message of ``/updates``); both build what they send with
``mitmproxy.optmanager.dump_dicts``, looked up when called. While the gateway runs that
function masks, in the value and the default of each option:

- the whole value of an option whose name says it is secret (``proxyauth``,
  ``upstream_auth``, ``web_password``, ``cert_passphrase``, and any option a later mitmproxy
  or a script adds with such a name): :data:`MASK`;
- in any other option, whatever the gateway's redaction finds in it (a Unit token in a
  ``modify_headers`` rule, a card number in a filter).

Only text is masked: a number or a switch (``key_size``) says nothing secret. Setting an
option (``PUT /options``, ``--set``) is unchanged: mitmproxy keeps and uses the real value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from mitmproxy import optmanager

from unit_gateway.mitm import gate, patches

#: What a secret option's value is shown as (as the proxy password in a flow's metadata).
MASK = "[redacted]"
#: Option names that say their value is a secret (anywhere in the name: ``proxyauth``).
SECRET_NAME = re.compile(r"auth|passw|passphrase|secret|token|key|credential|private", re.I)

_original_dump_dicts: Callable[..., dict[str, dict[str, Any]]] = patches.original(
    optmanager, "dump_dicts"
)

#: Redacts text; None while no gateway runs (mitmproxy's own dump then).
_redact: Callable[[str], str] | None = None


def install(redact_text: Callable[[str], str]) -> bool:
    """Mask secret options, if the gate let the gateway start (then True)."""
    global _redact
    if not gate.approved():
        return False
    patches.install(_PATCHES)
    _redact = redact_text
    return True


def uninstall() -> None:
    global _redact
    _redact = None
    patches.uninstall(_PATCHES)


def masked(name: str, value: Any, redact: Callable[[str], str]) -> Any:
    """``value`` of option ``name`` as it may be shown."""
    if isinstance(value, str):
        if not value:
            return value
        return MASK if SECRET_NAME.search(name) else redact(value)
    if isinstance(value, list | tuple):  # Sequence[str] options
        return type(value)(masked(name, item, redact) for item in value)
    return value


def dump_dicts(opts: Any, keys: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """mitmproxy's dump of options for its UIs, secret values masked."""
    dumped = _original_dump_dicts(opts, keys)
    redact = _redact
    if redact is None:
        return dumped
    for name, option in dumped.items():
        for field in ("value", "default"):
            option[field] = masked(name, option[field], redact)
    return dumped


#: What install replaces in mitmproxy.
_PATCHES: tuple[patches.Patch, ...] = ((optmanager, "dump_dicts", dump_dicts),)
