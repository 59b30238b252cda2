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
MAX_DECODED = 256 << 20  # decoded bytes of one answer read for its usage; past it the reading stops


class TooLarge(Exception):
    """An answer decodes to more than MAX_DECODED bytes (a compression bomb, or just huge)."""


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
        try:  # brotli 1.2 bounds each call's output; 1.1 (mitmproxy 11) does not
            self._d.process(b"", output_buffer_limit=PIECE)
            self._bounded = True
        except TypeError:
            self._bounded = False

    def __call__(self, data: bytes) -> Iterator[bytes]:
        if not self._bounded:  # a chunk's whole output at once, as mitmproxy itself decodes
            if data:
                yield self._d.process(data)
            return
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
        if not self._bounded:  # zstandard: a chunk's whole output at once
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


def decode_bounded(encoding: str | None, data: bytes, limit: int) -> bytes:
    """`data` decoded, in bounded pieces; raises TooLarge past `limit` decoded bytes (a bomb),
    Unsupported for an encoding without a decoder, and the decoder's error for a corrupt body."""
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
    return bytes(out)


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
    """Splits decoded SSE text into events and hands each event's data to an EventState.

    Fast on the long middle of a stream: complete events are looked at a block at a time (what
    arrived since the last event boundary), and a block with none of the usage markers in it is
    dropped with a few C-level searches, never split into lines."""

    def __init__(self) -> None:
        self.state = EventState()
        self._pending = bytearray()  # the unfinished event, after the last boundary
        self._cut = False  # ...whose head was dropped (longer than MAX_EVENT)
        self._seps: tuple[bytes, ...] = (b"\n\n", b"\r\n\r\n")  # one, once the stream's line end is known

    @staticmethod
    def _last_end(data: bytes, seps: tuple[bytes, ...]) -> int:
        """Where the last event boundary in ``data`` ends; -1 if there is none."""
        end = -1
        for sep in seps:
            i = data.rfind(sep)
            if i >= 0 and i + len(sep) > end:
                end = i + len(sep)
        return end

    def feed(self, text: bytes) -> None:
        pending = self._pending
        if len(self._seps) > 1 and b"\n" in text:  # the first line end says which the stream uses
            crlf = b"\r\n" in text or (pending.endswith(b"\r") and text.startswith(b"\n"))
            self._seps = (b"\r\n\r\n",) if crlf else (b"\n\n",)
        end = self._last_end(text, self._seps)
        if end < 0 and pending:  # a boundary across the edge of two chunks
            edge = bytes(pending[-3:])
            end = self._last_end(edge + text[:3], self._seps)
            end = end - len(edge) if end > 0 else -1
        if end <= 0:  # no event ends in this chunk
            pending += text
            self._bound()
            return
        block = bytes(pending) + text[:end] if pending else text[:end]
        pending.clear()
        pending += text[end:]
        cut, self._cut = self._cut, False
        self._bound()
        if cut or self.state.wants(block):
            self._events(block, cut)

    def _bound(self) -> None:
        pending = self._pending
        if len(pending) > MAX_EVENT:
            del pending[: len(pending) - TAIL]
            self._cut = True

    def _events(self, block: bytes, first_cut: bool) -> None:
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        for i, event in enumerate(block.split(b"\n\n")):
            if not event:
                continue
            if i == 0 and first_cut:  # only the tail of a long event: find its usage object
                self.state.usage.update(usage_in_tail(event))
                continue
            data = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
            if data:
                self.state.feed(b"\n".join(d[1:] if d.startswith(b" ") else d for d in data))

    def finish(self) -> None:
        if self._pending:
            block, cut = bytes(self._pending), self._cut
            self._pending.clear()
            self._cut = False
            self._events(block, cut)


class StreamObserver:
    """The ``flow.response.stream`` callable (see the module doc)."""

    def __init__(self, encoding: str | None, inner: Callable | None = None) -> None:
        self.inner = inner if callable(inner) else None
        self.decode = decoder_for(encoding)  # raises Unsupported
        self.reader = SseReader()
        self.failure: str | None = None
        self.finished = False
        self.bytes = 0
        self.decoded = 0  # bytes the decoder gave (MAX_DECODED at most are read)

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
                self._count(piece)
                self.reader.feed(piece)

    def _count(self, piece: bytes) -> None:
        self.decoded += len(piece)
        if self.decoded > MAX_DECODED:
            raise TooLarge(f"the answer decodes to more than {MAX_DECODED >> 20} MiB")

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
                self._count(piece)
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
