"""The gateway's addons as one node in mitmproxy's addon tree.

For every event, mitmproxy walks the whole tree under a script (script, module, each addon)
and looks each node up for a hook, whether it has one or not. A request has eight events (four
hooks, each followed by mitmproxy's ``update``), and five empty addons under a script cost
about 45 µs of CPU per request more than one (measured on mitmdump, 32 concurrent requests). An
:class:`AddonChain` is the one node mitmproxy sees: it has a method only for the hooks some of
its addons implement, and that method calls them in order, as mitmproxy would have.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mitmproxy import hooks

Handler = Callable[..., Any]


class AddonChain:
    """Addons that run one after another for each hook, shown to mitmproxy as one addon.

    Each hook is called on the addons in their order. A hook that returns an awaitable is
    awaited before the next addon's hook runs (mitmproxy's own rule), so the addons see the
    same order and the same flow state as they would as separate addons.
    """

    def __init__(self, *addons: object) -> None:
        for addon in addons:
            if hasattr(addon, "addons"):
                # Its children would never be called: nothing here walks into them. (The chain
                # keeps no ``addons`` either: mitmproxy would walk into it for every event.)
                raise ValueError(f"{addon!r} has addons of its own; add them to the chain")
        for name in sorted(hooks.all_hooks):
            handlers = [
                getattr(addon, name) for addon in addons if callable(getattr(addon, name, None))
            ]
            if handlers:
                setattr(self, name, _dispatcher(handlers))


def _dispatcher(handlers: Sequence[Handler]) -> Handler:
    """One callable that runs ``handlers`` in order, as mitmproxy runs one hook on addons."""
    if len(handlers) == 1:
        return handlers[0]
    if any(inspect.iscoroutinefunction(handler) for handler in handlers):
        # mitmproxy refuses a coroutine hook in a synchronous trigger: so does this one.
        async def run_all(*args: Any) -> None:
            for handler in handlers:
                await _settled(handler(*args))

        return run_all

    def run_in_order(*args: Any) -> Awaitable[None] | None:
        # The common case stays synchronous: no coroutine unless a hook hands one back.
        for index, handler in enumerate(handlers):
            result = handler(*args)
            if result is not None and inspect.isawaitable(result):
                return _run_rest(result, handlers[index + 1 :], args)
        return None

    return run_in_order


async def _settled(result: Any) -> None:
    if result is not None and inspect.isawaitable(result):
        await result


async def _run_rest(
    pending: Awaitable[Any], rest: Sequence[Handler], args: tuple[Any, ...]
) -> None:
    await pending
    for handler in rest:
        await _settled(handler(*args))
