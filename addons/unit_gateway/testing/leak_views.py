"""The views of an output the scanner searches: its bytes, what containers hide, its reading.

Containers opened: gzip (any data starting with the gzip magic), mitmproxy flow files (bodies
stored with a ``Content-Encoding`` are compressed on disk) and HAR files (binary bodies and
websocket messages are base64). Hits in a decoded view carry its name and offsets inside it.

As read: decoded as UTF-8, with JSON, JavaScript and Python string escapes, HTML character
references and percent-encoding resolved once, in NFKC (fullwidth digits as digits), without
control and format characters, and with every space and dash as ASCII's. Written independently
of the redaction engine, which must leave no secret in that reading either. A secret found
only there is reported at the location ``<view> as read``.
"""

import base64
import functools
import html
import io
import json
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from urllib.parse import unquote

from mitmproxy import http
from mitmproxy.io import FlowReader

MAX_NESTING = 4
"""How deep containers are opened (a gzip of a flow file whose body is gzip is depth 2)."""

RAW_LOCATION = "raw bytes"
GZIP_MAGIC = b"\x1f\x8b"


type View = tuple[str, bytes]  # (location, data)


def views(data: bytes) -> Iterator[View]:
    yield RAW_LOCATION, data
    yield from _hidden_views(data, prefix="", depth=0)


def _hidden_views(data: bytes, prefix: str, depth: int) -> Iterator[View]:
    """Decoded views of content that a byte search of ``data`` cannot see."""
    if depth >= MAX_NESTING:
        return
    if data.startswith(GZIP_MAGIC):
        unzipped = _gunzip(data)
        if unzipped is not None:
            location = f"{prefix}gunzipped"
            yield location, unzipped
            yield from _hidden_views(unzipped, f"{location} > ", depth + 1)
    elif _looks_like_flow_file(data):
        yield from _flow_file_views(data, prefix, depth)
    elif _looks_like_har(data):
        yield from _har_views(data, prefix, depth)


def _gunzip(data: bytes) -> bytes | None:
    """All gzip members decompressed; a truncated file still yields what it holds."""
    parts: list[bytes] = []
    rest = data
    while rest.startswith(GZIP_MAGIC):
        decompressor = zlib.decompressobj(wbits=31)
        try:
            parts.append(decompressor.decompress(rest))
        except zlib.error:
            break
        if not decompressor.eof:
            break
        rest = decompressor.unused_data
    return b"".join(parts) if parts else None


_TNETSTRING_START = re.compile(rb"\d{1,12}:")


def _looks_like_flow_file(data: bytes) -> bool:
    return _TNETSTRING_START.match(data) is not None


def _flow_file_views(data: bytes, prefix: str, depth: int) -> Iterator[View]:
    flows = []
    try:
        for flow in FlowReader(io.BytesIO(data)).stream():
            flows.append(flow)
    except Exception:
        # Not a flow file after all, or truncated: keep the flows read so far.  The raw bytes
        # are scanned regardless; only compressed bodies need the parsed flows.
        pass
    for index, flow in enumerate(flows):
        location = f"{prefix}flow {index}"
        if isinstance(flow, http.HTTPFlow):
            messages: list[tuple[str, http.Message | None]] = [
                ("request", flow.request),
                ("response", flow.response),
            ]
            for name, message in messages:
                if message is not None and message.raw_content is not None:
                    yield from _body_views(
                        message.raw_content,
                        lambda m=message: m.get_content(strict=False),
                        f"{location} {name} body",
                        depth,
                    )
            if flow.websocket is not None:
                for number, ws_message in enumerate(flow.websocket.messages):
                    # stored verbatim; only content that is itself a container needs opening
                    yield from _hidden_views(
                        ws_message.content,
                        f"{location} websocket message {number} > ",
                        depth + 1,
                    )


def _body_views(
    raw: bytes, decode: Callable[[], bytes | None], location: str, depth: int
) -> Iterator[View]:
    decoded = decode()
    if decoded is not None and decoded != raw:
        # stored compressed: the file's bytes do not show the body
        yield f"{location} (decoded)", decoded
        yield from _hidden_views(decoded, f"{location} (decoded) > ", depth + 1)
    else:
        # stored verbatim (already covered by the raw scan); open it if it is a container
        yield from _hidden_views(raw, f"{location} > ", depth + 1)


def _looks_like_har(data: bytes) -> bool:
    return data[:64].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") and b'"entries"' in data


def _har_views(data: bytes, prefix: str, depth: int) -> Iterator[View]:
    try:
        har = json.loads(data)
        entries = har["log"]["entries"]
    except (ValueError, KeyError, TypeError):
        return
    if not isinstance(entries, list):
        return
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        location = f"{prefix}har entry {index}"
        response = entry.get("response")
        content = response.get("content") if isinstance(response, dict) else None
        if isinstance(content, dict) and content.get("encoding") == "base64":
            yield from _base64_view(content.get("text"), f"{location} response body", depth)
        for number, message in enumerate(entry.get("_webSocketMessages") or []):
            # mitmproxy writes binary messages (opcode 2) base64-encoded
            if isinstance(message, dict) and message.get("opcode") == 2:
                yield from _base64_view(
                    message.get("data"), f"{location} websocket message {number}", depth
                )


def _base64_view(text: object, location: str, depth: int) -> Iterator[View]:
    if not isinstance(text, str):
        return
    try:
        decoded = base64.b64decode(text)
    except ValueError:
        return
    location = f"{location} (base64-decoded)"
    yield location, decoded
    yield from _hidden_views(decoded, f"{location} > ", depth + 1)


# --- as a person reads it --------------------------------------------------------------------

_CODE_ESCAPE = re.compile(
    r"\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})|\\x([0-9a-fA-F]{2})|\\u\{([0-9a-fA-F]{1,6})\}"
)
#: Bytes that make the reading differ from the bytes of an ASCII view.
_READ_HINT = re.compile(rb"[\\&%\x00-\x08\x0e-\x1f\x7f]")


@functools.cache
def _unseen_and_lookalikes() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Control (but line-breaking and tab) and format characters; spaces and dashes other than
    ASCII's. From unicodedata, on first use (planes 0, 1 and 14 hold every one of them)."""
    unseen: list[str] = []
    other: list[str] = []
    for code in [*range(0x10000 * 2), *range(0xE0000, 0xE1000)]:
        char = chr(code)
        category = unicodedata.category(char)
        if (category == "Cc" and char not in "\t\n\r") or category == "Cf":
            unseen.append(char)
        elif code > 0x7F and category in ("Zs", "Pd"):
            other.append(char)

    def klass(chars: list[str]) -> re.Pattern[str]:
        return re.compile("[" + "".join(re.escape(char) for char in chars) + "]")

    return klass(unseen), klass(other)


def reading(data: bytes) -> bytes | None:
    """``data`` as a person reads it (see the module's docstring), or None when that is
    ``data`` itself (ASCII without escapes or control characters)."""
    if data.isascii() and _READ_HINT.search(data) is None:
        return None
    text = data.decode("utf-8", "replace")

    def code_point(match: re.Match[str]) -> str:
        code = int(next(group for group in match.groups() if group), 16)
        return chr(code) if code <= 0x10FFFF else "\ufffd"

    text = unquote(html.unescape(_CODE_ESCAPE.sub(code_point, text)), errors="replace")
    unseen, other = _unseen_and_lookalikes()
    text = unseen.sub("", unicodedata.normalize("NFKC", text))
    text = other.sub(lambda m: "-" if unicodedata.category(m.group()) == "Pd" else " ", text)
    read = text.encode("utf-8", "replace")
    return None if read == data else read
