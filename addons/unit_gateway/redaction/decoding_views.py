"""What mitmproxy's decoding content views show of bytes the text rules read as text.

The msgpack and protobuf views print numbers the bytes do not spell: a msgpack float64 or
uint64, a protobuf varint or fixed64, in decimal. A card number sent that way is in no text
reading of the body, yet the console (the auto view picks the view by content type) and
mitmweb (any view can be chosen for any body) show it. The redactor reads these views too.
"""

from __future__ import annotations

from collections.abc import Iterator

from mitmproxy import contentviews

#: Views that print values the bytes do not spell. Not the hex views: any bytes' hex shows
#: digit runs, and a hex dump shows what its bytes are, not what they mean.
_VIEWS = ("msgpack", "protobuf")


def decoded_texts(data: bytes) -> Iterator[str]:
    """The text each decoding view shows of ``data`` (the views that cannot read it: none).

    Only bytes that are not all ASCII: a msgpack value that is more than a number under 128
    starts with a byte over 0x7f, and so does a protobuf varint over 127 (its continuation
    bytes). ASCII text read as protobuf often parses (``plain words`` is a fixed64 and a
    varint), and shows 19-digit numbers that pass Luhn one time in ten: a number sent as a
    fixed64 whose eight bytes are all ASCII is left out, with them.
    """
    if data.isascii():
        return
    for name in _VIEWS:
        try:
            view = contentviews.registry[name]
        except KeyError:  # a mitmproxy without the view shows nothing through it
            continue
        try:
            yield view.prettify(data, contentviews.Metadata())
        except Exception:  # the view shows an error, not the data
            continue
