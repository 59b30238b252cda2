"""The rewrite: values rendered from a session, set into headers and JSON bodies. Pure.

A JSON body is edited by splicing: only the bytes of the field that is set change. Every other
byte (key order, spacing, numbers such as 1e400 or -0.0, unicode escapes) stays as the client
sent it. A body that is not a JSON object, or has the edited key twice, is not touched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..jsontext import DECODER as _DECODER
from ..jsontext import insert_member
from ..jsontext import skip_ws as _ws
from ..rules import SetAction

_HEADER_UNSAFE = re.compile(r"[^\x20-\x7e]+")
_BODY_UNSAFE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]+")


def blank(value: object) -> bool:
    """An empty client field (null, "", white space) says no session: it is filled, not kept."""
    return value is None or (isinstance(value, str) and not value.strip())


class RewriteError(Exception):
    """Why a rule could not rewrite this request (logged once; the request passes unchanged)."""


def render(action: SetAction, fields: dict[str, str]) -> str:
    """The value an action sets: its template over the session, made safe, within max_length."""
    value = action.value.render(fields)
    value = _HEADER_UNSAFE.sub("-", value) if action.target == "header" else _BODY_UNSAFE.sub("", value)
    if action.max_length is not None and len(value) > action.max_length:
        value = value[-action.max_length :] if action.keep == "last" else value[: action.max_length]
    # a header value must not start or end with white space (HTTP/2 refuses it)
    return value.strip() if action.target == "header" else value


@dataclass
class Member:
    key: str
    value: object
    start: int  # where the value's text starts
    end: int  # just after the value's text


def scan_object(text: str, pos: int) -> tuple[list[Member], int]:
    """The members of the JSON object starting at text[pos] == '{', and the index after its '}'."""
    if pos >= len(text) or text[pos] != "{":
        raise RewriteError("the body is not a JSON object")
    members: list[Member] = []
    pos = _ws(text, pos + 1).end()
    if text.startswith("}", pos):
        return members, pos + 1
    try:
        while True:
            if not text.startswith('"', pos):
                raise RewriteError("the body is not valid JSON (expected a key)")
            key, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
            pos = _ws(text, pos).end()
            if not text.startswith(":", pos):
                raise RewriteError("the body is not valid JSON (expected ':')")
            start = _ws(text, pos + 1).end()
            value, end = _DECODER.raw_decode(text, start)
            members.append(Member(key, value, start, end))
            pos = _ws(text, end).end()
            if text.startswith(",", pos):
                pos = _ws(text, pos + 1).end()
                continue
            if text.startswith("}", pos):
                return members, pos + 1
            raise RewriteError("the body is not valid JSON (expected ',' or '}')")
    except (ValueError, RecursionError) as e:
        if isinstance(e, RewriteError):
            raise
        raise RewriteError("the body is not valid JSON") from None


def set_field(
    text: str, path: tuple[str, ...], value: str, if_present: str, top: dict | None = None
) -> tuple[str, object, bool]:
    """Set the string `value` at a dotted `path` of the JSON object in `text`.

    Returns (new_text, previous_value_or_None, changed). Intermediate objects are created.
    `top`, the parsed object, lets the common cases skip scanning the text again."""
    if top is not None:
        if path[0] not in top:
            return insert_member(text, path, value, not top), None, True
        if len(path) == 1 and ((if_present == "keep" and not blank(top[path[0]])) or top[path[0]] == value):
            return text, top[path[0]], False
    pos = _ws(text).end()
    for depth, key in enumerate(path):
        members, end = scan_object(text, pos)
        same = [m for m in members if m.key == key]
        if len(same) > 1:
            raise RewriteError(f"the body has the key '{key}' more than once")
        last = depth == len(path) - 1
        if not same:
            return insert_member(text, path[depth:], value, not members, end - 1), None, True
        m = same[0]
        if last:
            if if_present == "keep" and not blank(m.value):
                return text, m.value, False
            if m.value == value:
                return text, m.value, False
            return "".join((text[: m.start], json.dumps(value), text[m.end :])), m.value, True
        if not isinstance(m.value, dict):
            raise RewriteError(f"the body's '{key}' is not an object, so '{'.'.join(path)}' cannot be set")
        pos = m.start
    raise AssertionError("unreachable")


def set_header(
    headers, name: str, value: str, if_present: str, json_key: str | None = None, max_entries: int | None = None
) -> tuple[str | None, bool]:
    """Set a header on a mitmproxy Headers object; returns (previous_value, changed).

    With json_key, the header holds a JSON object and the value is set as its member json_key:
    merged into the object the client sent, whose other bytes stay as they were. Raises
    RewriteError when the client's header holds no JSON object, or holds max_entries members
    already; the header is then left as the client sent it."""
    old = headers.get(name)
    if json_key is not None:
        new, changed = merge_member(old, json_key, value, if_present, max_entries, name)
        if changed:
            headers[name] = new
        return old, changed
    if old is not None and ((if_present == "keep" and not blank(old)) or old == value):
        return old, False
    headers[name] = value
    return old, True


def merge_member(
    text: str | None, key: str, value: str, if_present: str, max_entries: int | None = None, what: str = "header"
) -> tuple[str, bool]:
    """A JSON object's text with the string member `key` set to `value`; (new_text, changed).
    No text (or blank) is an empty object. Only the member's bytes change."""
    if text is None or not text.strip(" \t"):
        return json.dumps({key: value}), True
    try:
        doc = _DECODER.decode(text)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise RewriteError(f"the client's {what} is not a JSON object; kept as sent")
    if key not in doc and max_entries is not None and len(doc) >= max_entries:
        raise RewriteError(
            f"the client's {what} has {len(doc)} entries already, the most the gateway keeps; kept as sent"
        )
    new, _, changed = set_field(text, (key,), value, if_present, doc)
    return new, changed
