#!/usr/bin/env python3
"""The addon's own cost per request, in this process: its mitmproxy hooks called on real flows.

Usage (from the repository root)::

    python tests/benchmarks/bench_hooks.py                  # µs per request, 8 KB and 200 KB bodies
    python tests/benchmarks/bench_hooks.py --profile 200k   # + the top of cProfile for one size

It prints numbers and asserts nothing. Each request is a new flow on one kept-alive connection
of this very process, made to look like pi (named "pi", run again with HOME and cwd at a fake
pi store, and holding the connection's socket, so the per-request process checks are real),
continuing the newest session
of a 10-file pi store written by ``bench.py`` (one answer appended to its file after each
request, as pi does): the hooks requestheaders, request,
responseheaders and response run as mitmproxy would call them, with an OpenRouter-shaped JSON
answer that carries usage. "flow only" is the same loop without the addon (building the flow
and its answer), subtracted from the figures. Where ``bench.py`` measures whole proxies, this
isolates the addon's share, to find what to cut.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import os
import pstats
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "addon"), str(Path(__file__).resolve().parent), str(ROOT / "tests" / "support")]

import bench  # noqa: E402
from mitmproxy import http  # noqa: E402
from mitmproxy.test import taddons, tflow  # noqa: E402

from agent_session_ids.addon import SessionIds  # noqa: E402
from agent_session_ids.resolution.model import Seen  # noqa: E402
from agent_session_ids.usage.addon import UsageLedger  # noqa: E402

ANSWER = json.dumps(
    {
        "id": "gen-1",
        "provider": "Anthropic",
        "model": bench.MODEL,
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
        "usage": {
            "prompt_tokens": 2400,
            "completion_tokens": 5,
            "total_tokens": 2405,
            "cost": 0.0012,
            "prompt_tokens_details": {"cached_tokens": 2048},
        },
    }
).encode()


def new_flow(client, body: bytes) -> http.HTTPFlow:
    f = tflow.tflow(client_conn=client)
    f.request = http.Request.make(
        "POST",
        "https://openrouter.ai/api/v1/chat/completions",
        body,
        {"content-type": "application/json", "authorization": "Bearer x", "user-agent": "OpenAI/JS 5.0"},
    )
    f.live = True  # as a flow in a running proxy (tflow's are not)
    return f


async def run(addons: tuple[SessionIds, UsageLedger] | None, client, body: bytes, n: int, append: str | None) -> float:
    """µs per request: each hook of each addon, in the order mitmproxy calls them."""
    answer_headers = {"content-type": "application/json"}
    t0 = time.perf_counter()
    for k in range(n):
        f = new_flow(client, body)
        if addons is not None:
            session_ids, ledger = addons
            await session_ids.requestheaders(f)
            await session_ids.request(f)
        f.response = http.Response.make(200, ANSWER, answer_headers)
        if addons is not None:
            ledger.responseheaders(f)
            ledger.response(f)
        if append:  # as pi does after each answer
            bench._append_answer(append, k)
    return (time.perf_counter() - t0) / n * 1e6


async def main_async(args) -> None:
    tmp = Path(os.environ["ASI_HOOKS_STORE"])
    store = json.loads((tmp / "store.json").read_text())
    addon, ledger = SessionIds(), UsageLedger()
    addons = (addon, ledger)
    with taddons.context(addon, ledger) as tctx:
        tctx.configure(
            addon,
            session_rules=str(ROOT / "rules"),
            session_state_file=str(tmp / "state.json"),
            session_usage_file=str(tmp / "usage.jsonl"),
            session_usage=not args.no_usage,
        )
        addon.running()
        bench._set_comm(b"pi")
        connection = socket.socketpair()  # the client's socket: this process holds it
        proc = dataclasses.replace(
            addon.processes.read_process(os.getpid()), inode=os.fstat(connection[0].fileno()).st_ino
        )
        client = tflow.tclient_conn()
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(Seen(proc))  # as resolution/visibility.py gives it
        addon.connections.lookups[client.id] = fut
        first = bench.first_text(0)
        for size in args.sizes:
            body = bench.make_body(bench.body_template(bench.BODY_SIZES[size]), first)
            await run(addons, client, body, 50, None)  # warm: the store read, the memo confirmed
            probe = new_flow(client, body)
            await addon.request(probe)
            sid = json.loads(probe.request.content).get("session_id")
            assert sid == store["sessions"][0]["label"], (sid, store["sessions"][0]["label"])
            append = None if args.no_append else store["sessions"][0]["path"]
            if args.profile == size:
                base = await run(None, client, body, args.n, None)
                prof = cProfile.Profile()
                prof.enable()
                with_addon = await run(addons, client, body, args.n, append)
                prof.disable()
            else:  # the best of --repeat runs of each: the least disturbed by the rest of the machine
                base = min([await run(None, client, body, args.n, None) for _ in range(args.repeat)])
                with_addon = min([await run(addons, client, body, args.n, append) for _ in range(args.repeat)])
            print(
                f"{size:>5}: flow only {base:7.1f} µs, with the addon {with_addon:7.1f} µs: "
                f"the addon {with_addon - base:6.1f} µs per request"
            )
            if args.profile == size:
                stats = pstats.Stats(prof).sort_stats(args.sort)
                if args.callees:
                    stats.print_callees(args.callees)
                else:
                    stats.print_stats(args.top)
        addon.done()
        ledger.done()


def main() -> None:
    if "ASI_HOOKS_STORE" not in os.environ:
        # the store first, then this again with HOME and cwd there, as pi would run
        tmp = Path(tempfile.mkdtemp(prefix="asi-hooks-"))
        home, cwd = tmp / "home", tmp / "project"
        store = bench.make_store(home, cwd, 10, "Fix the proxy")
        (tmp / "store.json").write_text(json.dumps(store))
        os.chdir(cwd)
        os.execve(
            sys.executable,
            [sys.executable, __file__, *sys.argv[1:]],
            {**os.environ, "HOME": str(home), "ASI_HOOKS_STORE": str(tmp)},
        )
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["8k", "200k"], choices=list(bench.BODY_SIZES))
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3, help="runs of each loop; the best is shown")
    p.add_argument("--profile", choices=list(bench.BODY_SIZES))
    p.add_argument("--sort", default="tottime")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--callees", metavar="REGEX", help="with --profile: what these functions called")
    p.add_argument("--no-usage", action="store_true", help="with session_usage off (answers left alone)")
    p.add_argument("--no-append", action="store_true", help="the session file does not grow between requests")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
