"""The gateway stand-in's Google Gemini API (tests/support/gateway_standin.py): ``:generateContent``
and ``:streamGenerateContent?alt=sse``, as Gemini CLI and Cloudflare AI Gateway's Google AI Studio
route use them -- the last user message and ``k`` read from ``contents``, the directives' calls as
``functionCall`` parts to the request's shell tool, usage in ``usageMetadata``, JSON mode."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from mitmproxy.addons.script import load_script
from mitmproxy.test import tflow, tutils

import gateway_standin as gs
from gateway_standin import ToolCall

CF_PATH = "/v1/acct/gw/google-ai-studio/v1beta/models/gemini-2.5-flash"
GENERATE = CF_PATH + ":generateContent"
STREAM = CF_PATH + ":streamGenerateContent?alt=sse"
APIS = ["gemini", "gemini-stream"]
#: the first part of Gemini CLI's first user turn (the prompt is a second text part)
CONTEXT = "<session_context>\nThis is the Gemini CLI. We are setting up the context for our chat.\n</session_context>"
GEMINI_CLI_TOOLS = [
    "list_directory",
    "read_file",
    "grep_search",
    "replace",
    "write_file",
    "web_fetch",
    "run_shell_command",
    "google_web_search",
    "invoke_agent",
]
#: Gemini CLI 0.61.0's router classifier asks for this (generationConfig.responseJsonSchema)
CLASSIFIER_SCHEMA = {
    "type": "OBJECT",
    "properties": {
        "complexity_reasoning": {"type": "STRING", "description": "Brief explanation for the score."},
        "complexity_score": {"type": "INTEGER", "description": "Complexity score from 1-100."},
    },
    "required": ["complexity_reasoning", "complexity_score"],
}


# --------------------------------------------------------------------------- requests


def tools(names) -> dict:
    if names is None:
        return {}
    return {
        "tools": [
            {
                "functionDeclarations": [
                    {"name": n, "description": n, "parametersJsonSchema": {"type": "object"}} for n in names
                ]
            }
        ]
    }


def turn(text: str) -> dict:
    """Gemini CLI's first user turn: its session context, then the prompt, as two text parts."""
    return {"role": "user", "parts": [{"text": CONTEXT}, {"text": text}]}


def call_and_result(i: int, name: str = "run_shell_command") -> list[dict]:
    """A model turn that called a tool, and the user turn with its result."""
    return [
        {
            "role": "model",
            "parts": [{"functionCall": {"name": name, "args": {"command": f"c{i}"}}, "thoughtSignature": "sig"}],
        },
        {"role": "user", "parts": [{"functionResponse": {"id": f"id{i}", "name": name, "response": {"output": "x"}}}]},
    ]


def request_body(text: str, results: int = 0, names=tuple(GEMINI_CLI_TOOLS), **extra) -> dict:
    """A Gemini CLI-like request whose last user message is ``text``, then ``results`` tool calls
    each answered."""
    contents = [turn(text)]
    for i in range(results):
        contents += call_and_result(i)
    return {
        "contents": contents,
        "systemInstruction": {"role": "user", "parts": [{"text": "You are Gemini CLI"}]},
        **tools(names),
        "generationConfig": {"temperature": 1},
        **extra,
    }


def answer(api: str, body: dict, n: int = 1):
    step, final, _ = gs.decide(api, body)
    response = gs.answer_for(
        api, body, step, final, n, 10, gs.conversation_state(api, body)[1], "gateway.ai.cloudflare.com"
    )
    return step, response


def chunks(response) -> list[dict]:
    """The ``data:`` objects of an SSE answer, checking that every event is just one such line."""
    out = []
    for block in response.content.decode().split("\n\n"):
        if not block:
            continue
        (line,) = block.splitlines()
        assert line.startswith("data: ") and line != "data: [DONE]", line
        out.append(json.loads(line[len("data: ") :]))
    return out


def read(response, stream: bool) -> dict:
    """What a client makes of an answer: the text, the function calls, the finish reasons, the
    usage (the last ``usageMetadata`` given)."""
    objects = chunks(response) if stream else [json.loads(response.content)]
    text, calls, finish, usage = "", [], [], None
    for obj in objects:
        (candidate,) = obj["candidates"]
        assert candidate["content"]["role"] == "model" and candidate["index"] == 0
        for part in candidate["content"]["parts"]:
            if "text" in part:
                text += part["text"]
            if "functionCall" in part:
                calls.append((part["functionCall"]["name"], part["functionCall"]["args"]))
                assert "id" not in part["functionCall"]
        if "finishReason" in candidate:
            finish.append(candidate["finishReason"])
        if "usageMetadata" in obj:
            usage = obj["usageMetadata"]
    return {"text": text, "calls": calls, "finish": finish, "usage": usage, "chunks": len(objects)}


# --------------------------------------------------------------------------- which API


@pytest.mark.parametrize(
    "path, api",
    [
        (GENERATE, "gemini"),
        (STREAM, "gemini-stream"),
        (CF_PATH + ":streamGenerateContent", "gemini-stream"),
        ("/v1beta/models/gemini-3.5-flash-lite:generateContent", "gemini"),
        (
            "/v1/projects/p/locations/us/publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            "gemini-stream",
        ),
        (CF_PATH + ":countTokens", "other"),
        (CF_PATH + ":embedContent", "other"),
        ("/v1beta/models", "other"),
        ("/v1beta/models/gemini-2.5-flash", "other"),
        ("/api/v1/chat/completions", "openai-chat"),
        ("/v1/messages?beta=true", "anthropic-messages"),
        ("/api/v1/responses", "openai-responses"),
    ],
)
def test_api_of_path(path, api):
    assert gs.api_of(path) == api


# --------------------------------------------------------------------------- the conversation


def test_the_last_user_message_is_the_text_of_gemini_clis_first_turn():
    text, k = gs.conversation_state("gemini-stream", request_body("do it [[bash: ls]]"))
    assert text == CONTEXT + "\n" + "do it [[bash: ls]]" and k == 0


def test_function_responses_count_as_tool_results_after_it():
    for results in range(4):
        assert gs.conversation_state("gemini-stream", request_body("go", results)) == (CONTEXT + "\ngo", results)


def test_each_function_response_part_counts():
    body = request_body("go")
    body["contents"] += [
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "a", "args": {}}}, {"functionCall": {"name": "b", "args": {}}}],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "a", "response": {}}},
                {"functionResponse": {"name": "b", "response": {}}},
            ],
        },
    ]
    assert gs.conversation_state("gemini", body)[1] == 2


def test_a_later_user_turn_is_the_last_user_message():
    body = request_body("first [[bash: one]]", 1)
    body["contents"] += [
        {"role": "model", "parts": [{"text": "done"}]},
        {"role": "user", "parts": [{"text": "second [[reply: two]]"}]},
    ]
    assert gs.conversation_state("gemini-stream", body) == ("second [[reply: two]]", 0)
    assert gs.decide("gemini-stream", body) == (None, "two", 0.0)


def test_model_turns_thoughts_and_parts_without_text_are_not_the_user_message():
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "asked [[reply: r]]"}]},
            {"role": "model", "parts": [{"text": "[[reply: not me]]"}]},
            {"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": ""}}]},
            {"role": "user", "parts": [{"text": "thinking [[reply: nor me]]", "thought": True}]},
        ]
    }
    assert gs.conversation_state("gemini", body) == ("asked [[reply: r]]", 0)


def test_a_lone_turn_may_leave_the_role_out():
    body = {"contents": [{"parts": [{"text": "no role [[reply: fine]]"}]}]}
    assert gs.decide("gemini", body) == (None, "fine", 0.0)


def test_the_router_request_splits_the_first_turn_in_two_entries():
    """Gemini CLI's classifier request: the session context and the prompt as two user entries."""
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": CONTEXT}]},
            {"role": "user", "parts": [{"text": "go [[bash: ls]]"}]},
        ],
        "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": CLASSIFIER_SCHEMA},
    }
    assert gs.conversation_state("gemini", body) == ("go [[bash: ls]]", 0)
    assert gs.decide("gemini", body)[0] is None  # no function declared: text


# --------------------------------------------------------------------------- the plan, turn by turn


@pytest.mark.parametrize("api", APIS)
def test_each_request_of_the_turn_gets_the_next_step_then_the_text(api):
    text = '[[bash: echo 1]] [[tool: read_file {"file_path": "a.txt"}]] [[bash*2: echo 2]] [[reply: all done]]'
    expected = [
        ("run_shell_command", {"command": "echo 1"}),
        ("read_file", {"file_path": "a.txt"}),
        ("run_shell_command", {"command": "echo 2"}),
        ("run_shell_command", {"command": "echo 2"}),
    ]
    stream = api == "gemini-stream"
    for k, call in enumerate(expected):
        step, response = answer(api, request_body(text, k))
        got = read(response, stream)
        assert got["calls"] == [call] and got["text"] == "" and got["finish"] == ["STOP"], k
    step, response = answer(api, request_body(text, len(expected)))
    got = read(response, stream)
    assert step is None and got["calls"] == [] and got["text"] == "all done" and got["finish"] == ["STOP"]


@pytest.mark.parametrize(
    "names, tool",
    [
        (GEMINI_CLI_TOOLS, "run_shell_command"),
        (["bash", "run_shell_command"], "run_shell_command"),  # Gemini CLI's own shell first
        (["read_file", "bash"], "bash"),
        (["read_file", "exec_command"], "exec_command"),
        (["read_file", "write_file"], "run_shell_command"),  # none shell-like: Gemini CLI's name
    ],
)
def test_bash_goes_to_the_shell_tool_the_request_declares(names, tool):
    step, response = answer("gemini", request_body("[[bash: ls -la]]", names=names))
    assert step == "ls -la"
    expected_args = {"cmd": "ls -la"} if tool == "exec_command" else {"command": "ls -la"}
    assert read(response, False)["calls"] == [(tool, expected_args)]
    assert gs.call_of(request_body("", names=names), "ls -la", "gemini") == (tool, expected_args)


@pytest.mark.parametrize("body_tools", [None, [], [{"googleSearch": {}}], [{"functionDeclarations": []}]])
@pytest.mark.parametrize("text", ["[[bash: ls]]", '[[tool: read_file {"file_path": "x"}]]'])
def test_a_request_declaring_no_function_gets_the_text(body_tools, text):
    """Gemini CLI's router, next-speaker and summary requests declare none: a real model could not
    call one, so neither does the stand-in (bash and tool directives alike)."""
    body = request_body(text + " [[reply: plain]]", names=None)
    if body_tools is not None:
        body["tools"] = body_tools
    for api in APIS:
        step, response = answer(api, body)
        got = read(response, api == "gemini-stream")
        assert step is None and got["calls"] == [] and got["text"] == "plain"


def test_other_apis_keep_their_shell_tool():
    """run_shell_command is the Gemini API's: elsewhere a request offering it still gets bash."""
    body = {
        "messages": [{"role": "user", "content": "[[bash: ls]]"}],
        "tools": [{"type": "function", "function": {"name": "run_shell_command"}}],
    }
    assert gs.shell_tool(body) == "bash" and gs.call_of(body, "ls") == ("bash", {"command": "ls"})


# --------------------------------------------------------------------------- the answers


def test_generate_content_answers_one_json_object():
    step, response = answer("gemini", request_body("[[reply: hello there]]"), n=7)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    obj = json.loads(response.content)
    assert obj == {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "hello there"}]}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 5,
            "cachedContentTokenCount": 0,
            "totalTokenCount": 15,
        },
        "modelVersion": "standin-model",
        "responseId": "standin-7",
    }


def test_generate_content_tool_call_is_a_function_call_part():
    _, response = answer("gemini", request_body("[[bash: echo hi]]"))
    (candidate,) = json.loads(response.content)["candidates"]
    assert candidate["content"]["parts"] == [
        {"functionCall": {"name": "run_shell_command", "args": {"command": "echo hi"}}}
    ]
    assert candidate["finishReason"] == "STOP"


def test_stream_sends_the_text_in_two_chunks_usage_and_finish_in_the_last():
    _, response = answer("gemini-stream", request_body("[[reply: streamed text]]"))
    assert response.headers["content-type"] == "text/event-stream"
    first, last = chunks(response)
    assert first["candidates"][0]["content"]["parts"] == [{"text": "stream"}]
    assert "finishReason" not in first["candidates"][0] and "usageMetadata" not in first
    assert last["candidates"][0]["content"]["parts"] == [{"text": "ed text"}]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"]["totalTokenCount"] == 15
    assert read(response, True)["text"] == "streamed text"


def test_stream_sends_a_tool_call_in_one_chunk():
    _, response = answer("gemini-stream", request_body("[[bash: make test]]"))
    got = read(response, True)
    assert got["chunks"] == 1 and got["calls"] == [("run_shell_command", {"command": "make test"})]
    assert got["finish"] == ["STOP"] and got["usage"]["candidatesTokenCount"] == 5


def test_a_one_character_text_streams_in_one_chunk():
    got = read(answer("gemini-stream", request_body("[[reply: k]]"))[1], True)
    assert (got["chunks"], got["text"], got["finish"]) == (1, "k", ["STOP"])


@pytest.mark.parametrize("api", APIS)
def test_usage_directive_fills_usage_metadata(api):
    body = request_body("[[usage: in=1200 cached=1000 write=7 out=33 cost=0.5 provider=google]] [[reply: u]]")
    usage = read(answer(api, body)[1], api == "gemini-stream")["usage"]
    assert usage == {
        "promptTokenCount": 1200,
        "candidatesTokenCount": 33,
        "cachedContentTokenCount": 1000,
        "totalTokenCount": 1233,
    }
    only_out = read(answer(api, request_body("[[usage: out=4]]"))[1], api == "gemini-stream")["usage"]
    assert only_out == {"candidatesTokenCount": 4}


def test_non_ascii_survives():
    value = {"command": "echo héllo — 日本 \u2028 end"}
    for api in APIS:
        body = request_body("[[tool: run_shell_command " + json.dumps(value, ensure_ascii=False) + "]]")
        assert read(answer(api, body)[1], api == "gemini-stream")["calls"] == [("run_shell_command", value)]
        text_body = request_body("[[reply: ünïcode ✓]]")
        assert read(answer(api, text_body)[1], api == "gemini-stream")["text"] == "ünïcode ✓"


# --------------------------------------------------------------------------- JSON mode


def json_mode(schema=None, key="responseJsonSchema") -> dict:
    config = {"responseMimeType": "application/json"}
    if schema is not None:
        config[key] = schema
    return {
        "contents": [
            {"role": "user", "parts": [{"text": CONTEXT}]},
            {"role": "user", "parts": [{"text": "x [[reply: not json]] [[bash: ls]]"}]},
        ],
        "generationConfig": config,
    }


@pytest.mark.parametrize("api", APIS)
def test_json_mode_answers_an_object_that_fits_the_schema(api):
    got = read(answer(api, json_mode(CLASSIFIER_SCHEMA))[1], api == "gemini-stream")
    assert json.loads(got["text"]) == {"complexity_reasoning": "standin", "complexity_score": 1}
    assert got["calls"] == [] and got["finish"] == ["STOP"]


def test_json_mode_values():
    schema = {
        "type": "object",
        "properties": {
            "next_speaker": {"type": "string", "enum": ["user", "model"]},
            "n": {"type": "number", "minimum": 3},
            "ok": {"type": "boolean"},
            "list": {"type": "array"},
            "maybe": {"type": ["null", "integer"]},
            "either": {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
            "inner": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}, "b": {"type": "INTEGER"}}},
        },
    }
    text = read(answer("gemini", json_mode(schema, "responseSchema"))[1], False)["text"]
    assert json.loads(text) == {
        "next_speaker": "user",
        "n": 3,
        "ok": False,
        "list": [],
        "maybe": 1,
        "either": False,
        "inner": {"a": "standin", "b": 1},
    }


def test_json_mode_without_a_schema_is_an_empty_object():
    assert read(answer("gemini", json_mode())[1], False)["text"] == "{}"


def test_not_json_mode_keeps_the_reply():
    body = json_mode(CLASSIFIER_SCHEMA)
    body["generationConfig"]["responseMimeType"] = "text/plain"
    assert read(answer("gemini", body)[1], False)["text"] == "not json"


# --------------------------------------------------------------------------- as mitmproxy runs it


def _flow(body: dict, path: str):
    return tflow.tflow(
        req=tutils.treq(
            host="gateway.ai.cloudflare.com",
            port=443,
            path=path.encode(),
            method=b"POST",
            content=json.dumps(body).encode(),
            headers=[(b"content-type", b"application/json")],
        )
    )


@pytest.mark.parametrize("path, api", [(GENERATE, "gemini"), (STREAM, "gemini-stream")])
def test_loaded_as_mitmproxy_loads_a_script(tmp_path, monkeypatch, path, api):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("STANDIN_LOG", str(log))
    module = load_script(gs.__file__)
    assert module is not None
    f = _flow(request_body("[[bash: echo from-the-proxy]]"), path)
    asyncio.run(module.addons[0].request(f))
    assert f.response.status_code == 200
    assert read(f.response, api == "gemini-stream")["calls"] == [
        ("run_shell_command", {"command": "echo from-the-proxy"})
    ]
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (
        record["api"],
        record["stream"],
        record["answer"],
        record["tool_name"],
        record["tool_command"],
        record["tool_input"],
    ) == (api, api == "gemini-stream", "tool_call", "run_shell_command", "echo from-the-proxy", None)


def test_log_record_of_a_tool_directive(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("STANDIN_LOG", str(log))
    f = _flow(request_body('[[tool: invoke_agent {"agent_name": "x", "prompt": "p"}]]'), STREAM)
    asyncio.run(gs.GatewayStandin().request(f))
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (record["tool_name"], record["tool_command"], record["tool_input"]) == (
        "invoke_agent",
        None,
        {"agent_name": "x", "prompt": "p"},
    )
    assert gs.plan_of('[[tool: invoke_agent {"agent_name": "x", "prompt": "p"}]]') == [
        ToolCall("invoke_agent", {"agent_name": "x", "prompt": "p"})
    ]


def test_streaming_standin_streams_the_gemini_answer():
    server = gs.StreamingStandin(hold_timeout=5, host="gateway.ai.cloudflare.com").start()
    try:
        server.release.set()
        data = json.dumps(request_body("[[reply: over the wire]]")).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{server.port}{STREAM}",
            data=data,
            method="POST",
            headers={"content-type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as resp:
            content = resp.read()
            assert resp.headers["content-type"] == "text/event-stream"
    finally:
        server.stop()
    assert server.sent[-1]["api"] == "gemini-stream"
    assert server.sent[-1]["first"].startswith(b"data: {")  # the first chunk went out by itself
    response = gs.http.Response.make(200, content, {"content-type": "text/event-stream"})
    got = read(response, True)
    assert (got["chunks"], got["text"]) == (2, "over the wire")


def test_module_docstring_documents_the_gemini_api():
    doc = gs.__doc__ or ""
    for words in (
        ":generateContent",
        ":streamGenerateContent",
        "functionResponse",
        "functionCall",
        "run_shell_command",
        "usageMetadata",
        "cachedContentTokenCount",
        "responseMimeType",
    ):
        assert words in doc, words
