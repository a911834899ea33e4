"""The one way the gateway replaces parts of mitmproxy while it runs, and puts mitmproxy back
exactly as it was when it is done (``patch_point``, ``early_errors`` and ``hook_table`` say
what they replace, and why). Nothing is replaced before the gate has let the gateway start."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from unit_gateway.mitm import gate

#: (the module or class, the name in it, what stands there while the gateway runs)
Patch = tuple[Any, str, Any]


def _kept(name: str) -> str:
    return f"_unit_gateway_original_{name}"


def original(owner: Any, name: str) -> Any:
    """``owner.name`` as mitmproxy defines it, also when the patching module is loaded again
    (a script reload) while its replacement is installed."""
    kept = _kept(name)
    if kept not in owner.__dict__:
        # None: inherited (HttpStream's handle_event is Layer's), and uninstall then removes
        # the replacement rather than setting anything
        setattr(owner, kept, owner.__dict__.get(name))
    found = getattr(owner, kept)
    return found if found is not None else getattr(super(owner, owner), name)


class NotApproved(RuntimeError):
    """Something tried to replace part of mitmproxy before the gate let the gateway start."""


def unpatched(owner: Any, name: str) -> Any:
    """``owner.name`` as mitmproxy defines it, whether or not it is replaced right now."""
    if _kept(name) in getattr(owner, "__dict__", {}):
        return original(owner, name)
    return getattr(owner, name)


def install(patches: Iterable[Patch]) -> None:
    if not gate.approved():
        raise NotApproved("unit-gateway: mitmproxy was not checked (unit_gateway.mitm.gate)")
    for owner, name, replacement in patches:
        original(owner, name)  # kept before it is replaced
        setattr(owner, name, replacement)


def uninstall(patches: Iterable[Patch]) -> None:
    for owner, name, _ in patches:
        kept = getattr(owner, _kept(name))
        if kept is not None:
            setattr(owner, name, kept)
        elif name in owner.__dict__:
            delattr(owner, name)
