"""Reading an SSE answer's usage as it streams past, without holding it.

``StreamObserver`` is set as ``flow.response.stream`` in ``responseheaders``. mitmproxy calls it
with each chunk from the gateway (and ``b""`` at the end) and sends on what it returns, at once:
it returns every chunk as it came (or, when it wraps a stream callable another addon set, what
that one returns). On the way it decodes the content-encoding and splits the SSE events, keeping
only the unfinished line and the current event's data, bounded: an event longer than
``MAX_EVENT`` keeps only its last ``TAIL`` bytes, where every format puts its usage. Whatever goes
wrong in the reading stops the reading, never the stream.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

from .parse import EventState, Usage, usage_in_tail

MAX_EVENT = 1 << 20  # bytes of one event's data (or one line) kept whole
TAIL = 256 << 10  # bytes kept of a longer one
PIECE = 256 << 10  # decompressed bytes handled at a time, where the decoder allows a bound


class Unsupported(Exception):
    """A content-encoding this module cannot decode incrementally."""


class _Zlib:
    def __init__(self, wbits: int) -> None:
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

    def flush(self) -> bytes:
        return self._d.flush()


class _Brotli:
    def __init__(self) -> None:
        import brotli  # a mitmproxy dependency

        self._d = brotli.Decompressor()

    def __call__(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield self._d.process(data)

    def flush(self) -> bytes:
        return b""


class _Zstd:
    def __init__(self) -> None:
        try:  # mitmproxy 12: the standard library's (3.14) or its backport
            try:
                from compression import zstd  # type: ignore[import-not-found]
            except ImportError:
                from backports import zstd  # type: ignore[import-not-found,no-redef]
            self._d = zstd.ZstdDecompressor()
            self._bounded = True
        except ImportError:  # mitmproxy 11: zstandard
            import zstandard

            self._d = zstandard.ZstdDecompressor().decompressobj()
            self._bounded = False

    def __call__(self, data: bytes) -> Iterator[bytes]:
        if not self._bounded:
            if data:
                yield self._d.decompress(data)
            return
        while True:
            out = self._d.decompress(data, PIECE)
            data = b""
            if out:
                yield out
            if self._d.needs_input or self._d.eof:
                return

    def flush(self) -> bytes:
        return b""


def decoder_for(encoding: str | None):
    """A callable that turns encoded chunks into decoded pieces; None for no encoding."""
    name = (encoding or "").strip().lower()
    if name in ("", "identity"):
        return None
    if name in ("gzip", "x-gzip"):
        return _Zlib(16 + zlib.MAX_WBITS)
    if name == "deflate":
        return _Zlib(zlib.MAX_WBITS)
    try:
        if name == "br":
            return _Brotli()
        if name == "zstd":
            return _Zstd()
    except ImportError as e:
        raise Unsupported(f"{name} (no decoder: {e})") from None
    raise Unsupported(name)


class SseReader:
    """Splits decoded SSE text into events and hands each event's data to an EventState."""

    def __init__(self) -> None:
        self.state = EventState()
        self._line = bytearray()  # the unfinished line
        self._line_cut = False  # ...whose head was dropped
        self._line_is_data = False
        self._data = bytearray()  # the current event's data
        self._data_cut = False
        self._has_data = False

    def feed(self, text: bytes) -> None:
        line = self._line
        start = 0
        if line:
            nl = text.find(b"\n")
            if nl < 0:
                self._grow_line(text)
                return
            line += text[:nl]
            self._end_line(bytes(line), self._line_cut)
            line.clear()
            self._line_cut = False
            start = nl + 1
        find = text.find
        while True:
            nl = find(b"\n", start)
            if nl < 0:
                break
            self._end_line(text[start:nl], False)
            start = nl + 1
        if start < len(text):
            self._grow_line(text[start:])

    def _grow_line(self, part: bytes) -> None:
        line = self._line
        line += part
        if len(line) > MAX_EVENT:
            if not self._line_cut:
                self._line_is_data = line.startswith(b"data:")
            del line[: len(line) - TAIL]
            self._line_cut = True

    def _end_line(self, line: bytes, cut: bool) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if cut:
            if self._line_is_data:
                self._add_data(line, cut=True)
            return
        if not line:
            self._dispatch()
            return
        if line.startswith(b"data:"):
            value = line[5:]
            self._add_data(value[1:] if value.startswith(b" ") else value, cut=False)

    def _add_data(self, value: bytes, cut: bool) -> None:
        data = self._data
        if self._has_data:
            data += b"\n"
        data += value
        self._has_data = True
        if cut:
            self._data_cut = True
        if len(data) > MAX_EVENT:
            del data[: len(data) - TAIL]
            self._data_cut = True

    def _dispatch(self) -> None:
        if not self._has_data:
            return
        data = bytes(self._data)
        self._data.clear()
        self._has_data = False
        if self._data_cut:
            self._data_cut = False
            self.state.usage.update(usage_in_tail(data))
        else:
            self.state.feed(data)

    def finish(self) -> None:
        if self._line:
            self._end_line(bytes(self._line), self._line_cut)
            self._line.clear()
        self._dispatch()


class StreamObserver:
    """The ``flow.response.stream`` callable (see the module doc)."""

    def __init__(self, encoding: str | None, inner: Callable | None = None) -> None:
        self.inner = inner if callable(inner) else None
        self.decode = decoder_for(encoding)  # raises Unsupported
        self.reader = SseReader()
        self.failure: str | None = None
        self.finished = False
        self.bytes = 0

    def __call__(self, chunk: bytes):
        out = self.inner(chunk) if self.inner is not None else chunk
        if self.failure is None and not self.finished:
            try:
                self._see(chunk)
            except Exception as e:  # noqa: BLE001 - the reading stops, the stream goes on
                self.failure = f"{type(e).__name__}: {e}"
                self.reader = SseReader()  # drop what was kept
        return out

    def _see(self, chunk: bytes) -> None:
        if not chunk:  # mitmproxy's end-of-message call
            if self.decode is not None:
                tail = self.decode.flush()
                if tail:
                    self.reader.feed(tail)
            self.reader.finish()
            self.finished = True
            return
        self.bytes += len(chunk)
        if self.decode is None:
            self.reader.feed(chunk)
        else:
            for piece in self.decode(chunk):
                self.reader.feed(piece)

    def result(self) -> Usage:
        """What the stream said so far (all of it once ``finished``)."""
        if not self.finished and self.failure is None:
            try:
                self.reader.finish()
            except Exception as e:  # noqa: BLE001
                self.failure = f"{type(e).__name__}: {e}"
        return self.reader.state.result()


class TailObserver(StreamObserver):
    """For a JSON answer that is streamed anyway (past ``stream_large_bodies``, or by another
    addon): keeps the head while the whole answer fits, else only the tail, where the usage is."""

    def __init__(self, encoding: str | None, inner: Callable | None = None) -> None:
        super().__init__(encoding, inner)
        self._kept = bytearray()
        self._whole = True

    def _see(self, chunk: bytes) -> None:
        if not chunk:
            if self.decode is not None:
                self._keep(self.decode.flush())
            self.finished = True
            return
        self.bytes += len(chunk)
        if self.decode is None:
            self._keep(chunk)
        else:
            for piece in self.decode(chunk):
                self._keep(piece)

    def _keep(self, piece: bytes) -> None:
        kept = self._kept
        kept += piece
        if len(kept) > MAX_EVENT:
            del kept[: len(kept) - TAIL]
            self._whole = False

    def result(self) -> Usage:
        import json

        from .parse import from_json

        data = bytes(self._kept)
        if self._whole:
            try:
                return from_json(json.loads(data))
            except (ValueError, RecursionError):
                return Usage()
        return usage_in_tail(data)
