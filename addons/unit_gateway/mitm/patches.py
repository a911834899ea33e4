"""The one way the gateway replaces parts of mitmproxy while it runs, and puts mitmproxy back
exactly as it was when it is done (``patch_point``, ``early_errors`` and ``hook_table`` say
what they replace, and why). Nothing is replaced before the gate has let the gateway start,
and importing a module that defines replacements changes nothing in mitmproxy: what it keeps
of mitmproxy's originals stays here until :func:`install`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from unit_gateway.mitm import gate

#: (the module or class, the name in it, what stands there while the gateway runs)
Patch = tuple[Any, str, Any]

#: mitmproxy's originals as first seen, by (owner, name): None where the owner inherits it.
#: Kept here, not on the owner, until a replacement is installed.
_ORIGINALS: dict[tuple[Any, str], Any] = {}
_MISSING = object()


def _kept(name: str) -> str:
    return f"_unit_gateway_original_{name}"


def _defined(owner: Any, name: str) -> Any:
    """What ``owner`` itself defines as ``name`` before any replacement; None if inherited."""
    kept = owner.__dict__.get(_kept(name), _MISSING)
    if kept is not _MISSING:  # installed: the original went onto the owner with it
        return kept
    key = (owner, name)
    if key not in _ORIGINALS:
        _ORIGINALS[key] = owner.__dict__.get(name)
    return _ORIGINALS[key]


def original(owner: Any, name: str) -> Any:
    """``owner.name`` as mitmproxy defines it, also when the patching module is loaded again
    (a script reload) while its replacement is installed."""
    found = _defined(owner, name)
    # None: inherited (HttpStream's handle_event is Layer's), and uninstall then removes the
    # replacement rather than setting anything
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
        # The original goes onto the owner, beside its replacement: a copy of this module
        # loaded again while it is installed still finds it.
        setattr(owner, _kept(name), _defined(owner, name))
        setattr(owner, name, replacement)


def uninstall(patches: Iterable[Patch]) -> None:
    for owner, name, _ in patches:
        kept = owner.__dict__.get(_kept(name), _MISSING)
        if kept is _MISSING:  # not installed
            continue
        if kept is not None:
            setattr(owner, name, kept)
        elif name in owner.__dict__:
            delattr(owner, name)
        delattr(owner, _kept(name))
