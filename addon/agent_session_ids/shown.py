"""The one rule for text from outside that is printed: a request's model, a process name, a folder,
a ledger line from another machine, another program's status answer. Before it reaches a terminal,
a log line or a flow comment it passes `shown`, which keeps every printable character and writes
every other one as a visible escape: C0 and C1 controls (ESC, BEL, CSI), DEL, bidi overrides and
isolates (U+202E), line separators, lone surrogates. So an OSC 52 clipboard write, a window title, a
screen clear or a right-to-left override is shown as text, never obeyed.

"Printable" is Python's `str.isprintable()`: letters, marks, digits, punctuation, symbols and the
ASCII space. The escapes are themselves printable, so `shown` is idempotent. Imports nothing: the
status line and `top` use it on every line.
"""

from __future__ import annotations

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(text: object, limit: int | None = None) -> str:
    """`text` as a terminal may show it; cut to `limit` characters (… last) when one is given."""
    text = text if isinstance(text, str) else str(text)
    if not text.isprintable():  # the common case costs one C-level scan
        text = "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    return text


def shown_lines(lines) -> str:
    """Lines joined for a terminal, each passed through `shown`: the last guard at a command's output."""
    return "\n".join(shown(line) for line in lines)


def safe_text(text: str) -> str:
    """`text` with each lone surrogate as U+FFFD: what UTF-8 (the ledger, a saved flow) can hold.
    Not for the screen (that is `shown`): for what is stored."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")  # one C-level pass: nothing to replace
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
