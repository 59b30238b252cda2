"""Issue 17: the third round of trying to break a promise, through a real mitmdump (mitmproxy 11 on
Python 3.11, 12 on 3.12) in front of a real upstream on 127.0.0.1, which records what arrived.

Each test asserts what can be counted or ordered, never a duration: the bytes the upstream got,
the proxy's peak memory (VmHWM), the order in which two requests complete, and what was logged.
"""

from __future__ import annotations

import gzip
import http.client
import http.server
import json
import os
import socketserver
import stat
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from harness import Mitmdump

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

ROOT = Path(__file__).resolve().parents[2]
ADDON = str(ROOT / "addon" / "session_ids.py")
OPENROUTER = "http://openrouter.ai/api/v1/chat/completions"
OPENCODE = "http://opencode.ai/zen/v1/chat/completions"
CLOUDFLARE = "http://gateway.ai.cloudflare.com/v1/acct/gw/openai/chat/completions"
UNMATCHED = "http://example.com/ping"
MAX_PEAK_BYTES = 600 << 20  # the proxy's peak resident memory with a bomb passing through
WAIT_S = 120

REDIRECT = """
import os
class ToUpstream:
    def server_connect(self, data):
        data.server.address = ("127.0.0.1", int(os.environ["TEST_UPSTREAM_PORT"]))
addons = [ToUpstream()]
"""

ANSWER_JSON = json.dumps(
    {
        "id": "gen-1",
        "model": "m",
        "choices": [{"message": {"content": "ok"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }
).encode()


class Upstream:
    """An HTTP/1.1 server on 127.0.0.1: records each request (path, headers, raw body) and answers
    with the answer named by its `x-test-answer` header (see `answers`), else ANSWER_JSON."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.answers: dict[str, tuple[list[tuple[str, str]], bytes]] = {}
        self.answered = threading.Event()  # set when a named answer has been written
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                upstream.received.append({"path": self.path, "headers": dict(self.headers.items()), "body": raw})
                name = self.headers.get("x-test-answer")
                headers, body = upstream.answers.get(name, ([("Content-Type", "application/json")], ANSWER_JSON))
                self.send_response(200)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if name:
                    upstream.answered.set()

            do_GET = do_POST

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.stop()


def proxy_for(upstream: Upstream, tmp_path: Path, *sets: str) -> Mitmdump:
    redirect = tmp_path / "to_upstream.py"
    redirect.write_text(REDIRECT)
    return Mitmdump(
        scripts=[ADDON, redirect], sets=["flow_detail=0", *sets], env={"TEST_UPSTREAM_PORT": str(upstream.port)}
    )


def post(proxy: Mitmdump, url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=WAIT_S)
    try:
        conn.request("POST", url, body, {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def peak_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def ledger(proxy: Mitmdump, n: int) -> list[dict]:
    """The ledger's lines, once there are n of them."""
    path = proxy.confdir / "agent-session-ids" / "usage.jsonl"
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"the ledger has fewer than {n} lines")


def small_completes_first(proxy: Mitmdump, big, started: threading.Event, order: list[str] | None = None) -> list[str]:
    """Run `big()` in a thread; once `started` is set, send a small request to a path no rule
    names. Returns the order in which the two completed (appended to `order`)."""
    order = [] if order is None else order
    failures: list[BaseException] = []

    def run_big() -> None:
        try:
            big()
        except BaseException as e:  # reported below
            failures.append(e)
        order.append("big")

    thread = threading.Thread(target=run_big)
    thread.start()
    assert started.wait(WAIT_S), "the big request never got going"
    status, _, _ = post(proxy, UNMATCHED, b"{}")
    order.append("small")
    thread.join(WAIT_S)
    assert not failures, failures
    assert status == 200
    return order


def _gzip_stream(prefix: bytes, filler: bytes, count: int, suffix: bytes, level: int = 9) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    out = [c.compress(prefix)]
    out += [c.compress(filler) for _ in range(count)]
    out += [c.compress(suffix), c.flush()]
    return b"".join(out)


# -- 2: a compressed request body is bounded, and decoded off the event loop ----------------------------


def test_a_compressed_request_bomb_passes_as_sent_without_gigabytes_or_holding_other_flows(upstream, tmp_path):
    bomb = _gzip_stream(b'{"model":"m","messages":[{"role":"user","content":"', b"a" * (1 << 20), 512, b'"}]}')
    with proxy_for(upstream, tmp_path) as proxy:
        sent = threading.Event()

        class Big(http.client.HTTPConnection):
            def send(self, data):  # the body has gone out once this returns
                super().send(data)
                if len(data) == len(bomb):
                    sent.set()

        result = {}

        def big() -> None:
            conn = Big("127.0.0.1", proxy.port, timeout=WAIT_S)
            conn.request("POST", OPENROUTER, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
            result["status"] = conn.getresponse().status
            conn.close()

        order = small_completes_first(proxy, big, sent)
        assert result["status"] == 200
        assert order == ["small", "big"], "a request sent meanwhile waited for the bomb's decoding"
        (got,) = [r for r in upstream.received if r["path"].startswith("/api/v1/")]
        assert got["body"] == bomb, "the body did not pass as sent"
        assert peak_bytes(proxy.pid) < MAX_PEAK_BYTES
        assert proxy.output().count("the body decodes to more than 64 MiB") == 1


# -- 3: compression bombs in answers, on mitmproxy 11 too -------------------------------------------------


def _zstd_bomb(size: int) -> bytes:
    try:
        import zstandard  # mitmproxy 11

        c = zstandard.ZstdCompressor().compressobj()
        return b"".join([c.compress(b"\0" * (1 << 20)) for _ in range(size >> 20)] + [c.flush()])
    except ImportError:
        try:
            from compression import zstd  # type: ignore[import-not-found]
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        c = zstd.ZstdCompressor()
        return b"".join([c.compress(b"\0" * (1 << 20)) for _ in range(size >> 20)] + [c.flush()])


def _brotli_bomb(size: int) -> bytes:
    import brotli

    c = brotli.Compressor(quality=5)
    return b"".join([c.process(b"\0" * (1 << 20)) for _ in range(size >> 20)] + [c.finish()])


@pytest.mark.parametrize("encoding", ["zstd", "br", "gzip"])
def test_a_held_answer_bomb_costs_no_gigabytes_and_holds_no_other_flow(upstream, tmp_path, encoding):
    bomb = {
        "zstd": lambda: _zstd_bomb(1 << 30),
        "br": lambda: _brotli_bomb(1 << 30),
        "gzip": lambda: _gzip_stream(b'{"usage":', b"\0" * (1 << 20), 1024, b"}"),
    }[encoding]()
    upstream.answers["bomb"] = ([("Content-Type", "application/json"), ("Content-Encoding", encoding)], bomb)
    with proxy_for(upstream, tmp_path) as proxy:
        result = {}

        def big() -> None:
            result["answer"] = post(
                proxy,
                OPENROUTER,
                b'{"model":"m","messages":[]}',
                {"x-test-answer": "bomb", "x-session-id": "bomb-held"},
            )

        order = small_completes_first(proxy, big, upstream.answered)
        status, _, body = result["answer"]
        assert status == 200 and body == bomb, "the answer did not reach the client as sent"
        assert order == ["small", "big"], "a request sent meanwhile waited for the bomb's decoding"
        assert peak_bytes(proxy.pid) < MAX_PEAK_BYTES
        (line,) = ledger(proxy, 1)  # the answer is recorded, with no usage read
        assert line["session"] == "bomb-held" and "input_tokens" not in line
        assert proxy.output().count("too large to read its usage") == 1


def test_an_sse_answer_bomb_reaches_the_client_and_holds_no_other_flow(upstream, tmp_path):
    """The stream goes on to the client at once and its decoding goes on beside it, on a worker:
    once the client has the whole answer, a small request completes before the answer is recorded
    (when its reading stops, and says why). Decoded on the event loop, the reading would have
    ended before the answer did."""
    bomb = _gzip_stream(b"data: ", b"a" * (1 << 20), 1024, b"\n\n")
    upstream.answers["bomb"] = ([("Content-Type", "text/event-stream"), ("Content-Encoding", "gzip")], bomb)
    with proxy_for(upstream, tmp_path) as proxy:
        result = {}
        order: list[str] = []
        received = threading.Event()

        def big() -> None:
            result["answer"] = post(
                proxy,
                OPENROUTER,
                b'{"model":"m","messages":[],"stream":true}',
                {"x-test-answer": "bomb", "x-session-id": "bomb-sse"},
            )
            order.append("received")
            received.set()

        def recorded() -> None:  # said when the answer is recorded, once its reading has stopped
            deadline = time.monotonic() + WAIT_S
            while "decodes to more than 256 MiB" not in proxy.output() and time.monotonic() < deadline:
                time.sleep(0.01)
            order.append("recorded")

        watcher = threading.Thread(target=recorded)
        watcher.start()
        small_completes_first(proxy, big, received, order)
        watcher.join(WAIT_S)
        status, _, body = result["answer"]
        assert status == 200 and body == bomb
        assert [x for x in order if x != "big"] == ["received", "small", "recorded"], order
        assert peak_bytes(proxy.pid) < MAX_PEAK_BYTES
        (line,) = ledger(proxy, 1)
        assert line["session"] == "bomb-sse" and "input_tokens" not in line


# -- 4: a FIFO at the state file's path ------------------------------------------------------------------


def test_a_fifo_at_the_state_files_path_neither_slows_requests_nor_defeats_sigterm(upstream, tmp_path):
    fifo = tmp_path / "state.json"
    os.mkfifo(fifo)
    proxy = proxy_for(upstream, tmp_path, f"session_state_file={fifo}").start()
    try:
        status, _, _ = post(proxy, OPENROUTER, b'{"model":"m","messages":[{"role":"user","content":"hi"}]}')
        assert status == 200
        (got,) = upstream.received
        assert "session_id" in json.loads(got["body"]), proxy.output()
        assert "took too long" not in proxy.output()
        assert "cannot be used" in proxy.output() and "not a regular file" in proxy.output()
        # SIGTERM ends it: the worker is not stuck in an open() of the FIFO
        pid = proxy.pid
        os.killpg(pid, 15)
        proxy._proc.wait(timeout=WAIT_S)
        assert stat.S_ISFIFO(os.stat(f"{fifo}.bad").st_mode)  # set aside, as any unusable state file
        assert not fifo.exists() or stat.S_ISREG(os.stat(fifo).st_mode)
    finally:
        proxy.cleanup()


# -- 5, 6: bodies that are not what they claim pass as sent ---------------------------------------------


@pytest.mark.parametrize("case", ["truncated-gzip", "nan", "infinity"])
def test_a_body_that_is_not_whole_json_passes_byte_for_byte(upstream, tmp_path, case):
    text = b'{"model":"m","messages":[{"role":"user","content":"hello there"}]}'
    headers = {}
    if case == "truncated-gzip":
        body = gzip.compress(text)[:-6]  # the deflate stream is whole, its gzip trailer is cut
        headers["Content-Encoding"] = "gzip"
    elif case == "nan":
        body = b'{"t":NaN,' + text[1:]
    else:
        body = b'{"u":Infinity,"v":-Infinity,' + text[1:]
    with proxy_for(upstream, tmp_path) as proxy:
        status, _, _ = post(proxy, OPENROUTER, body, headers)
        assert status == 200
        (got,) = upstream.received
        assert got["body"] == body


def test_a_json_header_with_nan_is_kept_as_sent(upstream, tmp_path):
    with proxy_for(upstream, tmp_path) as proxy:
        status, _, _ = post(proxy, CLOUDFLARE, b'{"model":"m","messages":[]}', {"cf-aig-metadata": '{"a":NaN}'})
        assert status == 200
        (got,) = upstream.received
        assert got["headers"]["cf-aig-metadata"] == '{"a":NaN}'


# -- 7: a lone surrogate in the model -----------------------------------------------------------------


def test_a_lone_surrogate_in_the_model_still_gets_its_ledger_line(upstream, tmp_path):
    with proxy_for(upstream, tmp_path) as proxy:
        status, _, _ = post(proxy, OPENROUTER, b'{"model":"\\ud800x","messages":[]}', {"x-session-id": "lone-1"})
        assert status == 200
        (line,) = ledger(proxy, 1)
        assert line["session"] == "lone-1" and line["model"] == "\ufffdx" and line["input_tokens"] == 10
        assert "could not be written" not in proxy.output()


# -- 8: an empty client field is no field ----------------------------------------------------------------


@pytest.mark.parametrize("sent", ["", "   "])
def test_an_empty_opencode_session_header_is_filled(upstream, tmp_path, sent):
    with proxy_for(upstream, tmp_path) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=WAIT_S)
        conn.putrequest("POST", OPENCODE, skip_accept_encoding=True)
        body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
        for name, value in (
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("x-opencode-session", sent),
        ):
            conn.putheader(name, value)
        conn.endheaders(body)
        assert conn.getresponse().status == 200
        conn.close()
        (got,) = upstream.received
        value = {k.lower(): v for k, v in got["headers"].items()}["x-opencode-session"]
        assert value.strip(), "the empty header was kept"
