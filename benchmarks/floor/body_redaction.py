"""mitmdump script: the gateway's patch point plus the redaction of every response body,
with the gateway's own Redactor and default rules (a benchmark floor).

Every flow the gateway keeps must hold a redacted copy of each Unit response, so this work
is done per request whatever else is made faster. proxy_overhead.py measures it on its own.
"""

from collections.abc import Generator
from typing import Any

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import http as httplayer

from unit_gateway.redaction.engine import Redactor

_original = httplayer.HttpStream.handle_event
_redactor = Redactor()


def _handle_event(
    self: httplayer.HttpStream, event: events.Event
) -> Generator[commands.Command, Any, None]:
    for command in _original(self, event):
        if type(command) is httplayer.HttpResponseHook and command.flow is self.__dict__.get(
            "flow"
        ):
            response = command.flow.response
            if response is not None and response.raw_content:
                _redactor.redact_body(
                    response.raw_content,
                    response.headers.get("content-type"),
                    response.headers.get("content-encoding"),
                    path=command.flow.request.path,
                )
        yield command


httplayer.HttpStream.handle_event = _handle_event  # type: ignore[method-assign]
