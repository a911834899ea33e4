"""Bounded decompression of HTTP bodies: the codecs mitmproxy decodes (gzip, deflate, brotli,
zstd), never past a limit, so a few kilobytes cannot decode to gigabytes on the event loop.
Used by the redaction engine and the token guard to read bodies."""

from __future__ import annotations

import io
import zlib

import brotli
import zstandard


class _TooLarge(Exception):
    pass


class _TrailingData(Exception):
    pass


def _zlib_decode(data: bytes, wbits: int, limit: int, members: bool) -> bytes:
    out: list[bytes] = []
    total = 0
    while True:
        decompressor = zlib.decompressobj(wbits)
        chunk = decompressor.decompress(data, limit + 1 - total)
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        out.append(chunk)
        tail = decompressor.flush(limit + 1 - total)
        total += len(tail)
        if total > limit:
            raise _TooLarge
        out.append(tail)
        data = decompressor.unused_data
        # a gzip body may be several members back to back (RFC 1952, 2.2)
        if not (members and decompressor.eof and data.startswith(b"\x1f\x8b")):
            if data:
                # Bytes after the stream: a lenient client still reads them (as they are, or
                # as another member), so a body decoded without them is not the whole body.
                raise _TrailingData
            return b"".join(out)


def _gunzip(data: bytes, limit: int) -> bytes:
    return _zlib_decode(data, 16 + zlib.MAX_WBITS, limit, members=True)


def _inflate(data: bytes, limit: int) -> bytes:
    # "deflate" is meant to be zlib-wrapped; some servers send raw deflate instead.
    try:
        return _zlib_decode(data, zlib.MAX_WBITS, limit, members=False)
    except zlib.error:
        return _zlib_decode(data, -zlib.MAX_WBITS, limit, members=False)


def _unbrotli(data: bytes, limit: int) -> bytes:
    out = brotli.Decompressor().process(data, output_buffer_limit=limit + 1)
    if len(out) > limit:
        raise _TooLarge
    return out


def _unzstd(data: bytes, limit: int) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    out: list[bytes] = []
    total = 0
    while True:
        chunk = reader.read(min(1 << 20, limit + 1 - total))
        if not chunk:
            return b"".join(out)
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        out.append(chunk)


_DECODERS = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _inflate,
    "br": _unbrotli,
    "zstd": _unzstd,
}


class UndecodableBody(Exception):
    """A body that cannot be decoded within the limit; the message says why."""


def decode_content(content: bytes, content_encoding: str | None, limit: int) -> bytes:
    """``content`` with its ``Content-Encoding`` undone, never more than ``limit`` bytes: a few
    kilobytes of gzip can decode to gigabytes, and this runs on the event loop."""
    decoded = content
    for coding in reversed([c.strip().lower() for c in (content_encoding or "").split(",")]):
        if coding in ("", "identity"):
            continue
        decoder = _DECODERS.get(coding)
        if decoder is None:
            raise UndecodableBody("unsupported content-encoding")
        try:
            decoded = decoder(decoded, limit)
        except _TooLarge:
            raise UndecodableBody(f"over {limit} bytes decoded") from None
        except _TrailingData:
            raise UndecodableBody(f"{coding} is followed by data it does not hold") from None
        except Exception:  # any failure to decode
            raise UndecodableBody(f"{coding} could not be decoded") from None
    return decoded
