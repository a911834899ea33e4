"""Runs of base64 in text, decoded: a secret a person decodes in a second is still the
secret. The redactor reads them for every detector; the answer check for Unit tokens."""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable

#: A run of base64 (either alphabet) long enough to spell a secret (13 digits take 20).
BASE64_MIN = 20
#: MIME and PEM write base64 in lines (76 or 64 characters), maybe indented (a folded
#: header), maybe escaped (``\\n`` in a JSON string or a repr a log quotes): the lines of a
#: run are read as one when every line but the last has whole groups of four.
_LINE_BREAK = re.compile(r"(?:\r?\n|\\r\\n|\\n)[ \t]*")
_BASE64_RUN = re.compile(
    rf"[A-Za-z0-9+/_-]{{20,}}(?:{_LINE_BREAK.pattern}[A-Za-z0-9+/_-]+)*={{0,2}}"
)
#: The url-safe alphabet's two characters as the standard one's (the same six bits).
_URL_SAFE_AS_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"", b"==", b"=")
#: Bytes -> "a" for a base64 character, "." for any other: a run is then found by a substring
#: search, many times faster than the pattern above on text that has none.
_BASE64_MAP = bytes(
    0x61 if chr(i).isascii() and (chr(i).isalnum() or chr(i) in "+/_-") else 0x2E
    for i in range(256)
)
_BASE64_NEEDLE = b"a" * BASE64_MIN


def may_hold_base64(text: str) -> bool:
    """Whether ``text`` has a run of base64 long enough to be read (a translate and a
    substring search: no generator for the text that has none)."""
    return len(text) >= BASE64_MIN and (
        _BASE64_NEEDLE in text.encode("utf-8", "surrogatepass").translate(_BASE64_MAP)
    )


def base64_runs(text: str) -> Iterable[tuple[int, int, list[str]]]:
    """Each base64 run in ``text`` (start, end) with its readings, the bytes as Latin-1 (every
    byte a character, so an ASCII secret inside binary data reads as itself). A run is read
    from each of its first four characters: it may start mid-word (``id_``, ``/v1/files/``,
    a letter before it), and only one start is on the encoding's groups of four. Either
    alphabet, or both (a path before url-safe base64), reads the same six bits."""
    if not may_hold_base64(text):
        return
    for run in _BASE64_RUN.finditer(text):
        written = run.group().rstrip("=")
        if "\n" in written or "\\" in written:
            lines = _LINE_BREAK.split(written)
            if all(len(line) % 4 == 0 for line in lines[:-1]):
                written = "".join(lines)
            else:  # not one text written in lines: each line on its own
                lone = _LINE_BREAK.sub(lambda m: " " * len(m.group()), run.group())
                for start, end, readings in base64_runs(lone):
                    yield run.start() + start, run.start() + end, readings
                continue
        data = written.encode("ascii").translate(_URL_SAFE_AS_STANDARD)
        readings = []
        for offset in range(min(4, len(data) - BASE64_MIN + 1)):
            part = data[offset:]
            if len(part) % 4 == 1:  # a lone last character decodes to no byte
                part = part[:-1]
            try:
                readings.append(
                    binascii.a2b_base64(part + _PADDING[len(part) % 4]).decode("latin-1")
                )
            except binascii.Error:
                continue
        if readings:
            yield run.start(), run.end(), readings
