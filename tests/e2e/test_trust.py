"""Issue 4: try to break the addon. Bad input, hostile names, hostile stores, process races, crashes
and secrets, each against a real mitmdump running the addon in front of the gateway stand-in.

Clients are real processes: tests/support/fake_agent.py looks like pi (its /proc comm reads `pi`) and
continues a pi session written with fake_agent.write_pi_session; tests/support/odd_requests.py sends a
corpus of odd requests byte for byte (from this test process, which is not an agent).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

import harness
from harness import Mitmdump, header

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "support") not in sys.path:
    sys.path.insert(0, str(TESTS / "support"))

import fake_agent  # noqa: E402
import odd_requests  # noqa: E402
from odd_requests import SECRETS  # noqa: E402

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ADDON = str(ROOT / "addon" / "session_ids.py")
FAKE_AGENT = str(TESTS / "support" / "fake_agent.py")
OPENROUTER = "https://openrouter.ai/api/v1/chat/completions"
OPENCODE = "https://opencode.ai/zen/v1/chat/completions"
OPPER = "https://api.opper.ai/v3/compat/chat/completions"
# requests no rule matches: a host no rule names, and a rule's host (openai-prompt-cache-key) on a path it does not name
UNMATCHED_HOSTS = ["example.com", "api.openai.com"]
CLIENT_TIMEOUT = 30.0
KILLS = 5  # kill -9s of the proxy in the crash test
KILLS_WITH_STATE = 3  # ... of which this many find a state file to read back

# Figures for the README's "Reliability" section, filled in by the tests of this module and
# printed at the end of the session (pytest -s shows them).
FIGURES = {
    "requests tried": 0,
    "malformed inputs tried": 0,
    "faults injected": 0,
    "requests lost": 0,
    "requests misattributed": 0,
}


@pytest.fixture(scope="module", autouse=True)
def _print_figures():
    yield
    print("\nreliability figures (test_trust):", json.dumps(FIGURES))


# --------------------------------------------------------------------------- helpers


def start_proxy(*sets: str, scripts=None, **kw) -> Mitmdump:
    return Mitmdump(scripts=scripts or [ADDON, harness.STANDIN_SCRIPT], sets=["flow_detail=0", *sets], **kw)


def agent_env(home: Path | str, **extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().endswith("_PROXY") and not k.upper().startswith(("PI_", "OPENROUTER"))
    }
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def run_agent(proxy: Mitmdump, home, cwd, python=None, env_extra=None, wait=True, **cfg):
    """Run tests/support/fake_agent.py as a pi-like process in `cwd` with HOME=`home`."""
    cfg.setdefault("proxy", proxy.proxy_url)
    cfg.setdefault("ca", str(proxy.ca_cert))
    cfg.setdefault("timeout", CLIENT_TIMEOUT)
    argv = [python or sys.executable, FAKE_AGENT, json.dumps(cfg)]
    p = subprocess.Popen(
        argv,
        cwd=str(cwd),
        env=agent_env(home, **(env_extra or {})),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if not wait:
        return p
    return finish(p)


def finish(p: subprocess.Popen, timeout: float = 300) -> list[dict]:
    out, err = p.communicate(timeout=timeout)
    lines = [json.loads(x) for x in out.splitlines() if x.strip().startswith("{")]
    if p.returncode not in (0, 1) or not lines:
        raise AssertionError(f"fake agent failed ({p.returncode}):\n{out}\n{err}")
    return lines


def standin_records(proxy: Mitmdump) -> list[dict]:
    """The stand-in's request records. Not harness.read_standin_log: it splits lines with
    str.splitlines, which also splits at U+2028 and friends inside a record (the stand-in writes
    them raw, ensure_ascii=False), and then drops that record."""
    path = Path(proxy.standin_log)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("kind", "request") == "request":
                out.append(record)
    return out


def by_tag(records: list[dict], tag: str) -> list[dict]:
    return [r for r in records if header(r, "x-fake-agent") == tag]


def sent_session_id(record: dict) -> str | None:
    try:
        return json.loads(base64.b64decode(record["body_b64"])).get("session_id")
    except ValueError:
        return None


def new_uuid() -> str:
    return str(uuid.uuid4())


def make_session(home: Path, cwd: Path, first_user: str, n_assistant: int = 1, name=None, sid=None, **kw):
    sid = sid or new_uuid()
    path = fake_agent.write_pi_session(str(home), str(cwd), sid, first_user, n_assistant, name, **kw)
    return sid, Path(path)


def latencies(lines: list[dict]) -> list[float]:
    return [x["ms"] for x in lines if "ms" in x and x.get("status") == 200]


def describe_ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    s = sorted(values)
    return (
        f"n={len(s)} median={s[len(s) // 2]:.1f}ms p95={s[min(len(s) - 1, int(len(s) * 0.95))]:.1f}ms max={s[-1]:.1f}ms"
    )


@pytest.fixture
def proxy():
    with start_proxy() as p:
        yield p


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    return h


# --------------------------------------------------------------------------- the agent-like client


def test_fake_agent_is_resolved_to_the_session_it_continues(proxy, home, tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    sid, _ = make_session(home, cwd, "fix the login bug", n_assistant=2)
    other, _ = make_session(home, cwd, "an unrelated session", n_assistant=1, ts="2026-05-07T12:00:00.000Z")
    lines = run_agent(
        proxy, home, cwd, tag="a1", first_user="fix the login bug", n_assistant=2, requests=3, connection="mixed"
    )
    assert lines[-1] == {"done": True, "ok": 3, "failed": 0}, lines
    records = by_tag(standin_records(proxy), "a1")
    assert len(records) == 3
    assert [sent_session_id(r) for r in records] == [sid] * 3
    meta = records[0]["session_ids"]
    assert meta["session"]["agent"] == "pi" and meta["process"]["comm"] == "pi"
    assert meta["process"]["cwd"] == str(cwd)
    FIGURES["requests tried"] += 3


# --------------------------------------------------------------------------- 1. fail open, byte-exact


def _headers_of(record: dict) -> list[tuple[str, str]]:
    return [(k, v) for k, v in record["headers"]]


def _expected_h1_headers(odd, host: str) -> list[tuple[str, str]]:
    h = [("Host", host)] + odd_requests.request_headers(odd, host)
    h.append(("Transfer-Encoding", "chunked") if odd.chunked else ("Content-Length", str(len(odd.wire()))))
    # the stand-in records header values decoded as UTF-8 (with replacement)
    return [(k, v.encode("utf-8").decode("utf-8", "replace")) for k, v in h]


def _send_corpus_h1(proxy, host: str, path: str):
    sent = {}
    for odd in odd_requests.corpus():
        raw = odd_requests.build_h1(
            odd.method, path, host, odd_requests.request_headers(odd, host), odd.wire(), odd.chunked
        )
        status, _ = odd_requests.send_h1(proxy.port, proxy.ca_cert, host, raw, timeout=CLIENT_TIMEOUT)
        sent[odd.name] = (odd, status)
    return sent


def _record_of(records, name):
    found = [r for r in records if header(r, odd_requests.CASE_HEADER) == name]
    assert len(found) == 1, f"{name}: {len(found)} records at the stand-in"
    return found[0]


def _check_untouched(record, odd, host, path, h2=False):
    assert record["method"] == odd.method
    assert record["path"] == path
    assert record["host"] == host
    assert base64.b64decode(record["body_b64"]) == odd.wire(), f"{odd.name}: body changed"
    if not h2:
        assert _headers_of(record) == _expected_h1_headers(odd, host), f"{odd.name}: headers changed"


def _check_inserted(record, odd, host, path, h2=False) -> str:
    """The body differs only by an inserted session_id; headers only by content-length."""
    assert record["method"] == odd.method and record["path"] == path and record["host"] == host
    raw = base64.b64decode(record["body_b64"])
    after = odd_requests.decode(raw, odd.encoding)
    value = odd_requests.inserted_member(odd.body, after)
    if not h2:
        want = [(k, v) for k, v in _expected_h1_headers(odd, host) if k.lower() != "content-length"]
        got = [(k, v) for k, v in _headers_of(record) if k.lower() != "content-length"]
        assert got == want, f"{odd.name}: headers changed"
    if not odd.chunked:
        assert header(record, "content-length") == str(len(raw)), f"{odd.name}: wrong content-length"
    if odd.encoding:
        assert header(record, "content-encoding") == odd.encoding
    return value


def test_corpus_to_hosts_no_rule_matches_arrives_byte_identical(proxy):
    path = "/v1/odd/%7Epath?q=1&key=" + SECRETS["url_key"]
    for host in UNMATCHED_HOSTS:
        sent = _send_corpus_h1(proxy, host, path)
        records = [r for r in standin_records(proxy) if r["host"] == host]
        for name, (odd, status) in sent.items():
            assert status in (200, 404), (name, status)  # the stand-in answers 404 to unknown paths
            record = _record_of(records, name)
            _check_untouched(record, odd, host, path)
            assert not record["session_ids"] and not record["comment"], f"{name}: a rule touched it"
        FIGURES["requests tried"] += len(sent)
        FIGURES["malformed inputs tried"] += len(sent)
    # a path under openrouter.ai that no rule names, and a method the rule does not name
    sent = _send_corpus_h1(proxy, "openrouter.ai", "/api/v1/models")
    records = [r for r in standin_records(proxy) if r["path"] == "/api/v1/models"]
    for name, (odd, _status) in sent.items():
        _check_untouched(_record_of(records, name), odd, "openrouter.ai", "/api/v1/models")
    FIGURES["requests tried"] += len(sent)
    FIGURES["malformed inputs tried"] += len(sent)
    assert not proxy.blocked_connects()


def test_corpus_to_openrouter_changes_only_the_inserted_session_id(proxy):
    path = "/api/v1/chat/completions"
    sent = _send_corpus_h1(proxy, "openrouter.ai", path)
    records = standin_records(proxy)
    outcomes = {}
    for name, (odd, status) in sent.items():
        assert status == (200 if odd.method == "POST" else 404), (name, status)
        record = _record_of(records, name)
        raw = base64.b64decode(record["body_b64"])
        if odd.on_rule == "untouched" or (odd.on_rule == "either" and raw == odd.wire()):
            _check_untouched(record, odd, "openrouter.ai", path)
            outcomes[name] = "untouched"
        else:
            value = _check_inserted(record, odd, "openrouter.ai", path)
            # this test process is no agent: a per-process fallback ID
            assert value.startswith("process-") and len(value) <= 128, value
            outcomes[name] = "inserted"
    print("\nfail-open outcomes at openrouter.ai:", json.dumps(outcomes, indent=1))
    FIGURES["requests tried"] += len(sent)
    FIGURES["malformed inputs tried"] += len(sent)
    # the reasons are logged once each, not once per request
    out = proxy.output()
    warnings = [line for line in out.splitlines() if "agent-session-ids:" in line and "not set" in line]
    assert len(warnings) == len(set(warnings)), warnings


def test_corpus_over_http2(proxy):
    picked = {
        o.name: o
        for o in odd_requests.corpus()
        if o.name
        in (
            "plain-json",
            "unicode",
            "numbers",
            "dup-session-id",
            "not-json",
            "empty-body",
            "gzip-json",
            "br-json",
            "zstd-json",
            "deflate-json",
            "large-512k",
            "array",
        )
    }
    tried = 0
    for host, path in (("openrouter.ai", "/api/v1/chat/completions"), ("example.com", "/v1/h2")):
        for odd in picked.values():
            headers = [(k, v) for k, v in odd_requests.request_headers(odd, host)]
            headers.append(("content-length", str(len(odd.wire()))))
            status, _, alpn = odd_requests.send_h2(
                proxy.port, proxy.ca_cert, host, odd.method, path, headers, odd.wire(), timeout=CLIENT_TIMEOUT
            )
            if alpn != "h2":
                pytest.skip(f"mitmproxy did not negotiate HTTP/2 with the client (ALPN {alpn!r})")
            assert status in (200, 404), (odd.name, status)
            tried += 1
    records = standin_records(proxy)
    assert all(r["http_version"] == "HTTP/2.0" for r in records)
    for host, path in (("openrouter.ai", "/api/v1/chat/completions"), ("example.com", "/v1/h2")):
        mine = [r for r in records if r["host"] == host]
        for odd in picked.values():
            record = _record_of(mine, odd.name)
            sent_headers = [(k.lower(), v) for k, v in odd_requests.request_headers(odd, host)]
            got = [(k, v) for k, v in _headers_of(record) if k != "content-length"]
            assert got == sent_headers, f"{odd.name} over h2 to {host}: headers changed"
            if host == "example.com" or odd.on_rule == "untouched":
                _check_untouched(record, odd, host, path, h2=True)
            else:
                _check_inserted(record, odd, host, path, h2=True)
    FIGURES["requests tried"] += tried
    FIGURES["malformed inputs tried"] += tried


class RecordingUpstream:
    """A plain HTTP/1.1 server on 127.0.0.1 that records each request's line, headers and body bytes
    exactly as mitmdump sent them, and answers 200."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                try:
                    self.received.append(self._read(conn))
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                except (OSError, ValueError):
                    continue

    @staticmethod
    def _read(conn) -> dict:
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ValueError("closed")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        hdrs = [tuple(x.decode("latin-1").split(": ", 1)) for x in lines[1:]]
        length = next((int(v) for k, v in hdrs if k.lower() == "content-length"), None)
        if length is not None:
            while len(rest) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                rest += chunk
            body = rest
        else:  # chunked
            while not rest.endswith(b"0\r\n\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                rest += chunk
            body, buf = b"", rest
            while True:
                size_line, _, buf = buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    break
                body, buf = body + buf[:size], buf[size + 2 :]
        return {"request_line": lines[0].decode(), "headers": hdrs, "body": body}

    def close(self) -> None:
        self.server.close()


REDIRECT_SCRIPT = """
from mitmproxy import http
PORT = {port}
class Redirect:
    # after the addon: send the flow to the recording upstream, keeping its Host header
    def requestheaders(self, flow: http.HTTPFlow):
        host = flow.request.headers.get("host")
        flow.request.scheme, flow.request.port = "http", PORT
        flow.request.host = "127.0.0.1"
        if host is not None:
            flow.request.headers["host"] = host
addons = [Redirect()]
"""

STREAMED_BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "s" * 200_000}]}).encode()


def _send_streamed(tmp_path, cases) -> tuple[list[dict], str]:
    upstream = RecordingUpstream()
    redirect = tmp_path / "redirect_upstream.py"
    redirect.write_text(REDIRECT_SCRIPT.format(port=upstream.port))
    try:
        with Mitmdump(scripts=[ADDON, redirect], sets=["stream_large_bodies=1k", "flow_detail=0"]) as p:
            for host, path, chunked in cases:
                headers = [
                    ("Content-Type", "application/json"),
                    ("Authorization", "Bearer " + SECRETS["authorization"]),
                ]
                raw = odd_requests.build_h1("POST", path, host, headers, STREAMED_BODY, chunked=chunked)
                status, _ = odd_requests.send_h1(p.port, p.ca_cert, host, raw, timeout=CLIENT_TIMEOUT)
                assert status == 200, (host, path, status, p.output()[-2000:])
            out = p.output()
    finally:
        upstream.close()
    assert len(upstream.received) == len(cases)
    FIGURES["requests tried"] += len(cases)
    FIGURES["malformed inputs tried"] += len(cases)
    return upstream.received, out


def _check_streamed(cases, received):
    for (host, path, chunked), got in zip(cases, received, strict=False):
        assert got["body"] == STREAMED_BODY, f"{host}{path}: streamed body changed"
        names = {k.lower(): v for k, v in got["headers"]}
        assert names["host"] == host
        assert names["authorization"] == "Bearer " + SECRETS["authorization"]
        if host == "opencode.ai":
            value = names.get("x-opencode-session")
            assert value and len(value) <= 30 and value.isprintable() and value.isascii(), (
                f"{host}{path} (chunked={chunked}): no x-opencode-session reached the gateway: {names}"
            )
            assert names.get("x-opencode-client")
        else:
            assert "x-opencode-session" not in names and "x-opencode-client" not in names
        if host == "openrouter.ai":
            assert b"session_id" not in got["body"]


def test_streamed_body_gets_header_rules_and_is_passed_on_untouched(tmp_path):
    """stream_large_bodies=1k and a 200 KB body (with a content-length): the body is streamed to
    the upstream, so this test puts a recording HTTP server on 127.0.0.1 behind mitmdump (the
    stand-in answers in `request`, which a streamed body has already passed). Header rules still
    apply; the body arrives as sent; the skipped body edit is reported."""
    cases = [
        ("openrouter.ai", "/api/v1/chat/completions", False),
        ("opencode.ai", "/zen/v1/chat/completions", False),
        ("example.com", "/v1/streamed", False),
    ]
    received, out = _send_streamed(tmp_path, cases)
    _check_streamed(cases, received)
    assert "the body is streamed" in out, out[-3000:]


def test_chunked_body_that_becomes_streamed_mid_body_still_gets_header_rules(tmp_path):
    """A chunked 200 KB body: mitmproxy only learns it is large after `requestheaders` ran, then
    streams it (headers go upstream at once, with no hook in between)."""
    cases = [("opencode.ai", "/zen/v1/chat/completions", True), ("openrouter.ai", "/api/v1/chat/completions", True)]
    received, _ = _send_streamed(tmp_path, cases)
    _check_streamed(cases, received)


# --------------------------------------------------------------------------- 2. hostile names and IDs

HOSTILE_RULE = """
rules:
  - name: hostile-echo
    match:
      host: names.test
      method: POST
    set:
      - header: x-session-name
        value: "{session.name}"
      - header: x-session-label
        value: "{session.label}"
      - header: x-session-id-full
        value: "{session.id}"
      - body: meta.name
        value: "{session.name}"
      - body: meta.id
        value: "{session.id}"
"""

EVIL = "evil\r\nX-Injected: 1\r\n\r\nGET / HTTP/1.1\x00\"'<>\\ \u2028\u0085 日本語 🚀"
NAMES_TEST = "https://names.test/v1/chat/completions"


def _rules_with_hostile_echo(tmp_path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    for f in (ROOT / "rules").glob("*.yaml"):
        shutil.copy(f, rules)
    (rules / "zz-hostile.yaml").write_text(HOSTILE_RULE)
    return rules


def _safe_header(value: str) -> bool:
    return all(0x20 <= ord(c) <= 0x7E for c in value)


def _check_hostile_record(tag: str, sid: str, r: dict) -> None:
    """One request of a hostile session, as the gateway received it: no header injected, valid JSON."""
    meta = r["session_ids"]["session"]
    # the file was resolved, not a fallback; a header id that is no plain id is not used
    # (the file name's uuid stands for the session then)
    assert not meta["fallback"], (tag, meta["source"])
    if re.fullmatch(r"[\w.:-]{1,128}", sid, re.ASCII):
        assert meta["id"] == sid.lower(), (tag, meta["id"])
    else:
        assert re.fullmatch(r"[0-9a-f-]{36}", meta["id"]) and meta["file"].endswith(meta["id"] + ".jsonl")
    for k, v in r["headers"]:
        assert _safe_header(v), f"{tag}: header {k} carries {v[:80]!r}"
        assert k.lower() != "x-injected", f"{tag}: header injected"
    body = json.loads(base64.b64decode(r["body_b64"]))  # valid JSON
    assert "injected" not in body
    if r["host"] == "openrouter.ai":
        value = body["session_id"]
        assert isinstance(value, str) and 0 < len(value) <= 128, (tag, value)
        assert not any(ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF or ord(c) == 0x7F for c in value)
    elif r["host"] == "opencode.ai":
        value = header(r, "x-opencode-session")
        assert value and len(value) <= 30 and _safe_header(value), (tag, value)
    elif r["host"] == "api.opper.ai":
        trace, span = header(r, "x-opper-trace-id"), header(r, "x-opper-parent-span-id")
        assert trace == span and str(uuid.UUID(trace)) == trace, (tag, trace)
    else:
        for h in ("x-session-name", "x-session-label", "x-session-id-full"):
            value = header(r, h)
            assert value is None or _safe_header(value), (tag, h, value)
        meta_body = body["meta"]
        for v in meta_body.values():
            assert not any(ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF for c in v), (tag, v[:80])


def test_hostile_session_names_and_ids_never_inject_a_header_or_break_the_json(home, tmp_path):
    long_name = EVIL + "n" * 10_000
    long_id = "id" + EVIL + "é" * 10_000
    cwd = tmp_path / "work"
    cwd.mkdir()
    sessions = {  # tag -> (first user, header id, name)
        "named": ("hostile name", new_uuid(), long_name),
        "bad-id": ("hostile id", long_id, None),
        "both": ("hostile both", 'short\r\nX-Injected: 3\x00"', EVIL),
        "only-controls": ("hostile controls", new_uuid(), "\r\n\x00\x7f\u2028"),
        "quotes": ("hostile quotes", '"},{"injected":true,"x":"', '"},"session_id":"x'),
    }
    for i, (first, sid, name) in enumerate(sessions.values()):
        # the file name keeps a plain uuid (a name cannot hold NUL or '/'); the header id is hostile
        path = fake_agent.write_pi_session(
            str(home), str(cwd), new_uuid(), first, 1, name, ts=f"2026-05-0{i + 1}T12:00:00.000Z"
        )
        lines = Path(path).read_text().splitlines()
        header_record = json.loads(lines[0])
        header_record["id"] = sid
        lines[0] = json.dumps(header_record)
        Path(path).write_text("\n".join(lines) + "\n")
    rules = _rules_with_hostile_echo(tmp_path)
    targets = [OPENROUTER, OPENCODE, OPPER, NAMES_TEST]
    with start_proxy(f"session_rules={rules}") as proxy:
        for tag, (first, _sid, _name) in sessions.items():
            lines = run_agent(
                proxy,
                home,
                cwd,
                tag=tag,
                first_user=first,
                n_assistant=1,
                requests=len(targets),
                targets=targets,
                connection="new",
            )
            assert lines[-1]["ok"] == len(targets), (lines, proxy.output()[-3000:])
        records = standin_records(proxy)
        out = proxy.output()
    bad_comments = []
    for tag, (_first, sid, _name) in sessions.items():
        mine = by_tag(records, tag)
        assert len(mine) == len(targets), tag
        for r in mine:
            _check_hostile_record(tag, sid, r)
            # the comment a user reads in mitmweb is one line (checked last, below)
            if any(c in r["comment"] for c in "\r\n\x00"):
                bad_comments.append((tag, r["comment"][:120]))
    for line in out.splitlines():
        assert "X-Injected" not in line or "agent-session-ids" not in line
    FIGURES["requests tried"] += len(sessions) * len(targets)
    FIGURES["malformed inputs tried"] += len(sessions)
    assert not bad_comments, f"flow comments with CR/LF/NUL (a hostile session id is shown raw): {bad_comments}"


ANSWER_SCRIPT = """
from mitmproxy import http
class Answer:
    def request(self, flow: http.HTTPFlow):
        if flow.response is None:
            flow.response = http.Response.make(200, b'{}', {"content-type": "application/json"})
    def server_connect(self, data):
        data.server.error = "no upstream in tests"
addons = [Answer()]
"""


def test_a_name_with_a_lone_surrogate_does_not_break_the_flow_or_its_dump(home, tmp_path):
    """A pi name may hold an escaped lone surrogate ("\\ud83d" in the JSON). The addon stores the
    name in the flow's metadata, which mitmproxy saves with the flow (-w / save_stream_file)."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    sid, _ = make_session(home, cwd, "surrogate name", 1, "half an emoji \ud83d here")
    answer = tmp_path / "answer.py"
    answer.write_text(ANSWER_SCRIPT)
    dump = tmp_path / "flows.mitm"
    with start_proxy(f"save_stream_file={dump}", scripts=[ADDON, answer]) as proxy:
        lines = run_agent(proxy, home, cwd, tag="sur", first_user="surrogate name", n_assistant=1, requests=2)
        out = proxy.output()
    assert lines[-1]["ok"] == 2, (lines, out[-3000:])
    from mitmproxy import io as mio

    with open(dump, "rb") as f:
        flows = list(mio.FlowReader(f).stream())
    assert len(flows) == 2, out[-3000:]
    for flow in flows:
        body = json.loads(flow.request.content)
        assert body["session_id"].startswith("half-an-emoji-") and body["session_id"].endswith(sid[-8:])
        assert "Traceback" not in out and "Addon error" not in out, out[-3000:]
    FIGURES["requests tried"] += 2
    FIGURES["malformed inputs tried"] += 1


# --------------------------------------------------------------------------- 3. hostile stores


def _wait_for(predicate, timeout=CLIENT_TIMEOUT, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def _fill_hostile_folder(folder: Path, cwd: Path) -> dict:
    """Every kind of hostile entry, named *.jsonl, in a pi session folder. Returns what holds a
    real session: {first user: (sid, expected n_assistant)}."""
    folder.mkdir(parents=True, exist_ok=True)
    faults = {}
    # a 1 GB sparse file
    with open(folder / "2026-01-01T00-00-00-000Z_sparse.jsonl", "wb") as f:
        f.truncate(1 << 30)
    faults["sparse-1GB"] = 1
    # a 100 MB line before any user turn
    with open(folder / "2026-01-01T00-00-01-000Z_longhead.jsonl", "wb") as f:
        f.write(json.dumps({"type": "session", "version": 3, "id": new_uuid(), "cwd": str(cwd)}).encode() + b"\n")
        f.write(b'{"type":"custom","data":"' + b"x" * (100 << 20) + b'"}\n')
        f.write(
            json.dumps({"type": "message", "message": {"role": "user", "content": "longhead session"}}).encode() + b"\n"
        )
    faults["100MB-line-in-head"] = 1
    # binary garbage
    (folder / "2026-01-01T00-00-02-000Z_garbage.jsonl").write_bytes(random.Random(4).randbytes(1 << 20))
    faults["binary-garbage"] = 1
    # truncated mid-header
    (folder / "2026-01-01T00-00-03-000Z_cut.jsonl").write_bytes(b'{"type":"session","version":3,"id":"01')
    faults["truncated-header"] = 1
    # symlink loops, a dangling link, a FIFO, a directory, a device
    os.symlink("self.jsonl", folder / "self.jsonl")
    os.symlink("loop-b.jsonl", folder / "loop-a.jsonl")
    os.symlink("loop-a.jsonl", folder / "loop-b.jsonl")
    os.symlink("/nonexistent/x.jsonl", folder / "dangling.jsonl")
    os.mkfifo(folder / "fifo.jsonl")
    (folder / "dir.jsonl").mkdir()
    os.symlink("/dev/zero", folder / "zero.jsonl")
    os.symlink("/dev/urandom", folder / "urandom.jsonl")
    faults.update(
        {
            "symlink-self-loop": 1,
            "symlink-loop-pair": 1,
            "dangling-symlink": 1,
            "fifo": 1,
            "directory": 1,
            "/dev/zero": 1,
            "/dev/urandom": 1,
        }
    )
    real = {}
    # a session whose file has a 100 MB line AFTER its first user turn (its tail is read)
    sid = new_uuid()
    with open(folder / f"2026-01-02T00-00-00-000Z_{sid}.jsonl", "wb") as f:
        f.write(
            json.dumps(
                {"type": "session", "version": 3, "id": sid, "timestamp": "2026-01-02T00:00:00.000Z", "cwd": str(cwd)}
            ).encode()
            + b"\n"
        )
        f.write(
            json.dumps({"type": "message", "message": {"role": "user", "content": "tail long line"}}).encode() + b"\n"
        )
        f.write(b'{"type":"message","message":{"role":"assistant","stopReason":"stop"}}\n')
        f.write(b'{"type":"custom","data":"' + b"y" * (100 << 20) + b'"}\n')
        f.write(b'{"type":"message","message":{"role":"assistant","stopReason":"stop"}}\n')
    real["tail long line"] = (sid, 2)
    faults["100MB-line-in-tail"] = 1
    # a session truncated mid-write (its last line is cut)
    sid = new_uuid()
    path = Path(
        fake_agent.write_pi_session(
            "", str(cwd), sid, "truncated session", 1, folder=str(folder), ts="2026-01-03T00:00:00.000Z"
        )
    )
    path.write_bytes(path.read_bytes() + b'{"type":"message","message":{"role":"assis')
    real["truncated session"] = (sid, 1)
    faults["truncated-last-line"] = 1
    # a mode-0000 session file (root still reads it: tests run as root)
    sid = new_uuid()
    path = Path(
        fake_agent.write_pi_session(
            "", str(cwd), sid, "unreadable session", 1, folder=str(folder), ts="2026-01-04T00:00:00.000Z"
        )
    )
    path.chmod(0)
    real["unreadable session"] = (sid, 1)
    faults["mode-0000"] = 1
    return real, faults


def test_hostile_store_keeps_the_proxy_serving_and_the_good_session_resolved(proxy, home, tmp_path):
    clean_cwd, cwd = tmp_path / "clean", tmp_path / "hostile"
    clean_cwd.mkdir()
    cwd.mkdir()
    folder = Path(fake_agent.pi_session_dir(str(home), str(cwd)))
    real, faults = _fill_hostile_folder(folder, cwd)
    good, _ = make_session(home, cwd, "the good session", n_assistant=1, ts="2026-01-05T00:00:00.000Z")
    clean, _ = make_session(home, clean_cwd, "the good session", n_assistant=1)
    all_ids = {good, clean} | {sid for sid, _ in real.values()}

    base = run_agent(proxy, home, clean_cwd, tag="baseline", first_user="the good session", requests=10)
    hostile = run_agent(proxy, home, cwd, tag="good", first_user="the good session", requests=10, connection="mixed")
    assert base[-1]["ok"] == 10 and hostile[-1]["ok"] == 10, (base, hostile)
    others = {}
    for first, (_sid, n) in real.items():
        lines = run_agent(proxy, home, cwd, tag=first, first_user=first, n_assistant=n, requests=3)
        assert lines[-1]["ok"] == 3, lines
        others[first] = lines
    # the fifo is still there and nobody blocked on it
    assert stat.S_ISFIFO(os.lstat(folder / "fifo.jsonl").st_mode)
    records = standin_records(proxy)
    assert [sent_session_id(r) for r in by_tag(records, "baseline")] == [clean] * 10
    assert [sent_session_id(r) for r in by_tag(records, "good")] == [good] * 10
    misattributed = 0
    for first, (sid, _n) in real.items():
        got = [sent_session_id(r) for r in by_tag(records, first)]
        assert len(got) == 3
        misattributed += sum(1 for g in got if g in all_ids - {sid})
        assert got == [sid] * 3, (first, got, [r["session_ids"]["session"]["source"] for r in by_tag(records, first)])
    assert misattributed == 0
    print(f"\nlatency, clean folder:   {describe_ms(latencies(base))}")
    print(f"latency, hostile folder: {describe_ms(latencies(hostile))} (first request {hostile[0]['ms']} ms)")
    for first, lines in others.items():
        print(f"latency, {first!r}: {describe_ms(latencies(lines))}")
    warnings = [l for l in proxy.output().splitlines() if "agent-session-ids:" in l and "rules from" not in l]
    print("addon warnings:", warnings)
    assert not any("took too long" in w for w in warnings), warnings
    FIGURES["requests tried"] += 20 + 3 * len(real)
    FIGURES["faults injected"] += len(faults)


def test_a_file_deleted_between_requests_and_a_folder_swapped_for_a_file(proxy, home, tmp_path):
    a_cwd, b_cwd = tmp_path / "a", tmp_path / "b"
    a_cwd.mkdir()
    b_cwd.mkdir()
    deleted, deleted_path = make_session(home, a_cwd, "deleted session", 1)
    neighbour, _ = make_session(home, a_cwd, "neighbour session", 1, ts="2026-05-07T00:00:00.000Z")
    swapped, _ = make_session(home, b_cwd, "swapped session", 1)
    all_ids = {deleted, neighbour, swapped}
    b_folder = Path(fake_agent.pi_session_dir(str(home), str(b_cwd)))

    pa = run_agent(proxy, home, a_cwd, wait=False, tag="del", first_user="deleted session", requests=4, pause=0.7)
    pb = run_agent(proxy, home, b_cwd, wait=False, tag="swap", first_user="swapped session", requests=4, pause=0.7)
    assert _wait_for(lambda: by_tag(standin_records(proxy), "del") and by_tag(standin_records(proxy), "swap"))
    deleted_path.unlink()
    shutil.move(str(b_folder), str(b_folder) + ".moved")
    b_folder.write_text("a file where the session folder was\n")
    lines_a, lines_b = finish(pa), finish(pb)
    assert lines_a[-1]["ok"] == 4 and lines_b[-1]["ok"] == 4, (lines_a, lines_b)
    # new processes after the faults
    lines_a2 = run_agent(proxy, home, a_cwd, tag="del-2", first_user="deleted session", requests=2)
    lines_b2 = run_agent(proxy, home, b_cwd, tag="swap-2", first_user="swapped session", requests=2)
    lines_n = run_agent(proxy, home, a_cwd, tag="neighbour", first_user="neighbour session", requests=2)
    assert all(x[-1]["ok"] == 2 for x in (lines_a2, lines_b2, lines_n))
    records = standin_records(proxy)

    def check(tag, own):
        got = [sent_session_id(r) for r in by_tag(records, tag)]
        assert got and all(g == own or g.startswith(("ephemeral-", "process-")) for g in got), (tag, got)
        assert not any(g in all_ids - {own} for g in got), (tag, got)
        return got

    got_a, got_b = check("del", deleted), check("swap", swapped)
    assert got_a[0] == deleted and got_b[0] == swapped  # before the faults
    check("del-2", deleted)
    check("swap-2", swapped)
    assert [sent_session_id(r) for r in by_tag(records, "neighbour")] == [neighbour] * 2
    print(f"\nafter delete: {got_a}; after swap: {got_b}")
    FIGURES["requests tried"] += 14
    FIGURES["faults injected"] += 2


# --------------------------------------------------------------------------- 4. process races

FALLBACK_PREFIXES = ("process-", "connection-", "ephemeral-")


def _two_sessions(home, tmp_path):
    a_cwd, b_cwd = tmp_path / "a", tmp_path / "b"
    a_cwd.mkdir()
    b_cwd.mkdir()
    a, _ = make_session(home, a_cwd, "session of A", 1)
    b, _ = make_session(home, b_cwd, "session of B", 1)
    return a_cwd, b_cwd, a, b


# A script loaded between the addon and the stand-in: it writes down, per flow, what the addon
# decided (`request`) and whether the flow died (`error`), so that a test can wait until the proxy
# is done with every request and check every decision, whether or not the request then reached the
# gateway.
OBSERVER = """
import json, os

def _write(**record):
    with open(os.environ["OBSERVER_LOG"], "a") as f:
        f.write(json.dumps(record) + "\\n")

def request(flow):
    session = (flow.metadata.get("session_ids") or {}).get("session") or {}
    _write(event="request", tag=flow.request.headers.get("x-fake-agent"), session=session.get("id"))

def error(flow):
    _write(event="error", tag=flow.request.headers.get("x-fake-agent"), error=str(flow.error))
"""


def _observed(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_a_client_that_exits_right_after_sending_never_gets_another_sessions_id(home, tmp_path):
    a_cwd, b_cwd, a, b = _two_sessions(home, tmp_path)
    observer, log = tmp_path / "observer.py", tmp_path / "observed.jsonl"
    observer.write_text(OBSERVER)
    sent = 0
    decided: dict[int, str] = {}  # client number -> the session id the addon gave its request
    with start_proxy(scripts=[ADDON, str(observer), harness.STANDIN_SCRIPT], env={"OBSERVER_LOG": str(log)}) as proxy:
        # Rounds of 16 clients until the addon has decided for 16 requests: mitmproxy 11 drops the
        # requests of most clients that are gone before the addon sees them (an `error` flow); on a
        # busy machine it decided for only 12 of 320, so the rounds go on longer before giving up.
        while len(decided) < 16 and sent < 960:
            procs = []
            for i in range(sent, sent + 16):
                cwd, first = (a_cwd, "session of A") if i % 2 == 0 else (b_cwd, "session of B")
                procs.append(
                    run_agent(
                        proxy,
                        home,
                        cwd,
                        wait=False,
                        ca=None,
                        mode="exit-after-send",
                        tag=f"exit-{i}",
                        first_user=first,
                        n_assistant=1,
                    )
                )
            for p in procs:
                p.communicate(timeout=CLIENT_TIMEOUT)
            sent += 16
            # the proxy is done with a request once the addon has decided for it or its flow died
            tags = {f"exit-{i}" for i in range(sent)}
            assert _wait_for(lambda tags=tags: tags <= {e["tag"] for e in _observed(log)}, timeout=120), (
                f"the proxy never finished with {sorted(tags - {e['tag'] for e in _observed(log)})}"
            )
            decided = {
                int(e["tag"][5:]): e["session"]
                for e in _observed(log)
                if e["event"] == "request" and e["session"] and (e["tag"] or "").startswith("exit-")
            }
        records = standin_records(proxy)
        assert proxy._proc.poll() is None
    assert len(decided) >= 4, f"the addon decided for only {len(decided)} of {sent} requests: {_observed(log)[-5:]}"
    for i, got in decided.items():
        own, other = (a, b) if i % 2 == 0 else (b, a)
        assert got != other, (i, got)
        assert got == own or got.startswith(FALLBACK_PREFIXES), (i, got)
    arrived = 0
    for i in range(sent):
        for r in by_tag(records, f"exit-{i}"):
            arrived += 1
            assert sent_session_id(r) == decided.get(i), (i, sent_session_id(r), decided.get(i))
    print(
        f"\nexit-after-send: {len(decided)}/{sent} requests decided by the addon, {arrived} reached the stand-in, "
        f"{sum(1 for g in decided.values() if g in (a, b))} with their own session"
    )
    FIGURES["requests tried"] += sent
    FIGURES["faults injected"] += sent


@pytest.mark.parametrize("child_name", ["pi", "python3"])
def test_a_process_that_execs_into_another_program_on_the_same_connection(proxy, home, tmp_path, child_name):
    """exec keeps the pid and its start time: to /proc it is the same process, but another program,
    here in another cwd, continuing another session (or, not named pi, no agent at all)."""
    a_cwd, b_cwd, a, b = _two_sessions(home, tmp_path)
    child = {"name": child_name, "cwd": str(b_cwd), "tag": "after-exec", "first_user": "session of B", "n_assistant": 1}
    lines = run_agent(
        proxy,
        home,
        a_cwd,
        ca=None,
        mode="exec",
        tag="before-exec",
        first_user="session of A",
        n_assistant=1,
        child=child,
    )
    assert [x["status"] for x in lines] == [200, 200], lines
    assert lines[0]["pid"] == lines[1]["pid"]
    records = standin_records(proxy)
    (before,) = by_tag(records, "before-exec")
    (after,) = by_tag(records, "after-exec")
    assert sent_session_id(before) == a
    got = sent_session_id(after)
    assert got != a, (
        f"the exec'd program ({child_name}, in {b_cwd}, continuing B) got A's session id: "
        f"{after['session_ids']['session']['source']}"
    )
    assert got == b or got.startswith(FALLBACK_PREFIXES), got
    FIGURES["requests tried"] += 2
    FIGURES["faults injected"] += 1


def test_a_socket_shared_by_a_parent_and_its_forked_child(proxy, home, tmp_path):
    a_cwd, b_cwd, a, b = _two_sessions(home, tmp_path)
    child = {"cwd": str(b_cwd), "tag": "fork-child", "first_user": "session of B", "n_assistant": 1}
    lines = run_agent(
        proxy,
        home,
        a_cwd,
        ca=None,
        mode="fork",
        tag="fork-parent",
        first_user="session of A",
        n_assistant=1,
        child=child,
    )
    statuses = {x["tag"]: x["status"] for x in lines if "tag" in x}
    assert statuses == {"fork-parent": 200, "fork-child": 200}, lines
    records = standin_records(proxy)
    (parent,) = by_tag(records, "fork-parent")
    (kid,) = by_tag(records, "fork-child")
    got_parent, got_child = sent_session_id(parent), sent_session_id(kid)
    assert got_parent == a or got_parent.startswith(FALLBACK_PREFIXES), got_parent
    assert got_parent != b
    assert got_child != a, (
        f"the forked child (in {b_cwd}, continuing B) got its parent's session A: "
        f"{kid['session_ids']['session']['source']}, pid {kid['session_ids']['process']['pid']}"
    )
    assert got_child == b or got_child.startswith(FALLBACK_PREFIXES), got_child
    print(
        f"\nfork: parent got {got_parent} ({parent['session_ids']['session']['source']}), "
        f"child got {got_child} ({kid['session_ids']['session']['source']})"
    )
    FIGURES["requests tried"] += 2
    FIGURES["faults injected"] += 1


# --------------------------------------------------------------------------- 6. state survives crashes


def test_kill_9_while_the_state_is_written_leaves_a_readable_state_file(home, tmp_path):
    confdir = tmp_path / "confdir"
    state = confdir / "agent-session-ids" / "state.json"
    cwd = tmp_path / "work"
    cwd.mkdir()
    stop = tmp_path / "stop-churning"
    rng = random.Random(6)
    kills = checked = 0
    leftovers = set()
    with start_proxy(confdir=confdir) as proxy:
        # every request is a new session with no file: a minted ID, so the state is rewritten each
        # time; the churn goes on until the kills are done, however long they take
        agents = [
            run_agent(
                proxy,
                home,
                cwd,
                wait=False,
                tag=f"churn-{i}",
                first_user=f"churn {i}",
                fresh=True,
                requests=0,
                stop_file=str(stop),
                tolerate=True,
                retries=2000,
                timeout=5,
            )
            for i in range(2)
        ]
        one_shots = 0
        # enough kills, and enough of them with a state file on disk to read back (a count of
        # events, not of seconds)
        while kills < KILLS or checked < KILLS_WITH_STATE:
            assert one_shots < 400, f"{kills} kills, {checked} with a state file, after {one_shots} one-shot processes"
            # one-request processes too: each one a new process with a new session
            run_agent(
                proxy,
                home,
                cwd,
                tag=f"one-{one_shots}",
                first_user=f"one shot {one_shots}",
                fresh=True,
                requests=1,
                tolerate=True,
                retries=2000,
                timeout=5,
            )
            one_shots += 1
            time.sleep(rng.uniform(0.0, 0.4))  # jitter: kills land anywhere in the batched state writes
            if rng.random() < 0.5:
                os.kill(proxy.pid, signal.SIGKILL)
                kills += 1
                proxy._proc.wait(timeout=CLIENT_TIMEOUT)
                if state.exists():
                    data = json.loads(state.read_bytes())  # parses: never half-written
                    assert isinstance(data, dict) and data.get("version") == 1
                    assert stat.S_IMODE(state.stat().st_mode) == 0o600
                    checked += 1
                leftovers |= {p.name for p in state.parent.glob(".state-*")}
                proxy.restart()
        stop.touch()
        results = [finish(p, timeout=300) for p in agents]
        # after all that, the proxy still serves
        final = run_agent(proxy, home, cwd, tag="after", first_user="after the crashes", n_assistant=0, requests=3)
        assert final[-1]["ok"] == 3, final
        data = json.loads(state.read_bytes())
        assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700
    sent = sum(1 for r in results for x in r if "seq" in x and x["status"] == 200)
    failed = [x for r in results for x in r if x.get("done") and x["failed"]]
    print(
        f"\nkill -9: {kills} kills ({checked} with a state file), {sent} churn requests answered, "
        f"{one_shots} one-shot processes, {len(data.get('pending', {}))} pending sessions in the state; "
        f"leftover temp files: {sorted(leftovers)}"
    )
    assert all(any(x.get("status") == 200 for x in r) for r in results), results  # both churned
    assert not failed, failed  # every request got through, after retries across the restarts
    FIGURES["requests tried"] += sent + one_shots + 3
    FIGURES["faults injected"] += kills


# --------------------------------------------------------------------------- 7. secrets and exposure


def test_no_secret_in_anything_the_addon_writes(home, tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    sid, _ = make_session(home, cwd, "secret session", 1, name="my secret-free name")
    key_query = "?key=" + SECRETS["url_key"]
    env_secret = "sk-or-v1-TRUSTTEST-environ-5a4b3c2d"
    targets = [OPENROUTER + key_query, OPENCODE + key_query, OPPER + key_query, "https://example.com/v1/x" + key_query]
    with start_proxy() as proxy:
        run_agent(
            proxy,
            home,
            cwd,
            tag="sec",
            first_user="secret session",
            requests=8,
            targets=targets,
            api_key=SECRETS["authorization"],
            headers={"x-api-key": SECRETS["x-api-key"]},
            env_extra={"OPENROUTER_API_KEY": env_secret},
        )
        # a new session (minted ID, so the state file is written) and bodies the addon complains about
        run_agent(
            proxy,
            home,
            cwd,
            tag="sec-new",
            first_user="a brand new secret session",
            n_assistant=0,
            requests=2,
            targets=targets[:2],
            api_key=SECRETS["authorization"],
            headers={"x-api-key": SECRETS["x-api-key"]},
            env_extra={"OPENROUTER_API_KEY": env_secret},
        )
        for odd in odd_requests.corpus():
            if odd.name in ("gzip-broken", "not-json", "dup-session-id", "invalid-utf8"):
                raw = odd_requests.build_h1(
                    "POST",
                    "/api/v1/chat/completions" + key_query,
                    "openrouter.ai",
                    odd_requests.request_headers(odd, "openrouter.ai"),
                    odd.wire(),
                )
                odd_requests.send_h1(proxy.port, proxy.ca_cert, "openrouter.ai", raw)
        records = standin_records(proxy)
        output = proxy.output()
        state_file = Path(proxy.confdir) / "agent-session-ids" / "state.json"
        _wait_for(state_file.exists, timeout=120)  # state writes are batched, at most one a second
        state_text = state_file.read_text() if state_file.exists() else ""
    assert len(records) == 14
    assert state_text, "the state file was not written"
    secrets = list(SECRETS.values()) + [env_secret]
    # the secrets did reach the gateway (so they were there to leak)
    assert any(SECRETS["authorization"] in (header(r, "authorization") or "") for r in records)
    assert all(SECRETS["url_key"] in r["path"] for r in records)
    # mitmdump's output, less the stand-in's own lines (they print the path, query included)
    addon_output = "\n".join(l for l in output.splitlines() if "stand-in #" not in l)
    places = {"mitmdump output": addon_output, "state file": state_text}
    for r in records:
        places[f"comment of {r['path']}"] = r["comment"]
        places[f"metadata of {r['path']}"] = json.dumps(r["session_ids"], ensure_ascii=False)
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"{secret} found in {where}"
    FIGURES["requests tried"] += len(records)


def _run_in_own_netns(argv: list[str], wait_for: str, timeout: float = 30) -> str:
    """Start argv in a new network namespace (only its own loopback: nothing is exposed), wait
    until its output says `wait_for`, stop it; return its output."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip to listen on 0.0.0.0 without exposing a port")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {probe.stderr.decode()[:200]}")
    script = 'ip link set lo up && exec "$@"'
    out_path = Path(tempfile.mkstemp(suffix=".out")[1])
    with open(out_path, "wb") as out:
        p = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", script, "sh", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_for(lambda: wait_for in out_path.read_text(errors="replace") or p.poll() is not None, timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
    text = out_path.read_text(errors="replace")
    out_path.unlink()
    return text


def _exposure_warnings(text: str) -> list[str]:
    return [
        l
        for l in text.splitlines()
        if "agent-session-ids" in l.lower()
        and any(w in l.lower() for w in ("proxyauth", "loopback", "0.0.0.0", "all interfaces", "exposed"))
    ]


# Loaded after the addon: its `running` hook runs after the addon's, so once its line is printed,
# whatever the addon says at start-up has been printed too.
RUNNING_MARKER = "trust-test: every script is running"
MARKER_SCRIPT = f"""import logging

def running():
    logging.getLogger(__name__).warning("{RUNNING_MARKER}")
"""


@pytest.mark.parametrize("listen", [["--listen-host", "0.0.0.0"], ["--set", "listen_host=0.0.0.0"]])
def test_listening_beyond_loopback_without_proxyauth_prints_a_warning(tmp_path, listen):
    mitmdump = harness._mitmdump_binary()
    marker = tmp_path / "marker.py"
    marker.write_text(MARKER_SCRIPT)
    base = [mitmdump, "-p", "0", "--set", f"confdir={tmp_path / 'conf'}", "-s", ADDON, "-s", str(marker)]
    exposed = _run_in_own_netns(base + listen, RUNNING_MARKER)
    assert "listening at" in exposed and RUNNING_MARKER in exposed, exposed
    guarded = _run_in_own_netns(base + listen + ["--set", "proxyauth=user:pass"], RUNNING_MARKER)
    local = _run_in_own_netns(base + ["--listen-host", "127.0.0.1"], RUNNING_MARKER)
    assert RUNNING_MARKER in guarded and RUNNING_MARKER in local, (guarded, local)
    assert not _exposure_warnings(guarded), guarded
    assert not _exposure_warnings(local), local
    assert _exposure_warnings(exposed), (
        "mitmdump listens on 0.0.0.0 without proxyauth and the addon printed no warning:\n" + exposed
    )


def _python_for_nobody() -> str | None:
    for python in (sys.executable, "/usr/bin/python3"):
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", "pass"], capture_output=True
        )
        if r.returncode == 0:
            return python
    return None


def test_a_process_of_another_user_gets_the_fallback_never_its_session(proxy):
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a client as another user")
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no Python that user nobody can run")
    root = Path(tempfile.mkdtemp(prefix="trust-nobody-"))
    try:
        root.chmod(0o755)
        # a copy nobody can read, wherever the checkout is (a fresh clone may sit in a 0700 folder)
        agent = shutil.copy(FAKE_AGENT, root / "fake_agent.py")
        home, cwd = root / "home", root / "work"
        cwd.mkdir()
        sid, path = make_session(home, cwd, "nobody's session", 1)
        for p in [root, *root.rglob("*")]:
            os.chown(p, 65534, 65534)
        cfg = {
            "proxy": proxy.proxy_url,
            "tag": "nobody",
            "first_user": "nobody's session",
            "n_assistant": 1,
            "requests": 2,
            "targets": ["http://openrouter.ai/api/v1/chat/completions"],
        }
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, str(agent), json.dumps(cfg)],
            cwd=cwd,
            env=agent_env(home),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, (r.stdout, r.stderr)
        # the same session, continued by a process of the proxy's own user, is resolved (control)
        run_agent(
            proxy,
            home,
            cwd,
            ca=None,
            tag="owner",
            first_user="nobody's session",
            n_assistant=1,
            requests=1,
            targets=["http://openrouter.ai/api/v1/chat/completions"],
        )
        records = standin_records(proxy)
        got = [sent_session_id(x) for x in by_tag(records, "nobody")]
        assert len(got) == 2
        # its store is not the proxy's: an ID minted for its conversation, the same for both requests
        assert got[0] == got[1] and got[0] != sid and got[0].startswith("ephemeral-"), got
        unread = by_tag(records, "nobody")[0]["session_ids"]["process"]
        assert "pid" not in unread and "another user's process (uid 65534)" in unread["unreadable"], unread
        assert [sent_session_id(x) for x in by_tag(records, "owner")] == [sid]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    FIGURES["requests tried"] += 3


def _nobody_world() -> tuple[str, Path]:
    """A Python that user nobody can run, and a world-searchable folder (removed by the caller)."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a client as another user")
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no Python that user nobody can run")
    root = Path(tempfile.mkdtemp(prefix="trust-other-user-"))
    root.chmod(0o755)
    return python, root


def _run_as_nobody(python: str, root: Path, proxy: Mitmdump, home: Path, cwd: Path, **cfg) -> None:
    agent = shutil.copy(FAKE_AGENT, root / "fake_agent.py")  # a copy nobody can read
    for p in [home, cwd, Path(agent), *home.rglob("*")]:
        os.chown(p, 65534, 65534)
    cfg = {"proxy": proxy.proxy_url, "targets": [OPENROUTER.replace("https:", "http:")], **cfg}
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, str(agent), json.dumps(cfg)],
        cwd=cwd,
        env=agent_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, (r.stdout, r.stderr)


@pytest.mark.parametrize("answers", [1, 0], ids=["continued", "fresh"])
def test_another_users_request_with_the_owners_first_prompt_never_gets_the_owners_session(answers):
    """Issue 29: a process of uid 65534 that names no session but sends the first prompt of one of
    the proxy user's pi sessions got that session's private label upstream, and its turns were
    booked under it in the proxy user's ledger."""
    python, root = _nobody_world()
    try:
        owner_home, owner_cwd = root / "owner-home", root / "owner-work"
        owner_cwd.mkdir()
        prompt = "draft the acquisition memo for Globex"
        sid, _ = make_session(
            owner_home,
            owner_cwd,
            prompt,
            answers,
            name="Owner private plans",
            ts=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        )
        their_home, their_cwd = root / "their-home", root / "their-work"
        their_home.mkdir()
        their_cwd.mkdir()
        with start_proxy(env={"HOME": str(owner_home)}) as proxy:
            _run_as_nobody(
                python,
                root,
                proxy,
                their_home,
                their_cwd,
                tag="theirs",
                first_user=prompt,
                n_assistant=answers,
                requests=2,
            )
            theirs = by_tag(standin_records(proxy), "theirs")
            sent = [sent_session_id(x) for x in theirs]
            assert len(sent) == 2 and sent[0] == sent[1], sent
            assert sid not in sent[0] and "private" not in sent[0] and sent[0].startswith("ephemeral-"), sent
            meta = theirs[0]["session_ids"]
            assert "another user's process (uid 65534)" in meta["process"]["unreadable"], meta
            assert meta["session"].get("file") is None and meta["session"].get("name") is None, meta
            # the proxy user's ledger books it under its own minted session, never the owner's
            lines = harness.ledger_lines(proxy, 2)
            assert [x["session"] for x in lines] == sent, lines
            assert not any("private" in x.get("label", "") for x in lines), lines
            # control: the owner's own process continuing that session gets it (a continued
            # conversation: a fresh one of a new process takes only a file created after it started)
            run_agent(
                proxy,
                owner_home,
                owner_cwd,
                ca=None,
                tag="owner",
                first_user=prompt,
                n_assistant=1,
                requests=1,
                targets=[OPENROUTER.replace("https:", "http:")],
            )
            owner = [sent_session_id(x) for x in by_tag(standin_records(proxy), "owner")]
            assert len(owner) == 1 and owner[0].startswith("owner-private-plans-"), owner
            lines = harness.ledger_lines(proxy, 3)
            assert [x["session"] for x in lines].count(sid) == 1, lines
    finally:
        shutil.rmtree(root, ignore_errors=True)
    FIGURES["requests tried"] += 3


def test_another_users_request_is_matched_in_the_session_store_homes_named_for_it():
    python, root = _nobody_world()
    try:
        owner_home, owner_cwd = root / "owner-home", root / "owner-work"
        owner_cwd.mkdir()
        prompt = "refactor the billing module"
        their_home, their_cwd = root / "their-home", root / "their-work"
        their_cwd.mkdir()
        their_sid, _ = make_session(their_home, their_cwd, prompt, 1, ts="2026-05-01T12:00:00.000Z")
        # the owner's file is the newer one: across every store, it would be picked
        owner_sid, owner_file = make_session(owner_home, owner_cwd, prompt, 1, name="Owner private plans")
        os.utime(owner_file, (time.time() + 60, time.time() + 60))
        with start_proxy(f"session_store_homes={their_home}", env={"HOME": str(owner_home)}) as proxy:
            _run_as_nobody(
                python, root, proxy, their_home, their_cwd, tag="theirs", first_user=prompt, n_assistant=1, requests=2
            )
            theirs = by_tag(standin_records(proxy), "theirs")
            assert [sent_session_id(x) for x in theirs] == [their_sid] * 2
            assert "only in session_store_homes" in theirs[0]["session_ids"]["session"]["source"]
            lines = harness.ledger_lines(proxy, 2)
            assert [x["session"] for x in lines] == [their_sid] * 2 and owner_sid not in str(lines), lines
    finally:
        shutil.rmtree(root, ignore_errors=True)
    FIGURES["requests tried"] += 2


def test_temp_files_left_by_a_kill_9_are_cleaned_up_at_the_next_start(home, tmp_path):
    """A kill -9 between mkstemp and rename leaves `.state-*` behind; each crash would add one."""
    confdir = tmp_path / "confdir"
    folder = confdir / "agent-session-ids"
    folder.mkdir(parents=True)
    stale = folder / ".state-stale123"
    stale.write_text('{"version": 1, "bound": {}, "pend')
    old = time.time() - 3600
    os.utime(stale, (old, old))
    cwd = tmp_path / "work"
    cwd.mkdir()
    with start_proxy(confdir=confdir) as proxy:
        run_agent(proxy, home, cwd, tag="t", first_user="a new session", n_assistant=0, requests=1)
        # state writes are batched, at most one a second
        assert _wait_for((folder / "state.json").exists, timeout=120)
        assert not stale.exists(), "a stale .state-* temp file survived a restart"
    FIGURES["faults injected"] += 1
