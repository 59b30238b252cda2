#!/usr/bin/env python3
"""Benchmark of the usage ledger (issue 11): throughput of streamed 200 KB answers through the
addon with the ledger on, against plain mitmdump, on the same load, in the same run.

    python tests/benchmarks/bench_usage.py                    # 3 rounds of 10 s per proxy
    python tests/benchmarks/bench_usage.py --rounds 5 --seconds 20 --clients 8 --json out.json

Set-up: one upstream process on 127.0.0.1 answers every POST with the same Anthropic-shaped SSE
answer of ``--kb`` KB (message_start with usage, ~1 KB text deltas, message_delta with usage),
in 16 KB chunks, keep-alive. Each proxy is a real mitmdump on 127.0.0.1 whose last script
sends it to that upstream:

- **ledger**: ``-s addon/session_ids.py`` (shipped rules; ledger on, the default) — SSE answers to
  rewritten requests are streamed through the usage observer, one ledger line each;
- **plain**: no addon (mitmproxy holds each SSE answer whole, then sends it);
- **plain-stream** (``--stream-baseline``): no addon, a script that streams SSE answers
  (``flow.response.stream = True``): streamed, nothing read;
- **addon-stream** (``--stream-baseline``): the addon with ``session_usage=false``, and that
  script: the same rewrite and streaming, no usage read (what the ledger itself costs is ledger
  against this one).

``--clients`` client processes keep one plain-HTTP connection each to the proxy and POST
``http://openrouter.ai/api/v1/messages`` (``"stream": true``, an ``x-session-id`` per client),
reading every answer to its end. Runs alternate ledger / plain / ... so drift hits all alike.
Printed: answers per second per proxy, and the ratio ledger ÷ plain (summed over the rounds,
min–max of the rounds in brackets); and that the ledger has one line per answer it passed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))

# Every flow goes to the upstream, from `requestheaders` on (a streamed request body leaves before
# `request`); the Host header stays the gateway's, so the addon's rules match as with the real one.
REDIRECT = """
import os
PORT = int(os.environ["BENCH_UPSTREAM_PORT"])
class ToUpstream:
    def requestheaders(self, flow):
        host = flow.request.headers.get("host")
        flow.request.host, flow.request.port = "127.0.0.1", PORT
        if host:
            flow.request.headers["host"] = host
addons = [ToUpstream()]
"""

# The baselines that stream: SSE answers streamed as they come, as the ledger does, nothing read.
STREAM_SSE = """
class StreamSse:
    def responseheaders(self, flow):
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            flow.response.stream = True
addons = [StreamSse()]
"""


def sse_answer(kb: int) -> bytes:
    def event(name: str, data: dict) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    parts = [
        event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_bench",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5",
                    "content": [],
                    "stop_reason": None,
                    "usage": {
                        "input_tokens": 40,
                        "cache_creation_input_tokens": 200,
                        "cache_read_input_tokens": 9000,
                        "output_tokens": 1,
                    },
                },
            },
        )
    ]
    delta = event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lorem ipsum " * 80}},
    )
    while sum(map(len, parts)) < kb * 1024:
        parts.append(delta)
    parts.append(
        event(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 50000}},
        )
    )
    parts.append(event("message_stop", {"type": "message_stop"}))
    return b"".join(parts)


# -- the upstream (a process of its own) ------------------------------------------------------------


def upstream_main(kb: int, port_file: str) -> None:
    body = sse_answer(kb)
    pieces = [body[i : i + 16384] for i in range(0, len(body), 16384)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )

    def serve(conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                headers, buf = buf.split(b"\r\n\r\n", 1)
                length = 0
                for line in headers.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[length:]
                conn.sendall(head)
                for i in range(0, len(framed), 16400):
                    conn.sendall(framed[i : i + 16400])
        except OSError:
            return
        finally:
            conn.close()

    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    Path(port_file).write_text(str(server.getsockname()[1]))
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


# -- clients ----------------------------------------------------------------------------------------


def client_main(proxy_port: int, seconds: float, index: int, start_at: float, out) -> None:
    body = json.dumps(
        {
            "model": "anthropic/claude-sonnet-4.5",
            "stream": True,
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "bench"}],
        }
    ).encode()
    headers = {"content-type": "application/json", "x-session-id": f"bench-client-{index}"}
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=60)
    while time.time() < start_at:
        time.sleep(0.005)
    done, received, end = 0, 0, start_at + seconds
    while time.time() < end:
        conn.request("POST", "http://openrouter.ai/api/v1/messages", body, headers)
        response = conn.getresponse()
        received += len(response.read())
        if response.status != 200:
            raise SystemExit(f"status {response.status}")
        done += 1
    conn.close()
    out.put((done, received))


def run_load(port: int, clients: int, seconds: float) -> tuple[int, int]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    start_at = time.time() + 0.5
    procs = [
        multiprocessing.Process(target=client_main, args=(port, seconds, i, start_at, queue)) for i in range(clients)
    ]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=seconds + 60) for _ in procs]
    except Exception:
        for p in procs:
            p.kill()
        raise RuntimeError(f"the clients of the proxy on port {port} did not finish") from None
    for p in procs:
        p.join()
    return sum(r[0] for r in results), sum(r[1] for r in results)


# -- main -------------------------------------------------------------------------------------------


def _variants(args, work: Path, redirect: Path) -> dict[str, dict]:
    """The proxies compared, by name: each one's Mitmdump arguments."""
    variants = {
        "ledger": dict(scripts=[REPO / "addon" / "session_ids.py", redirect]),
        "plain": dict(scripts=[redirect]),
    }
    if args.stream_baseline:
        stream_sse = work / "stream_sse.py"
        stream_sse.write_text(STREAM_SSE)
        variants["plain-stream"] = dict(scripts=[redirect, stream_sse])
        variants["addon-stream"] = dict(
            scripts=[REPO / "addon" / "session_ids.py", redirect, stream_sse], sets=["session_usage=false"]
        )
    return variants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--kb", type=int, default=200)
    parser.add_argument("--stream-baseline", action="store_true", help="also plain mitmdump streaming everything")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    from harness import Mitmdump

    work = Path(tempfile.mkdtemp(prefix="bench-usage-"))
    port_file = work / "upstream.port"
    upstream = multiprocessing.Process(target=upstream_main, args=(args.kb, str(port_file)), daemon=True)
    upstream.start()
    while not port_file.exists() or not port_file.read_text():
        time.sleep(0.02)
    redirect = work / "to_upstream.py"
    redirect.write_text(REDIRECT)
    env = {"BENCH_UPSTREAM_PORT": port_file.read_text()}
    variants = _variants(args, work, redirect)
    proxies = {
        name: Mitmdump(env=env, extra_args=["--set", "flow_detail=0"], **kw).start() for name, kw in variants.items()
    }
    figures: dict[str, list[tuple[int, int]]] = {name: [] for name in variants}
    try:
        warm = {name: run_load(proxy.port, 1, 1.0)[0] for name, proxy in proxies.items()}
        for r in range(args.rounds):
            for name, proxy in proxies.items():
                figures[name].append(run_load(proxy.port, args.clients, args.seconds))
                done, received = figures[name][-1]
                print(
                    f"round {r + 1} {name:<13} {done / args.seconds:7.1f} answers/s "
                    f"({received / args.seconds / 1e6:6.1f} MB/s)",
                    flush=True,
                )
        ledger_file = proxies["ledger"].confdir / "agent-session-ids" / "usage.jsonl"
        time.sleep(1)  # the writer thread
        lines = ledger_file.read_bytes().count(b"\n") if ledger_file.exists() else 0
        passed = sum(d for d, _ in figures["ledger"]) + warm["ledger"]
    except RuntimeError:
        for name, proxy in proxies.items():
            print(f"--- {name} (port {proxy.port}):\n{proxy.output()[-1500:]}", file=sys.stderr)
        raise
    finally:
        for proxy in proxies.values():
            proxy.cleanup()
        upstream.terminate()

    total = {name: sum(d for d, _ in runs) for name, runs in figures.items()}
    ratios = [a[0] / b[0] for a, b in zip(figures["ledger"], figures["plain"], strict=True) if b[0]]
    result = {
        "kb": args.kb,
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "answers_per_s": {name: total[name] / (args.seconds * args.rounds) for name in total},
        "ratio_ledger_vs_plain": total["ledger"] / total["plain"] if total["plain"] else None,
        "ratio_range": [min(ratios), max(ratios)] if ratios else None,
        "ledger_lines": lines,
        "ledger_answers_at_least": passed,
    }
    for name in ("plain-stream", "addon-stream"):
        if total.get(name):
            result[f"ratio_ledger_vs_{name.replace('-', '_')}"] = total["ledger"] / total[name]
    print(f"\n{args.kb} KB streamed answers, {args.clients} clients, {args.rounds} x {args.seconds:g} s:")
    for name, rate in result["answers_per_s"].items():
        print(f"  {name:<13} {rate:7.1f} answers/s")
    print(
        f"  ratio ledger ÷ plain mitmdump: {result['ratio_ledger_vs_plain']:.2f} "
        f"[{result['ratio_range'][0]:.2f}–{result['ratio_range'][1]:.2f}]"
    )
    if "ratio_ledger_vs_plain_stream" in result:
        print(f"  ratio ledger ÷ plain mitmdump streaming: {result['ratio_ledger_vs_plain_stream']:.2f}")
        print(f"  ratio ledger ÷ addon streaming, usage off: {result['ratio_ledger_vs_addon_stream']:.2f}")
    print(f"  ledger lines: {lines} (answers through the ledger proxy, warm-up included: {passed})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
