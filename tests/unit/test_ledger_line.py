"""The typed ledger line (usage/ledger_line.py): what the writer writes is what the reader checks."""

from __future__ import annotations

import json

from agent_session_ids.usage import ledger
from agent_session_ids.usage.ledger_line import NAMES, LedgerLine


def test_the_line_names_the_fields_the_reader_checks_in_the_order_written():
    assert NAMES[:2] == ("ts", "session")  # the two every record has, checked by record_of itself
    assert NAMES[2:] == tuple(ledger.FIELDS)


def test_a_field_the_answer_did_not_give_is_left_out_and_status_and_stream_are_always_written():
    line = LedgerLine(ts="2026-11-21T10:00:00.000Z", session="s", label="l", input_tokens=0, cost=None)
    assert line.as_dict() == {
        "ts": "2026-11-21T10:00:00.000Z",
        "session": "s",
        "label": "l",
        "status": 0,
        "stream": False,
        "input_tokens": 0,
    }


def test_the_writer_encodes_a_line_as_the_reader_reads_it_back():
    line = LedgerLine(
        ts=ledger.timestamp(1_764_000_000.25),
        session="s",
        agent="pi",
        rule="r",
        host="h",
        model="m\ud800",
        sent_changed=[{"target": "body.session_id", "from": "a", "to": "b"}],
        status=200,
        stream=True,
        input_tokens=10,
        cache_read_tokens=8,
        output_tokens=2,
        cost=0.5,
    )
    encoded = ledger.encode(line)
    assert encoded == ledger.encode(line.as_dict())
    record = ledger.record_of(encoded)
    assert record is not None and record.pop("_epoch") == 1_764_000_000.25
    assert record == {**line.as_dict(), "model": "m\ufffd"}
    assert list(json.loads(encoded)) == [n for n in NAMES if getattr(line, n) is not None]
