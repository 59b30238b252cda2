"""The gateway stand-in's ``[[tool: NAME {json}]]`` directive (tests/support/gateway_standin.py):
the plan it makes with the bash directives, and the tool call each API gets, streamed and not."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from mitmproxy.addons.script import load_script
from mitmproxy.test import tflow, tutils

import gateway_standin as gs
from gateway_standin import DirectiveError, ToolCall

AGENT = {"description": "look", "prompt": "sub task [[reply: sub done]]", "subagent_type": "general-purpose"}
AGENT_TEXT = "[[tool: Agent " + json.dumps(AGENT) + "]]"
APIS = ["openai-chat", "anthropic-messages", "openai-responses"]


# --------------------------------------------------------------------------- requests


def tools(api: str, names) -> dict:
    if names is None:
        return {}
    if api == "openai-chat":
        return {"tools": [{"type": "function", "function": {"name": n, "parameters": {}}} for n in names]}
    return {"tools": [{"name": n, "input_schema": {}} for n in names]}


def request_body(api: str, text: str, results: int = 0, names=("Bash", "Agent"), stream=False) -> dict:
    """A request whose last user message is ``text``, followed by ``results`` tool results."""
    body = {"model": "m", "stream": stream, **tools(api, names)}
    if api == "openai-responses":
        body["input"] = [{"role": "user", "content": [{"type": "input_text", "text": text}]}] + [
            {"type": "function_call_output", "call_id": f"c{i}", "output": "x"} for i in range(results)
        ]
    elif api == "anthropic-messages":
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": text}]}] + [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}", "content": "x"}]}
            for i in range(results)
        ]
    else:
        body["messages"] = [{"role": "user", "content": text}] + [
            {"role": "tool", "tool_call_id": f"c{i}", "content": "x"} for i in range(results)
        ]
    return body


def answer(api: str, body: dict, n: int = 1) -> tuple:
    step, final, _ = gs.decide(api, body)
    response = gs.answer_for(api, body, step, final, n, 10, gs.conversation_state(api, body)[1], "openrouter.ai")
    return step, response


def sse(content: bytes) -> list[dict]:
    events = []
    for block in content.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: ") :]))
    return events


def emitted_call(api: str, response, stream: bool) -> tuple[str, str, dict]:
    """(call id, tool name, input) of the one tool call in an answer, read as a client reads it."""
    if not stream:
        obj = json.loads(response.content)
        if api == "openai-chat":
            (call,) = obj["choices"][0]["message"]["tool_calls"]
            assert obj["choices"][0]["finish_reason"] == "tool_calls"
            return call["id"], call["function"]["name"], json.loads(call["function"]["arguments"])
        if api == "anthropic-messages":
            (block,) = obj["content"]
            assert (block["type"], obj["stop_reason"]) == ("tool_use", "tool_use")
            return block["id"], block["name"], block["input"]
        (item,) = obj["output"]
        assert item["type"] == "function_call"
        return item["call_id"], item["name"], json.loads(item["arguments"])
    events = sse(response.content)
    if api == "openai-chat":
        calls = [d for e in events for c in e["choices"] for d in c["delta"].get("tool_calls", [])]
        first = calls[0]
        args = "".join(d["function"].get("arguments", "") for d in calls)
        assert [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]] == ["tool_calls"]
        return first["id"], first["function"]["name"], json.loads(args)
    if api == "anthropic-messages":
        (start,) = [e for e in events if e["type"] == "content_block_start"]
        block = start["content_block"]
        assert block["type"] == "tool_use" and block["input"] == {}
        partial = "".join(e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta")
        (stop,) = [e for e in events if e["type"] == "message_delta"]
        assert stop["delta"]["stop_reason"] == "tool_use"
        return block["id"], block["name"], json.loads(partial)
    (added,) = [e for e in events if e["type"] == "response.output_item.added"]
    delta = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    (item_done,) = [e for e in events if e["type"] == "response.output_item.done"]
    (completed,) = [e for e in events if e["type"] == "response.completed"]
    assert added["item"]["name"] == item_done["item"]["name"] == completed["response"]["output"][0]["name"]
    assert json.loads(delta) == json.loads(done["arguments"]) == json.loads(item_done["item"]["arguments"])
    return item_done["item"]["call_id"], added["item"]["name"], json.loads(delta)


# --------------------------------------------------------------------------- the plan


def test_tool_takes_its_place_among_the_bash_directives():
    text = f"[[bash: echo 1]] then {AGENT_TEXT} [[bash*2: echo 2]] [[tool: task {{}}]] [[reply: all done]]"
    assert gs.plan_of(text) == ["echo 1", ToolCall("Agent", AGENT), "echo 2", "echo 2", ToolCall("task", {})]


def test_each_request_of_the_turn_gets_the_next_step_then_the_text():
    text = f"[[bash: echo 1]] {AGENT_TEXT}"
    for api in APIS:
        steps = [gs.decide(api, request_body(api, text, k))[0] for k in range(4)]
        assert steps == ["echo 1", ToolCall("Agent", AGENT), None, None], api
        assert gs.decide(api, request_body(api, text, 2))[1] == "ok"


def test_tool_first_then_bash():
    assert gs.plan_of('[[tool: Read {"file_path": "/etc/hostname"}]] [[bash: ls]]') == [
        ToolCall("Read", {"file_path": "/etc/hostname"}),
        "ls",
    ]


def test_json_may_hold_spaces_lines_nested_objects_and_brackets_in_strings():
    value = {"a": {"b": [1, {"c": "d e"}]}, "s": "x ]] y [[bash: no]]", "n": None}
    text = "[[tool:   My_Tool.v2\n" + json.dumps(value, indent=2) + "\n  ]] and [[bash: yes]]"
    assert gs.plan_of(text) == [ToolCall("My_Tool.v2", value), "yes"]


def test_name_is_exact_and_case_sensitive():
    assert gs.plan_of('[[tool: agent {"x": 1}]] [[tool: Agent {"x": 2}]]') == [
        ToolCall("agent", {"x": 1}),
        ToolCall("Agent", {"x": 2}),
    ]


def test_tool_without_json_is_a_call_with_an_empty_object():
    assert gs.plan_of("[[tool: TodoRead]] [[tool: Other ]]") == [ToolCall("TodoRead", {}), ToolCall("Other", {})]


def test_directives_inside_the_json_belong_to_the_sub_agent_not_this_turn():
    inner = {"prompt": "[[bash: rm -rf nothing]] [[reply: sub done]] [[delay: 9]] [[usage: in=5]]"}
    text = "[[tool: Agent " + json.dumps(inner) + "]] [[reply: parent done]]"
    found = gs.directives(text)
    assert found.plan == [ToolCall("Agent", inner)] and found.error is None
    assert "sub done" not in found.rest and "parent done" in found.rest
    body = request_body("anthropic-messages", text, 1)
    assert gs.decide("anthropic-messages", body) == (None, "parent done", 0.0)
    assert gs.usage_figures("anthropic-messages", body) is None
    # ... and the sub-agent, whose own last user message is that prompt, follows them
    sub = request_body("anthropic-messages", inner["prompt"])
    assert gs.decide("anthropic-messages", sub) == ("rm -rf nothing", "sub done", 9.0)
    assert gs.usage_figures("anthropic-messages", sub) == {"in": 5}


def test_without_tool_directives_the_rest_is_the_text_itself():
    text = "[[bash: a]] [[reply: r]] [[toolx: no]] [[tools: no]]"
    assert gs.directives(text) == gs.Directives(["a"], text, None)


def test_default_reply_when_only_the_sub_agent_has_one():
    body = request_body("openai-chat", "[[tool: Agent " + json.dumps(AGENT) + "]]", 1)
    assert gs.decide("openai-chat", body) == (None, "ok", 0.0)


@pytest.mark.parametrize(
    "text, why",
    [
        ('[[tool: Agent {"prompt": "no end"]]', "not JSON"),
        ("[[tool: Agent [1, 2]]]", "not a JSON object"),
        ('[[tool: Agent {"a": 1} trailing]]', "no ']]'"),
        ('[[tool: {"a": 1}]]', "names no tool"),
        ("[[tool: Agent {'single': 'quotes'}]]", "not JSON"),
    ],
)
def test_an_unreadable_tool_directive_is_an_error(text, why):
    found = gs.directives("[[bash: first]] " + text)
    assert found.plan == ["first"] and why in found.error
    with pytest.raises(DirectiveError, match=why):
        gs.decide("openai-chat", request_body("openai-chat", text))


# --------------------------------------------------------------------------- which tool


def test_empty_tools_list_gets_text_as_for_bash():
    body = request_body("anthropic-messages", AGENT_TEXT, names=[])
    assert gs.decide("anthropic-messages", body)[0] is None


@pytest.mark.parametrize("names", [None, ["Bash"], ["bash", "Read"]])
def test_the_named_tool_is_called_whatever_the_tools_offer(names):
    for api in APIS:
        step, response = answer(api, request_body(api, AGENT_TEXT, names=names))
        assert emitted_call(api, response, False)[1:] == ("Agent", AGENT)


# --------------------------------------------------------------------------- the call each API gets


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("api", APIS)
def test_each_api_gets_the_call_with_the_object_as_its_input(api, stream):
    text = f"[[bash: echo 1]] {AGENT_TEXT}"
    step, response = answer(api, request_body(api, text, 1, stream=stream))
    assert response.status_code == 200
    assert response.headers["content-type"] == ("text/event-stream" if stream else "application/json")
    call_id, name, call_input = emitted_call(api, response, stream)
    assert (name, call_input) == ("Agent", AGENT)
    assert (
        call_id
        == {
            "openai-chat": "call_standin_1",
            "anthropic-messages": "toolu_standin_1",
            "openai-responses": "call_standin_1",
        }[api]
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("api", APIS)
def test_a_tool_call_has_the_shape_of_a_bash_call(api, stream):
    """``[[tool: bash {"command": "ls"}]]`` answers byte for byte as ``[[bash: ls]]`` does."""
    a = answer(api, request_body(api, '[[tool: bash {"command": "ls"}]]', names=["bash"], stream=stream))[1]
    b = answer(api, request_body(api, "[[bash: ls]]", names=["bash"], stream=stream))[1]
    assert a.content == b.content
    assert list(a.headers.fields) == list(b.headers.fields)


@pytest.mark.parametrize("api", APIS)
def test_second_call_of_the_turn_has_the_next_id(api):
    text = f'{AGENT_TEXT} [[tool: Agent {{"prompt": "two"}}]]'
    _, response = answer(api, request_body(api, text, 1, stream=True))
    call_id, name, call_input = emitted_call(api, response, True)
    assert call_id.endswith("_1") and (name, call_input) == ("Agent", {"prompt": "two"})


def test_non_ascii_input_survives():
    value = {"prompt": "héllo — 日本 \u2028 end"}
    for api in APIS:
        for stream in (False, True):
            _, response = answer(
                api, request_body(api, "[[tool: Agent " + json.dumps(value, ensure_ascii=False) + "]]", stream=stream)
            )
            assert emitted_call(api, response, stream)[2] == value


# --------------------------------------------------------------------------- as mitmproxy runs it


def _flow(body: dict, path: str = "/api/v1/messages"):
    content = json.dumps(body).encode()
    return tflow.tflow(
        req=tutils.treq(
            host="openrouter.ai",
            port=443,
            path=path.encode(),
            method=b"POST",
            content=content,
            headers=[(b"content-type", b"application/json")],
        )
    )


def test_loaded_as_mitmproxy_loads_a_script(tmp_path, monkeypatch):
    """mitmproxy runs ``-s`` scripts as modules that are not in sys.modules: the directive's types
    must work there (a @dataclass would fail at import)."""
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("STANDIN_LOG", str(log))
    module = load_script(gs.__file__)
    assert module is not None
    f = _flow(request_body("anthropic-messages", f"[[bash: true]] {AGENT_TEXT}", 1, stream=True))
    asyncio.run(module.addons[0].request(f))
    assert f.response.status_code == 200
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (record["answer"], record["tool_name"], record["tool_command"], record["tool_input"]) == (
        "tool_call",
        "Agent",
        None,
        AGENT,
    )


def test_log_record_of_a_bash_call_has_no_tool_input(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("STANDIN_LOG", str(log))
    f = _flow(request_body("openai-chat", "[[bash: ls]]", names=["bash"]), "/api/v1/chat/completions")
    asyncio.run(gs.GatewayStandin().request(f))
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (record["tool_name"], record["tool_command"], record["tool_input"]) == ("bash", "ls", None)


def test_unreadable_directive_gets_a_400_and_is_logged_as_an_error(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("STANDIN_LOG", str(log))
    f = _flow(request_body("anthropic-messages", '[[tool: Agent {"prompt": ]]'))
    asyncio.run(gs.GatewayStandin().request(f))
    assert f.response.status_code == 400
    assert "not JSON" in json.loads(f.response.content)["error"]["message"]
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (record["answer"], record["tool_name"], record["tool_input"]) == ("error", None, None)


@pytest.mark.parametrize(
    "api, path",
    [
        ("openai-chat", "/api/v1/chat/completions"),
        ("anthropic-messages", "/api/v1/messages"),
        ("openai-responses", "/api/v1/responses"),
    ],
)
def test_streaming_standin_streams_the_call(api, path):
    server = gs.StreamingStandin(hold_timeout=5).start()
    try:
        server.release.set()
        data = json.dumps(request_body(api, AGENT_TEXT, stream=True)).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{server.port}{path}",
            data=data,
            method="POST",
            headers={"content-type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as resp:
            content = resp.read()
    finally:
        server.stop()
    response = gs.http.Response.make(200, content, {"content-type": "text/event-stream"})
    assert emitted_call(api, response, True)[1:] == ("Agent", AGENT)


def test_module_docstring_documents_the_directive():
    doc = gs.__doc__ or ""
    assert "[[tool: <NAME> <json object>]]" in doc and "tool_input" in doc
