"""The pure rewrite: values are safe and capped; a JSON edit changes only the field it sets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_session_ids.rewrite import RewriteError, render, set_field
from agent_session_ids.rewrite.body import read_body
from agent_session_ids.rules import SetAction, parse_template


def action(target="header", value="{session.label}", max_length=None, keep="first"):
    return SetAction(
        target,
        "x-s" if target == "header" else "session_id",
        parse_template(value, "t", 1),
        max_length,
        keep,
        "replace",
    )


FIELDS = {"session.label": "abc", "session.id": "0123456789", "agent.name": "pi"}


def test_render_caps_from_either_end():
    assert render(action(value="{session.id}", max_length=4), FIELDS) == "0123"
    assert render(action(value="{session.id}", max_length=4, keep="last"), FIELDS) == "6789"


def test_header_values_cannot_inject_lines_or_controls():
    hostile = {"session.label": "a\r\nX-Evil: 1\x00é\u2028z"}
    v = render(action(), hostile)
    assert all(0x20 <= ord(c) <= 0x7E for c in v) and "\r" not in v and "\n" not in v
    assert v.startswith("a-X-Evil: 1-") and v.endswith("z")


def test_body_values_drop_controls_and_stay_valid_json():
    v = render(action("body"), {"session.label": 'q"uo\\te\n\x00\ud800 ünï'})
    text, _, _ = set_field('{"a":1}', ("session_id",), v, "replace")
    assert json.loads(text)["session_id"] == 'q"uo\\te ünï'


def test_insert_keeps_every_other_byte():
    body = '{ "model" : "m", "n": 1e400, "z": -0.0, "big": 123456789012345678901234567890, "u": "\\u00e9" }'
    text, old, changed = set_field(body, ("session_id",), "s-1", "keep")
    assert changed and old is None
    assert text == body[:-1] + ',"session_id":"s-1"}'


def test_keep_and_replace_of_an_existing_value():
    body = '{"session_id": "mine", "x": [1, 2]}'
    assert set_field(body, ("session_id",), "ours", "keep") == (body, "mine", False)
    text, old, changed = set_field(body, ("session_id",), "ours", "replace")
    assert (text, old, changed) == ('{"session_id": "ours", "x": [1, 2]}', "mine", True)


def test_dotted_paths_create_and_enter_objects():
    assert set_field("{}", ("metadata", "session_id"), "v", "keep")[0] == '{"metadata":{"session_id":"v"}}'
    assert (
        set_field('{"metadata": {"a": 1}}', ("metadata", "session_id"), "v", "keep")[0]
        == '{"metadata": {"a": 1,"session_id":"v"}}'
    )
    with pytest.raises(RewriteError, match="not an object"):
        set_field('{"metadata": 5}', ("metadata", "session_id"), "v", "keep")


@pytest.mark.parametrize(
    "body, why",
    [
        (b"[1, 2]", "not a JSON object"),
        (b"not json", "not a JSON object"),
        (b'{"a": }', "not valid JSON"),
        (b'{"a": 1} trailing', "data after"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_refused(body, why):
    with pytest.raises(RewriteError, match=why):
        read_body(body)


def test_duplicate_keys_are_left_alone():
    with pytest.raises(RewriteError, match="more than once"):
        set_field('{"session_id": 1, "session_id": 2}', ("session_id",), "v", "replace")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.dictionaries(
        st.text(max_size=10).filter(lambda k: k not in ("session_id", "messages", "input", "contents")),
        json_values,
        max_size=6,
    ),
    indent=st.sampled_from([None, 0, 2]),
    ensure_ascii=st.booleans(),
    value=st.text(max_size=50),
)
def test_the_edit_changes_only_the_field_it_sets(body, indent, ensure_ascii, value):
    raw = json.dumps(body, indent=indent, ensure_ascii=ensure_ascii)
    body_read = read_body(raw.encode())
    text, members = body_read.decoded(), body_read.members
    assert members == body
    new, old, changed = set_field(text, ("session_id",), value, "keep")
    assert changed and old is None
    parsed = json.loads(new)
    assert parsed.pop("session_id") == value
    assert parsed == body
    assert list(parsed) == list(body)  # key order kept
    # the original text survives byte for byte around the insertion
    close = raw.rindex("}")
    assert new.startswith(raw[:close]) and new.endswith(raw[close:])


# -- a header whose value is a small JSON object (cf-aig-metadata) -----------------------------


def test_a_json_member_is_merged_into_the_clients_header_never_over_it():
    from mitmproxy.http import Headers

    from agent_session_ids.rewrite import set_header

    def merged(sent: str | None, if_present="keep", max_entries=5):
        headers = Headers(**({"cf_aig_metadata": sent} if sent is not None else {}))
        old, changed = set_header(headers, "cf-aig-metadata", "s-1", if_present, "session", max_entries)
        assert old == sent
        return headers.get("cf-aig-metadata"), changed

    assert merged(None) == ('{"session": "s-1"}', True)
    assert merged("  ") == ('{"session": "s-1"}', True)
    # the client's entries and their bytes stay; the member goes after them
    assert merged('{"team": "AI", "user": 12345, "test":true}') == (
        '{"team": "AI", "user": 12345, "test":true,"session":"s-1"}',
        True,
    )
    assert merged("{}") == ('{"session":"s-1"}', True)
    # the client's own session is kept, or only its value's bytes replaced
    assert merged('{"session": "mine", "a": 1}') == ('{"session": "mine", "a": 1}', False)
    assert merged('{"session": "mine", "a": 1}', "replace") == ('{"session": "s-1", "a": 1}', True)
    # five entries: the gateway keeps no more, so none is added; not an object: kept as sent
    for sent, why in (
        ('{"a":1,"b":2,"c":3,"d":4,"e":5}', "5 entries already"),
        ("not json", "not a JSON object"),
        ('["session"]', "not a JSON object"),
        ('{"a":1} {"b":2}', "not a JSON object"),
    ):
        with pytest.raises(RewriteError, match=why):
            merged(sent)
    assert (
        merged('{"a":1,"b":2,"c":3,"d":4,"session":"x"}', "replace")[0] == '{"a":1,"b":2,"c":3,"d":4,"session":"s-1"}'
    )
    assert merged('{"a":1,"b":2,"c":3,"d":4,"e":5}', max_entries=None)[1] is True
