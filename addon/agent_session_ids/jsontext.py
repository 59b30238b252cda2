"""JSON as RFC 8259 has it, for the bodies and header values the addon rewrites.

Python's json module also reads `NaN`, `Infinity` and `-Infinity`, which are not JSON: a body
holding them is not JSON to a gateway either, so it must pass as sent, not be rewritten."""

from __future__ import annotations

import json
import re


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


DECODER = json.JSONDecoder(parse_constant=_not_json)
WS = re.compile(r"[ \t\n\r]*")


def loads(text: str | bytes) -> object:
    """json.loads, refusing NaN and Infinity. Raises ValueError (or RecursionError)."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    return DECODER.decode(text)
