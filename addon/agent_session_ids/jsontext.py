"""JSON as RFC 8259 has it, for the bodies and header values the addon rewrites, and the JSON path
helpers the rules, the stores and the rewrite share.

Python's json module also reads `NaN`, `Infinity` and `-Infinity`, which are not JSON: a body
holding them is not JSON to a gateway either, so it must pass as sent, not be rewritten."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import AnyStr, cast


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


DECODER = json.JSONDecoder(parse_constant=_not_json)
_WS = re.compile(r"[ \t\n\r]*")
# white space from a position: this pattern matches everywhere (maybe empty), so never None
skip_ws = cast(Callable[..., re.Match[str]], _WS.match)
_WS_CHARS = frozenset(" \t\n\r") | frozenset(b" \t\n\r")  # a bytes object indexes as ints


def loads(text: str | bytes) -> object:
    """json.loads, refusing NaN and Infinity. Raises ValueError (or RecursionError)."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    return DECODER.decode(text)


def dotted(record: object, path: str) -> object:
    """The value at a dotted path of nested JSON objects, or None."""
    value: object = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def closing_brace(text: str | bytes) -> int:
    """Where the top-level object's '}' is: the last character that is no JSON white space."""
    i = len(text) - 1
    while i > 0 and text[i] in _WS_CHARS:
        i -= 1
    return i


def insert_member(text: AnyStr, path: tuple[str, ...], value: str, first: bool, close: int | None = None) -> AnyStr:
    """`text` with the member path[0], which it does not have, added before the object's '}' (at
    `close`; the top-level object's by default), holding the string `value` at `path`: the objects
    between are created. first: the object has no members yet. Every other byte stays."""
    member = json.dumps(value)
    for inner in reversed(path[1:]):
        member = "{" + json.dumps(inner) + ":" + member + "}"
    member = ("" if first else ",") + json.dumps(path[0]) + ":" + member
    if close is None:
        close = closing_brace(text)
    # one join: each '+' would copy the whole body again
    if isinstance(text, str):
        return "".join((text[:close], member, text[close:]))
    view = memoryview(text)
    return b"".join((view[:close], member.encode("utf-8", "surrogatepass"), view[close:]))
