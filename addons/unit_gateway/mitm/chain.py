"""The gateway's addons as one node in mitmproxy's addon tree.

For every event, mitmproxy walks the whole tree under a script (script, module, each addon)
and looks each node up for a hook, whether it has one or not. A request has eight events (four
hooks, each followed by mitmproxy's ``update``), so each addon under a script costs every
request CPU whether it has hooks or not. An
:class:`AddonChain` is the one node mitmproxy sees: it has a method only for the hooks some of
its addons implement, and that method calls them in order, as mitmproxy would have.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mitmproxy import exceptions, hooks

logger = logging.getLogger(__name__)

Handler = Callable[..., Any]
#: What mitmproxy lets out of a failing hook (its safecall); anything else is logged.
_PASSED_ON = (exceptions.AddonHalt, exceptions.OptionsError)


class AddonChain:
    """Addons that run one after another for each hook, shown to mitmproxy as one addon.

    Each hook is called on the addons in their order. A hook that returns an awaitable is
    awaited before the next addon's hook runs, and a hook that fails is logged and the next
    addon's still runs (mitmproxy's own rules), so the addons see the same order and the same
    flow state as they would as separate addons.
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
                await _settled(_call(handler, args))

        return run_all

    def run_in_order(*args: Any) -> Awaitable[None] | None:
        # The common case stays synchronous: no coroutine unless a hook hands one back.
        for index, handler in enumerate(handlers):
            result = _call(handler, args)
            if result is not None and inspect.isawaitable(result):
                return _run_rest(result, handlers[index + 1 :], args)
        return None

    return run_in_order


def _call(handler: Handler, args: tuple[Any, ...]) -> Any:
    """``handler(*args)`` under mitmproxy's safecall rule: a failure is logged (with the
    traceback) and the next member still runs. Written out, not ``safecall()``: a context
    manager per call is measurable on every hook of every request."""
    try:
        return handler(*args)
    except _PASSED_ON:
        raise
    except Exception as e:
        logger.error(f"Addon error: {e}", exc_info=True)
        return None


async def _settled(result: Any) -> None:
    if result is not None and inspect.isawaitable(result):
        try:
            await result
        except _PASSED_ON:
            raise
        except Exception as e:
            logger.error(f"Addon error: {e}", exc_info=True)


async def _run_rest(
    pending: Awaitable[Any], rest: Sequence[Handler], args: tuple[Any, ...]
) -> None:
    await _settled(pending)
    for handler in rest:
        await _settled(_call(handler, args))
