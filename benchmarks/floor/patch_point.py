"""mitmdump script: the gateway's patch point and nothing else (a benchmark floor).

The gateway sees every event into mitmproxy's HTTP streams and every command out of them by
wrapping ``HttpStream.handle_event`` (see docs/architecture.md). This wraps it the same
way, as a generator that looks at each command and passes it on, so proxy_overhead.py can
measure what the patch point alone costs a request.
"""

from collections.abc import Generator
from typing import Any

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import http as httplayer

_original = httplayer.HttpStream.handle_event


def _handle_event(
    self: httplayer.HttpStream, event: events.Event
) -> Generator[commands.Command, Any, None]:
    flow = self.__dict__.get("flow")
    for command in _original(self, event):
        if type(command) is httplayer.SendHttp and flow is not None:
            pass  # the gateway swaps in the real bytes here
        yield command


httplayer.HttpStream.handle_event = _handle_event  # type: ignore[method-assign]
