"""Every shipped gateway rule, through a real mitmdump: exactly what arrives at the gateway.

Each request is sent as raw bytes (HTTPS through CONNECT, or plain HTTP to a reverse proxy) by
this test process, which is no agent: a request that names no session gets the per-process
fallback ID (``process-<pid>-…``). The gateway stand-in (loaded last) answers every host itself
and logs the request as the addon left it; nothing leaves the machine. For each gateway:

- a request with none of the gateway's fields gets them, and nothing else changes;
- a request that already carries the gateway's field keeps it: the client's id is the session,
  and it is never written over (a field whose value is no usable id keeps a fallback ID off the
  request altogether: never weaker than the client).

LiteLLM and Bifrost ship off: ``session_enable`` switches them on with a host, LiteLLM through the
regular proxy (``litellm.test``), Bifrost in front of a gateway on this machine in reverse mode
(``localhost``); each stays off on the proxy that does not name it.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import uuid
from pathlib import Path

import pytest

import harness
import odd_requests
from harness import Mitmdump, header, read_standin_log

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ADDON = str(ROOT / "addon" / "session_ids.py")
CASE = "x-test-case"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
NAMED_SID = str(uuid.UUID("019dbbc7-c8c5-748c-8710-3fdf6fefc083"))


def _named_pi_session(home: Path) -> None:
    """A pi session named "Secret Project", in a store the proxy is told to read."""
    folder = home / ".pi" / "agent" / "sessions" / "--srv-proj--"
    folder.mkdir(parents=True)
    lines = [
        {"type": "session", "version": 3, "id": NAMED_SID, "timestamp": "2026-05-06T12:00:00.000Z", "cwd": "/srv/proj"},
        {"type": "message", "message": {"role": "user", "content": [{"type": "text", "text": "hi"}]}},
        {"type": "session_info", "name": "Secret Project"},
    ]
    (folder / f"2026-05-06T12-00-00-000Z_{NAMED_SID}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """The shipped rules, LiteLLM switched on for litellm.test. stream_large_bodies makes a chunked
    request go through both passes (headers first, then the body)."""
    home = tmp_path_factory.mktemp("store-home")
    _named_pi_session(home)
    sets = ["session_enable=litellm-session@litellm.test", "stream_large_bodies=64k", f"session_store_homes={home}"]
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT], sets=sets) as p:
        yield p
        assert not p.blocked_connects()


@pytest.fixture(scope="module")
def bifrost_proxy():
    """A reverse proxy in front of a Bifrost on this machine, Bifrost's rule switched on for it."""
    with Mitmdump(
        scripts=[ADDON, harness.STANDIN_SCRIPT],
        sets=["session_enable=bifrost-session@localhost"],
        extra_args=["--mode", "reverse:http://localhost:8080"],
    ) as p:
        yield p
        assert not p.blocked_connects()


# --------------------------------------------------------------------------- sending and reading


def _record(proxy: Mitmdump, case: str) -> dict:
    found = [r for r in read_standin_log(proxy.standin_log) if header(r, CASE) == case]
    assert len(found) == 1, f"{case}: {len(found)} records at the stand-in\n{proxy.output()[-3000:]}"
    return found[0]


def send(
    proxy: Mitmdump,
    host: str,
    path: str,
    case: str,
    headers=(),
    body: dict | bytes = CHAT,
    chunked: bool = False,
    status: int = 200,
) -> tuple[dict, list[list[str]], bytes]:
    """POST through the proxy over HTTPS. Returns (the stand-in's record, the headers as sent, the
    body as sent)."""
    raw_body = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), (CASE, case), *headers]
    raw = odd_requests.build_h1("POST", path, host, headers, raw_body, chunked)
    got, answer = odd_requests.send_h1(proxy.port, str(proxy.ca_cert), host, raw)
    assert got == status, (case, got, answer, proxy.output()[-3000:])
    framing = [["Transfer-Encoding", "chunked"]] if chunked else [["Content-Length", str(len(raw_body))]]
    return _record(proxy, case), [["Host", host], *[[k, v] for k, v in headers], *framing], raw_body


def send_reverse(
    proxy: Mitmdump, path: str, case: str, headers=(), body: dict = CHAT
) -> tuple[dict, list[list[str]], bytes]:
    """POST in plain HTTP to a reverse proxy, as an agent whose base URL is the proxy does."""
    raw_body = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), (CASE, case), *headers]
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        conn.request("POST", path, body=raw_body, headers=dict(headers))
        response = conn.getresponse()
        assert response.status == 200, (case, response.status, response.read(), proxy.output()[-3000:])
        response.read()
    finally:
        conn.close()
    record = _record(proxy, case)
    return record, record["headers"], raw_body  # the reverse proxy rewrote Host: compare what it passed on


def body_of(record: dict) -> bytes:
    return base64.b64decode(record["body_b64"])


def session_of(record: dict) -> dict:
    info = record["session_ids"]
    assert info and "session" in info, (record["comment"], info)
    return info["session"]


def fallback_id(record: dict) -> str:
    """The per-process fallback ID this test process gets."""
    session = session_of(record)
    assert session["fallback"] is True and session["id"].startswith(f"process-{os.getpid()}-"), session
    return session["id"]


def arrived_as(record: dict, sent: list[list[str]], body: bytes, changed=(), added=()) -> None:
    """Exactly what arrived: the headers as sent, `changed` ones given their new value in place,
    `added` ones after them, in order; the body byte for byte."""
    expect = [[k, dict(changed).get(k, v)] for k, v in sent] + [[k, v] for k, v in added]
    assert record["headers"] == expect
    assert body_of(record) == body


# --------------------------------------------------------------------------- Helicone


HELICONE = ("oai.helicone.ai", "/v1/chat/completions")


def test_helicone_gets_the_session_id_and_path_and_no_empty_name(proxy):
    record, sent, body = send(proxy, *HELICONE, "helicone-bare")
    sid = fallback_id(record)
    label = session_of(record)["label"]
    arrived_as(record, sent, body, added=[["Helicone-Session-Id", sid], ["Helicone-Session-Path", f"/{label}"]])


def test_helicone_gets_the_name_of_a_named_session(proxy):
    # pi names its session in x-session-id; the proxy finds its file (and name) in the store by that id
    record, sent, body = send(
        proxy, "anthropic.helicone.ai", "/v1/messages", "helicone-named", [("x-session-id", NAMED_SID)]
    )
    session = session_of(record)
    assert (session["id"], session["name"], session["fallback"]) == (NAMED_SID, "Secret Project", False)
    arrived_as(
        record,
        sent,
        body,
        added=[
            ["Helicone-Session-Id", NAMED_SID],
            ["Helicone-Session-Path", f"/{session['label']}"],
            ["Helicone-Session-Name", "Secret Project"],
        ],
    )


def test_helicone_keeps_the_clients_own_session_id(proxy):
    record, sent, body = send(proxy, *HELICONE, "helicone-own", [("Helicone-Session-Id", "client-chose-7")])
    session = session_of(record)
    assert (session["id"], session["fallback"]) == ("client-chose-7", False)  # the client's id is the session
    arrived_as(record, sent, body, added=[["Helicone-Session-Path", f"/{session['label']}"]])
    assert record["session_ids"]["changes"] == [
        {
            "rule": "helicone-session",
            "target": "header Helicone-Session-Path",
            "before": None,
            "after": f"/{session['label']}",
        }
    ]


def test_helicone_a_client_id_that_is_no_usable_id_keeps_the_fallback_off(proxy):
    record, sent, body = send(proxy, *HELICONE, "helicone-own-odd", [("Helicone-Session-Id", "conversation 42 (mine)")])
    fallback_id(record)
    arrived_as(record, sent, body)  # untouched: not even a path is added to the client's session
    assert record["session_ids"]["skipped"] == [
        "rule helicone-session: the client sent its own session in header helicone-session-id; kept"
    ]


# --------------------------------------------------------------------------- Portkey


def test_portkey_gets_a_trace_per_session_and_keeps_the_clients(proxy):
    record, sent, body = send(proxy, "api.portkey.ai", "/v1/chat/completions", "portkey-bare")
    arrived_as(record, sent, body, added=[["x-portkey-trace-id", fallback_id(record)]])
    record, sent, body = send(
        proxy, "api.portkey.ai", "/v1/chat/completions", "portkey-own", [("x-portkey-trace-id", "trace-from-app-1")]
    )
    assert session_of(record)["id"] == "trace-from-app-1"
    arrived_as(record, sent, body)


# --------------------------------------------------------------------------- Cloudflare AI Gateway


CLOUDFLARE = ("gateway.ai.cloudflare.com", "/v1/acct123/my-gateway/openai/chat/completions")


def test_cloudflare_gets_a_metadata_header_with_the_session(proxy):
    record, sent, body = send(proxy, *CLOUDFLARE, "cf-bare")
    arrived_as(record, sent, body, added=[["cf-aig-metadata", json.dumps({"session": fallback_id(record)})]])


def test_cloudflare_merges_the_session_into_the_clients_metadata(proxy):
    theirs = '{"team": "AI", "user": 12345, "test":true}'
    record, sent, body = send(proxy, *CLOUDFLARE, "cf-merge", [("cf-aig-metadata", theirs)])
    merged = theirs[:-1] + ',"session":' + json.dumps(fallback_id(record)) + "}"
    arrived_as(record, sent, body, changed=[["cf-aig-metadata", merged]])
    assert json.loads(merged) == {"team": "AI", "user": 12345, "test": True, "session": fallback_id(record)}


def test_cloudflare_merges_through_both_passes_of_a_chunked_request(proxy):
    theirs = '{"team":"AI"}'
    record, _, body = send(proxy, *CLOUDFLARE, "cf-chunked", [("cf-aig-metadata", theirs)], chunked=True)
    assert header(record, "cf-aig-metadata") == '{"team":"AI","session":' + json.dumps(fallback_id(record)) + "}"
    assert body_of(record) == body
    assert [c["target"] for c in record["session_ids"]["changes"]] == ["header cf-aig-metadata"]


@pytest.mark.parametrize(
    "theirs, why",
    [
        ('{"session": "my-run-5", "team": "AI"}', None),  # the client's own session: it is the session
        ('{"a":1,"b":2,"c":3,"d":4,"e":5}', "5 entries already, the most the gateway keeps; kept as sent"),
        ("team=AI", "is not a JSON object; kept as sent"),
        (
            '{"session": "my own session", "team": "AI"}',
            "the client sent its own session in header cf-aig-metadata (session)",
        ),
    ],
    ids=["own-session", "five-entries", "not-json", "own-session-no-usable-id"],
)
def test_cloudflare_never_writes_over_the_clients_metadata(proxy, theirs, why):
    record, sent, body = send(proxy, *CLOUDFLARE, f"cf-keep-{theirs}", [("cf-aig-metadata", theirs)])
    arrived_as(record, sent, body)
    if why is None:
        assert (session_of(record)["id"], session_of(record)["fallback"]) == ("my-run-5", False)
        assert record["session_ids"]["changes"] == []
    else:
        assert any(why in s for s in record["session_ids"]["skipped"]), record["session_ids"]["skipped"]


# --------------------------------------------------------------------------- OpenAI direct


def test_openai_gets_a_prompt_cache_key_in_the_body(proxy):
    record, sent, body = send(
        proxy, "api.openai.com", "/v1/responses", "openai-bare", body={"model": "m", "input": "hi"}
    )
    key = fallback_id(record)
    assert len(key) <= 64
    new_body = body[:-1] + b',"prompt_cache_key":' + json.dumps(key).encode() + b"}"  # only the member is added
    arrived_as(record, sent, new_body, changed=[["Content-Length", str(len(new_body))]])


def test_openai_keeps_the_clients_prompt_cache_key(proxy):
    # Codex and opencode send their own (the session id)
    mine = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "prompt_cache_key": "codex-thread-1"}
    record, sent, body = send(proxy, "api.openai.com", "/v1/chat/completions", "openai-own", body=mine)
    assert session_of(record)["id"] == "codex-thread-1"
    arrived_as(record, sent, body)


def test_openai_paths_the_rule_does_not_name_pass_untouched(proxy):
    record, sent, body = send(
        proxy, "api.openai.com", "/v1/embeddings", "openai-other-path", body={"model": "m", "input": "hi"}, status=404
    )  # the stand-in answers no embeddings
    arrived_as(record, sent, body)
    assert record["session_ids"] is None


# --------------------------------------------------------------------------- Fireworks


FIREWORKS = ("api.fireworks.ai", "/inference/v1/chat/completions")


def test_fireworks_gets_session_affinity(proxy):
    record, sent, body = send(proxy, *FIREWORKS, "fireworks-bare")
    arrived_as(record, sent, body, added=[["x-session-affinity", fallback_id(record)]])


def test_fireworks_keeps_the_clients_affinity_and_follows_its_trajectory_id(proxy):
    record, sent, body = send(proxy, *FIREWORKS, "fireworks-own", [("x-session-affinity", "user-42")])
    arrived_as(record, sent, body)
    # x-multi-turn-session-id wins over x-session-affinity at Fireworks: it is the session
    record, sent, body = send(proxy, *FIREWORKS, "fireworks-trajectory", [("x-multi-turn-session-id", "traj-1")])
    arrived_as(record, sent, body, added=[["x-session-affinity", "traj-1"]])


# --------------------------------------------------------------------------- LLM Gateway


LLMGATEWAY = ("api.llmgateway.io", "/v1/chat/completions")


def test_llmgateway_gets_x_session_id(proxy):
    record, sent, body = send(proxy, *LLMGATEWAY, "llmgateway-bare")
    arrived_as(record, sent, body, added=[["x-session-id", fallback_id(record)]])


def test_llmgateway_keeps_the_clients_session_and_agrees_with_its_affinity_header(proxy):
    record, sent, body = send(
        proxy, "api.llmgateway.io", "/v1/messages", "llmgateway-own", [("x-session-id", "conv-9f8e")]
    )
    arrived_as(record, sent, body)
    # opencode sends x-session-affinity: x-session-id (read first by the gateway) says the same
    record, sent, body = send(
        proxy, *LLMGATEWAY, "llmgateway-affinity", [("x-session-affinity", "ses_0123456789abcdefghijklmnop")]
    )
    arrived_as(record, sent, body, added=[["x-session-id", "ses_0123456789abcdefghijklmnop"]])


# --------------------------------------------------------------------------- LiteLLM (ships off)


LITELLM = ("litellm.test", "/v1/chat/completions")


def test_litellm_switched_on_for_its_host_gets_its_session_header(proxy):
    record, sent, body = send(proxy, *LITELLM, "litellm-bare")
    arrived_as(record, sent, body, added=[["x-litellm-session-id", fallback_id(record)]])


def test_litellm_keeps_the_clients_session_from_a_header_or_the_body(proxy):
    record, sent, body = send(proxy, *LITELLM, "litellm-own", [("x-litellm-session-id", "agent-run-abc123")])
    arrived_as(record, sent, body)
    record, sent, body = send(
        proxy, "litellm.test", "/chat/completions", "litellm-own-body", body={**CHAT, "litellm_session_id": "run-9"}
    )
    arrived_as(record, sent, body, added=[["x-litellm-session-id", "run-9"]])


def test_litellm_is_off_where_session_enable_does_not_name_it(bifrost_proxy):
    record, sent, body = send_reverse(bifrost_proxy, "/v1/chat/completions", "litellm-off")
    assert header(record, "x-litellm-session-id") is None
    assert [r["name"] for r in record["session_ids"]["rules"]] == ["bifrost-session"]


# --------------------------------------------------------------------------- Bifrost (ships off)


def test_bifrost_switched_on_in_reverse_mode_gets_its_session_header(bifrost_proxy):
    record, sent, body = send_reverse(bifrost_proxy, "/v1/chat/completions", "bifrost-bare")
    assert (record["host"], record["port"], record["scheme"]) == ("localhost", 8080, "http")
    assert header(record, "x-bf-session-id") == fallback_id(record)
    assert [k for k, _ in record["headers"]][-1] == "x-bf-session-id"  # the only header added
    assert body_of(record) == body


def test_bifrost_keeps_the_clients_session_and_claude_codes_own(bifrost_proxy):
    record, sent, body = send_reverse(
        bifrost_proxy, "/v1/messages", "bifrost-own", [("x-bf-session-id", "user-123-session-abc")]
    )
    assert [v for k, v in record["headers"] if k.lower() == "x-bf-session-id"] == ["user-123-session-abc"]
    assert record["session_ids"]["changes"] == []
    # Claude Code names its session itself; Bifrost would adopt that header, and the rule sets the same id
    claude = "5f0c6a1e-2b7d-4c1a-9e3f-0123456789ab"
    record, sent, body = send_reverse(
        bifrost_proxy, "/v1/messages", "bifrost-claude", [("x-claude-code-session-id", claude)]
    )
    assert header(record, "x-bf-session-id") == claude


def test_bifrost_is_off_where_session_enable_does_not_name_it(proxy):
    record, sent, body = send(proxy, "bifrost.test", "/v1/chat/completions", "bifrost-off")
    arrived_as(record, sent, body)
    assert record["session_ids"] is None
