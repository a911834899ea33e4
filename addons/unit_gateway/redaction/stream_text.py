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

#: Most bytes of the stream read on either side of a message (up to a line break). A secret
#: longer than this, split across messages, is not recognized by its parts.
CONTEXT = 4096
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
    return f"[stream data redacted: {size} bytes, binary or no clean reading]".encode()


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


def shown_message(
    content: bytes, before: bytes, after: bytes, redact: Redact, alone: bytes | None = None
) -> Shown:
    found = _shown_message(content, before, after, redact, alone)
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


def _shown_message(
    content: bytes, before: bytes, after: bytes, redact: Redact, alone: bytes | None
) -> bytes:
    """``content`` as a person may see it, read with ``before`` and ``after`` (the stream's
    bytes on either side, in the same direction).

    ``content`` alone is redacted; where reading it with its neighbours redacts something
    else (a secret that starts or ends in a neighbour, or spans it), the part of it up to or
    from that point is replaced by :data:`SPLIT`."""
    shown = alone if alone is not None else redact(content)
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


#: id(content) -> (content, content redacted alone): kept by the caller across calls, so a
#: message is read alone once.
AloneCache = dict[int, tuple[bytes, bytes | None]]


class _Stream:
    """One direction's messages, each redacted alone at most once."""

    def __init__(self, contents: Sequence[bytes], redact: Redact, cache: AloneCache) -> None:
        self.contents = contents
        self.redact = redact
        self.cache = cache

    def alone(self, index: int) -> bytes | None:
        content = self.contents[index]
        found = self.cache.get(id(content))
        if found is None or found[0] is not content:
            found = self.cache[id(content)] = (content, self.redact(content))
        return found[1]

    def interacting(self, start: int) -> set[int]:
        """The messages from ``start`` on that may be read differently with their neighbours:
        those in a window around a message boundary (to the nearest line breaks, at most
        :data:`CONTEXT` bytes each way) that redaction changes. Usually none, for the cost of
        reading the boundaries' windows once."""
        before = self.before(start) if start else b""
        parts, owners, bounds = [before], [-1], [len(before)]
        for index in range(start, len(self.contents)):
            content = self.contents[index]
            readable = self.alone(index) is not None
            # An unreadable message is shown as its summary, but a secret may begin or end in
            # the text at its edges: those stand for it, kept apart.
            parts.append(content if readable else _head(content) + b"\n" + _tail(content))
            owners.append(index)
            bounds.append(bounds[-1] + len(parts[-1]))
        joined = b"".join(parts)
        windows: list[list[int]] = []
        for boundary in bounds[:-1]:
            if boundary == 0:
                continue
            low = max(boundary - CONTEXT, joined.rfind(b"\n", 0, boundary) + 1)
            newline = joined.find(b"\n", boundary)
            high = min(boundary + CONTEXT, len(joined) if newline == -1 else newline)
            if windows and low <= windows[-1][1]:
                windows[-1][1] = max(windows[-1][1], high)
            else:
                windows.append([low, high])
        found: set[int] = set()
        for low, high in windows:
            text = joined[low:high]
            if self.redact(text) == text:
                continue
            starts = [0, *bounds[:-1]]
            found.update(
                owner
                for owner, begin, end in zip(owners, starts, bounds, strict=True)
                if owner >= 0 and begin < high and end > low
            )
        return found

    def before(self, index: int) -> bytes:
        """The stream before message ``index`` back to a line break (no detector reads across
        one), an unreadable message, or :data:`CONTEXT` bytes."""
        parts: list[bytes] = []
        size = 0
        for other in range(index - 1, -1, -1):
            content = self.contents[other]
            if self.alone(other) is None:
                parts.append(_tail(content))
                break
            cut = content.rfind(b"\n")
            parts.append(content[cut + 1 :])
            size += len(parts[-1])
            if cut != -1 or size >= CONTEXT:
                break
        return b"".join(reversed(parts))[-CONTEXT:]

    def after(self, index: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        for other in range(index + 1, len(self.contents)):
            content = self.contents[other]
            if self.alone(other) is None:
                parts.append(_head(content))
                break
            cut = content.find(b"\n")
            parts.append(content if cut == -1 else content[:cut])
            size += len(parts[-1])
            if cut != -1 or size >= CONTEXT:
                break
        return b"".join(parts)[:CONTEXT]


#: Bytes -> "." where not printable ASCII: what a detector can read on at an unreadable
#: message's start or end (tokens, JWTs, card numbers and SSNs are printable ASCII).
_UNPRINTABLE = bytes(0x61 if 0x20 <= i <= 0x7E else 0x2E for i in range(256))


def _head(content: bytes) -> bytes:
    edge = content[:CONTEXT]
    end = edge.translate(_UNPRINTABLE).find(b".")
    return edge if end == -1 else edge[:end]


def _tail(content: bytes) -> bytes:
    edge = content[-CONTEXT:]
    return edge[edge.translate(_UNPRINTABLE).rfind(b".") + 1 :]


def unsettled_from(contents: Sequence[bytes]) -> int:
    """The first message whose shown form may still change as the stream goes on: the newest,
    and those before it back to one with a line break (what follows may still join their last
    line), within :data:`CONTEXT` bytes of the end and the :data:`RECENT` newest."""
    newest = len(contents) - 1
    index, following = len(contents), 0
    while index > 0 and following < CONTEXT:
        index -= 1
        following += len(contents[index])
        if index < newest and b"\n" in contents[index]:
            break
    return max(index, len(contents) - RECENT, 0)


def shown_messages(
    contents: Sequence[bytes],
    redact: Redact,
    *,
    open_end: bool,
    start: int = 0,
    cache: AloneCache | None = None,
) -> list[Shown]:
    """What a person may see of ``contents[start:]``, the messages of one direction of a
    stream in order. ``open_end``: the stream may go on, so what could be the start of a
    secret at its end (across the last messages) is held back."""
    stream = _Stream(contents, redact, cache if cache is not None else {})
    interacting = stream.interacting(start)
    held = 0
    if open_end and contents:
        last = len(contents) - 1
        if stream.alone(last) is not None:
            held = held_length(stream.before(last) + contents[last])
    shown: list[Shown] = []
    remaining = sum(len(c) for c in contents[start:])
    for index in range(start, len(contents)):
        content = contents[index]
        after_self = remaining - len(content)
        remaining = after_self
        alone = stream.alone(index)
        if alone is None:
            shown.append(Shown(unreadable(len(content))))
            continue
        if held > after_self:  # the held end of the stream reaches into this message
            keep = max(0, len(content) - (held - after_self))
            if keep:
                visible = shown_message(content[:keep], stream.before(index), b"", redact)
                shown.append(Shown(visible.shown + HELD, visible.withheld))
            else:
                shown.append(Shown(HELD))
        elif index not in interacting:
            shown.append(Shown(alone))
        else:
            before, after = stream.before(index), stream.after(index)
            shown.append(shown_message(content, before, after, redact, alone))
    return shown
