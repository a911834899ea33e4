"""Log records are redacted whole, tracebacks included, before any handler sees them: the
redaction addon installs :class:`_RedactingFactory` as logging's LogRecord factory."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, Protocol


class TextRedactor(Protocol):
    """The redaction addon, as the factory calls it."""

    def redact_text(self, text: str) -> str: ...


#: mitmweb prints its own access token (``?token=…``) once at start: that URL is for the
#: operator, and it holds no Unit secret.
_UNREDACTED_LOGGERS = frozenset({"mitmproxy.tools.web.master"})

#: A hex dump of wire bytes, as mitmproxy logs a ClientHello it cannot parse (16+ bytes).
_HEX_RUN = re.compile(r"(?<![0-9a-fA-F])(?:[0-9a-fA-F]{2}){16,}(?![0-9a-fA-F])")
HEX_WITH_SECRET = "[redacted: hex bytes that hold a secret]"


def redact_hex(text: str, redact: Callable[[str], str]) -> str:
    """Each hex dump in ``text`` whose bytes hold a secret, replaced whole."""

    def one(match: re.Match[str]) -> str:
        wire = bytes.fromhex(match.group(0)).decode("latin-1")
        return match.group(0) if redact(wire) == wire else HEX_WITH_SECRET

    return _HEX_RUN.sub(one, text)


#: Formats a record's traceback as logging's own formatters (and mitmproxy's) do.
_TRACEBACKS = logging.Formatter()


class _RedactingFactory:
    """LogRecord factory: a record is redacted whole before any handler sees it. Log lines
    can quote raw wire bytes (mitmproxy's own errors), and so can a traceback attached to a
    record (an exception's message, an operator's script that failed on a value)."""

    def __init__(self, previous: Callable[..., logging.LogRecord], redaction: TextRedactor):
        self.previous = previous
        self.redaction = redaction

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        if record.name in _UNREDACTED_LOGGERS:
            return record
        redact = self.redaction.redact_text
        try:
            message = record.getMessage()
        except Exception:
            # A broken format string: logging's own report of it would print the arguments
            # as they are. They are shown (redacted) after the message instead.
            message = f"{record.msg} (unformatted arguments: {record.args!r})"
        if record.exc_info:
            # Handlers format exc_info themselves (mitmproxy's ignore exc_text): the text
            # goes into the message, where it stands in every formatter's output anyway, and
            # the exception (whose frames and arguments hold the raw values) goes.
            message = f"{message}\n{_TRACEBACKS.formatException(record.exc_info)}"
            record.exc_info = None
        # The message is final: handlers that read msg and args see the redacted text only.
        record.msg, record.args = redact_hex(redact(message), redact), ()
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record
