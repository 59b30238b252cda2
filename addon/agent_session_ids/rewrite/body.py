"""Reading a JSON request body: its top-level members and its conversation, in one validating pass.

An agent's next request on a connection repeats the last one's bytes up to the end of its
conversation list, then adds the new turns and the members after the list. So the next body
whose bytes start the same is read from where the last one's list ended: a memcmp, then a parse
of the new turns and the tail. That is still a full validation of the new body, since the same
bytes parse the same way up to there, in the same parser state (inside the top-level object,
inside the list, after an element). No mitmproxy here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import decoding
from ..jsontext import DECODER as _DECODER
from ..jsontext import skip_ws as _ws
from ..resolution.conversation import Conversation, Tally
from .fields import RewriteError

# the members a conversation list can be in, in the order from_body prefers them
CONVERSATION_KEYS = ("messages", "input", "contents")
MAX_DECODED = 64 << 20  # a compressed body that decodes to more passes as sent


class BodyError(RewriteError):
    """The body cannot be read as a JSON object; the message says why, for the flow comment."""


class Elided:
    """Stands for a conversation list in `members`: it was counted, not kept."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __repr__(self) -> str:
        return f"<list of {self.length}>"


@dataclass(frozen=True)
class Resume:
    """Where the next body of the same conversation can be read from."""

    raw: bytes  # the body this was read from (compared with the next one, never copied)
    at: int  # byte offset just after the list's last element (or its '[' when it was empty)
    key: str  # the conversation list's member
    empty: bool
    head: dict  # the members before the list, and the list itself (Elided)
    tally: Tally
    tail: str = ""  # the text after the list's ']' (often the same again: tools, options)
    tail_members: dict | None = None  # what it read as


@dataclass(frozen=True)
class Body:
    text: str | None  # the whole text (None when read from a Resume: decode raw when needed)
    raw: bytes
    members: dict[str, object]  # top-level members; a conversation list is Elided
    conversation: Conversation | None
    resume: Resume | None  # for the next body on this connection
    resumed: bool = False  # read from the last body's Resume

    def decoded(self) -> str:
        return self.text if self.text is not None else self.raw.decode("utf-8")


def decode_content(raw: bytes, encoding: str | None) -> bytes:
    """A request body's bytes under its content-encoding, decoded in bounded pieces, whole.
    Raises BodyError: past MAX_DECODED (a bomb), cut short, corrupt, or of an unknown encoding."""
    try:
        return decoding.decode_bounded(encoding, raw, MAX_DECODED, whole=True)
    except decoding.TooLarge:
        raise BodyError(f"the body decodes to more than {MAX_DECODED >> 20} MiB") from None
    except decoding.Truncated as e:
        raise BodyError(f"the body cannot be decoded: {e}") from None
    except decoding.Unsupported as e:
        raise BodyError(f"the body's content-encoding {e} cannot be decoded") from None
    except Exception as e:  # each decoder raises its own error for a corrupt stream
        raise BodyError(f"the body cannot be decoded ({type(e).__name__}: {e})") from None


def read_body(raw: bytes, last: Resume | None = None) -> Body:
    """Read `raw`, from `last` when it starts with the same bytes. Raises BodyError."""
    if last is not None and len(raw) > last.at and raw.startswith(memoryview(last.raw)[: last.at]):
        body = _resume(raw, last)
        if body is not None:
            return body
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("the body is not UTF-8 text") from None
    try:
        return _scan(text, raw)
    except BodyError:
        raise
    except (ValueError, RecursionError):
        if not text.lstrip(" \t\n\r").startswith("{"):
            raise BodyError("the body is not a JSON object") from None
        raise BodyError("the body is not valid JSON") from None


def _scan(text: str, raw: bytes) -> Body:
    pos = _ws(text).end()
    if not text.startswith("{", pos):
        raise BodyError("the body is not a JSON object")
    members: dict[str, object] = {}
    lists: dict[str, tuple[Tally, int, bool, int]] = {}  # key -> (tally, end of last element, empty, end of ']')
    duplicates = False
    pos = _ws(text, pos + 1).end()
    while not text.startswith("}", pos):
        if members:
            if not text.startswith(",", pos):
                raise BodyError("the body is not valid JSON (expected ',' or '}')")
            pos = _ws(text, pos + 1).end()
        key, pos = _key(text, pos)
        if key in members:  # a later duplicate wins, in the first one's place (as json.loads does)
            duplicates = True
            lists.pop(key, None)
        if key in CONVERSATION_KEYS and text.startswith("[", pos):
            tally = Tally(gemini=key == "contents")
            pos, last_end, empty, n = _elements(text, pos + 1, tally, need_comma=False, last_end=pos + 1)
            members[key] = Elided(n)
            lists[key] = (tally, last_end, empty, pos)
        else:
            members[key], pos = _DECODER.raw_decode(text, pos)
        pos = _ws(text, pos).end()
    if _ws(text, pos + 1).end() != len(text):
        raise BodyError("the body has data after its JSON object")
    chosen = _chosen(members)
    if chosen is None:
        return Body(text, raw, members, None, None)
    tally, last_end, empty, list_end = lists[chosen]
    resume = None
    if len(lists) == 1 and not duplicates:
        # the members up to the list come with the bytes; those after it are read each time
        keys = list(members)
        split = keys.index(chosen) + 1
        head = {k: members[k] for k in keys[:split]}
        at = last_end if len(raw) == len(text) else len(text[:last_end].encode("utf-8"))
        resume = Resume(raw, at, chosen, empty, head, tally, text[list_end:], {k: members[k] for k in keys[split:]})
    return Body(text, raw, members, tally.conversation(), resume)


def _chosen(members: dict) -> str | None:
    """The member from_body would read the conversation from."""
    for key in CONVERSATION_KEYS:
        if isinstance(members.get(key), (list, Elided)):
            return key
    return None


def _key(text: str, pos: int) -> tuple[str, int]:
    if not text.startswith('"', pos):
        raise BodyError("the body is not valid JSON (expected a member name)")
    key, pos = _DECODER.raw_decode(text, pos)
    pos = _ws(text, pos).end()
    if not text.startswith(":", pos):
        raise BodyError("the body is not valid JSON (expected ':')")
    return key, _ws(text, pos + 1).end()


def _elements(text: str, pos: int, tally: Tally, need_comma: bool, last_end: int) -> tuple[int, int, bool, int]:
    """Read a list's elements from `pos` (after '[' or after an element) up to its ']'. Returns
    (index after ']', end of the last element, whether it had none, how many were read)."""
    n = 0
    empty = not need_comma
    while True:
        pos = _ws(text, pos).end()
        if text.startswith("]", pos):
            return pos + 1, last_end, empty, n
        if need_comma:
            if not text.startswith(",", pos):
                raise BodyError("the body is not valid JSON (expected ',' or ']')")
            pos = _ws(text, pos + 1).end()
        value, pos = _DECODER.raw_decode(text, pos)
        tally.add(value)
        last_end, need_comma, empty = pos, True, False
        n += 1


def _resume(raw: bytes, last: Resume) -> Body | None:
    """Read the rest of `raw` after last.at; None when it must be read whole (not resumable)."""
    try:
        rest = raw[last.at :].decode("utf-8")
    except UnicodeDecodeError:
        return None
    tally = last.tally.copy()
    try:
        pos, last_end, empty, n = _elements(rest, 0, tally, need_comma=not last.empty, last_end=0)
        tail = rest[pos:]
        if last.tail_members is not None and tail == last.tail:
            tail_members: dict | None = last.tail_members  # the same members after the list as last time
        else:
            tail_members = _tail(tail, last.head)
        if tail_members is None:
            return None
    except (ValueError, RecursionError, RewriteError):
        return None  # read whole, for the error message
    head = dict(last.head)
    head[last.key] = Elided(head[last.key].length + n)
    # no new element: last_end is 0, and the list still ends where it did
    at = last.at + (last_end if len(rest) == len(raw) - last.at else len(rest[:last_end].encode("utf-8")))
    resume = Resume(raw, at, last.key, empty and last.empty, head, tally, tail, tail_members)
    return Body(None, raw, {**head, **tail_members}, tally.conversation(), resume, resumed=True)


def _tail(text: str, head: dict) -> dict | None:
    """The members in `text`, what follows the list's ']' up to the end of the body; None when
    they name a member again (read whole, so that the later one wins where it should)."""
    members: dict[str, object] = {}
    pos = 0
    while True:
        pos = _ws(text, pos).end()
        if text.startswith("}", pos):
            break
        if not text.startswith(",", pos):
            return None
        key, pos = _key(text, _ws(text, pos + 1).end())
        if key in CONVERSATION_KEYS or key in head or key in members:
            return None
        members[key], pos = _DECODER.raw_decode(text, pos)
    return members if _ws(text, pos + 1).end() == len(text) else None


class Resumes:
    """The last body's Resume per connection, within a budget of bodies kept (least recent out)."""

    def __init__(self, max_bytes: int = 32 << 20, max_connections: int = 512) -> None:
        self.max_bytes, self.max_connections = max_bytes, max_connections
        self._by_connection: dict[str, Resume] = {}
        self.bytes = 0

    def get(self, connection_id: str) -> Resume | None:
        return self._by_connection.get(connection_id)

    def put(self, connection_id: str, resume: Resume | None) -> None:
        self.forget(connection_id)
        if resume is None or len(resume.raw) > self.max_bytes // 4:
            return
        self._by_connection[connection_id] = resume
        self.bytes += len(resume.raw)
        while self.bytes > self.max_bytes or len(self._by_connection) > self.max_connections:
            self.forget(next(iter(self._by_connection)))

    def forget(self, connection_id: str) -> None:
        old = self._by_connection.pop(connection_id, None)
        if old is not None:
            self.bytes -= len(old.raw)
