"""Where the real values go back: on the wire, and in the copies other addons read.

A flow holds redacted values only; :mod:`unit_gateway.redaction.secrets` keeps the real ones.
``egress`` puts them into the patch point's commands (a private copy of a message, never the
flow's own) when they go to the approved upstream, or to the client.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mitmproxy import http
from mitmproxy.proxy.layers import http as httplayer

from unit_gateway.net.bodies import UndecodableBody, decode_content
from unit_gateway.net.headers import authorization_name, has_header_field
from unit_gateway.redaction.secrets import _ENCODING, _SECRETS, FlowSecrets, HeaderSubstitutions

logger = logging.getLogger(__name__)

#: The most of a real body the gateway decodes to read it itself (see ``real_request_content``).
REAL_CONTENT_LIMIT = 1 << 20


def _make_headers(fields: tuple[tuple[bytes, bytes], ...]) -> http.Headers:
    """Headers from fields that are already bytes pairs, without Headers.__init__'s checks."""
    headers = http.Headers.__new__(http.Headers)
    headers.fields = fields
    return headers


def _wire_fields(
    fields: tuple[tuple[bytes, bytes], ...],
    substitutions: HeaderSubstitutions,
    replace: dict[bytes, bytes] | None = None,
    append: tuple[bytes, bytes] | None = None,
) -> tuple[tuple[bytes, bytes], ...]:
    """``fields`` with the real values put back, in one pass.

    ``replace`` (lower-case name -> value) does what ``headers[name] = value`` does: the first
    field of that name keeps its place and spelling and gets the value, later ones go.
    ``append`` is added at the end when no field has its name (``headers[name] = value`` on a
    header that is absent); its name must be in ``replace``.
    """
    if not substitutions and not replace:
        return fields
    out = []
    done: set[bytes] = set()
    taken: dict[tuple[bytes, bytes], int] = {}  # filled only when a value is put back
    for name, value in fields:
        lowered = name.lower()
        if replace is not None and lowered in replace:
            if lowered not in done:
                done.add(lowered)
                out.append((name, replace[lowered]))
            continue
        if substitutions.get(lowered):
            value = _real_value(substitutions, lowered, value, taken)
        out.append((name, value))
    if append is not None and append[0].lower() not in done:
        out.append(append)
    return tuple(out)


def _real_value(
    substitutions: HeaderSubstitutions,
    lowered: bytes,
    value: bytes,
    taken: dict[tuple[bytes, bytes], int],
) -> bytes:
    """The real value of the next field ``lowered: value`` of a message; ``taken`` counts the
    fields with that stored value already put back, so each gets its own real value."""
    by_value = substitutions.get(lowered)
    reals = by_value.get(value) if by_value else None
    if not reals:
        return value
    index = taken.get((lowered, value), 0)
    taken[(lowered, value)] = index + 1
    return reals[min(index, len(reals) - 1)]  # a field an addon added again: the last one


def _wire_copy(message: Any, fields: tuple[tuple[bytes, bytes], ...]) -> Any:
    """A private copy of a Request/Response for the wire: own headers, shared body. What
    copy.copy does for these classes (they keep their state in __dict__), without the cost of
    copy.copy and Headers() on every message."""
    data = message.data
    real_data = object.__new__(type(data))
    real_data.__dict__.update(data.__dict__)
    real_data.headers = _make_headers(fields)
    real = object.__new__(type(message))
    real.__dict__.update(message.__dict__)
    real.data = real_data
    return real


def _wire_length(stored: Any, body: tuple[bytes, bytes] | None) -> dict[bytes, bytes] | None:
    """``content-length`` of the real body, when the message holds our redacted copy."""
    if body is not None and stored.raw_content is body[0]:
        return {b"content-length": str(len(body[1])).encode()}
    return None


def _upstream_fields(
    request: http.Request, secrets: FlowSecrets
) -> tuple[tuple[bytes, bytes], ...]:
    """The request's header fields as Unit gets them: real values, the injected
    ``Authorization`` and the real body's length. The one definition for the first send and
    the gateway's own retry."""
    replace = _wire_length(request, secrets.request_body) or {}
    append = None
    if secrets.authorization is not None:
        value = secrets.authorization.encode(*_ENCODING)
        append = (authorization_name(request).encode(), value)
        replace[b"authorization"] = value
    return _wire_fields(request.data.headers.fields, secrets.request_headers, replace, append)


def _header_text(fields: tuple[tuple[bytes, bytes], ...], lowered: bytes) -> str | None:
    """What ``headers.get(name)`` returns (values of repeated fields joined by ", "); an
    absent field (the common case) costs one pass over the raw fields, in C."""
    if not has_header_field(fields, lowered):
        return None
    values = [value for name, value in fields if name.lower() == lowered]
    return b", ".join(values).decode(*_ENCODING)


def _approved(secrets: FlowSecrets, request: http.Request, connection: Any) -> bool:
    if secrets.upstream is None and secrets.authorization is None:
        # Not a flow to Unit: only the caller's own values, wherever its request goes.
        return True
    return (request.scheme, request.host, request.port) == secrets.destination and (
        connection.via is not None or connection.address == (request.host, request.port)
    )


def egress(
    stream: httplayer.HttpStream, secrets: FlowSecrets, command: httplayer.SendHttp
) -> httplayer.SendHttp:
    """``command`` as it goes to the wire: with the real values of ``secrets`` where the
    flow holds redacted ones, if its peer may have them."""
    event = command.event
    kind = type(event)
    if command.connection is not stream.context.client:
        if kind is httplayer.RequestHeaders:
            request = event.request  # type: ignore[attr-defined]
            if not _approved(secrets, request, command.connection):
                if secrets.authorization is not None:
                    logger.warning(
                        "unit-gateway: no token sent: %s is not the approved upstream",
                        request.pretty_host,
                    )
                return command
            fields = _upstream_fields(request, secrets)
            if fields is request.data.headers.fields and secrets.request_path is None:
                return command  # nothing of it was redacted or added
            real = _wire_copy(request, fields)
            if secrets.request_path is not None and request.path == secrets.request_path[0]:
                real.data.path = secrets.request_path[1].encode(*_ENCODING)
            return httplayer.SendHttp(
                httplayer.RequestHeaders(event.stream_id, real, event.end_stream),  # type: ignore[attr-defined]
                command.connection,
            )
        if kind is httplayer.RequestEndOfMessage:
            secrets.sent_at = time.monotonic()  # Unit's deadline starts
            return command
        body = secrets.request_body
        if kind is httplayer.RequestData and body is not None and event.data is body[0]:  # type: ignore[attr-defined]
            if _approved(secrets, stream.flow.request, command.connection):
                return httplayer.SendHttp(
                    httplayer.RequestData(event.stream_id, body[1]), command.connection
                )
        return command
    if kind is httplayer.ResponseHeaders:
        if secrets.response_headers or secrets.response_body:
            response = event.response  # type: ignore[attr-defined]
            fields = _wire_fields(
                response.data.headers.fields,
                secrets.response_headers,
                _wire_length(response, secrets.response_body),
            )
            real = _wire_copy(response, fields)
            return httplayer.SendHttp(
                httplayer.ResponseHeaders(event.stream_id, real, event.end_stream),  # type: ignore[attr-defined]
                command.connection,
            )
    elif kind is httplayer.ResponseData:
        body = secrets.response_body
        if body is not None and event.data is body[0]:  # type: ignore[attr-defined]
            return httplayer.SendHttp(
                httplayer.ResponseData(event.stream_id, body[1]), command.connection
            )
    elif kind is httplayer.ResponseEndOfMessage:
        _SECRETS.pop(stream.flow, None)  # the real bytes are not kept past the response
    return command


def real_raw(message: http.Message, body: tuple[bytes, bytes] | None) -> bytes | None:
    """The real raw body, if ``body`` is (stored, real) and the message holds the stored one."""
    if body is not None and message.raw_content is body[0]:
        return body[1]
    return message.raw_content


# The real bodies the gateway reads itself are Unit's token requests and answers, well
# under a kilobyte: the decoding (on the event loop) stops at REAL_CONTENT_LIMIT.
def decoded_body(message: http.Message, raw: bytes | None) -> bytes | None:
    """``raw`` without its Content-Encoding; None past ``REAL_CONTENT_LIMIT`` bytes or
    if it cannot be decoded."""
    if raw is None or len(raw) > REAL_CONTENT_LIMIT:
        return None
    try:
        decoded = decode_content(raw, message.headers.get("content-encoding"), REAL_CONTENT_LIMIT)
    except UndecodableBody:
        return None
    return decoded


def real_request_copy(request: http.Request, found: FlowSecrets) -> http.Request:
    """A copy of ``request`` as Unit gets it; the flow's other values must be revealed."""
    real = request.copy()
    real.headers = _make_headers(_upstream_fields(request, found))
    if found.request_path is not None and request.path == found.request_path[0]:
        real.path = found.request_path[1]
    real.raw_content = real_raw(request, found.request_body)
    return real


def real_response_copy(response: http.Response, found: FlowSecrets | None) -> http.Response:
    """A copy of ``response`` as the caller gets it; the flow's other values must be revealed."""
    fields = response.data.headers.fields
    if found is not None and (found.response_headers or found.response_body):
        fields = _wire_fields(
            fields, found.response_headers, _wire_length(response, found.response_body)
        )
    real = _wire_copy(response, fields)
    if response.data.trailers is not None:
        real.data.trailers = _make_headers(response.data.trailers.fields)
    if found is not None and found.response_body is not None:
        real.data.content = real_raw(response, found.response_body)
    return real
