"""What the gateway's addons share about one flow, so that none reaches into another: the
record of a flow to Unit (the token addon writes it, the metrics addon reads it), and the
interface to the real, unredacted request and response (the redaction addon keeps them)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mitmproxy import http

from unit_gateway.unit_api.routes import OTHER_ROUTE

if TYPE_CHECKING:
    from unit_gateway.config.schema import Upstream


@dataclass(eq=False)
class FlowRecord:
    """A flow to a Unit upstream as the gateway handled it. Nothing secret: it lives as long
    as mitmproxy keeps the flow."""

    environment: str
    #: The route template, or "other" for a path Unit does not have.
    route: str = OTHER_ROUTE
    #: "org", "customer" or "cardholder" for a placeholder; None for the caller's own token.
    identity_kind: str | None = None
    #: Seconds the request waited for a token to be minted.
    mint_seconds: float = 0.0
    #: The gateway answered itself: the request never reached Unit.
    answered_locally: bool = False


_RECORDS: weakref.WeakKeyDictionary[http.HTTPFlow, FlowRecord] = weakref.WeakKeyDictionary()


def open_record(flow: http.HTTPFlow, environment: str) -> FlowRecord:
    """From here on the flow counts as Unit's, whatever becomes of it."""
    record = _RECORDS[flow] = FlowRecord(environment)
    return record


def record_of(flow: http.HTTPFlow) -> FlowRecord | None:
    """The flow's record; None for a flow that was not for Unit."""
    return _RECORDS.get(flow)


class RealValues(Protocol):
    """The request as Unit gets it and the response as the caller gets it. A flow holds only
    redacted values; these are kept aside and read and written only through here."""

    def upstream_of(self, flow: http.HTTPFlow) -> Upstream | None: ...

    def real_request_path(self, flow: http.HTTPFlow) -> str: ...

    def real_request_header(self, flow: http.HTTPFlow, name: str) -> str | None: ...

    def real_request_content(self, flow: http.HTTPFlow) -> bytes | None: ...

    def set_real_request_content(self, flow: http.HTTPFlow, content: bytes) -> None: ...

    def real_request(self, flow: http.HTTPFlow) -> http.Request: ...

    def set_upstream_authorization(self, flow: http.HTTPFlow, value: str) -> None: ...

    def upstream_authorization(self, flow: http.HTTPFlow) -> str | None: ...

    def set_response_timeout(self, flow: http.HTTPFlow, seconds: float) -> None: ...

    def response_timeout(self, flow: http.HTTPFlow) -> float | None: ...

    def real_response(self, flow: http.HTTPFlow) -> http.Response: ...

    def set_real_response(self, flow: http.HTTPFlow, response: http.Response) -> None: ...

    def real_response_content(self, flow: http.HTTPFlow) -> bytes | None: ...

    def set_real_response_content(self, flow: http.HTTPFlow, content: bytes) -> None: ...

    def redact_text(self, text: str) -> str:
        """``text`` as a person may see it (an error detail that quotes a peer)."""
        ...

    def fingerprint(self, credential: str) -> str:
        """The marker that stands for ``credential`` in every output."""
        ...
