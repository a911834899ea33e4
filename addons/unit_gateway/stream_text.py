"""What a person may see of each message of a stream (TCP, UDP, WebSocket).

A sender chooses where its messages end, so a secret can be split across two or more of them
and no part alone looks like one. Each message is therefore read with the text around it in
its direction, and the end of the newest one is held back while the stream may still
complete it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

#: Bytes of the stream read on either side of a message. A secret longer than this, split
#: across messages, is not recognized by its parts.
CONTEXT = 16384
#: The newest messages of a direction are read again as more arrive; an older one keeps what
#: it was last shown as (a hold stays: fail closed).
RECENT = 32

SPLIT = b"[redacted: part of a secret split across messages]"
#: Parts shorter than this that were hidden as part of a split secret are not looked for
#: elsewhere in the flow (they would hide common words).
MIN_WITHHELD = 8
HELD = b"[held: the stream may continue it]"

#: bytes -> the bytes a person may see, or None when no reading of them settles.
Redact = Callable[[bytes], bytes | None]

# What could be the start of a secret a detector needs more of, matched on the reversed end
# of the text (anchored, so linear): a digit run (a card or SSN, in any digits and with any
# separators), a JWT's start, a long run of token characters.
_HELD_DIGITS = re.compile(r"[\W_]{0,3}\d(?:[\W_]{0,3}\d){3,}")
_HELD_JWT = re.compile(r"[\w.-]*Jye")
_HELD_RUN = re.compile(r"[\w.+/=-]{16,}")


def unreadable(size: int) -> bytes:
    return f"[stream data redacted: {size} bytes, no clean reading]".encode()


def held_length(data: bytes) -> int:
    """How many bytes at the end of ``data`` could be the start of a secret."""
    tail = data[-CONTEXT:].decode("utf-8", "surrogateescape")[::-1]
    longest = 0
    for pattern in (_HELD_DIGITS, _HELD_JWT, _HELD_RUN):
        found = pattern.match(tail)
        if found is not None:
            longest = max(longest, found.end())
    if not longest:
        return 0
    return len(tail[:longest][::-1].encode("utf-8", "surrogateescape"))


def _common_prefix(a: bytes, b: bytes) -> int:
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(a: bytes, b: bytes) -> int:
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[len(a) - middle :] == b[len(b) - middle :]:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass(slots=True)
class Shown:
    """A message as shown, and the real parts of it hidden as parts of a split secret."""

    shown: bytes
    withheld: list[bytes] = field(default_factory=list)


def withheld_from(shown: bytes, withheld: Collection[bytes]) -> bytes:
    """``shown`` without the real parts of split secrets found elsewhere in the flow: a part
    hidden in one message is hidden wherever it shows again (an echo, the other direction)."""
    for part in sorted(withheld, key=len, reverse=True):
        if part in shown:
            shown = shown.replace(part, SPLIT)
    return shown


def shown_message(content: bytes, before: bytes, after: bytes, redact: Redact) -> Shown:
    found = _shown_message(content, before, after, redact)
    head, tail = found.startswith(SPLIT), found.endswith(SPLIT)
    if found is SPLIT or (head and tail):
        real = content
    elif head:
        kept = found[len(SPLIT) :]
        real = content[: len(content) - len(kept)] if content.endswith(kept) else content
    elif tail:
        kept = found[: -len(SPLIT)]
        real = content[len(kept) :] if content.startswith(kept) else content
    else:
        return Shown(found)
    return Shown(found, [real] if len(real) >= MIN_WITHHELD else [])


def _shown_message(content: bytes, before: bytes, after: bytes, redact: Redact) -> bytes:
    """``content`` as a person may see it, read with ``before`` and ``after`` (the stream's
    bytes on either side, in the same direction).

    ``content`` alone is redacted; where reading it with its neighbours redacts something
    else (a secret that starts or ends in a neighbour, or spans it), the part of it up to or
    from that point is replaced by :data:`SPLIT`."""
    shown = redact(content)
    if shown is None:
        return unreadable(len(content))
    whole = before + content + after
    whole_shown = redact(whole)
    if shown == content and whole_shown == whole:
        return content
    start, end = 0, len(shown)
    if before:
        joined, apart = redact(before + content), redact(before)
        if joined is None or apart is None:
            return SPLIT
        if joined != apart + shown:
            start = len(shown) - min(len(shown), _common_suffix(joined, apart + shown))
    if after:
        joined, apart = redact(content + after), redact(after)
        if joined is None or apart is None:
            return SPLIT
        if joined != shown + apart:
            end = min(end, _common_prefix(joined, shown + apart))
    if start == 0 and end == len(shown) and before and after:
        # a secret may begin before this message and end after it
        first, last = redact(before), redact(after)
        if whole_shown is None or first is None or last is None:
            return SPLIT
        apart = first + shown + last
        if whole_shown != apart:
            differs_from = _common_prefix(whole_shown, apart) - len(first)
            differs_to = len(apart) - _common_suffix(whole_shown, apart) - len(first)
            if differs_from < len(shown) and differs_to > 0:
                return SPLIT
    if start:  # not from inside a marker
        closing, opening = shown.find(b"]", start), shown.find(b"[", start)
        if closing != -1 and (opening == -1 or closing < opening):
            start = closing + 1
    if end < len(shown):
        opening = shown.rfind(b"[", 0, end)
        if opening != -1 and shown.find(b"]", opening, end) == -1:
            end = opening
    if start >= end:
        return SPLIT
    return (SPLIT if start else b"") + shown[start:end] + (SPLIT if end < len(shown) else b"")


def _before(contents: Sequence[bytes], index: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    for content in reversed(contents[:index]):
        parts.append(content)
        size += len(content)
        if size >= CONTEXT:
            break
    return b"".join(reversed(parts))[-CONTEXT:]


def _after(contents: Sequence[bytes], index: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    for content in contents[index + 1 :]:
        parts.append(content)
        size += len(content)
        if size >= CONTEXT:
            break
    return b"".join(parts)[:CONTEXT]


def unsettled_from(contents: Sequence[bytes]) -> int:
    """The first message whose shown form may still change as the stream goes on: one with
    less than :data:`CONTEXT` bytes after it, or among the :data:`RECENT` newest."""
    index, following = len(contents), 0
    while index > 0 and following < CONTEXT:
        index -= 1
        following += len(contents[index])
    return max(index, len(contents) - RECENT, 0)


def shown_messages(
    contents: Sequence[bytes], redact: Redact, *, open_end: bool, start: int = 0
) -> list[Shown]:
    """What a person may see of ``contents[start:]``, the messages of one direction of a
    stream in order. ``open_end``: the stream may go on, so what could be the start of a
    secret at its end (across the last messages) is held back."""
    held = 0
    if open_end and contents:
        tail = _before(contents, len(contents))
        held = held_length(tail)
    shown: list[Shown] = []
    remaining = sum(len(c) for c in contents[start:])
    for index in range(start, len(contents)):
        content = contents[index]
        after_self = remaining - len(content)
        remaining = after_self
        before = _before(contents, index)
        if held > after_self:  # the held end of the stream reaches into this message
            keep = max(0, len(content) - (held - after_self))
            if keep:
                visible = shown_message(content[:keep], before, b"", redact)
                shown.append(Shown(visible.shown + HELD, visible.withheld))
            else:
                shown.append(Shown(HELD))
        else:
            shown.append(shown_message(content, before, _after(contents, index), redact))
    return shown
