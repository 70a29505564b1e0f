"""Decompression with a ceiling: no compressed body inflates past a limit in memory.

kombu inflates a message body named by its `compression` header while it builds the
`Message` (`kombu.compression.decompress`, i.e. `zlib.decompress` and friends), in the
worker's main process and before any size check: 1 MiB of zlib became 1 GiB there (and
again in the prefork child it was handed to). `register_bounded_decompression(limit)`
replaces kombu's decoders with streaming ones that stop as soon as the output passes
`limit` and raise `InflateRefused`; kombu keeps that on the message (`message.errors`)
and the worker's consumer sets the message aside (broadcast_engine/vetting_consumer.py). The
stream transport inflates its own zlib envelope with `inflate` too.

The peak cost of a refused bomb is the limit plus one chunk (the output buffer), and of
an accepted body its size twice (the buffer, then the bytes handed on).
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from typing import Protocol, cast

from kombu import compression

# Output taken from the decompressor per step: small next to any limit, large enough that
# a 16 MiB body takes a few hundred steps.
CHUNK_BYTES = 64 * 1024
# zlib's window bits + 32: a zlib or a gzip header, detected (kombu's `zlib` is the former).
_ZLIB_OR_GZIP = zlib.MAX_WBITS | 32


class InflateRefused(ValueError):
    """A compressed body that would inflate past the limit, or is not a whole stream."""


class _Streaming(Protocol):
    """bz2's and lzma's decompressor objects."""

    @property
    def eof(self) -> bool: ...
    @property
    def needs_input(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes | memoryview, max_length: int = -1) -> bytes: ...


def inflate(data: object, method: str, limit: int) -> bytes:
    """`data` decompressed with `method` (`zlib`, `gzip`, `bz2`, `lzma`: see `METHODS`).

    Raises `InflateRefused` when the output would pass `limit` bytes (before more than
    `limit + CHUNK_BYTES` is held), when the stream is truncated or followed by trailing
    bytes, or when it is not valid for the method.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InflateRefused(f"a compressed body must be bytes, not {type(data).__name__}")
    view = memoryview(data).cast("B")
    if method in ("zlib", "gzip"):
        return _inflate_zlib(view, limit)
    if method == "bz2":
        return _inflate_streaming(bz2.BZ2Decompressor(), view, limit, method)
    if method == "lzma":
        return _inflate_streaming(lzma.LZMADecompressor(), view, limit, method)
    raise InflateRefused(f"compression {method!r} is not accepted")


def _inflate_zlib(data: memoryview, limit: int) -> bytes:
    # Input goes in by chunks too: zlib copies what it could not consume yet into
    # `unconsumed_tail` on every call, which for a whole bomb would be the whole input.
    decompressor = zlib.decompressobj(_ZLIB_OR_GZIP)
    out = bytearray()
    offset = 0
    pending: memoryview | bytes = data[:0]
    try:
        while not decompressor.eof:
            if not pending and offset < len(data):
                pending, offset = data[offset : offset + CHUNK_BYTES], offset + CHUNK_BYTES
            chunk = decompressor.decompress(pending, CHUNK_BYTES)
            out += chunk
            if len(out) > limit:
                raise InflateRefused(f"inflates past the {limit}-byte limit")
            pending = decompressor.unconsumed_tail
            if not chunk and not pending and offset >= len(data):
                break  # all given, nothing more comes out: truncated
    except zlib.error as exc:
        raise InflateRefused(f"not a zlib stream ({exc})") from None
    if not decompressor.eof:
        raise InflateRefused("a truncated zlib stream")
    if decompressor.unused_data or pending or offset < len(data):
        raise InflateRefused("bytes after the end of the zlib stream")
    return bytes(out)


def _inflate_streaming(
    decompressor: _Streaming, data: memoryview, limit: int, method: str
) -> bytes:
    out = bytearray()
    offset = 0
    try:
        while not decompressor.eof:
            if decompressor.needs_input:
                if offset >= len(data):
                    break  # all given, and it wants more: truncated
                piece, offset = data[offset : offset + CHUNK_BYTES], offset + CHUNK_BYTES
            else:
                piece = data[:0]
            out += decompressor.decompress(piece, CHUNK_BYTES)
            if len(out) > limit:
                raise InflateRefused(f"inflates past the {limit}-byte limit")
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise InflateRefused(f"not a {method} stream ({exc})") from None
    if not decompressor.eof:
        raise InflateRefused(f"a truncated {method} stream")
    if decompressor.unused_data or offset < len(data):
        raise InflateRefused(f"bytes after the end of the {method} stream")
    return bytes(out)


# kombu's content types (its `compression` header values) -> our method names.
METHODS = {
    "application/x-gzip": "zlib",
    "application/x-bz2": "bz2",
    "application/x-lzma": "lzma",
}


def register_bounded_decompression(limit: int) -> None:
    """Make kombu inflate every compression it knows within `limit` bytes, in this process.

    The three methods of the standard library stream with a ceiling; any other that kombu
    registered (brotli, zstd, when their packages are installed) is refused outright, so
    nothing inflates unbounded. kombu's encoders are kept: compressing is the sender's cost.
    """
    for content_type in compression.encoders():
        # kombu answers (encoder, content type); celery-types' stub says the encoder alone.
        encoder, _ = cast(
            tuple[Callable[[bytes], bytes], str], compression.get_encoder(content_type)
        )
        method = METHODS.get(content_type)
        compression.register(encoder, _decoder(method, content_type, limit), content_type)


def _decoder(method: str | None, content_type: str, limit: int) -> Callable[[bytes], bytes]:
    def decode(body: bytes) -> bytes:
        if method is None:
            raise InflateRefused(f"compression {content_type!r} is not accepted")
        return inflate(body, method, limit)

    return decode
