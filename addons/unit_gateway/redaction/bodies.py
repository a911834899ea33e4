"""Bodies fit to show: what kind a body is (by type and by sniffing), its summary, and the
rules for each kind (forms, multipart parts, JSON, text in every reading)."""

from __future__ import annotations

import codecs
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from unit_gateway.net.bodies import UndecodableBody, decode_content
from unit_gateway.redaction.decoding_views import decoded_texts
from unit_gateway.redaction.json_walk import JsonWalker
from unit_gateway.redaction.markers import FieldMarker
from unit_gateway.redaction.readings import Rules, declared_codecs, reads_ascii_as_ascii, settle
from unit_gateway.redaction.rules import Detectors
from unit_gateway.redaction.urls import UrlRedactor

BodyKind = Literal["empty", "json", "form", "multipart", "text", "binary"]


@dataclass(frozen=True)
class RedactedBody:
    """A body fit to show: decompressed (drop ``Content-Encoding`` when you use it), UTF-8
    for every kind but ``empty``, except text and forms redacted in another reading (written
    back in its encoding: EBCDIC stays EBCDIC), and how many values each rule redacted."""

    content: bytes
    kind: BodyKind
    counts: Mapping[str, int] = field(default_factory=dict)
    #: Whether ``content`` must be shown instead of the original: something was redacted,
    #: or a re-serialized JSON document differs from the original bytes. The original may
    #: hold what the parser dropped (a duplicate key's earlier value), unchecked.
    changed: bool = False

    @property
    def redacted(self) -> bool:
        return bool(self.counts)


#: Body kinds whose shown copy is rebuilt from a parse, not edited in place.
_RESERIALIZED = frozenset({"json", "multipart"})
_JSON_TYPES = frozenset({"application/json", "text/json", "application/vnd.api+json"})
_FORM_TYPE = "application/x-www-form-urlencoded"
_SAFE_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,64}/[a-z0-9!#$&^_.+-]{1,100}")
#: Containers whose content no text rule can see into.
_BINARY_MAGIC = (
    b"%PDF-",
    b"\x89PNG",
    b"\xff\xd8\xff",  # JPEG
    b"GIF8",
    b"PK\x03\x04",  # zip, docx, xlsx
    b"II*\x00",  # TIFF
    b"MM\x00*",
    b"RIFF",  # WebP, WAV, AVI
    b"\x1f\x8b",  # a gzip file that is the content, not its encoding
    b"\xd0\xcf\x11\xe0",  # MS Office (OLE)
    b"%!PS",
)
#: C0 controls other than whitespace, backspace and escape, plus DEL: rare in text.
_CONTROL_BYTES = bytes(b for b in range(0x20) if b not in b"\t\n\r\f\b\x1b") + b"\x7f"
_MAX_MULTIPART_DEPTH = 4
#: Text that is not JSON is read every way a viewer may read it, on the event loop: past this
#: size (about a quarter of a second of reading) it is shown as its summary.
MAX_TEXT_READ_BYTES = 512 * 1024


class _TooMuchText(Exception):
    """A multipart body's parts read as text outgrew MAX_TEXT_READ_BYTES."""


_DISPOSITION_PARAM = re.compile(
    r""";\s*(?P<name>[A-Za-z*-]+)\s*=\s*(?P<value>"(?:[^"\\]|\\.)*"|[^;]*)""", re.DOTALL
)


def _parse_content_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """(lower-case media type or "", parameters with lower-case names)."""
    if not content_type:
        return "", {}
    media, _, rest = content_type.partition(";")
    params: dict[str, str] = {}
    for item in rest.split(";"):
        name, eq, value = item.partition("=")
        if eq:
            params[name.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), params


def looks_binary(data: bytes) -> bool:
    """NUL anywhere, or more than 1 in 10 bytes a control character. Invalid UTF-8 alone is
    not binary: it still gets the text rules over a replacement-decoded view."""
    if data.startswith(_BINARY_MAGIC) or b"\x00" in data:
        return True
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    return controls * 10 > len(data)


def _starts_like_json(data: bytes) -> bool:
    head = data[:64].lstrip(b" \t\r\n")
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :].lstrip(b" \t\r\n")
    return head[:1] in (b"{", b"[")


class BodyRedactor:
    """The body rules, with what they need of the Redactor: ``binary_routes`` and
    ``is_binary_type`` say which bodies are documents (shown as a summary); ``text_rules``
    is ``Redactor.redact_text``."""

    def __init__(
        self,
        max_body_bytes: int,
        binary_routes: re.Pattern[str] | None,
        is_binary_type: Callable[[str], bool],
        urls: UrlRedactor,
        json_walker: JsonWalker,
        detectors: Detectors,
        field_marker: FieldMarker,
        text_rules: Rules,
    ) -> None:
        self._max_body_bytes = max_body_bytes
        self._binary_routes = binary_routes
        self._is_binary_type = is_binary_type
        self._urls = urls
        self._json = json_walker
        self._detectors = detectors
        self._field_marker = field_marker
        self._text_rules = text_rules

    def redact(
        self,
        content: bytes,
        content_type: str | None,
        content_encoding: str | None,
        *,
        path: str | None = None,
    ) -> RedactedBody:
        """A body fit to show. ``path`` (the request path, query or not) enables the
        route-based document summaries; without it only content types and sniffing apply."""
        counts: Counter[str] = Counter()
        if not content:
            return RedactedBody(b"", "empty", {})
        media_type, params = _parse_content_type(content_type)
        try:
            decoded = decode_content(content, content_encoding, self._max_body_bytes)
        except UndecodableBody as e:  # show nothing of it
            return self._summary(media_type, len(content), counts, "body", str(e))
        route = path.partition("?")[0] if path else None
        out, kind = self._redact_decoded(decoded, media_type, params, counts, route, 0)
        if kind != "binary" and self.views_show_a_secret(out):
            note = "a content view decodes it to a secret"
            return self._summary(media_type, len(content), counts, "body", note)
        changed = bool(counts) or (kind in _RESERIALIZED and out != decoded)
        return RedactedBody(out, kind, dict(counts), changed)

    def views_show_a_secret(self, shown: bytes) -> bool:
        """Whether a decoding content view of ``shown`` shows what a detector finds."""
        return any(not self._detectors.finds_nothing_in(text) for text in decoded_texts(shown))

    def _summary(
        self, media_type: str, size: int, counts: Counter[str], what: str, note: str = ""
    ) -> RedactedBody:
        counts["binary"] += 1
        shown = media_type if _SAFE_MEDIA_TYPE.fullmatch(media_type) else "unknown type"
        text = f"[binary {what} redacted: {shown}, {size} bytes{', ' + note if note else ''}]"
        return RedactedBody(text.encode(), "binary", dict(counts), True)

    def _redact_decoded(
        self,
        data: bytes,
        media_type: str,
        params: dict[str, str],
        counts: Counter[str],
        route: str | None,
        depth: int,
    ) -> tuple[bytes, BodyKind]:
        what = "body" if depth == 0 else "part"

        def summary(note: str = "") -> tuple[bytes, BodyKind]:
            return self._summary(media_type, len(data), counts, what, note).content, "binary"

        if len(data) > self._max_body_bytes:
            return summary(f"over {self._max_body_bytes} bytes")
        is_json_type = media_type in _JSON_TYPES or media_type.endswith("+json")
        # A document route answers JSON only for errors and metadata, which are safe to parse.
        if (
            route is not None
            and not is_json_type
            and self._binary_routes is not None
            and self._binary_routes.fullmatch(route)
        ):
            return summary()
        if self._is_binary_type(media_type):
            return summary()
        if media_type == _FORM_TYPE and not looks_binary(data):
            declared = declared_codecs(data, media_type, params)
            return self._settled(data, declared, self._urls.redact_pairs, "form", counts, summary)
        if media_type.startswith("multipart/") and depth < _MAX_MULTIPART_DEPTH:
            try:
                multipart = self._redact_multipart(data, params, counts, depth)
            except _TooMuchText:
                return summary(f"over {MAX_TEXT_READ_BYTES} bytes of text")
            if multipart is not None:
                # Delimiter lines, and bytes outside the parts that are not UTF-8, are kept as
                # sent; the rest was read as UTF-8: read the whole in every way.
                return self._settled(
                    multipart, (), self._detectors.scan, "multipart", counts, summary
                )
        if looks_binary(data):
            return summary()
        if is_json_type or _starts_like_json(data):
            redacted_json = self._json.redact(data, counts)
            if redacted_json is not None:
                if not params.get("charset"):
                    return redacted_json, "json"  # as Unit sends it: nothing more to read
                # The walk saw the UTF-8 reading (see readings()); a charset may show more.
                declared = declared_codecs(redacted_json, media_type, params)
                if declared is not None and all(
                    codec == "utf-8" or (redacted_json.isascii() and reads_ascii_as_ascii(codec))
                    for codec in declared
                ):
                    return redacted_json, "json"
                shown, kind = self._settled(
                    redacted_json, declared, self._detectors.scan, "text", counts, summary
                )
                return shown, "json" if shown is redacted_json else kind
        # Plain text, malformed JSON, invalid UTF-8, a charset its bytes are not in: the text
        # rules over every reading of it.
        declared = declared_codecs(data, media_type, params)
        return self._settled(data, declared, self._text_rules, "text", counts, summary)

    def _settled(
        self,
        content: bytes,
        declared: Sequence[str] | None,
        rules: Rules,
        kind: BodyKind,
        counts: Counter[str],
        summary: Callable[[str], tuple[bytes, BodyKind]],
    ) -> tuple[bytes, BodyKind]:
        """``settle``, or the summary when the charset or the readings leave doubt."""
        if len(content) > MAX_TEXT_READ_BYTES:
            return summary(f"over {MAX_TEXT_READ_BYTES} bytes of text")
        if declared is None:
            return summary("charset not readable")
        shown = settle(content, declared, rules, counts)
        if shown is None:
            return summary("no clean reading")
        return shown, kind

    def _redact_multipart(
        self, data: bytes, params: dict[str, str], counts: Counter[str], depth: int
    ) -> bytes | None:
        """Each part redacted by name and content type; None if this is not multipart."""
        boundary = params.get("boundary", "")
        if not boundary or len(boundary) > 200:
            return None
        delimiter = b"--" + boundary.encode("latin-1", "replace")
        position = data.find(delimiter)
        if position == -1 or (position > 0 and data[position - 1 : position] != b"\n"):
            return None
        found: Counter[str] = Counter()

        def outside_parts(raw: bytes) -> bytes:
            # Not UTF-8: kept as sent, for the reading of the whole body (settle) to read
            # in its own encoding; re-encoding a replacement-decoded copy would garble it.
            if len(raw) > MAX_TEXT_READ_BYTES:
                raise _TooMuchText
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw
            return self._text_rules(text, found).encode()

        out = [outside_parts(data[:position])]
        shown = len(out[0])
        while True:
            if shown > MAX_TEXT_READ_BYTES:  # the whole would be a summary: read no more
                raise _TooMuchText
            after = position + len(delimiter)
            if data.startswith(b"--", after):  # the close delimiter; the epilogue follows
                out.append(delimiter + b"--" + outside_parts(data[after + 2 :]))
                break
            line_end = data.find(b"\n", after)
            if line_end == -1:
                return None
            next_delimiter = data.find(b"\n" + delimiter, line_end)
            if next_delimiter == -1:
                return None  # unterminated: fall back to the text rules over the whole body
            part_end = next_delimiter
            if data[next_delimiter - 1 : next_delimiter] == b"\r":
                part_end -= 1
            part_end = max(part_end, line_end + 1)  # an empty part: nothing between the lines
            out.append(data[position : line_end + 1])
            out.append(self._redact_part(data[line_end + 1 : part_end], found, depth))
            out.append(data[part_end : next_delimiter + 1])
            shown += len(out[-3]) + len(out[-2]) + len(out[-1])
            position = next_delimiter + 1
        counts.update(found)
        return b"".join(out)

    def _redact_part(self, part: bytes, counts: Counter[str], depth: int) -> bytes:
        crlf, lf = part.find(b"\r\n\r\n"), part.find(b"\n\n")
        if crlf != -1 and (lf == -1 or crlf < lf):
            head, separator, body = part[:crlf], b"\r\n\r\n", part[crlf + 4 :]
        elif lf != -1:
            head, separator, body = part[:lf], b"\n\n", part[lf + 2 :]
        else:  # no header block ends here: a part with headers only, or garbage
            head, separator, body = part, b"", b""
        if len(head) > MAX_TEXT_READ_BYTES:  # every line is read with the text rules
            raise _TooMuchText
        name = filename = None
        content_type = "text/plain"
        transfer_encoding = ""
        header_lines: list[str] = []
        for line in head.decode("utf-8", "replace").splitlines():
            header, colon, value = line.partition(":")
            lowered = header.strip().lower()
            if colon and lowered == "content-disposition":
                disposition = value
                for param in _DISPOSITION_PARAM.finditer(value):
                    param_name = param.group("name").lower()
                    param_value = param.group("value").strip('"')
                    if param_name == "name":
                        name = param_value
                    elif param_name in ("filename", "filename*"):
                        filename = param_value
                        # a file's name can name its owner: keep only the extension
                        extension = re.search(r"\.[A-Za-z0-9]{1,8}$", param_value)
                        hidden = f'"[redacted]{extension.group() if extension else ""}"'
                        disposition = disposition.replace(param.group(), f"; {param_name}={hidden}")
                line = header + colon + self._detectors.scan(disposition, counts)
            elif colon and lowered == "content-type":
                content_type = value.strip()
                line = self._text_rules(line, counts)
            else:
                if colon and lowered == "content-transfer-encoding":
                    transfer_encoding = value.strip().lower()
                line = self._text_rules(line, counts)
            header_lines.append(line)
        new_head = "\r\n".join(header_lines) if b"\r\n" in separator else "\n".join(header_lines)
        media_type, params = _parse_content_type(content_type)
        label = self._urls.param_label(name) if name is not None else None
        if not body:
            new_body = body
        elif filename is not None or transfer_encoding not in ("", "7bit", "8bit", "binary"):
            # uploaded files are documents; base64 or quoted-printable hides text from rules
            new_body = self._summary(media_type, len(body), counts, "part").content
        elif label is not None:
            marker = self._field_marker(label, body.decode("utf-8", "replace"), counts)
            new_body = marker.encode("utf-8")
        else:
            new_body, _ = self._redact_decoded(body, media_type, params, counts, None, depth + 1)
        return new_head.encode("utf-8") + separator + new_body
