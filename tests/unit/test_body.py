"""body.read_body: one validating pass, and the next body of a conversation read from where the
last one's list ended. Whatever the path, it must say exactly what json.loads + from_body say."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_session_ids.rewrite.body import BodyError, Elided, read_body
from reference_conversation import from_body

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), TEXT)
VALUE = st.recursive(
    SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6
)
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "tool", "model"]),
            "content": st.one_of(
                TEXT, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2)
            ),
        }
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["function_call", "reasoning", "message"])}),
    SCALAR,
)


def expected(doc: dict):
    return {
        k: (Elided if k in ("messages", "input", "contents") and isinstance(v, list) else v) for k, v in doc.items()
    }, from_body(doc)


def check(raw: bytes, last=None):
    doc = json.loads(raw)
    body = read_body(raw, last)
    members, conversation = expected(doc)
    assert list(body.members) == list(members)
    for k, v in members.items():
        if v is Elided:
            assert isinstance(body.members[k], Elided) and body.members[k].length == len(doc[k])
        else:
            assert body.members[k] == v
    assert body.conversation == conversation
    assert json.loads(body.decoded()) == doc
    return body


def dump(doc: dict, ascii_: bool, indent) -> bytes:
    return json.dumps(doc, ensure_ascii=ascii_, indent=indent).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(["messages", "input", "contents"]),
    head=st.dictionaries(st.sampled_from(["model", "system", "stream", "a"]), VALUE, max_size=3),
    tails=st.lists(
        st.dictionaries(st.sampled_from(["tools", "session_id", "metadata", "b", "model"]), VALUE, max_size=3),
        min_size=5,
        max_size=5,
    ),
    turns=st.lists(st.lists(MESSAGE, max_size=4), min_size=1, max_size=5),
    ascii_=st.booleans(),
    indent=st.sampled_from([None, 1]),
)
def test_a_growing_conversation_reads_as_json_loads_says(key, head, tails, turns, ascii_, indent):
    messages: list = []
    last = None
    resumed = 0
    for added, tail in zip(turns, tails, strict=False):  # the members after the list change, or stay the same
        messages = messages + added
        doc = {**head, key: messages, **{k: v for k, v in tail.items() if k not in head}}
        body = check(dump(doc, ascii_, indent), last)
        resumed += body.resumed
        last = body.resume
    if len(turns) > 1:
        assert resumed == len(turns) - 1  # every later body was read from where the last one ended


@settings(max_examples=200, deadline=None)
@given(
    doc=st.dictionaries(
        st.sampled_from(["messages", "input", "contents", "model", "x"]),
        st.one_of(VALUE, st.lists(MESSAGE, max_size=3)),
        max_size=5,
    )
)
def test_any_object_reads_as_json_loads_says(doc):
    check(json.dumps(doc).encode())


def test_a_body_that_changes_before_the_end_of_the_list_is_read_whole():
    a = {"model": "m", "messages": [{"role": "user", "content": "one"}], "stream": True}
    first = read_body(json.dumps(a).encode())
    b = {"model": "m", "messages": [{"role": "user", "content": "two"}, {"role": "assistant", "content": "x"}]}
    second = check(json.dumps(b).encode(), first.resume)
    assert not second.resumed and second.conversation.n_assistant == 1
    c = {**b, "messages": b["messages"] + [{"role": "user", "content": "more"}], "session_id": "s"}
    third = check(json.dumps(c).encode(), second.resume)
    assert third.resumed and third.members["session_id"] == "s" and third.conversation.n_user == 2


@pytest.mark.parametrize(
    "tail, why",
    [
        (b"]}x", "data after"),
        (b",]}", "not valid JSON"),
        (b'] "a":1}', "not valid JSON"),
        (b'],"a":}', "not valid JSON"),
        (b'], "a":1', "not valid JSON"),
        (b"\xff]}", "not UTF-8"),
    ],
)
def test_a_bad_continuation_is_an_error_as_if_read_whole(tail, why):
    good = read_body(b'{"model":"m","messages":[{"role":"user","content":"hi"}]}')
    for last in (good.resume, None):
        with pytest.raises(BodyError, match=why):
            read_body(b'{"model":"m","messages":[{"role":"user","content":"hi"}' + tail, last)


def test_a_duplicate_member_after_the_list_wins_as_json_parse_says():
    good = read_body(b'{"model":"m","messages":[{"role":"user","content":"hi"}]}')
    body = check(
        b'{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant"}],"model":"n"}', good.resume
    )
    assert body.members["model"] == "n" and not body.resumed


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"[1]", "not a JSON object"),
        (b'"x"', "not a JSON object"),
        (b"", "not a JSON object"),
        (b'{"a":1}{}', "data after"),
        (b'{"a" 1}', "not valid JSON"),
        (b'{"a":1,}', "not valid JSON"),
    ],
)
def test_what_is_no_json_object_is_said(raw, why):
    with pytest.raises(BodyError, match=why):
        read_body(raw)
