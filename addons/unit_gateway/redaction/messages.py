"""A message's header fields and body redacted in place, the real values kept (in a
:class:`~unit_gateway.redaction.secrets.FlowSecrets`) for :mod:`~unit_gateway.redaction.wire`
to put back. ``count`` is told what each call redacted (the addon's metrics)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from mitmproxy import http
from mitmproxy.net import encoding

from unit_gateway.redaction.engine import Redactor
from unit_gateway.redaction.proxy_auth import _PROXY_CREDENTIALS
from unit_gateway.redaction.secrets import _ENCODING, HeaderSubstitutions
from unit_gateway.redaction.wire import _header_text, _wire_fields

Count = Callable[[Counter[str] | dict[str, int]], None]


def shown_fields(
    redactor: Redactor, fields: tuple[tuple[bytes, bytes], ...], count: Count
) -> tuple[tuple[bytes, bytes], ...]:
    """``fields`` as a flow may show them (the flow walk's view of a Headers it holds)."""
    if redactor.header_fields_are_clean(fields):
        return fields
    # Proxy credentials stay for mitmproxy's proxyauth, which reads them in a hook; the
    # addon takes them out once it has (see _after_proxyauth).
    checked = [f for f in fields if f[0].lower() not in _PROXY_CREDENTIALS]
    counts: Counter[str] = Counter()
    pairs = [(n.decode(*_ENCODING), v.decode(*_ENCODING)) for n, v in checked]
    shown = iter(redactor.redact_headers(pairs, counts=counts))
    count(counts)
    return tuple(
        f
        if f[0].lower() in _PROXY_CREDENTIALS
        else tuple(x.encode(*_ENCODING) for x in next(shown))
        for f in fields
    )


def redact_headers(
    redactor: Redactor,
    headers: http.Headers,
    substitutions: HeaderSubstitutions,
    keep: frozenset[bytes],
    count: Count,
) -> None:
    """Redact header values in place, except headers named (lower-case) in ``keep``;
    remember how to put the real ones back."""
    fields = headers.fields
    if redactor.header_fields_are_clean(fields):
        return  # the usual case: no field needs a second look
    checked = [f for f in fields if f[0].lower() not in keep] if keep else fields
    if not checked or (keep and redactor.header_fields_are_clean(checked)):
        return
    counts: Counter[str] = Counter()
    pairs = [(n.decode(*_ENCODING), v.decode(*_ENCODING)) for n, v in checked]
    redacted = iter(redactor.redact_headers(pairs, counts=counts))
    if not counts:
        return
    new_fields = []
    for name, value in fields:
        if keep and name.lower() in keep:
            new_fields.append((name, value))
            continue
        stored = next(redacted)[1].encode(*_ENCODING)
        if stored != value:
            substitutions.setdefault(name.lower(), {}).setdefault(stored, []).append(value)
        new_fields.append((name, stored))
    headers.fields = tuple(new_fields)
    count(counts)


def redact_body(
    redactor: Redactor, message: http.Message, path: str | None, count: Count
) -> tuple[bytes, bytes] | None:
    """Replace ``message``'s body by a redacted copy (same Content-Encoding); return
    (stored, real) or None when nothing in it is secret."""
    real = message.raw_content
    if not real:
        return None
    headers = message.data.headers
    content_encoding = _header_text(headers.fields, b"content-encoding")
    result = redactor.redact_body(
        real, _header_text(headers.fields, b"content-type"), content_encoding, path=path
    )
    if not result.changed:
        return None
    stored = result.content
    if content_encoding:
        try:
            stored = encoding.encode(stored, content_encoding)
        except ValueError:
            pass  # an encoding mitmproxy cannot write: the summary is kept as it is
    message.data.content = stored
    # keep the flow's Content-Length (if it has one) consistent (replay, HAR)
    headers.fields = _wire_fields(
        headers.fields, {}, {b"content-length": str(len(stored)).encode()}
    )
    count(result.counts)
    return stored, real
