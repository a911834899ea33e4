"""A secret split across the messages of a stream is shown in none of them: whatever the cuts,
at every moment a person could look (each message as it arrives, and the flow once it ended),
and the peers still get every byte."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import tcp
from mitmproxy.test import tflow

from unit_gateway.config.core import GatewayCore
from unit_gateway.redaction import stream_text
from unit_gateway.redaction.addon import FlowRedaction

_MARKER = re.compile(rb"\[[^\[\]]*\]")


def _luhn_digits(length: int) -> str:
    digits = [4, *(secrets.randbelow(10) for _ in range(length - 2))]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = digit * 2 if position % 2 == 0 else digit
        total += value - 9 if value > 9 else value
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


@dataclass
class Secret:
    text: str  # as it stands in the stream
    secret: str  # what no part of may be seen
    fragment: int  # the shortest part of ``secret`` that counts as seen
    digits: bool = False  # compared as digits (separators and markers aside)


def _secrets() -> list[Secret]:
    token = "v2.public." + secrets.token_urlsafe(90)
    jwt = ".".join(
        (
            "eyJ" + secrets.token_urlsafe(18),
            "eyJ" + secrets.token_urlsafe(30),
            secrets.token_urlsafe(32),
        )
    )
    card = _luhn_digits(16)
    spaced = " ".join(card[i : i + 4] for i in range(0, 16, 4))
    area, group, serial = (
        secrets.randbelow(n) + low for n, low in ((899, 100), (89, 10), (8999, 1000))
    )
    ssn = f"{area}-{group}-{serial}"
    password = secrets.token_hex(8).translate(str.maketrans("0123456789", "ghijklmnop"))
    return [
        Secret(token, token.removeprefix("v2.public."), 10),
        Secret(jwt, jwt.removeprefix("eyJ"), 10),
        Secret(spaced, card, 6, digits=True),
        Secret(ssn, ssn.replace("-", ""), 6, digits=True),
        Secret(f"password={password}", password, 8),
    ]


_FILLER = st.text(alphabet="abcdefgh ,;:\n", min_size=0, max_size=30)


def _digits_runs(shown: bytes) -> list[str]:
    """The digit runs a person reads in ``shown`` (markers split runs, they hold no data)."""
    text = _MARKER.sub(b"|", shown).decode("utf-8", "replace")
    return ["".join(re.findall(r"\d", run)) for run in re.split(r"[^\d \-]", text)]


def _seen(secret: Secret, shown: bytes) -> str | None:
    """A part of ``secret`` at least ``fragment`` long that ``shown`` holds, if any."""
    if secret.digits:
        haystacks = _digits_runs(shown)
    else:
        haystacks = [_MARKER.sub(b"|", shown).decode("utf-8", "replace")]
    size = secret.fragment
    for start in range(len(secret.secret) - size + 1):
        part = secret.secret[start : start + size]
        if any(part in haystack for haystack in haystacks):
            return part
    return None


def _redaction() -> FlowRedaction:
    return FlowRedaction(GatewayCore())


def _messages(flow: tcp.TCPFlow, from_client: bool) -> Iterator[bytes]:
    return (m.content for m in flow.messages if m.from_client is from_client)


def _assert_nothing_seen(flow: tcp.TCPFlow, planted: list[Secret], when: str) -> None:
    for from_client in (True, False):
        shown = list(_messages(flow, from_client))
        # each message alone (as printed) and all of them read on (as saved or listed)
        for text in (*shown, b"".join(shown)):
            for secret in planted:
                part = _seen(secret, text)
                assert part is None, f"{when}: {part!r} of {secret.text!r} in {text!r}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_secret_split_anywhere_is_never_shown(data: st.DataObject) -> None:
    planted = _secrets()
    chosen = data.draw(st.lists(st.sampled_from(planted), min_size=1, max_size=3), label="secrets")
    parts = [data.draw(_FILLER)]
    for secret in chosen:
        parts += [" ", secret.text, " ", data.draw(_FILLER)]
    stream = "".join(parts).encode()
    cuts = sorted(
        set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=12), label="cuts"))
    )
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    replies = data.draw(st.lists(st.booleans(), min_size=len(pieces), max_size=len(pieces)))

    redaction = _redaction()
    flow = tflow.ttcpflow(messages=[])
    flow.live = True
    unanswered = b""
    for index, (piece, reply) in enumerate(zip(pieces, replies, strict=True)):
        redaction.reveal(flow)
        flow.messages.append(tcp.TCPMessage(True, piece))
        unanswered += piece
        if reply or index == len(pieces) - 1:  # the peer echoes what it got so far
            flow.messages.append(tcp.TCPMessage(False, unanswered))
            unanswered = b""
        redaction.conceal(flow)
        _assert_nothing_seen(flow, chosen, f"after {piece!r}")
    redaction.reveal(flow)
    redaction.conceal(flow, ended=True)
    _assert_nothing_seen(flow, chosen, "at the end")
    redaction.reveal(flow)
    assert b"".join(_messages(flow, True)) == stream
    assert b"".join(_messages(flow, False)) == stream


def test_a_clean_stream_is_shown_as_it_is_once_it_ended() -> None:
    redaction = _redaction()
    flow = tflow.ttcpflow(messages=[])
    flow.live = True
    pieces = [b"GET / HTTP/1.1\r\n", b"Host: example\r\n", b"X-Request-Id: 12345678", b"9\r\n\r\n"]
    shown = []
    for piece in pieces:
        redaction.reveal(flow)
        flow.messages.append(tcp.TCPMessage(True, piece))
        redaction.conceal(flow)
        shown.append(flow.messages[-1].content)
    # digits at the end might begin a card number: held while nothing follows them
    assert shown == [*pieces[:2], b"X-Request-Id: " + stream_text.HELD, b"9\r\n\r\n"]
    assert [m.content for m in flow.messages] == pieces
    redaction.reveal(flow)
    redaction.conceal(flow, ended=True)
    assert [m.content for m in flow.messages] == pieces


def test_the_end_of_the_newest_message_is_held_until_the_stream_goes_on() -> None:
    redaction = _redaction()
    flow = tflow.ttcpflow(messages=[])
    flow.live = True
    card = _luhn_digits(16)
    flow.messages.append(tcp.TCPMessage(True, f"pay {card[:12]}".encode()))
    redaction.conceal(flow)
    assert flow.messages[0].content == b"pay " + stream_text.HELD
    redaction.reveal(flow)
    flow.messages.append(tcp.TCPMessage(True, f"{card[12:]} now".encode()))
    redaction.conceal(flow)
    assert [m.content for m in flow.messages] == [
        b"pay " + stream_text.SPLIT,
        stream_text.SPLIT + b" now",
    ]


def test_older_messages_are_not_read_again() -> None:
    """A long stream costs each new message a bounded number of readings, not one per
    message before it."""
    calls = 0
    redaction = _redaction()
    read = redaction.redact_data

    def counting(data: bytes) -> bytes | None:
        nonlocal calls
        calls += 1
        return read(data)

    redaction.vault.redact_data = counting
    flow = tflow.ttcpflow(messages=[])
    flow.live = True
    per_message = []
    for n in range(400):
        redaction.reveal(flow)
        flow.messages.append(tcp.TCPMessage(n % 2 == 0, f"line {n} of the log\n".encode()))
        before = calls
        redaction.conceal(flow)
        per_message.append(calls - before)
    assert max(per_message[100:]) <= 2 * stream_text.RECENT
    # a second conceal of the same state reads nothing again
    redaction.reveal(flow)
    before = calls
    redaction.conceal(flow)
    assert calls == before


def test_unreadable_stream_data_is_summarized() -> None:
    redaction = _redaction()
    flow = tflow.ttcpflow(messages=[])
    flow.live = False
    flow.messages.append(tcp.TCPMessage(True, b"ok"))
    redaction.vault.redact_data = lambda data: None
    redaction.conceal(flow)
    assert flow.messages[0].content == stream_text.unreadable(2)
    redaction.reveal(flow)
    assert flow.messages[0].content == b"ok"


def test_held_length() -> None:
    assert stream_text.held_length(b"hello world") == 0
    assert stream_text.held_length(b"id 123") == 0
    assert stream_text.held_length(b"id 1234") == 4
    assert stream_text.held_length(b"card 4111 1111 1111 ") == len(b"4111 1111 1111 ")
    assert stream_text.held_length(b"a eyJhbGci") == len(b"eyJhbGci")
    assert stream_text.held_length(b"x " + b"A" * 20) == 20
    # fullwidth digits and UTF-16 are digits too
    fullwidth = "\uff14\uff11\uff11\uff11"
    assert stream_text.held_length(f"n {fullwidth}".encode()) == len(fullwidth.encode())
    assert stream_text.held_length("n 4111".encode("utf-16-le")) == 8


def test_stream_data_is_read_every_way_a_viewer_reads_it() -> None:
    redaction = _redaction()
    flow = tflow.ttcpflow(messages=[])
    flow.live = False
    token = "v2.public." + secrets.token_urlsafe(60)
    escaped = f"token {token[:2]}\\u002e{token[3:]} end".encode()  # v2\u002epublic...
    latin = f"caf\xe9 {token}".encode("latin-1")  # not UTF-8
    utf16 = f"token {token}".encode("utf-16-le")  # NUL bytes: binary, as a body would be
    for content in (escaped, latin, utf16):
        flow.messages.append(tcp.TCPMessage(False, content))
    redaction.conceal(flow)
    shown = [m.content for m in flow.messages]
    for text in shown[:2]:
        assert token[10:].encode() not in text
    assert b"[token" in shown[0]
    # the unreadable message after it begins with a printable "t": the token may go on there
    assert b"[token" in shown[1] or b"split across messages" in shown[1]
    assert shown[2] == stream_text.unreadable(len(utf16))
    redaction.reveal(flow)
    assert [m.content for m in flow.messages] == [escaped, latin, utf16]
