"""shown.py: the one rule for text from outside that is printed, and the bounded WarnOnce that logs
through it (issue 29, items 3 and 14)."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from agent_session_ids.shown import shown, shown_lines
from agent_session_ids.warn_once import MAX_MESSAGE, MAX_SAID, WarnOnce, logger


@given(st.text())
def test_shown_text_is_always_printable_and_shown_twice_is_shown_once(text):
    out = shown(text)
    assert out.isprintable()
    assert shown(out) == out


@given(st.text(alphabet=st.characters(categories=["L", "N", "P", "S"]) | st.just(" ")))
def test_printable_text_passes_unchanged(text):
    assert shown(text) == text


@given(st.text(), st.integers(min_value=1, max_value=50))
def test_a_limit_cuts_with_an_ellipsis_to_at_most_that_many_characters(text, limit):
    out = shown(text, limit)
    assert len(out) <= limit
    assert out == shown(text) or out.endswith("…")


def test_each_kind_of_control_is_written_as_a_visible_escape():
    cases = {
        "\x1b]52;c;SGk=\x07": "\\x1b]52;c;SGk=\\x07",  # OSC 52, a clipboard write
        "\x1b[2J": "\\x1b[2J",  # a screen clear
        "\x9b31m": "\\x9b31m",  # C1 CSI
        "\u202eevil": "\\u202eevil",  # a right-to-left override
        "a\tb\nc\rd": "a\\tb\\nc\\rd",
        "\x7f\x00": "\\x7f\\x00",
        "\ud800": "\\ud800",  # a lone surrogate
        "\U000e0001": "\\U000e0001",  # a language tag (format, outside the BMP)
    }
    for raw, seen in cases.items():
        assert shown(raw) == seen


def test_shown_lines_keeps_the_line_breaks_between_lines_and_escapes_those_inside():
    assert shown_lines(["a\x1b", "b\nc"]) == "a\\x1b\nb\\nc"


def test_a_problem_with_a_new_value_every_time_is_said_at_most_max_said_times(caplog):
    warn = WarnOnce()
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for i in range(MAX_SAID * 3):
            warn(f"usage-encoding-{i}\x1b" + "z" * 500, f"content-encoding {i}\x1b]0;t\x07" + "z" * 5000)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == MAX_SAID + 1  # and one that says the rest go unsaid
    assert "further ones are not logged" in lines[-1]
    assert all(line.isprintable() and len(line) <= MAX_MESSAGE + 40 for line in lines)
    assert len(warn.said) == MAX_SAID


def test_every_line_the_addon_logs_passes_shown_also_a_multi_line_summary(caplog):
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("usage this run\nsession \x1b]0;title\x07 · \u202eevil")
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == "usage this run\nsession \\x1b]0;title\\x07 · \\u202eevil"
