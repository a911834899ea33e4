"""The per-flow secret store: the real values a flow no longer holds, keyed by the flow.

A flow only ever holds redacted values; the real ones live here until its response has gone
out (see :mod:`unit_gateway.redaction.wire` for where they are put back)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mitmproxy import http

if TYPE_CHECKING:
    from unit_gateway.config.schema import Upstream

#: lower-case header name -> {value stored in the flow: the real values it stands for, in
#: field order} (two fields can redact to the same marker: ``X-Data: [redacted:ssn]`` twice)
HeaderSubstitutions = dict[bytes, dict[bytes, list[bytes]]]

_ENCODING = ("utf-8", "surrogateescape")


@dataclass(eq=False)
class FlowSecrets:
    """The real values of one flow to Unit. Never saved, never shown."""

    #: (scheme, host, port) of the Unit upstream the real values may go to.
    destination: tuple[str, str, int]
    #: The ``Authorization`` value Unit gets (the flow keeps the caller's placeholder).
    authorization: str | None = None
    request_headers: HeaderSubstitutions = field(default_factory=dict)
    response_headers: HeaderSubstitutions = field(default_factory=dict)
    #: (path stored in the flow, real path)
    request_path: tuple[str, str] | None = None
    #: (bytes stored in the flow, real raw bytes)
    request_body: tuple[bytes, bytes] | None = None
    response_body: tuple[bytes, bytes] | None = None
    #: The configured upstream, matched once per flow for every addon (see ``upstream_of``);
    #: None for a flow to any other host, which is redacted all the same but gets no token.
    upstream: Upstream | None = None
    #: Seconds Unit has to answer once the request is sent (see ``unit_gateway.net.deadlines``);
    #: None: mitmproxy's own timeouts (any other host).
    response_timeout: float | None = None
    #: time.monotonic() when the whole request had gone to the server.
    sent_at: float | None = None
    timed_out: bool = False


_SECRETS: weakref.WeakKeyDictionary[http.HTTPFlow, FlowSecrets] = weakref.WeakKeyDictionary()
