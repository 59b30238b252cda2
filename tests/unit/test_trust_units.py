"""Issue 4 at the unit level: property-based tests of the pure rewrite that tests/unit/test_fields.py
does not cover (arbitrary JSON text with any whitespace, an existing session_id kept or replaced,
dotted paths, hostile values), and the store and state adapters against hostile files."""

from __future__ import annotations

import json
import logging
import os
import random
import stat
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_session_ids.resolution import ids, state
from agent_session_ids.resolution.agents import PI_FORMAT
from agent_session_ids.resolution.conversation import fingerprint
from agent_session_ids.resolution.jsonl_store import JsonlStore
from agent_session_ids.rewrite import RewriteError, blank, render, set_field
from agent_session_ids.rewrite.body import read_body
from agent_session_ids.rules import SetAction, parse_template

# --------------------------------------------------------------------------- JSON text generators

WS = st.text(alphabet=" \t\r\n", max_size=3)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=12
)


@st.composite
def json_text(draw, value, top=False):
    """JSON text of `value` with random whitespace between tokens and random string escaping."""
    ws = lambda: draw(WS)  # noqa: E731
    if isinstance(value, dict):
        if not value:
            return "{" + ws() + "}"
        parts = [ws() + _string(draw, k) + ws() + ":" + ws() + draw(json_text(v)) + ws() for k, v in value.items()]
        return "{" + ",".join(parts) + "}"
    if isinstance(value, list):
        if not value:
            return "[" + ws() + "]"
        return "[" + ",".join(ws() + draw(json_text(v)) + ws() for v in value) + "]"
    if isinstance(value, str):
        return _string(draw, value)
    if isinstance(value, float):
        return draw(st.sampled_from([repr(value), json.dumps(value)])) if value == value else "0"
    return json.dumps(value)


def _string(draw, s: str) -> str:
    return json.dumps(s, ensure_ascii=draw(st.booleans()))


def action(target="body", key="session_id", value="{session.label}", max_length=None, keep="first", if_present="keep"):
    return SetAction(target, key, parse_template(value, "t", 1), max_length, keep, if_present)


# --------------------------------------------------------------------------- the rewrite


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    body=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ("session_id", "messages", "input", "contents")),
        values,
        max_size=5,
    ),
    value=st.text(max_size=40),
)
def test_any_json_text_gets_only_the_inserted_member(data, body, value):
    text = data.draw(WS) + data.draw(json_text(body)) + data.draw(WS)
    body_read = read_body(text.encode("utf-8", "surrogatepass"))
    parsed_text, members = body_read.decoded(), body_read.members
    assert members == json.loads(text)
    new, old, changed = set_field(parsed_text, ("session_id",), value, "keep")
    assert changed and old is None
    close = text.rindex("}")
    assert new.startswith(text[:close]) and new.endswith(text[close:])
    inserted = new[close : len(new) - len(text) + close]
    prefix = "," if members else ""
    assert inserted == prefix + '"session_id":' + json.dumps(value)
    assert json.loads(new) == {**body, "session_id": value}


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    before=st.dictionaries(st.text(max_size=6).filter(lambda k: k != "session_id"), values, max_size=3),
    after=st.dictionaries(st.text(max_size=6).filter(lambda k: k != "session_id"), values, max_size=3),
    existing=values,
    value=st.text(max_size=20),
    if_present=st.sampled_from(["keep", "replace"]),
)
def test_an_existing_session_id_is_kept_or_only_its_value_replaced(data, before, after, existing, value, if_present):
    after = {k: v for k, v in after.items() if k not in before}
    obj = {**before, "session_id": existing, **after}
    text = data.draw(json_text(obj))
    new, old, changed = set_field(text, ("session_id",), value, if_present)
    assert old == existing
    # an empty client field (null, "", white space) is no field: "keep" fills it (issue 17, 8)
    if (if_present == "keep" and not blank(existing)) or existing == value:
        assert new == text and not changed
        return
    assert changed
    parsed = json.loads(new)
    assert parsed == {**obj, "session_id": value}
    assert list(parsed) == list(obj)  # the member stays where it was
    # only the value's bytes changed
    i = text.index('"session_id"') if '"session_id"' in text else None
    if i is not None:
        assert new[:i] == text[:i]


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    path=st.lists(st.text(alphabet="abcxyz_", min_size=1, max_size=4), min_size=1, max_size=3),
    body=st.dictionaries(st.text(alphabet="abcxyz_", min_size=1, max_size=4), values, max_size=4),
    value=st.text(max_size=20),
)
def test_dotted_paths_create_objects_and_touch_nothing_else(data, path, body, value):
    text = data.draw(json_text(body))
    try:
        new, old, changed = set_field(text, tuple(path), value, "replace")
    except RewriteError as e:
        # only when an intermediate member exists and is not an object
        node = body
        for key in path[:-1]:
            assert isinstance(node, dict)
            if key not in node:
                break
            node = node[key]
            if not isinstance(node, dict):
                assert "not an object" in str(e)
                return
        raise
    parsed = json.loads(new)
    node = parsed
    for key in path:
        node = node[key]
    assert node == value
    # remove what was set: the rest is the original
    expect = json.loads(text)
    cur = expect
    for key in path[:-1]:
        cur = cur.setdefault(key, {})
    cur[path[-1]] = value
    assert parsed == expect


def test_duplicate_keys_elsewhere_survive_and_a_duplicated_target_is_refused():
    text = '{"a":1,"a":2,"m":{"x":1,"x":2}}'
    new, _, _ = set_field(text, ("session_id",), "v", "keep")
    assert new == '{"a":1,"a":2,"m":{"x":1,"x":2},"session_id":"v"}'
    with pytest.raises(RewriteError):
        set_field('{"m":{"s":1,"s":2}}', ("m", "s"), "v", "replace")
    with pytest.raises(RewriteError):
        set_field('{"m":1,"m":{}}', ("m", "s"), "v", "replace")


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_very_deep_nesting_is_refused_not_crashed(depth):
    raw = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(RewriteError):
        read_body(raw)


def test_numbers_survive_byte_for_byte():
    raw = '{"big":123456789012345678901234567890123,"inf":1e400,"negz":-0.0,"e":1E+2,"f":0.10000000000000000555}'
    new, _, _ = set_field(read_body(raw.encode()).decoded(), ("session_id",), "s", "keep")
    assert new == raw[:-1] + ',"session_id":"s"}'


@settings(max_examples=500, deadline=None)
@given(value=st.text(), max_length=st.none() | st.integers(1, 200), keep=st.sampled_from(["first", "last"]))
def test_rendered_values_are_safe_for_headers_and_json(value, max_length, keep):
    fields = {"session.label": value, "session.id": value, "session.name": value}
    h = render(action("header", "x-s", "{session.name}", max_length, keep), fields)
    assert all(0x20 <= ord(c) <= 0x7E for c in h)
    assert h == h.strip()
    if max_length:
        assert len(h) <= max_length
    b = render(action("body", "session_id", "{session.name}", max_length, keep), fields)
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in b)
    if max_length:
        assert len(b) <= max_length
    new, _, _ = set_field('{"a":1}', ("session_id",), b, "keep")
    assert json.loads(new)["session_id"] == b
    new.encode("utf-8")  # encodable: no lone surrogate reaches the wire


@settings(max_examples=300, deadline=None)
@given(name=st.text(), sid=st.text(min_size=1))
def test_labels_of_hostile_names_are_slugs(name, sid):
    label = ids.label(name, sid)
    s = ids.slug(name)
    if s:
        assert label.startswith(s) and len(s) <= 50
        assert all(c.isascii() and (c.isalnum() or c == "-") for c in label[: len(s)])
    else:
        assert label == sid


# --------------------------------------------------------------------------- hostile store (unit)


def _pi_file(folder, sid, first, n=1, extra=b""):
    path = folder / f"2026-05-06T12-00-00-000Z_{sid}.jsonl"
    lines = [
        {"type": "session", "version": 3, "id": sid, "timestamp": "2026-05-06T12:00:00.000Z", "cwd": "/w"},
        {"type": "message", "message": {"role": "user", "content": [{"type": "text", "text": first}]}},
    ]
    lines += [{"type": "message", "message": {"role": "assistant", "stopReason": "stop"}}] * n
    path.write_bytes(b"".join(json.dumps(x).encode() + b"\n" for x in lines) + extra)
    return path


def _count_reads(monkeypatch) -> dict[str, int]:
    """Bytes read through os.read/os.pread from now on, by the path of the file read."""
    counts: dict[str, int] = {}

    def counting(real):
        def read(fd, *args):
            data = real(fd, *args)
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = f"fd {fd}"
            counts[path] = counts.get(path, 0) + len(data)
            return data

        return read

    monkeypatch.setattr(os, "read", counting(os.read))
    monkeypatch.setattr(os, "pread", counting(os.pread))
    return counts


def test_store_survives_every_hostile_entry_and_says_so_fast(tmp_path, monkeypatch):
    from agent_session_ids.resolution import jsonl_store

    # the good file is looked for until found, however slow the machine: no time budget decides
    monkeypatch.setattr(jsonl_store, "INDEX_WAIT_S", 3600.0)
    sid = "019dbbc7-0000-7000-8000-00000000abcd"
    good = _pi_file(tmp_path, sid, "good")
    os.utime(good, (1_000_000, 1_000_000))  # the oldest: every hostile entry is met before it
    with open(tmp_path / "sparse.jsonl", "wb") as f:
        f.truncate(1 << 30)
    (tmp_path / "garbage.jsonl").write_bytes(random.Random(1).randbytes(1 << 16))
    (tmp_path / "cut.jsonl").write_bytes(b'{"type":"session","id":"x')
    os.symlink("self.jsonl", tmp_path / "self.jsonl")
    os.symlink("/dev/zero", tmp_path / "zero.jsonl")
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    (tmp_path / "dir.jsonl").mkdir()
    locked = _pi_file(tmp_path, "019dbbc7-0000-7000-8000-00000000ffff", "locked")
    locked.chmod(0)  # note: as root this is still readable
    store = JsonlStore()
    reads = _count_reads(monkeypatch)
    found: list = []
    looking = threading.Thread(
        target=lambda: found.append(store.candidates(str(tmp_path), PI_FORMAT, first_users=[fingerprint("good")])),
        daemon=True,
    )
    looking.start()
    looking.join(120)  # a generous deadline: only a lookup that hangs reaches it
    if looking.is_alive():
        # blocked, e.g. opening the FIFO for reading: a writer lets it go on, then the test fails
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        looking.join(10)
        pytest.fail("the first look at the folder hangs on a hostile entry")
    # the good file is found...
    assert [f.id for f in found[0]] == [sid]
    # ...and no entry was read past a head's worth: not the 1 GiB sparse file, not /dev/zero
    assert reads.get(str(tmp_path / "sparse.jsonl"), 0) <= jsonl_store.HEAD_LIMIT
    assert not {p: n for p, n in reads.items() if n and not p.startswith(str(tmp_path))}, "read outside the folder"
    assert reads.get(str(fifo), 0) == 0
    # later looks at the unchanged folder read nothing again
    reads.clear()
    for _ in range(20):
        (f,) = store.candidates(str(tmp_path), PI_FORMAT, first_users=[fingerprint("good")])
        assert f.id == sid
    assert sum(reads.values()) == 0, reads
    # a folder swapped for a file
    swapped = tmp_path / "swapped"
    swapped.write_text("not a folder")
    assert store.candidates(str(swapped), PI_FORMAT, first_users=[fingerprint("good")]) == []


def test_store_forgets_a_file_deleted_between_listing_and_reading(tmp_path):
    sid = "019dbbc7-0000-7000-8000-00000000abcd"
    path = _pi_file(tmp_path, sid, "good")
    store = JsonlStore()
    assert store.candidates(str(tmp_path), PI_FORMAT, first_users=[fingerprint("good")])
    path.unlink()
    assert store.candidates(str(tmp_path), PI_FORMAT, first_users=[fingerprint("good")], relist=False) == []
    assert store.candidates(str(tmp_path), PI_FORMAT, ids=[sid]) == []


# --------------------------------------------------------------------------- state


def test_state_is_written_atomically_with_mode_0600(tmp_path):
    path = tmp_path / "sub" / "state.json"
    state.save(str(path), {"version": 1, "bound": {"pi:x": ["a", "b", 1.0]}})
    assert json.loads(path.read_text())["bound"]["pi:x"] == ["a", "b", 1.0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[1,2]",
        b"\xff\xfe",
        b"null",
        b'{"version": 2}',
        b'{"version": 1, "bound": 5}',
        b'{"version": 1, "pending": [1]}',
        b'{"version": 1, "bound": {"pi:x": 5}, "pending": {"k": [1, 2]}}',
    ],
)
def test_a_damaged_state_file_never_stops_the_addon(tmp_path, content, caplog):
    """The addon itself loads the state (not only state.load): it starts, says why once, keeps
    the bad file aside, and resolves requests."""
    from mitmproxy.test import taddons

    from agent_session_ids.addon import DEFAULT_RULES, SessionIds

    folder = tmp_path / "agent-session-ids"
    folder.mkdir()
    path = folder / "state.json"
    path.write_bytes(content)
    addon = SessionIds()
    with caplog.at_level(logging.WARNING), taddons.context(addon) as tctx:
        tctx.configure(addon, confdir=str(tmp_path), session_rules=DEFAULT_RULES)
        assert addon.runner.finder.resolver.bound == {} and addon.runner.finder.resolver.pending == {}
        session = addon.runner.finder.resolver.fallback("x", None, "conn", "test")
        assert session.id.startswith("connection-")
    usable = content.startswith(b'{"version": 1, "bound": {')  # well-formed file, bad entries: dropped one by one
    warnings = [r.getMessage() for r in caplog.records if "state file" in r.getMessage()]
    if usable:
        assert warnings == [] and path.exists()
    else:
        assert len(warnings) == 1 and str(path) in warnings[0], warnings
        assert not path.exists() and (folder / "state.json.bad").read_bytes() == content
