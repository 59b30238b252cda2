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

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future

from ..decoding import PIECE, TooLarge, Unsupported, decode_bounded, decoder_for
from .parse import EventState, Usage, usage_in_tail

__all__ = [
    "PIECE",
    "TooLarge",
    "Unsupported",
    "decode_bounded",
    "decoder_for",
    "SseReader",
    "StreamObserver",
    "TailObserver",
]

MAX_EVENT = 1 << 20  # bytes of one event's data (or one line) kept whole
TAIL = 256 << 10  # bytes kept of a longer one
MAX_DECODED = 256 << 20  # decoded bytes of one answer read for its usage; past it the reading stops
SETTLE_S = 5.0  # how long a finished answer's record waits for its decoding at most


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
    """The ``flow.response.stream`` callable (see the module doc). A compressed stream's chunks
    are decoded and read on `decoding` (the recorder's pool), one chunk after another; `settled()`
    says when all of them were read. Without a pool (a test, a tool) they are read at once, on
    the caller's thread."""

    def __init__(self, encoding: str | None, inner: Callable | None = None, decoding: Executor | None = None) -> None:
        self.inner = inner if callable(inner) else None
        self._decoding = decoding
        self.decode = decoder_for(encoding)  # raises Unsupported
        self.reader = SseReader()
        self.failure: str | None = None
        self.finished = False
        self.bytes = 0
        self.decoded = 0  # bytes the decoder gave (MAX_DECODED at most are read)
        self._queue: deque[bytes] = deque()  # compressed chunks not read yet
        self._lock = threading.Lock()
        self._reading = False  # a task on `decoding` reads the queue
        self._waiters: list[Future] = []

    def __call__(self, chunk: bytes):
        out = self.inner(chunk) if self.inner is not None else chunk
        if self.failure is None and not self.finished:
            self.bytes += len(chunk)
            if self.decode is None:
                self._safely(chunk)  # plain bytes: read at once, as cheap as their own size
            else:
                self._enqueue(chunk)
        return out

    def _safely(self, chunk: bytes) -> None:
        try:
            self._see(chunk)
        except Exception as e:  # the reading stops, the stream goes on
            self.failure = f"{type(e).__name__}: {e}"
            self.reader = SseReader()  # drop what was kept

    def _enqueue(self, chunk: bytes) -> None:
        with self._lock:
            self._queue.append(chunk)
            if self._reading:
                return
            self._reading = True
        if self._decoding is None:
            self._read_queue()
        else:
            self._decoding.submit(self._read_queue)

    def _read_queue(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self.failure is not None or self.finished:
                    self._queue.clear()
                    self._reading = False
                    waiters, self._waiters = self._waiters, []
                    break
                chunk = self._queue.popleft()
            self._safely(chunk)
        for waiter in waiters:
            waiter.set_result(None)

    def settled(self) -> Future:
        """Done when every chunk so far has been read."""
        done: Future = Future()
        with self._lock:
            if self._reading:
                self._waiters.append(done)
                return done
        done.set_result(None)
        return done

    def _see(self, chunk: bytes) -> None:
        if not chunk:  # mitmproxy's end-of-message call
            if self.decode is not None:
                tail = self.decode.flush()
                if tail:
                    self.reader.feed(tail)
            self.reader.finish()
            self.finished = True
            return
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

    def result(self, timeout: float = SETTLE_S) -> Usage:
        """What the stream said so far (all of it once ``finished``), after its chunks were read."""
        try:
            self.settled().result(timeout)
        except TimeoutError:
            self.failure = f"its decoding took more than {timeout:g} s"
            return Usage()
        return self._usage()

    def _usage(self) -> Usage:
        if not self.finished and self.failure is None:
            try:
                self.reader.finish()
            except Exception as e:
                self.failure = f"{type(e).__name__}: {e}"
        return self.reader.state.result()


class TailObserver(StreamObserver):
    """For a JSON answer that is streamed anyway (past ``stream_large_bodies``, or by another
    addon): keeps the head while the whole answer fits, else only the tail, where the usage is."""

    def __init__(self, encoding: str | None, inner: Callable | None = None, decoding: Executor | None = None) -> None:
        super().__init__(encoding, inner, decoding)
        self._kept = bytearray()
        self._whole = True

    def _see(self, chunk: bytes) -> None:
        if not chunk:
            if self.decode is not None:
                self._keep(self.decode.flush())
            self.finished = True
            return
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

    def _usage(self) -> Usage:
        import json

        from .parse import from_json

        data = bytes(self._kept)
        if self._whole:
            try:
                return from_json(json.loads(data))
            except (ValueError, RecursionError):
                return Usage()
        return usage_in_tail(data)
