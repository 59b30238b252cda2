#!/usr/bin/env python3
"""Benchmark: the agent-session-ids addon against plain mitmdump, on the same load, in the same run.

Usage (from the repository root, with the Python that has mitmproxy and pyyaml)::

    python tests/benchmarks/bench.py --quick                 # about two minutes, for development
    python tests/benchmarks/bench.py --json bench.json       # the full run, about 15 minutes
    python tests/benchmarks/bench.py --phases base,newconn --clients 8 --seconds 5
    python tests/benchmarks/bench.py --quick --profile /tmp/prof   # + py-spy profiles (see below)

It prints numbers; it asserts nothing (the targets of issue 5 are shown next to the figures).

Set-up
------
Two real mitmdumps on 127.0.0.1 (``tests/support/harness.py``'s ``Mitmdump``), both running the gateway
stand-in (``tests/support/gateway_standin.py``, with its log off) and ``bench_probe.py`` (a few counters):

- **A = addon**: ``-s addon/session_ids.py`` with the shipped rules, then the probe and stand-in;
- **B = plain**: only the probe and the stand-in.

Runs alternate A B A B ... (``--rounds`` pairs), so slow drift of the machine (other jobs) hits
both alike. Client processes are separate OS processes (this file with ``--worker``) that call
``prctl(PR_SET_NAME, "pi")``, run with ``HOME`` and cwd pointing at a fake pi store, keep
HTTPS connections alive through the proxy (CONNECT + TLS trusting that proxy's CA), and send
OpenRouter-shaped ``POST https://openrouter.ai/api/v1/chat/completions`` bodies (``"stream":
false``) of about 8 KB or 200 KB that continue the newest session file of the store (same
first user turn, a few answered turns). After every answer a client appends one assistant
line to that file, as pi does, so the addon's "read what was appended" path runs too.
Before measuring, a probe request checks that the addon really resolved the session: the
``session_id`` that reached the stand-in must equal the label of the session file (its name
slug + the uuid's last 8 chars). After each addon run the probe's counters must show every
request rewritten; anything else is printed as a warning ("rewritten x/y").

Phases (``--phases``, default all)
----------------------------------
- ``base``: 10 session files, newest ~1 KB. Throughput with ``--clients`` concurrent clients,
  8 KB and 200 KB bodies; latency with one client, sequential requests on a warm connection.
- ``files``: the same with ``--files`` (10,000) files in the folder.
- ``big``: the newest session file is ``--big-mb`` (100) MB with its ``session_info`` name at
  the very end.
- ``newconn``: one client opening a new connection per request (TCP + CONNECT + TLS + one 8 KB
  request), with no extra processes and with ``--procs`` (1,000) extra idle ``sleep``
  processes of this user started for it (and killed after). Also times the addon's own
  ``proc.lookup`` in this process, split into its steps.
- ``memory``: ``--mem-requests`` (100,000) requests across ``--mem-sessions`` (10,000) distinct
  sessions (the ``files`` folder's files; each request continues another one), by waves of
  fresh client processes (so ended processes must be forgotten), addon proxy only.

Store variants (issue 13): each measured as ``base`` is (8 KB and 200 KB bodies, the same figures),
with ``--variant-seconds`` / ``--variant-lat-seconds`` per run (quick: 0.75 s each):

- ``headeronly``: ``--header-files`` (2,000) pi files that hold only their session line,
  created over the last two hours around a ``--header-mb`` (50) MB named session (name at its
  end), which the clients continue: the store a user tried in issue 13.
- ``nomatch``: 10 files as in ``base``, but the clients' first user turn is in none of them (a
  session whose file is not written, or ``--no-session``): the addon mints ``ephemeral-...``
  per process, and the probe checks that prefix.
- ``unseen``: the clients run as another user (uid 65534 through ``setpriv``; needs root, else it
  is skipped with the reason), so the addon cannot read their processes and resolves from the
  request alone. Their store (10 files, in a 0755 temp folder owned by that user, with copies
  of this file and the proxies' CA certificates) is given to the addon proxy with
  ``--set session_store_homes=<its HOME>`` (as the README says for a store the proxy's user does
  not own), so the addon resolves on the store, as it would for that user's own processes. Two
  sub-variants: ``unseen_hdr``, requests carrying ``x-session-id: <the file's uuid>`` as pi
  0.86+ sends (the file is found by that id: the session_id must be its label), and
  ``unseen_nohdr``, requests that name no session (found by their conversation: the same label).
  The clients run ``/usr/bin/python3`` when this Python is not usable by that user.

What the numbers mean
---------------------
- ``ratio``: requests per second through A ÷ through B, ``--clients`` clients, summed over
  the rounds (min–max of the per-round ratios in brackets). Target ≥ 0.95.
- ``added p50 / p99``: one client, warm connection, sequential requests: latency percentile
  through A minus the same percentile through B, in ms. Targets ≤ 0.3 ms and ≤ 2 ms.
- ``addon p50``: that latency through A alone (to compare variants: target within 10 %).
- ``cold``: the first request on A after the store appeared (first folder listing, head reads
  of every file, first read of the big file), minus the same first request on B, in ms; and
  whether the addon still resolved it in time (it gives up after 0.5 s).
- ``newconn added``: p50/p99 of (new connection + first request) through A minus through B, in
  ms; ``beyond warm`` subtracts the warm ``added p50``: the cost of the process lookup as the
  client sees it. Target ≤ 2 ms with 1,000 processes.
- ``lookup direct``: median time of ``proc.lookup`` called in this process for one of its
  own loopback connections, and of its steps (``/proc/net/tcp`` scan, ``/proc/*/fd`` scan,
  reading the process).
- ``peak RSS``: VmHWM of each mitmdump process (after the phase); ``memory``: VmRSS of A after
  the first 1 % of the requests (1,000) and after all of them. Target: growth ≤ 20 MB.

``--profile DIR``: after the measured rounds of some phases, one more addon-only round runs
under ``py-spy record --gil`` (so the samples say where the Python CPU time goes; needs py-spy, e.g. ``pip install py-spy``; run as root or with
ptrace allowed), saving ``DIR/<phase>.txt`` (collapsed stacks) and printing the hot functions.
Those rounds are not part of the figures.

``--json FILE`` writes every figure (and the raw per-round data) as JSON.
"""

from __future__ import annotations

import argparse
import base64
import collections
import ctypes
import http.client
import json
import os
import random
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ADDON = REPO / "addon" / "session_ids.py"
STANDIN = REPO / "tests" / "support" / "gateway_standin.py"
PROBE = HERE / "bench_probe.py"
CHAT_PATH = "/api/v1/chat/completions"
HOST = "openrouter.ai"
MODEL = "anthropic/claude-sonnet-4"

# --------------------------------------------------------------------------- realistic content

_WORDS = [
    "session",
    "request",
    "handler",
    "config",
    "parse",
    "token",
    "cache",
    "buffer",
    "stream",
    "client",
    "server",
    "state",
    "value",
    "index",
    "result",
    "error",
    "retry",
    "timeout",
    "folder",
    "record",
    "header",
    "body",
    "field",
    "rule",
    "match",
    "process",
    "socket",
    "thread",
    "worker",
    "queue",
    "store",
    "label",
    "trace",
    "module",
    "import",
    "return",
    "yield",
]


def _code(rng: random.Random, size: int) -> str:
    """Plausible source text of about `size` chars (tool output: a file read, a grep, a diff)."""
    out, n = [], 0
    while n < size:
        w = rng.sample(_WORDS, 4)
        kind = rng.random()
        if kind < 0.15:
            line = f"def {w[0]}_{w[1]}(self, {w[2]}: str, {w[3]}: int = 0) -> dict[str, object]:"
        elif kind < 0.3:
            line = f"    # {w[0].capitalize()} the {w[1]} before the {w[2]} reaches the {w[3]}."
        elif kind < 0.5:
            line = f"    if {w[0]}.{w[1]} is None or len({w[2]}) > {rng.randint(1, 4096)}:"
        elif kind < 0.7:
            line = f"        return self.{w[0]}_{w[1]}({w[2]}, {w[3]}={rng.randint(0, 99)!r})"
        else:
            line = f'    {w[0]}_{w[1]} = {w[2]}.get("{w[3]}", {rng.random():.4f})'
        out.append(line)
        n += len(line) + 1
    return "\n".join(out)


def first_text(i: int) -> str:
    """The first user turn of session i (distinct per i)."""
    rng = random.Random(1000 + i)
    w = rng.sample(_WORDS, 6)
    return (
        f"Task {i}: the {w[0]} {w[1]} in src/{w[2]}/{w[3]}.py drops the {w[4]} when the "
        f"{w[5]} times out. Find out why, add a regression test, and fix it without changing "
        f"the public API. Run the test suite when you are done."
    )


SYSTEM_PROMPT = (
    "You are an expert coding assistant operating inside pi, a coding agent harness. You help users "
    "by reading files, executing commands, editing code, and writing new files.\n\nAvailable tools:\n"
    "- read: Read file contents\n- bash: Execute bash commands (ls, grep, find, etc.)\n"
    "- edit: Make surgical edits to files (find exact text and replace)\n- write: Create or overwrite files\n\n"
    "Guidelines:\n"
    + "\n".join(f"- {_code(random.Random(k), 160).splitlines()[0]}" for k in range(14))
    + "\n\nCurrent date: 2026-11-21\nCurrent working directory: /home/user/project"
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": desc,
            "parameters": {"type": "object", "properties": props, "required": list(props)[:1]},
        },
    }
    for name, desc, props in [
        (
            "read",
            "Read the contents of a file. Supports text files and images.",
            {
                "path": {"type": "string", "description": "Path to the file to read"},
                "offset": {"type": "number", "description": "Line number to start reading from"},
                "limit": {"type": "number", "description": "Maximum number of lines to read"},
            },
        ),
        (
            "bash",
            "Execute a bash command in the current working directory.",
            {
                "command": {"type": "string", "description": "Bash command to execute"},
                "timeout": {"type": "number", "description": "Timeout in seconds"},
            },
        ),
        (
            "edit",
            "Edit a file by replacing exact text.",
            {"path": {"type": "string"}, "oldText": {"type": "string"}, "newText": {"type": "string"}},
        ),
        (
            "write",
            "Write content to a file. Creates the file if it does not exist.",
            {"path": {"type": "string"}, "content": {"type": "string"}},
        ),
    ]
]

_PLACEHOLDER = "@@BENCH-FIRST-USER@@"
NOMATCH_SESSION = 1_000_000  # first_text() of a session no store holds


def body_template(target: int, seed: int = 7) -> tuple[bytes, bytes]:
    """(prefix, suffix) of an OpenAI-chat body of about `target` bytes; the JSON string of the
    first user turn goes in between. It carries a few answered turns (a continued session)."""
    rng = random.Random(seed)
    messages: list[dict] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "text", "text": _PLACEHOLDER}]},
    ]
    k = 0

    def size() -> int:
        return len(json.dumps({"model": MODEL, "messages": messages, "tools": TOOLS}))

    per_tool = max(200, min(9000, (target - 6000) // 3))
    while True:
        k += 1
        call_id = f"toolu_{rng.getrandbits(64):016x}"
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "read", "arguments": json.dumps({"path": f"src/mod_{k}.py"})},
                    }
                ],
            }
        )
        room = target - size() - 400
        messages.append({"role": "tool", "tool_call_id": call_id, "content": _code(rng, max(100, min(per_tool, room)))})
        if k % 3 == 0:
            messages.append({"role": "assistant", "content": f"Step {k}: the {rng.choice(_WORDS)} looks right."})
            messages.append({"role": "user", "content": [{"type": "text", "text": "Go on."}]})
        if size() > target - 700:
            break
    messages.append({"role": "assistant", "content": "I found the cause; now writing the test."})
    messages.append({"role": "user", "content": [{"type": "text", "text": "Good, continue."}]})
    body = {
        "model": MODEL,
        "messages": messages,
        "tools": TOOLS,
        "tool_choice": "auto",
        "max_completion_tokens": 16384,
        "stream": False,
    }
    text = json.dumps(body, separators=(",", ":"))
    prefix, suffix = text.split(json.dumps(_PLACEHOLDER), 1)
    return prefix.encode(), suffix.encode()


def make_body(template: tuple[bytes, bytes], first: str) -> bytes:
    return template[0] + json.dumps(first).encode() + template[1]


BODY_SIZES = {"8k": 8 * 1024, "200k": 200 * 1024}

# --------------------------------------------------------------------------- the pi store


def pi_folder(home: Path, cwd: Path) -> Path:
    return home / ".pi" / "agent" / "sessions" / ("--" + re.sub(r"[/\\:]", "-", str(cwd).lstrip("/")) + "--")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:50]


def expected_label(name: str | None, sid: str) -> str:
    if name and slug(name):
        return f"{slug(name)}-{re.sub(r'[^0-9A-Za-z]', '', sid)[-8:].lower()}"
    return sid


class Entries:
    """Builds the lines of one pi session file (format version 3)."""

    def __init__(self, rng: random.Random, t: float) -> None:
        self.rng, self.t, self.parent = rng, t, None

    def entry(self, kind: str, **fields) -> str:
        eid = f"{self.rng.getrandbits(32):08x}"
        self.t += 1.5
        line = _dumps({"type": kind, "id": eid, "parentId": self.parent, "timestamp": _iso(self.t), **fields})
        self.parent = eid
        return line

    def user(self, text: str) -> str:
        return self.entry(
            "message",
            message={"role": "user", "content": [{"type": "text", "text": text}], "timestamp": int(self.t * 1000)},
        )

    def assistant(self, content: list, stop: str = "stop") -> str:
        return self.entry(
            "message",
            message={
                "role": "assistant",
                "content": content,
                "api": "openai-completions",
                "provider": "openrouter",
                "model": MODEL,
                "usage": {
                    "input": 2400,
                    "output": 160,
                    "cacheRead": 0,
                    "cacheWrite": 0,
                    "totalTokens": 2560,
                    "cost": {"total": 0.0096},
                },
                "stopReason": stop,
                "timestamp": int(self.t * 1000),
            },
        )

    def tool_turn(self, size: int) -> list[str]:
        call = f"toolu_{self.rng.getrandbits(64):016x}"
        return [
            self.assistant(
                [
                    {
                        "type": "toolCall",
                        "id": call,
                        "name": "bash",
                        "arguments": {"command": f"grep -rn {self.rng.choice(_WORDS)} src/"},
                    }
                ],
                "toolUse",
            ),
            self.entry(
                "message",
                message={
                    "role": "toolResult",
                    "toolCallId": call,
                    "toolName": "bash",
                    "content": [{"type": "text", "text": _code(self.rng, size)}],
                    "isError": False,
                    "timestamp": int(self.t * 1000),
                },
            ),
        ]


def write_session(
    folder: Path, cwd: Path, i: int, created: float, name: str | None, big_bytes: int = 0, extra_turns: int = 0
) -> dict:
    rng = random.Random(f"{cwd}:{i}:{int(created)}")  # distinct ids across stores (one HOME holds several)
    sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    path = folder / f"{_iso(created).replace(':', '-').replace('.', '-')}_{sid}.jsonl"
    e = Entries(rng, created)
    lines = [
        _dumps({"type": "session", "version": 3, "id": sid, "timestamp": _iso(created), "cwd": str(cwd)}),
        e.entry("model_change", provider="openrouter", modelId=MODEL),
        e.entry("thinking_level_change", thinkingLevel="off"),
        e.user(first_text(i)),
        e.assistant([{"type": "text", "text": "Let me look at the code first."}]),
    ]
    for _ in range(extra_turns):
        lines += e.tool_turn(rng.randint(200, 1200))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        if big_bytes:
            # ~1 MB of ordinary turns, repeated until the file is big_bytes long
            block_lines = []
            while sum(len(x) + 1 for x in block_lines) < (1 << 20):
                block_lines += e.tool_turn(rng.randint(2000, 8000))
                block_lines.append(e.assistant([{"type": "text", "text": _code(rng, 400)}]))
                block_lines.append(e.user("Continue with the next step."))
            block = "\n".join(block_lines) + "\n"
            written = f.tell()
            while written < big_bytes:
                f.write(block)
                written += len(block)
        if name:
            f.write(e.entry("session_info", name=name) + "\n")
    mtime = created + 30
    os.utime(path, (mtime, mtime))
    return {"path": str(path), "id": sid, "name": name, "label": expected_label(name, sid), "index": i}


def make_store(home: Path, cwd: Path, n_files: int, newest_name: str, big_bytes: int = 0) -> dict:
    """n_files session files in cwd's pi folder; file 0 is the newest (named newest_name)."""
    cwd.mkdir(parents=True, exist_ok=True)
    folder = pi_folder(home, cwd)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time() - 3600
    sessions = []
    for i in range(n_files):
        name = newest_name if i == 0 else (f"Fix {first_text(i).split()[3]} issue {i}" if i % 3 == 0 else None)
        sessions.append(
            write_session(folder, cwd, i, now - i * 60, name, big_bytes=big_bytes if i == 0 else 0, extra_turns=i % 3)
        )
    return {
        "cwd": str(cwd),
        "folder": str(folder),
        "sessions": sessions,
        "newest_bytes": os.path.getsize(sessions[0]["path"]),
    }


def make_headeronly_store(home: Path, cwd: Path, n_header: int, big_bytes: int, name: str) -> dict:
    """n_header pi files holding only their session line, spread over the last two hours, and one
    big named session (created an hour ago) that the clients continue: sessions[0]."""
    cwd.mkdir(parents=True, exist_ok=True)
    folder = pi_folder(home, cwd)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    big = write_session(folder, cwd, 0, now - 3600, name, big_bytes=big_bytes, extra_turns=2)
    rng = random.Random(f"{cwd}:header-only")
    for k in range(n_header):
        created = now - 7200 + (k + 0.5) * (7000 / max(1, n_header))
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        path = folder / f"{_iso(created).replace(':', '-').replace('.', '-')}_{sid}.jsonl"
        path.write_text(
            _dumps({"type": "session", "version": 3, "id": sid, "timestamp": _iso(created), "cwd": str(cwd)}) + "\n",
            encoding="utf-8",
        )
        os.utime(path, (created, created))
    return {
        "cwd": str(cwd),
        "folder": str(folder),
        "sessions": [big],
        "files": n_header + 1,
        "newest_bytes": os.path.getsize(big["path"]),
    }


# --------------------------------------------------------------------------- client worker


def _set_comm(name: bytes) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name, 0, 0, 0)  # PR_SET_NAME
    except Exception:
        pass


class Client:
    """One worker's HTTPS connections (one per proxy port), kept alive."""

    HEADERS = {
        "Content-Type": "application/json",
        "Authorization": "Bearer sk-or-v1-fake-bench-key",
        "User-Agent": "OpenAI/JS 5.12.2",
        "Accept": "application/json",
        "HTTP-Referer": "https://github.com/earendil-works/pi",
        "X-Title": "pi",
    }

    def __init__(self) -> None:
        self.conns: dict[int, http.client.HTTPSConnection] = {}
        self.ctx: dict[str, ssl.SSLContext] = {}

    def _context(self, ca: str) -> ssl.SSLContext:
        if ca not in self.ctx:
            self.ctx[ca] = ssl.create_default_context(cafile=ca)
        return self.ctx[ca]

    def new_conn(self, port: int, ca: str) -> http.client.HTTPSConnection:
        c = http.client.HTTPSConnection("127.0.0.1", port, context=self._context(ca), timeout=60)
        c.set_tunnel(HOST, 443)
        c.connect()
        return c

    def conn(self, port: int, ca: str) -> tuple[http.client.HTTPSConnection, bool]:
        c = self.conns.get(port)
        if c is not None:
            return c, False
        c = self.conns[port] = self.new_conn(port, ca)
        return c, True

    def post(self, c: http.client.HTTPSConnection, body: bytes, probe: bool = False, extra: dict | None = None):
        headers = dict(self.HEADERS)
        if extra:
            headers.update(extra)
        if probe:
            headers["x-bench-probe"] = "1"
        c.request("POST", CHAT_PATH, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
        return r, data

    def drop(self, port: int) -> None:
        c = self.conns.pop(port, None)
        if c is not None:
            c.close()


def _append_answer(path: str | None, k: int) -> None:
    if not path:
        return
    line = (
        _dumps(
            {
                "type": "message",
                "id": f"{k:08x}",
                "parentId": None,
                "timestamp": _iso(time.time()),
                "message": {
                    "role": "assistant",
                    "content": [{"type": "text", "text": f"ok {k}"}],
                    "api": "openai-completions",
                    "provider": "openrouter",
                    "model": MODEL,
                    "usage": {"input": 2400, "output": 5},
                    "stopReason": "stop",
                    "timestamp": int(time.time() * 1000),
                },
            }
        )
        + "\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class _Worker:
    """One client process's commands by name: each takes the command, the proxy's port and CA."""

    def __init__(self) -> None:
        self.client = Client()
        self.templates: dict[str, tuple[bytes, bytes]] = {}

    def template(self, kind: str) -> tuple[bytes, bytes]:
        if kind not in self.templates:
            self.templates[kind] = body_template(BODY_SIZES[kind])
        return self.templates[kind]

    def prepare(self, cmd: dict, port, ca) -> dict:
        """Make the body templates before the clock starts."""
        for kind in cmd["bodies"]:
            self.template(kind)
        return {"ok": True}

    def probe(self, cmd: dict, port, ca) -> dict:
        """One request that asks the stand-in what the proxy set (x-bench-info)."""
        body = make_body(self.template(cmd.get("body", "8k")), first_text(cmd.get("session", 0)))
        t0 = time.perf_counter()
        c, _ = self.client.conn(port, ca)
        r, _ = self.client.post(c, body, probe=True, extra=cmd.get("headers"))
        ms = (time.perf_counter() - t0) * 1000
        info = r.getheader("x-bench-info")
        return {"ms": ms, "info": json.loads(base64.b64decode(info)) if info else None}

    def warm(self, cmd: dict, port, ca) -> dict:
        """Requests on one kept connection from start_at for `seconds`: their latencies."""
        body = make_body(self.template(cmd["body"]), first_text(cmd.get("session", 0)))
        extra = cmd.get("headers")
        c, fresh = self.client.conn(port, ca)
        if fresh:
            self.client.post(c, body, extra=extra)
        while time.time() < cmd["start_at"]:
            time.sleep(0.002)
        end = cmd["start_at"] + cmd["seconds"]
        lat = []
        k = 0
        append = cmd.get("append")
        perf = time.perf_counter
        while time.time() < end:
            t0 = perf()
            self.client.post(c, body, extra=extra)
            lat.append(round((perf() - t0) * 1000, 4))
            k += 1
            _append_answer(append, os.getpid() * 1000000 + k)
        return {"n": len(lat), "lat": lat}

    def newconn(self, cmd: dict, port, ca) -> dict:
        """`count` requests, each on a new connection: connect, answer and total times."""
        body = make_body(self.template(cmd["body"]), first_text(cmd.get("session", 0)))
        self.client.drop(port)
        rows = []
        perf = time.perf_counter
        for _ in range(cmd["count"]):
            t0 = perf()
            c = self.client.new_conn(port, ca)
            t1 = perf()
            self.client.post(c, body, extra=cmd.get("headers"))
            t2 = perf()
            c.close()
            rows.append([round((t2 - t0) * 1000, 4), round((t1 - t0) * 1000, 4), round((t2 - t1) * 1000, 4)])
        return {"rows": rows}

    def memory(self, cmd: dict, port, ca) -> dict:
        """One request per session in `sessions`, every probe_every-th asking what was set."""
        tpl = self.template(cmd["body"])
        c, _ = self.client.conn(port, ca)
        probes = []
        every = cmd.get("probe_every", 0)
        t0 = time.perf_counter()
        for j, s in enumerate(cmd["sessions"]):
            probe = bool(every) and j % every == every - 1
            r, _ = self.client.post(c, make_body(tpl, first_text(s)), probe=probe)
            if probe:
                info = r.getheader("x-bench-info")
                info = json.loads(base64.b64decode(info)) if info else {}
                probes.append([s, info.get("session_id")])
        return {"n": len(cmd["sessions"]), "seconds": time.perf_counter() - t0, "probes": probes}


WORKER_OPS = {
    "prepare": _Worker.prepare,
    "probe": _Worker.probe,
    "warm": _Worker.warm,
    "newconn": _Worker.newconn,
    "memory": _Worker.memory,
}


def worker_main() -> None:
    """`bench.py --worker`: one client process. Commands as JSON lines on stdin, answers on stdout."""
    _set_comm(b"pi")
    worker = _Worker()
    out = sys.stdout
    for raw in sys.stdin:
        cmd = json.loads(raw)
        op = cmd["cmd"]
        try:
            if op == "quit":
                break
            run = WORKER_OPS.get(op)
            res = run(worker, cmd, cmd.get("port"), cmd.get("ca")) if run else {"error": f"unknown command {op}"}
        except Exception as e:
            res = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(res) + "\n")
        out.flush()


# --------------------------------------------------------------------------- orchestration


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Workers:
    """A pool of client processes running as 'pi' in a given cwd, HOME. `runas` (the ``unseen``
    variant): {"python", "script", "ca_map"}: run as uid/gid 65534 through setpriv, that Python
    and that copy of this file, with the CA certificates replaced by copies that user can read."""

    def __init__(self, n: int, cwd: str, home: str, runas: dict | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["HOME"] = home
        env["PYTHONUNBUFFERED"] = "1"
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker"]
        self.ca_map: dict[str, str] = {}
        if runas:
            argv = [*NOBODY, runas["python"], runas["script"], "--worker"]
            self.ca_map = runas["ca_map"]
            for key in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"):
                env.pop(key, None)
        self.procs = [
            subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
            )
            for _ in range(n)
        ]

    def send(self, cmds: list[dict]) -> list[dict]:
        for p, c in zip(self.procs, cmds, strict=False):  # fewer commands than workers: the first ones
            if self.ca_map and c.get("ca") in self.ca_map:
                c = {**c, "ca": self.ca_map[c["ca"]]}
            p.stdin.write(json.dumps(c) + "\n")
            p.stdin.flush()
        out = []
        for p in self.procs[: len(cmds)]:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {p.pid} died (exit {p.poll()})")
            res = json.loads(line)
            if "error" in res:
                raise RuntimeError(f"worker {p.pid}: {res['error']}")
            out.append(res)
        return out

    def all(self, cmd: dict) -> list[dict]:
        return self.send([dict(cmd) for _ in self.procs])

    def close(self) -> None:
        for p in self.procs:
            try:
                p.stdin.write('{"cmd": "quit"}\n')
                p.stdin.flush()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def python_for_nobody() -> str | None:
    """A Python that uid 65534 can run (as tests/e2e/test_trust.py finds one)."""
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            r = subprocess.run([*NOBODY, python, "-c", "import ssl, ctypes"], capture_output=True, cwd="/", timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return python
    return None


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process used so far, all its threads."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0]) // 1024  # MiB
    except OSError:
        pass
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def fetch_counters(proxy, reset: bool = False) -> dict:
    ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
    c = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=30)
    c.set_tunnel(HOST, 443)
    c.request("GET", "/__bench/counters" + ("?reset=1" if reset else ""))
    data = json.loads(c.getresponse().read())
    c.close()
    return data


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="asi-bench-"))
        self.home = self.root / "home"
        self.results: dict = {
            "config": {k: v for k, v in vars(args).items()},
            "phases": {},
            "addon_sources": addon_fingerprint(),
            "python": sys.version.split()[0],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.A = self.B = None
        self.extra: list[subprocess.Popen] = []
        self.nobody_root: Path | None = None  # the ``unseen`` variant's 0755 folder (another user's)
        self.pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    # -- proxies
    def start(self) -> None:
        sys.path.insert(0, str(REPO / "tests" / "support"))
        import harness

        _addon_process_module()  # the same version of the code as the proxies load now
        no_log = {"STANDIN_LOG": ""}
        # the ``unseen`` clients' store is another user's: the addon reads it as the README says
        sets = [f"session_store_homes={self.nobody_root / 'home'}"] if self.nobody_root else []
        sets += self.args.addon_set or []
        self.A = harness.Mitmdump(scripts=[ADDON, PROBE, STANDIN], env=no_log, sets=sets).start()
        self.B = harness.Mitmdump(scripts=[PROBE, STANDIN], env=no_log).start()
        self.names = {id(self.A): "addon", id(self.B): "plain"}
        log(f"proxies: addon pid {self.A.pid} port {self.A.port}; plain pid {self.B.pid} port {self.B.port}")

    def stop(self) -> None:
        self.kill_extra()
        for p in (self.A, self.B):
            if p is not None:
                p.cleanup()
        roots = [self.root] + ([self.nobody_root] if self.nobody_root else [])
        if not self.args.keep:
            for root in roots:
                shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept {', '.join(map(str, roots))}")

    def rss(self) -> dict:
        return {"addon": proc_status(self.A.pid), "plain": proc_status(self.B.pid)}

    def cmd(self, proxy, **kw) -> dict:
        return {"port": proxy.port, "ca": str(proxy.ca_cert), **kw}

    # -- helpers
    def check_counters(self, where: str, expect: int | None = None) -> dict:
        c = fetch_counters(self.A, reset=True)
        fetch_counters(self.B, reset=True)
        bad = c["responses"] - c["rewritten"]
        if bad or (expect is not None and c["responses"] < expect):
            log(f"WARNING {where}: addon rewrote {c['rewritten']}/{c['responses']} requests; errors: {c['errors']}")
        return c

    @staticmethod
    def client_kw(store: dict) -> dict:
        """What the store's clients send: which first user turn, which extra headers."""
        kw = {"session": store.get("client_session", 0)}
        if store.get("headers"):
            kw["headers"] = store["headers"]
        return kw

    @staticmethod
    def expected(store: dict) -> str:
        """The session_id the stand-in must get, as text (a prefix ends with '…')."""
        if "expect_prefix" in store:
            return store["expect_prefix"] + "…"
        return store.get("expect") or store["sessions"][0]["label"]

    @staticmethod
    def resolved_ok(store: dict, got: str | None) -> bool:
        if "expect_prefix" in store:
            return isinstance(got, str) and got.startswith(store["expect_prefix"])
        return got == (store.get("expect") or store["sessions"][0]["label"])

    def probe(self, workers: Workers, store: dict, body: str = "8k") -> dict:
        """First requests on a fresh worker: cold cost on A vs B; checks the resolution."""
        want = self.expected(store)
        kw = self.client_kw(store)
        out = {}
        for name, proxy in (("addon", self.A), ("plain", self.B)):
            first = workers.send([self.cmd(proxy, cmd="probe", body=body, **kw)])[0]
            second = workers.send([self.cmd(proxy, cmd="probe", body=body, **kw)])[0]
            out[name] = {
                "first_ms": first["ms"],
                "second_ms": second["ms"],
                "first": first["info"],
                "second": second["info"],
            }
        a = out["addon"]
        ok_first = self.resolved_ok(store, (a["first"] or {}).get("session_id"))
        out["expected"] = want
        out["resolved_first"] = ok_first
        out["cold_added_ms"] = a["first_ms"] - out["plain"]["first_ms"]
        # until the addon resolves it (a cold store may take the worker longer than the 0.5 s limit)
        t0, tries, last = time.time(), 1, a["second"]
        ok = self.resolved_ok(store, (last or {}).get("session_id"))
        while not ok and time.time() - t0 < 120:
            time.sleep(0.2)
            tries += 1
            last = workers.send([self.cmd(self.A, cmd="probe", body=body, **kw)])[0]["info"]
            ok = self.resolved_ok(store, (last or {}).get("session_id"))
        out["resolved"] = ok
        out["got"] = (last or {}).get("session_id")
        # the same again on the same connection (a minted ID must not change between requests)
        out["stable"] = (a["first"] or {}).get("session_id") == (a["second"] or {}).get("session_id")
        out["failed_before_resolved"] = 0 if ok_first else tries
        out["seconds_until_resolved"] = 0.0 if ok_first else round(time.time() - t0 + a["first_ms"] / 1000, 2)
        if not ok_first:
            log(
                f"note: the cold first request was not resolved in time: {a['first']}; "
                f"resolved after {out['seconds_until_resolved']} s: {ok}"
            )
        if not ok:
            raise RuntimeError(f"the addon did not resolve the session: expected session_id {want!r}, got {last!r}")
        if (out["plain"]["second"] or {}).get("session_id") is not None:
            raise SystemExit("the plain proxy set a session_id?!")
        self.check_counters("probe")
        return out

    def profile_round(self, label: str, run) -> dict | None:
        if not self.args.profile:
            return None
        outdir = Path(self.args.profile)
        outdir.mkdir(parents=True, exist_ok=True)
        dest = outdir / f"{label}.txt"
        secs = self.args.profile_seconds
        sp = subprocess.Popen(
            [
                self.pyspy,
                "record",
                "-p",
                str(self.A.pid),
                "-r",
                "250",
                "-d",
                str(int(secs) + 2),
                "-f",
                "raw",
                "-t",
                "--gil",
                "-o",
                str(dest),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.7)
        run(secs)
        try:
            _, err = sp.communicate(timeout=secs + 30)
        except subprocess.TimeoutExpired:
            sp.kill()
            err = ""
        if not dest.exists():
            log(f"py-spy failed: {err.strip()[-300:]}")
            return None
        summary = summarize_profile(dest)
        print_profile(label, summary)
        return summary

    def warm_runs(
        self,
        workers: Workers,
        body: str,
        seconds: float,
        rounds: int,
        n: int | None = None,
        append: str | None = None,
        kw: dict | None = None,
    ) -> dict:
        kw = kw or {}
        n = n or len(workers.procs)
        per = {"addon": [], "plain": []}
        cpu = {"addon": 0.0, "plain": 0.0}  # the proxy process's CPU seconds (all its threads) in the runs
        gc_runs = {"addon": [0, 0, 0], "plain": [0, 0, 0]}  # its garbage collections, per generation
        for _ in range(rounds):
            for name, proxy in (("addon", self.A), ("plain", self.B)):
                gc_before = fetch_counters(proxy).get("gc") or [0, 0, 0]
                start_at = time.time() + 0.15
                before = proc_cpu(proxy.pid)
                res = workers.send(
                    [self.cmd(proxy, cmd="warm", body=body, seconds=seconds, start_at=start_at, append=append, **kw)]
                    * n
                )
                cpu[name] += proc_cpu(proxy.pid) - before
                gc_runs[name] = [
                    x + b - a
                    for x, a, b in zip(
                        gc_runs[name], gc_before, fetch_counters(proxy).get("gc") or [0, 0, 0], strict=False
                    )
                ]
                per[name].append({"n": sum(x["n"] for x in res), "lat": [v for x in res for v in x["lat"]]})
        counters = self.check_counters(f"warm {body}")
        na, nb = sum(x["n"] for x in per["addon"]), sum(x["n"] for x in per["plain"])
        ratios = [a["n"] / b["n"] for a, b in zip(per["addon"], per["plain"], strict=True) if b["n"]]
        la = [v for x in per["addon"] for v in x["lat"]]
        lb = [v for x in per["plain"] for v in x["lat"]]
        return {
            "clients": n,
            "body": body,
            "seconds": seconds,
            "rounds": rounds,
            "rps_addon": na / (seconds * rounds),
            "rps_plain": nb / (seconds * rounds),
            "ratio": na / nb if nb else float("nan"),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "p50_addon": pct(la, 50),
            "p50_plain": pct(lb, 50),
            "p99_addon": pct(la, 99),
            "p99_plain": pct(lb, 99),
            "added_p50": pct(la, 50) - pct(lb, 50),
            "added_p99": pct(la, 99) - pct(lb, 99),
            "cpu_us_addon": 1e6 * cpu["addon"] / na if na else None,
            "cpu_us_plain": 1e6 * cpu["plain"] / nb if nb else None,
            "gc_addon": gc_runs["addon"],
            "gc_plain": gc_runs["plain"],
            "counters": counters,
        }

    # -- phases
    def warm_phase(
        self, key: str, store: dict, bodies: list[str], seconds: float | None = None, lat_seconds: float | None = None
    ) -> dict:
        """The store's clients: `store` may also say which first user turn they send
        (client_session), extra headers, which file they append to (append; None: none), another
        HOME and user (home, runas), and what the addon must give (expect, expect_prefix)."""
        a = self.args
        seconds = seconds or a.seconds
        lat_seconds = lat_seconds or a.lat_seconds
        kw = self.client_kw(store)
        workers = Workers(a.clients, store["cwd"], store.get("home", str(self.home)), runas=store.get("runas"))
        try:
            workers.all({"cmd": "prepare", "bodies": bodies})
            out = {
                "files": store.get("files", len(store["sessions"])),
                "newest_bytes": store["newest_bytes"],
                "seconds": seconds,
                "lat_seconds": lat_seconds,
                "probe": self.probe(workers, store),
            }
            append = store["append"] if "append" in store else store["sessions"][0]["path"]
            # one warm-up request per worker and proxy, then the measured rounds
            for proxy in (self.A, self.B):
                workers.all(self.cmd(proxy, cmd="warm", body=bodies[0], seconds=0.05, start_at=0, append=append, **kw))
            self.check_counters("warm-up")
            for body in bodies:
                log(f"{key}: throughput, {a.clients} clients, {body} bodies")
                out[f"load_{body}"] = self.warm_runs(workers, body, seconds, a.rounds, append=append, kw=kw)
                log(f"{key}: latency, 1 client, {body} bodies")
                out[f"lat_{body}"] = self.warm_runs(workers, body, lat_seconds, a.rounds, n=1, append=append, kw=kw)
                if a.profile:
                    out[f"profile_{body}"] = self.profile_round(
                        f"{key}-warm-{body}",
                        lambda s, body=body: workers.send(
                            [
                                self.cmd(
                                    self.A,
                                    cmd="warm",
                                    body=body,
                                    seconds=s,
                                    start_at=time.time() + 0.1,
                                    append=append,
                                    **kw,
                                )
                            ]
                            * len(workers.procs)
                        ),
                    )
                    self.check_counters("profile")
            out["rss"] = self.rss()
            out["newest_bytes_after"] = os.path.getsize(append) if append else None
        finally:
            workers.close()
        if a.profile and key != "base" and not store.get("runas"):
            out["profile_cold"] = self.cold_profile(key, store)
        return out

    def cold_profile(self, key: str, store: dict) -> dict | None:
        """py-spy over the first request on a fresh copy of the store (a new cwd, so a new folder)."""
        cwd = Path(store["cwd"] + "-cold")
        if "make" in store:
            copy = store["make"](cwd)
        else:
            big = store["newest_bytes"] if store["newest_bytes"] > (1 << 20) else 0
            copy = make_store(self.home, cwd, len(store["sessions"]), store["sessions"][0]["name"], big_bytes=big)
        workers = Workers(1, str(cwd), str(self.home))
        try:
            workers.all({"cmd": "prepare", "bodies": ["8k"]})
            holder = {}
            summary = self.profile_round(
                f"{key}-cold",
                lambda s: holder.update(
                    first=workers.send([self.cmd(self.A, cmd="probe", body="8k", **self.client_kw(copy))])[0]
                ),
            )
            first = holder.get("first", {})
            log(
                f"{key}: cold request under py-spy: {first.get('ms', 0):.0f} ms, "
                f"resolved: {self.resolved_ok(copy, (first.get('info') or {}).get('session_id'))}"
            )
            self.check_counters("cold profile")
            return summary
        finally:
            workers.close()

    def newconn_phase(self, store: dict) -> dict:
        a = self.args
        out = {}
        workers = Workers(1, store["cwd"], str(self.home))
        try:
            workers.all({"cmd": "prepare", "bodies": ["8k"]})
            workers.all(self.cmd(self.A, cmd="probe", body="8k"))
            for label, procs in (("procs_0", 0), (f"procs_{a.procs}", a.procs)):
                if procs:
                    self.spawn_extra(procs)
                nproc = sum(1 for d in os.listdir("/proc") if d.isdigit())
                log(f"newconn: {a.newconn} new connections per round, {nproc} processes on the machine")
                direct = lookup_direct()
                rows = {"addon": [], "plain": []}
                for _ in range(a.rounds):
                    for name, proxy in (("addon", self.A), ("plain", self.B)):
                        res = workers.send([self.cmd(proxy, cmd="newconn", body="8k", count=a.newconn)])[0]
                        rows[name] += res["rows"]
                counters = self.check_counters("newconn")
                ta = [x[0] for x in rows["addon"]]
                tb = [x[0] for x in rows["plain"]]
                fa = [x[2] for x in rows["addon"]]
                fb = [x[2] for x in rows["plain"]]
                res = {
                    "processes": nproc,
                    "connections": len(ta),
                    "p50_addon": pct(ta, 50),
                    "p50_plain": pct(tb, 50),
                    "added_p50": pct(ta, 50) - pct(tb, 50),
                    "added_p99": pct(ta, 99) - pct(tb, 99),
                    "first_request_added_p50": pct(fa, 50) - pct(fb, 50),
                    "lookup_direct": direct,
                    "counters": counters,
                    "tcp_lines": len(Path("/proc/net/tcp").read_text().splitlines()) - 1,
                }
                if a.profile:
                    res["profile"] = self.profile_round(
                        f"newconn-{label}",
                        lambda s: _repeat_for(
                            s, lambda: workers.send([self.cmd(self.A, cmd="newconn", body="8k", count=50)])
                        ),
                    )
                    self.check_counters("profile")
                out[label] = res
                if procs:
                    self.kill_extra()
            out["rss"] = self.rss()
            return out
        finally:
            workers.close()
            self.kill_extra()

    def memory_phase(self, store: dict) -> dict:
        a = self.args
        total, n_sessions, C = a.mem_requests, min(a.mem_sessions, len(store["sessions"])), a.clients
        first = max(C, min(1000, total // 10), total // 100)  # "after 1,000" at full scale
        waves = [first] + [((total - first) // a.mem_waves)] * a.mem_waves
        waves[-1] += total - sum(waves)
        expected = {s["index"]: s["label"] for s in store["sessions"]}
        done, samples, t_start, bad, probes = 0, [], time.time(), 0, 0
        prof = None
        for count in waves:
            workers = Workers(C, store["cwd"], str(self.home))
            try:
                workers.all({"cmd": "prepare", "bodies": ["8k"]})
                cmds = []
                for k in range(C):
                    js = range(done + k, done + count, C)
                    cmds.append(
                        self.cmd(self.A, cmd="memory", body="8k", sessions=[j % n_sessions for j in js], probe_every=97)
                    )
                res = workers.send(cmds)
            finally:
                workers.close()
            for r in res:
                for s, got in r["probes"]:
                    probes += 1
                    bad += got != expected[s]
            done += count
            st = proc_status(self.A.pid)
            samples.append(
                {
                    "requests": done,
                    "rss_mib": st.get("VmRSS"),
                    "hwm_mib": st.get("VmHWM"),
                    "elapsed_s": round(time.time() - t_start, 1),
                }
            )
            log(f"memory: {done} requests, addon RSS {st.get('VmRSS')} MiB")
        counters = self.check_counters("memory", expect=total)
        return {
            "requests": total,
            "sessions": n_sessions,
            "clients_per_wave": C,
            "waves": len(waves),
            "rss_after_first": samples[0]["rss_mib"],
            "rss_after_all": samples[-1]["rss_mib"],
            "first_count": waves[0],
            "growth_mib": samples[-1]["rss_mib"] - samples[0]["rss_mib"],
            "samples": samples,
            "probes": probes,
            "probes_wrong": bad,
            "counters": counters,
            "rps": total / (time.time() - t_start),
            "profile": prof,
        }

    def spawn_extra(self, n: int) -> None:
        log(f"starting {n} idle processes")
        for _ in range(n):
            self.extra.append(
                subprocess.Popen(
                    ["sleep", "36000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )

    def kill_extra(self) -> None:
        for p in self.extra:
            p.kill()
        for p in self.extra:
            p.wait()
        self.extra = []

    # -- store variants (issue 13)
    def unseen_setup(self) -> str | None:
        """Before the proxies start: the other user's 0755 folder. Returns why the variant is skipped."""
        if os.getuid() != 0:
            return "needs root, to run the clients as another user (uid 65534)"
        if shutil.which("setpriv") is None:
            return "setpriv not found"
        python = python_for_nobody()
        if python is None:
            return "no Python that uid 65534 can run"
        root = Path(tempfile.mkdtemp(prefix="asi-bench-nobody-"))
        root.chmod(0o755)  # a copy that user can read, wherever the checkout is
        self.nobody_root, self.nobody_python = root, python
        return None

    def unseen_store(self, name: str) -> dict:
        """10 files in that user's HOME, with copies of this file and the CA certificates; all its."""
        root = self.nobody_root
        home, cwd = root / "home", root / "work"
        store = make_store(home, cwd, 10, name)
        script = root / "bench.py"
        shutil.copy(Path(__file__).resolve(), script)
        ca_map = {}
        for label, proxy in (("addon", self.A), ("plain", self.B)):
            dest = root / f"ca-{label}.pem"
            shutil.copy(proxy.ca_cert, dest)
            ca_map[str(proxy.ca_cert)] = str(dest)
        for path in [root, *root.rglob("*")]:
            os.chown(path, 65534, 65534, follow_symlinks=False)
        for path in (script, *map(Path, ca_map.values())):
            path.chmod(0o644)
        store.update(home=str(home), runas={"python": self.nobody_python, "script": str(script), "ca_map": ca_map})
        return store

    def run(self) -> dict:
        a = self.args
        phases = a.phases.split(",")
        R = self.results["phases"]
        unseen_skip = self.unseen_setup() if "unseen" in phases else None
        if unseen_skip:
            print(f"unseen variant skipped: {unseen_skip}", flush=True)
            R["unseen"] = {"skipped": unseen_skip}
        self.start()
        need_files = "files" in phases or "memory" in phases
        t = time.time()
        stores = {"base": make_store(self.home, self.root / "work-base", 10, "Refactor the auth flow")}
        if need_files:
            stores["files"] = make_store(self.home, self.root / "work-files", a.files, "Speed up the session store")
        if "big" in phases:
            stores["big"] = make_store(
                self.home, self.root / "work-big", 10, "The long migration", big_bytes=int(a.big_mb * (1 << 20))
            )
        if "headeronly" in phases:
            name, size = "Ship the new importer", int(a.header_mb * (1 << 20))
            maker = lambda cwd: {  # noqa: E731
                **make_headeronly_store(self.home, cwd, a.header_files, size, name),
                "make": maker,
            }
            stores["headeronly"] = maker(self.root / "work-headeronly")
        if "nomatch" in phases:
            # the clients continue a conversation whose first user turn is in no file of the folder
            maker = lambda cwd: {  # noqa: E731
                **make_store(self.home, cwd, 10, "Tidy the logging"),
                "client_session": NOMATCH_SESSION,
                "append": None,
                "expect_prefix": "ephemeral-",
                "make": maker,
            }
            stores["nomatch"] = maker(self.root / "work-nomatch")
        if "unseen" in phases and self.nobody_root:
            stores["unseen"] = self.unseen_store("Review the parser change")
        log(f"stores written in {time.time() - t:.1f}s under {self.root}")
        variant = dict(seconds=a.variant_seconds, lat_seconds=a.variant_lat_seconds)
        both = ["8k", "200k"]
        jobs = [
            ("base", "base", lambda: self.warm_phase("base", stores["base"], both)),
            ("files", "files", lambda: self.warm_phase("files", stores["files"], ["8k"])),
            ("big", "big", lambda: self.warm_phase("big", stores["big"], ["8k"])),
            ("headeronly", "headeronly", lambda: self.warm_phase("headeronly", stores["headeronly"], both, **variant)),
            ("nomatch", "nomatch", lambda: self.warm_phase("nomatch", stores["nomatch"], both, **variant)),
            # pi 0.86+ names its session in x-session-id; older pi names none
            (
                "unseen",
                "unseen_hdr",
                lambda: self.warm_phase(
                    "unseen_hdr",
                    {**stores["unseen"], "headers": {"x-session-id": stores["unseen"]["sessions"][0]["id"]}},
                    both,
                    **variant,
                ),
            ),
            ("unseen", "unseen_nohdr", lambda: self.warm_phase("unseen_nohdr", stores["unseen"], both, **variant)),
            ("newconn", "newconn", lambda: self.newconn_phase(stores["base"])),
            ("memory", "memory", lambda: self.memory_phase(stores["files"])),
        ]
        for phase, key, job in jobs:
            if phase not in phases or (phase == "unseen" and unseen_skip):
                continue
            try:
                R[key] = job()
            except Exception as e:  # report it, go on with the next phase
                log(f"phase {key} failed: {type(e).__name__}: {e}")
                self.results.setdefault("errors", {})[key] = f"{type(e).__name__}: {e}"
        self.results["rss_end"] = self.rss()
        end = addon_fingerprint()
        if end != self.results["addon_sources"]:
            self.results["addon_sources_at_end"] = end
            log(
                f"WARNING: the addon's sources changed during the run ({self.results['addon_sources']} -> {end}); "
                "the proxies run the version they started with"
            )
        return self.results


def addon_fingerprint() -> str:
    """sha256 (12 hex) over the addon's sources, to tie figures to a version of the code."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted((REPO / "addon").rglob("*.py")) + sorted((REPO / "rules").glob("*.yaml")):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def _repeat_for(seconds: float, fn) -> None:
    end = time.time() + seconds
    while time.time() < end:
        fn()


def _addon_process_module():
    if str(REPO / "addon") not in sys.path:
        sys.path.insert(0, str(REPO / "addon"))
    try:
        from agent_session_ids.resolution import proc
    except Exception as e:
        return e
    return proc


def lookup_direct(n: int = 30) -> dict:
    """Time the addon's proc.lookup (and its steps) for a loopback connection of this process
    (the module is imported when the proxies start, so it is the code they run)."""
    P = _addon_process_module()
    if isinstance(P, Exception):
        return {"error": repr(P)}
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    peer, local = conn.getpeername(), conn.getsockname()
    times = collections.defaultdict(list)
    table = P.ProcessTable()  # the steps are the table's, as the proxies call them
    ok = False
    try:
        table.recent.pids.clear()  # no recent owners: the search from the newest pid down
        t0 = time.perf_counter()
        table.lookup(peer, local)
        times["lookup_uncached"].append((time.perf_counter() - t0) * 1000)
        for _ in range(n):
            t0 = time.perf_counter()
            owner = table.socket_owner(peer, local)
            t1 = time.perf_counter()
            pid = min(table.holders(*owner), default=None) if owner else None
            t2 = time.perf_counter()
            proc = table.read_process(pid) if pid else None
            t3 = time.perf_counter()
            ok = proc is not None and proc.pid == os.getpid()
            t4 = time.perf_counter()
            table.lookup(peer, local)
            t5 = time.perf_counter()
            for k, v in (
                ("socket_owner", t1 - t0),
                ("pid_of_socket", t2 - t1),
                ("read_process", t3 - t2),
                ("lookup", t5 - t4),
            ):
                times[k].append(v * 1000)
    except Exception as e:
        return {"error": repr(e)}
    finally:
        for s in (cli, conn, srv):
            s.close()
    return {"found_self": ok, **{k: statistics.median(v) for k, v in times.items()}}


# --------------------------------------------------------------------------- profiles


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")


def summarize_profile(path: Path, top: int = 15) -> dict:
    """Collapsed py-spy stacks -> total samples, samples in the addon, hot functions."""
    total = 0
    addon_incl: collections.Counter = collections.Counter()
    self_all: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    addon_edge: collections.Counter = collections.Counter()
    in_addon = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = stack.split(";")
        total += n
        threads[frames[0].split("): ", 1)[-1][:40]] += n
        names = []
        for fr in frames[1:]:
            m = _FRAME.match(fr)
            fn, file = (m.group("fn"), m.group("file")) if m else (fr, "")
            names.append((fn, file))
        seen = set()
        hit = False
        for fn, file in names:
            if "agent_session_ids" in file:
                hit = True
                key = f"{file.split('agent_session_ids/')[-1]}:{fn}"
                if key not in seen:
                    seen.add(key)
                    addon_incl[key] += n
        in_addon += n if hit else 0
        if hit:
            last = max(i for i, (_fn, file) in enumerate(names) if "agent_session_ids" in file)
            fn, file = names[last]
            callee = names[last + 1][0] if last + 1 < len(names) else "(self)"
            addon_edge[f"{file.split('agent_session_ids/')[-1]}:{fn} -> {callee}"] += n
        if names:
            fn, file = names[-1]
            self_all[f"{file.split('site-packages/')[-1]}:{fn}"] += n
    return {
        "samples": total,
        "addon_samples": in_addon,
        "addon_share": in_addon / total if total else 0.0,
        "threads": dict(threads.most_common(6)),
        "addon_inclusive": addon_incl.most_common(top),
        "addon_exits": addon_edge.most_common(top),
        "self_top": self_all.most_common(top),
    }


def print_profile(label: str, s: dict) -> None:
    print(
        f"\n-- profile {label}: {s['samples']} samples, {100 * s['addon_share']:.1f}% with addon frames; "
        f"threads {s['threads']}"
    )
    print("   addon functions (inclusive % of all samples):")
    for key, n in s["addon_inclusive"][:12]:
        print(f"     {100 * n / s['samples']:5.1f}%  {key}")
    print("   innermost addon frame -> what it called (% of all samples):")
    for key, n in s["addon_exits"][:10]:
        print(f"     {100 * n / s['samples']:5.1f}%  {key}")
    print("   leaf functions overall (self %):")
    for key, n in s["self_top"][:10]:
        print(f"     {100 * n / s['samples']:5.1f}%  {key}")
    sys.stdout.flush()


# --------------------------------------------------------------------------- report


def report(res: dict) -> None:
    try:
        _report(res)
    except Exception as e:  # partial results: the JSON still has them
        print(f"(report incomplete: {type(e).__name__}: {e})")
    for key, err in res.get("errors", {}).items():
        print(f"phase {key} FAILED: {err}")


VARIANTS = {  # the store variants of issue 13: results key -> title in the table
    "headeronly": "{hdr} hdr-only + {mb} MB",
    "nomatch": "10 files, none matches",
    "unseen_hdr": "other user, x-session-id",
    "unseen_nohdr": "other user, no header",
}


def _f2(v) -> str:
    return "—" if v is None or v != v else f"{v:.2f}"


def _report_warm(P: dict, cfg: dict) -> None:
    print(
        "\nWarm connections"
        + (
            f" (store variants: {cfg.get('variant_seconds')} s throughput, "
            f"{cfg.get('variant_lat_seconds')} s latency per run)"
            if any(k in P for k in VARIANTS)
            else ""
        )
    )
    head = (
        f"{'variant':<26}{'body':>5}{'rps A':>8}{'rps B':>8}{'ratio':>14}"
        f"{'A p50':>8}{'+p50':>7}{'+p99':>7}{'rewritten':>11}"
    )
    print(head)
    print("-" * len(head))
    for key, title in (
        ("base", "10 files, newest 1 KB"),
        ("files", "{files} files"),
        ("big", "newest {mb} MB"),
        *VARIANTS.items(),
    ):
        ph = P.get(key)
        if not ph or "load_8k" not in ph:
            continue
        title = title.format(files=ph["files"], hdr=ph["files"] - 1, mb=round(ph["newest_bytes"] / (1 << 20)))
        for body in ("8k", "200k"):
            load, lat = ph.get(f"load_{body}"), ph.get(f"lat_{body}")
            if not load:
                continue
            c = load["counters"]
            print(
                f"{title:<26}{body:>5}{load['rps_addon']:>8.0f}{load['rps_plain']:>8.0f}"
                f"{load['ratio']:>6.3f} ({load['ratio_min']:.2f}-{load['ratio_max']:.2f})"
                f"{lat['p50_addon']:>8.2f}{lat['added_p50']:>7.2f}{lat['added_p99']:>7.2f}"
                f"{c['rewritten']:>6}/{c['responses']:<5}"
            )
    print("  (rps: requests/s with the clients; ratio A/B (per-round min-max); A p50, +p50, +p99: one client, ms)")
    print(
        "  under load (clients):  "
        + "; ".join(
            f"{k}/{b}: +p50 {_f2(P[k][f'load_{b}']['added_p50'])} +p99 {_f2(P[k][f'load_{b}']['added_p99'])} ms"
            for k in ("base", "files", "big", *VARIANTS)
            if k in P
            for b in ("8k", "200k")
            if f"load_{b}" in P[k]
        )
    )
    print(
        "  proxy CPU per request under load (A / B, µs; all its threads):  "
        + "; ".join(
            f"{k}/{b}: {P[k][f'load_{b}']['cpu_us_addon']:.0f} / {P[k][f'load_{b}']['cpu_us_plain']:.0f} "
            f"(full GCs {P[k][f'load_{b}']['gc_addon'][2]} / {P[k][f'load_{b}']['gc_plain'][2]})"
            for k in ("base", "files", "big", *VARIANTS)
            if k in P
            for b in ("8k", "200k")
            if P[k].get(f"load_{b}", {}).get("cpu_us_addon") is not None
        )
    )
    if "skipped" in P.get("unseen", {}):
        print(f"  other user's clients: skipped ({P['unseen']['skipped']})")


def _report_cold(P: dict) -> None:
    print("\nCold first request on a new store (A minus B, ms; resolved in time?)")
    for key in ("base", "files", "big", *VARIANTS):
        if key in P and "probe" in P[key]:
            pr = P[key]["probe"]
            print(
                f"  {key:<12} files {P[key]['files']:>6}, newest {P[key]['newest_bytes'] / 1024:>8.0f} KB: "
                f"+{pr['cold_added_ms']:8.1f} ms, resolved on first request: {pr['resolved_first']}"
                + (
                    f" ({pr.get('got')}, want {pr['expected']}{'' if pr.get('stable') else ', CHANGED on the 2nd'})"
                    if key in VARIANTS
                    else ""
                )
                + (
                    ""
                    if pr["resolved_first"]
                    else f" ({(pr['addon']['first'] or {}).get('error')}; {pr['failed_before_resolved']} requests "
                    f"unresolved, resolved after {pr['seconds_until_resolved']} s)"
                )
            )


def _report_newconn(P: dict) -> None:
    nc = P["newconn"]
    warm = P.get("base", {}).get("lat_8k", {}).get("added_p50")  # None without the base phase
    print("\nNew connection + first request (8 KB), one client")
    for key, r in nc.items():
        if not key.startswith("procs_"):
            continue
        d = r["lookup_direct"]
        print(
            f"  {r['processes']:>5} processes: A p50 {r['p50_addon']:.2f} ms, B p50 {r['p50_plain']:.2f} ms, "
            f"added p50 {r['added_p50']:.2f} / p99 {r['added_p99']:.2f} ms, beyond warm {_f2(r['added_p50'] - warm) if warm is not None else 'n/a'} ms;"
            f" first request alone +{r['first_request_added_p50']:.2f} ms"
        )
        if "lookup" in d:
            print(
                f"      lookup direct: {d['lookup']:.2f} ms = socket owner {d['socket_owner']:.2f} + "
                f"/proc/*/fd {d['pid_of_socket']:.2f} + read {d['read_process']:.2f} "
                + (f"(uncached {d['lookup_uncached']:.2f} ms) " if "lookup_uncached" in d else "")
                + f"({r['tcp_lines']} lines in /proc/net/tcp)"
            )


def _report_memory(P: dict) -> None:
    m = P["memory"]
    print(
        f"\nMemory (addon): {m['requests']} requests over {m['sessions']} sessions, {m['waves']} waves of "
        f"{m['clients_per_wave']} fresh clients, {m['rps']:.0f} req/s"
    )
    print(
        f"  RSS after {m['first_count']}: {m['rss_after_first']} MiB; after {m['requests']}: "
        f"{m['rss_after_all']} MiB; growth {m['growth_mib']} MiB; probes wrong {m['probes_wrong']}/{m['probes']}; "
        f"rewritten {m['counters']['rewritten']}/{m['counters']['responses']}"
    )


def _report(res: dict) -> None:
    P = res["phases"]
    print("\n=== agent-session-ids benchmark (A = addon, B = plain mitmdump; A/B alternated) ===")
    cfg = res["config"]
    print(
        f"addon sources {res.get('addon_sources')}, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, clients {cfg['clients']}, "
        f"rounds {cfg['rounds']} x {cfg['seconds']}s (throughput), {cfg['lat_seconds']}s (latency)"
    )
    _report_warm(P, cfg)
    _report_cold(P)
    if "newconn" in P:
        _report_newconn(P)
    if "memory" in P:
        _report_memory(P)
    r = res.get("rss_end", {})
    print(
        f"\nPeak RSS (VmHWM): addon {r.get('addon', {}).get('VmHWM')} MiB, plain {r.get('plain', {}).get('VmHWM')} MiB"
    )
    for key in ("base", "files", "big", *VARIANTS, "newconn"):
        if key in P and "rss" in P[key]:
            x = P[key]["rss"]
            print(f"  after {key:<12}: addon {x['addon'].get('VmHWM')} MiB, plain {x['plain'].get('VmHWM')} MiB")
    sys.stdout.flush()


def main() -> None:
    if "--worker" in sys.argv:
        worker_main()
        return
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small scale, about two minutes")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, help="per throughput run (default 2.5, quick 1)")
    ap.add_argument("--lat-seconds", type=float, help="per single-client latency run (default 2, quick 1)")
    ap.add_argument("--rounds", type=int, help="A/B pairs per measurement (default 5, quick 2)")
    ap.add_argument("--files", type=int, help="files in the big folder (default 10000, quick 2000)")
    ap.add_argument("--big-mb", type=float, help="size of the big newest file (default 100, quick 20)")
    ap.add_argument("--procs", type=int, help="extra idle processes (default 1000, quick 300)")
    ap.add_argument("--newconn", type=int, help="new connections per run (default 150, quick 40)")
    ap.add_argument("--mem-requests", type=int, help="default 100000, quick 3000")
    ap.add_argument("--mem-sessions", type=int, help="default 10000, quick = --files")
    ap.add_argument("--mem-waves", type=int, help="fresh client waves after the first 1%% (default 9, quick 3)")
    ap.add_argument("--header-files", type=int, default=2000, help="headeronly: files holding only their session line")
    ap.add_argument("--header-mb", type=float, default=50, help="headeronly: size of the named session")
    ap.add_argument(
        "--variant-seconds", type=float, help="store variants: per throughput run (default --seconds, quick 0.75)"
    )
    ap.add_argument(
        "--variant-lat-seconds", type=float, help="store variants: per latency run (default --lat-seconds, quick 0.75)"
    )
    ap.add_argument("--phases", default="base,files,big,headeronly,nomatch,unseen,newconn,memory")
    ap.add_argument(
        "--addon-set",
        action="append",
        metavar="OPTION=VALUE",
        help="an option for the addon proxy (e.g. session_usage=false), as mitmdump --set",
    )
    ap.add_argument("--profile", metavar="DIR", help="extra py-spy round per phase (not in the figures)")
    ap.add_argument("--profile-seconds", type=float, default=4.0)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temporary stores")
    args = ap.parse_args()
    q = args.quick
    defaults = dict(
        seconds=(1.0, 2.5),
        lat_seconds=(1.0, 2.0),
        rounds=(2, 5),
        files=(2000, 10000),
        big_mb=(20, 100),
        procs=(300, 1000),
        newconn=(40, 150),
        mem_requests=(3000, 100000),
        mem_waves=(3, 9),
    )
    for k, (qv, fv) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, qv if q else fv)
    if args.mem_sessions is None:
        args.mem_sessions = args.files if q else 10000
    if args.variant_seconds is None:
        args.variant_seconds = 0.75 if q else args.seconds
    if args.variant_lat_seconds is None:
        args.variant_lat_seconds = 0.75 if q else args.lat_seconds
    bench = Bench(args)
    t0 = time.time()
    interrupted = False
    try:
        res = bench.run()
    except KeyboardInterrupt:
        interrupted = True
        res = bench.results
    finally:
        bench.stop()
    res["total_seconds"] = round(time.time() - t0, 1)
    report(res)
    print(f"\ntotal {res['total_seconds']} s" + (" (interrupted)" if interrupted else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
