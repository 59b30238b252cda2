"""Content-encodings decoded in bounded pieces, so that a compression bomb costs neither memory
nor time: a request body (rewrite) and an answer (usage) are read through these, never through
mitmproxy's own decoding, which builds the whole output at once.

Every decoder yields pieces of about PIECE bytes. zlib, brotli 1.2 and the standard library's
zstd (mitmproxy 12) take an output bound; brotli 1.1 and zstandard (mitmproxy 11) do not, so
their input goes in slices that shrink while the output per slice is large. `finished` says
whether the stream reached its end: a body cut short is not taken for a whole one.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

PIECE = 256 << 10  # decoded bytes handed on at a time
_MAX_SLICE = 64 << 10  # input bytes given at once to a decoder that cannot bound its output


def decoding_pool() -> ThreadPoolExecutor:
    """Threads to decode compressed bodies and answers on, never the event loop: a bomb must not
    hold other flows. Made by each part that decodes (the request's way, the usage recorder)."""
    return ThreadPoolExecutor(2, thread_name_prefix="session-ids-decode")


class TooLarge(Exception):
    """The content decodes to more than the limit (a compression bomb, or just huge)."""


class Unsupported(Exception):
    """A content-encoding with no decoder here."""


class Truncated(ValueError):
    """The content's stream ends before its end marker (cut short)."""


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._d = zlib.decompressobj(wbits)
        self._raw = wbits == zlib.MAX_WBITS  # deflate: zlib-wrapped, or raw as some servers send
        self._started = False

    def __call__(self, data: bytes) -> Iterator[bytes]:
        if self._raw and not self._started and data:
            self._started = True
            try:
                zlib.decompressobj(zlib.MAX_WBITS).decompress(data[:2])
            except zlib.error:
                self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        while data:
            out = self._d.decompress(data, PIECE)
            if out:
                yield out
            data = self._d.unconsumed_tail
            if self._d.eof and self._d.unused_data and self._wbits > zlib.MAX_WBITS:
                data = self._d.unused_data  # gzip: the next member (as gzip.decompress reads them)
                self._d = zlib.decompressobj(self._wbits)

    def flush(self) -> bytes:
        return self._d.flush()

    @property
    def finished(self) -> bool:
        return self._d.eof


class _Sliced:
    """A decoder whose calls cannot bound their output, fed slices of its input: a slice shrinks
    (to one byte) while it decodes to more than PIECE, and grows back while it decodes to little."""

    sliced = True  # a piece is bounded by what one input byte gives: a brotli meta-block, 16 MiB at most

    def __init__(self, step: Callable[[bytes], bytes], finished: Callable[[], bool]) -> None:
        self._step = step
        self._finished = finished
        self._slice = 1  # grows at once on ordinary content

    def __call__(self, data: bytes) -> Iterator[bytes]:
        at = 0
        while at < len(data):
            n = self._slice
            out = self._step(data[at : at + n])
            at += n
            if len(out) > PIECE:
                self._slice = max(1, n >> 3)
            elif len(out) < PIECE >> 3:
                self._slice = min(_MAX_SLICE, n << 1)
            if out:
                yield out

    def flush(self) -> bytes:
        return b""

    @property
    def finished(self) -> bool:
        return self._finished()


class _Brotli:
    def __init__(self) -> None:
        import brotli  # a mitmproxy dependency

        self._d = brotli.Decompressor()

    def __call__(self, data: bytes) -> Iterator[bytes]:
        if data:
            out = self._d.process(data, output_buffer_limit=PIECE)
            if out:
                yield out
        while True:  # what it holds back past the bound (a piece may reach about twice PIECE)
            out = self._d.process(b"", output_buffer_limit=PIECE)
            if not out:
                return
            yield out

    def flush(self) -> bytes:
        return b""

    @property
    def finished(self) -> bool:
        return self._d.is_finished()


def _brotli():
    import brotli

    probe = brotli.Decompressor()
    try:  # brotli 1.2 bounds each call's output; 1.1 (mitmproxy 11) does not
        probe.process(b"", output_buffer_limit=PIECE)
    except TypeError:
        d = brotli.Decompressor()
        return _Sliced(d.process, d.is_finished)
    return _Brotli()


class _Zstd:
    def __init__(self, zstd) -> None:
        self._d = zstd.ZstdDecompressor()

    def __call__(self, data: bytes) -> Iterator[bytes]:
        while not self._d.eof:
            out = self._d.decompress(data, PIECE)
            data = b""
            if out:
                yield out
            if self._d.needs_input:
                return

    def flush(self) -> bytes:
        return b""

    @property
    def finished(self) -> bool:
        return self._d.eof


def _zstd():
    try:  # mitmproxy 12: the standard library's (3.14) or its backport
        try:
            from compression import zstd  # type: ignore[import-not-found]
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        return _Zstd(zstd)
    except ImportError:  # mitmproxy 11: zstandard
        import zstandard

        d = zstandard.ZstdDecompressor().decompressobj()
        return _Sliced(d.decompress, lambda: d.eof)


_DECODERS: dict[str, Callable[[], object]] = {
    "gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "x-gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "deflate": lambda: _Zlib(zlib.MAX_WBITS),
    "br": _brotli,
    "zstd": _zstd,
}


_NO_ENCODING = ("", "identity", "none")


def is_encoded(encoding: str | None) -> bool:
    """Does this content-encoding change the bytes (is there anything to decode)?"""
    return (encoding or "").strip().lower() not in _NO_ENCODING


def decoder_for(encoding: str | None):
    """A callable that turns encoded chunks into decoded pieces (with `flush()` and `finished`);
    None for no encoding. Raises Unsupported."""
    name = (encoding or "").strip().lower()
    if name in _NO_ENCODING:
        return None
    make = _DECODERS.get(name)
    if make is None:
        raise Unsupported(name)
    try:
        return make()
    except ImportError as e:
        raise Unsupported(f"{name} (no decoder: {e})") from None


def decode_bounded(encoding: str | None, data: bytes, limit: int, whole: bool = False) -> bytes:
    """`data` decoded, in bounded pieces. Raises TooLarge past `limit` decoded bytes (a bomb),
    Unsupported for an encoding without a decoder, the decoder's error for a corrupt body, and,
    with `whole`, Truncated when the stream ends before its end marker."""
    decode = decoder_for(encoding)
    if decode is None:
        return data
    out = bytearray()
    for piece in decode(data):
        out += piece
        if len(out) > limit:
            raise TooLarge(f"more than {limit >> 20} MiB decoded")
    out += decode.flush()
    if len(out) > limit:
        raise TooLarge(f"more than {limit >> 20} MiB decoded")
    if whole and not decode.finished:
        raise Truncated(f"its {encoding} stream is cut short")
    return bytes(out)
