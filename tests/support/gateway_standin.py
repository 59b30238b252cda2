"""mitmproxy script standing in for LLM gateways (openrouter.ai, opencode.ai, api.opper.ai, ...).

Load it LAST, after the addon under test:

    STANDIN_LOG=/tmp/log.jsonl mitmdump --set connection_strategy=lazy -s addon.py -s gateway_standin.py

It answers EVERY request itself (any host), so nothing reaches the network.

Log
---
For each request one JSON line is appended (and flushed) to the file named by ``STANDIN_LOG``
(nothing is written if unset):

    {"kind": "request", "time": <epoch float>, "n": <1-based count>, "flow_id", "host", "port", "scheme", "http_version", "method", "path",
     "headers": [[name, value], ...] (original case and order),
     "body": <text>, "body_b64": <base64 of raw bytes on the wire>,
     "client_port": <peer port of the client connection>,
     "comment": <flow.comment or "">, "session_ids": <flow.metadata.get("session_ids"), json-safe>,
     "api": "openai-chat" | "anthropic-messages" | "openai-responses" | "gemini" | "gemini-stream" | "other",
     "stream": bool (the body's ``stream``; true for ``gemini-stream``), "answer": "tool_call" | "text" | "error" | "other", "tool_command": <str or null>,
     "tool_name": <name of the tool called, or null>,
     "tool_input": <the input object of a ``[[tool: ...]]`` call, else null>}

Network guard
-------------
All ``-s`` scripts sit under ONE mitmproxy ScriptLoader: if a script loaded earlier (the addon
under test) raises in ``request``, mitmproxy skips the later scripts for that event, so the
stand-in never sees the flow and mitmproxy would dial the real server. To keep tests off the
network, the stand-in also kills every upstream connection in ``server_connect`` (the client
then gets a 502) and logs ``{"kind": "blocked_connect", "time", "address": "host:port"}``.

Answers
-------
The API shape is chosen from the path (query ignored):

- ``.../chat/completions`` -> OpenAI chat completions (SSE chunks ending with ``data: [DONE]``
  if the body has ``"stream": true``, else one JSON object);
- ``.../messages`` -> Anthropic Messages (SSE ``message_start`` ... ``message_stop``, or JSON);
- ``.../responses`` -> OpenAI Responses (SSE ``response.created`` ... ``response.completed``, or JSON);
- ``.../models/<model>:generateContent`` -> Google's Gemini API (api ``gemini``: one JSON object),
  ``.../models/<model>:streamGenerateContent`` (``?alt=sse``) -> the same streamed (api
  ``gemini-stream``: SSE ``data: {...}`` chunks, no event names, no ``[DONE]``); see "Google's
  Gemini API" below;
- any other path -> ``404 {"error": ...}`` (GET ``.../models`` -> ``{"data": []}``).

Every answer carries usage (input tokens ~ request body bytes / 4, output tokens 5).

Scripted tool calls (deterministic)
-----------------------------------
The "last user message" is the last message written by the human (role ``user`` with text;
messages holding only tool results do not count). Its text may hold directives:

- ``[[bash: <command>]]`` -- one call of pi's ``bash`` tool with ``{"command": "<command>"}``;
- ``[[bash*N: <command>]]`` -- the same call N times in a row (N follow-up requests);
- ``[[tool: <NAME> <json object>]]`` -- one call of the tool named exactly ``NAME``
  (case-sensitive: ``Agent`` for Claude Code's sub-agents, ``task`` for opencode's) with that
  object as its input (Anthropic ``input``) or arguments (OpenAI ``arguments``, the object's
  ``json.dumps``). The object may span lines and hold spaces, nested objects, and even ``]]``
  inside its strings (it is read as JSON, then ``]]`` must follow); ``[[tool: NAME]]`` is a call
  with ``{}``. The call goes to ``NAME`` whatever the request's ``tools`` offers (only an EMPTY
  ``tools`` list turns it into text, as for bash). Directives INSIDE the object (say a
  sub-agent's prompt ``"sub task [[reply: sub done]]"``) belong to whoever gets that text, not
  to this turn: they are neither in this plan nor this turn's ``[[reply]]``/``[[delay]]``/
  ``[[usage]]``. An object that is not valid JSON, not an object, or not followed by ``]]`` makes
  every request of the turn get ``400 {"error": {"message": "stand-in: ..."}}`` (logged as
  ``"answer": "error"``);
- several directives are run in the order written, bash and tool alike.

The plan is the expanded list of calls. With ``k`` = the number of tool results in the
conversation AFTER the last user message, the answer is a tool call for ``plan[k]`` while
``k < len(plan)``, else plain text. So ``pi -p "[[bash: echo hi]]"`` makes exactly two requests
(tool call, then text); ``[[bash*2: true]]`` makes three; ``[[bash: echo 1]] [[tool: Agent
{"prompt": "look"}]]`` makes a ``bash``/``Bash`` call, then an ``Agent`` call, then the text.

Other directives in the last user message:

- ``[[reply: <text>]]`` -- the final text answer (default ``ok``);
- ``[[delay: <seconds>]]`` -- wait this long (max 30 s) before answering each request of the
  turn (the proxy keeps serving other flows meanwhile).

Usage figures (issue 11)
------------------------
``[[usage: in=<n> cached=<n> write=<n> out=<n> cost=<usd> provider=<name>]]`` in the last user
message makes every answer of the turn carry exactly these figures (each key optional; a key not
given is left out of the answer), in the answer's own format: OpenAI chat ``usage.prompt_tokens``,
``prompt_tokens_details.cached_tokens`` / ``cache_write_tokens``, ``usage.cost`` and a top-level
``provider`` (OpenRouter's additions); Anthropic ``input_tokens`` (= in - cached - write),
``cache_read_input_tokens``, ``cache_creation_input_tokens``, with ``usage.cost`` in the last
``message_delta``; Responses ``usage.input_tokens``, ``input_tokens_details.cached_tokens``. On
``api.opper.ai`` the provider is the ``x-opper-served-provider`` header, and the cost the
``x-opper-cost`` header (not streamed) or the last event's ``usage.cost`` (streamed). Each answer
is logged too: ``{"kind": "answer", "n", "flow_id", "status", "headers", "body_b64"}``.

``StreamingStandin`` runs the same answers as a real upstream HTTP server, sending an SSE answer
event by event and holding all but the first until the test releases it (see its doc).

Tool-call ids are ``call_standin_<k>`` (OpenAI chat), ``toolu_standin_<k>`` (Anthropic),
``call_standin_<k>`` / ``fc_standin_<k>`` (Responses), for ``[[tool]]`` calls too; a tool call
has the same shape whichever directive made it (only the name and the input differ).

Which shell tool is called
--------------------------
The call goes to the first shell-like tool that the request's ``tools`` list offers, with the
argument shape that tool takes (see ``SHELL_TOOLS``):

- ``bash`` (pi) and ``Bash`` (Claude Code): ``{"command": "<command>"}``;
- ``exec_command`` (Codex CLI 0.1xx): ``{"cmd": "<command>"}``;
- ``shell_command``: ``{"command": "<command>"}``; ``shell`` (older Codex): ``{"command":
  ["bash", "-lc", "<command>"]}``.

A request with no ``tools`` key, or whose tools include none of these, gets a call of ``bash``
with ``{"command": ...}`` as before. A request whose ``tools`` is present but EMPTY cannot take
a tool call: it gets the text answer (Claude Code's title-generation request is like that).
The log record names the tool in ``tool_name``. (A ``[[tool: NAME ...]]`` call goes to ``NAME``
as given, with ``tool_command`` null and the object in ``tool_input``.)

Google's Gemini API
-------------------
``POST .../models/<model>:generateContent`` and ``...:streamGenerateContent?alt=sse`` (Gemini CLI
with ``GOOGLE_GEMINI_BASE_URL``; Cloudflare AI Gateway's ``.../google-ai-studio/v1beta/...``).

- The "last user message" is the last ``contents[]`` entry with role ``user`` (or none) holding a
  ``text`` part (its text parts joined with newlines; ``thought`` parts left out). An entry holding
  ``functionResponse`` parts is tool results, not a human message: each such part counts in ``k``.
- The tools offered are ``tools[].functionDeclarations[].name``. A ``[[bash: ...]]`` call goes to
  ``run_shell_command`` (Gemini CLI's and Qwen Code's shell tool) with ``{"command": ...}`` when it
  is offered, else to the first of ``SHELL_TOOLS`` offered, else to ``run_shell_command``. A
  request that declares no function at all (no ``tools``, or none with ``functionDeclarations``:
  Gemini CLI's router, next-speaker and summary requests) gets the text answer, bash and tool
  directives alike: the real API cannot call an undeclared function.
- The answer: ``{"candidates": [{"content": {"role": "model", "parts": [<part>]}, "finishReason":
  "STOP", "index": 0}], "usageMetadata": {...}, "modelVersion", "responseId": "standin-<n>"}``,
  ``<part>`` being ``{"text": <text>}`` or ``{"functionCall": {"name", "args"}}`` (no ``id``, as
  Google AI Studio sends none; the client names its calls). Streamed, a tool call is one chunk; a
  text of 2 characters or more is two chunks, its first half, then the rest with
  ``finishReason`` and ``usageMetadata`` (only the last chunk has them).
- JSON mode: a text answer to a request whose ``generationConfig.responseMimeType`` is
  ``application/json`` is, instead of the reply, a JSON object that fits its
  ``responseJsonSchema`` (or ``responseSchema``): each required property (every property when
  none is listed) with the first of its ``enum``, else a string ``"standin"``, the number 1 (its
  ``minimum`` if higher), ``false``, ``[]``, or an object built the same way; ``{}`` without a
  schema. Gemini CLI's model router (its classifier, ``{"complexity_reasoning",
  "complexity_score"}``) and its other utility requests then get an answer they can read at once
  (a plain ``ok`` makes the CLI retry with backoff for about 100 s, then go on without).
- ``usageMetadata``: ``promptTokenCount`` (~ body bytes / 4), ``candidatesTokenCount`` 5,
  ``cachedContentTokenCount`` 0, ``totalTokenCount``; with ``[[usage: ...]]``: ``in`` ->
  ``promptTokenCount`` (which counts the cached tokens too, as Google's does), ``cached`` ->
  ``cachedContentTokenCount``, ``out`` -> ``candidatesTokenCount``, ``totalTokenCount`` = in + out
  when both are given; ``write``, ``cost`` and ``provider`` have no place in this format and are
  left out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import threading
import time
from typing import Any, NamedTuple

from mitmproxy import http

logger = logging.getLogger(__name__)

_BASH_RE = re.compile(r"\[\[bash(?:\*(\d+))?:\s*(.*?)\]\]", re.DOTALL)
_TOOL_RE = re.compile(r"\[\[tool:\s*")
_TOOL_NAME_RE = re.compile(r"[^\s\[\]{}]+")
_TOOL_END_RE = re.compile(r"\s*\]\]")
_JSON = json.JSONDecoder()
_REPLY_RE = re.compile(r"\[\[reply:\s*(.*?)\]\]", re.DOTALL)
_DELAY_RE = re.compile(r"\[\[delay:\s*([0-9.]+)\s*\]\]")
_USAGE_RE = re.compile(r"\[\[usage:\s*(.*?)\]\]", re.DOTALL)
_USAGE_KEYS = {"in": int, "cached": int, "write": int, "out": int, "cost": float, "provider": str}

_lock = threading.Lock()


# --------------------------------------------------------------------------- helpers


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, dict):
            return {str(k): _json_safe(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set)):
            return [_json_safe(v) for v in value]
        return str(value)


def _text_of(content: Any) -> str:
    """Text of an OpenAI/Anthropic/Responses message content (string or list of parts)."""
    if isinstance(content, str):
        return content
    parts = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
    return "\n".join(parts)


_GEMINI_PATH_RE = re.compile(r"/models/[^/:]+:(generateContent|streamGenerateContent)$")
GEMINI_APIS = ("gemini", "gemini-stream")


def api_of(path: str) -> str:
    p = path.split("?", 1)[0].rstrip("/")
    if p.endswith("/chat/completions"):
        return "openai-chat"
    if p.endswith("/messages"):
        return "anthropic-messages"
    if p.endswith("/responses"):
        return "openai-responses"
    gemini = _GEMINI_PATH_RE.search(p)
    if gemini:
        return "gemini" if gemini.group(1) == "generateContent" else "gemini-stream"
    return "other"


def _gemini_parts(entry: dict) -> list:
    parts = entry.get("parts")
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _gemini_state(body: dict) -> tuple[str, int]:
    last_text, results_after = "", 0
    for entry in body.get("contents") or []:
        if not isinstance(entry, dict) or entry.get("role") == "model":
            continue
        parts = _gemini_parts(entry)
        results = sum(1 for p in parts if "functionResponse" in p)
        if results:
            results_after += results
            continue
        texts = [str(p["text"]) for p in parts if isinstance(p.get("text"), str) and not p.get("thought")]
        if entry.get("role", "user") == "user" and texts:  # a lone turn may leave the role out
            last_text, results_after = "\n".join(texts), 0
    return last_text, results_after


def _responses_state(body: dict) -> tuple[str, int]:
    last_text, results_after = "", 0
    items = body.get("input")
    if isinstance(items, str):
        return items, 0
    for item in items or []:
        if not isinstance(item, dict):
            continue
        if item.get("role") == "user" and item.get("type", "message") == "message":
            last_text, results_after = _text_of(item.get("content")), 0
        elif item.get("type") == "function_call_output":
            results_after += 1
    return last_text, results_after


def conversation_state(api: str, body: dict) -> tuple[str, int]:
    """(text of the last human user message, number of tool results after it)."""
    if api in GEMINI_APIS:
        return _gemini_state(body)
    if api == "openai-responses":
        return _responses_state(body)
    last_text, results_after = "", 0
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        role, content = msg.get("role"), msg.get("content")
        if role == "tool":
            results_after += 1
        elif role == "user":
            if isinstance(content, list) and any(
                isinstance(b, dict) and b.get("type") == "tool_result" for b in content
            ):
                results_after += sum(1 for b in content if isinstance(b, dict) and b.get("type") == "tool_result")
                continue
            last_text, results_after = _text_of(content), 0
    return last_text, results_after


# (tool name, how the command becomes the tool's arguments), in order of preference.
SHELL_TOOLS: list[tuple[str, Any]] = [
    ("bash", lambda c: {"command": c}),
    ("Bash", lambda c: {"command": c}),
    ("exec_command", lambda c: {"cmd": c}),
    ("shell_command", lambda c: {"command": c}),
    ("shell", lambda c: {"command": ["bash", "-lc", c]}),
]
_SHELL_ARGS = dict(SHELL_TOOLS)
#: Gemini CLI's shell tool: preferred, and the default, for the Gemini API.
GEMINI_SHELL_TOOL = ("run_shell_command", lambda c: {"command": c})


def tool_names(body: dict) -> list[str] | None:
    """Names of the tools the request offers (None when it has no ``tools`` key)."""
    tools = body.get("tools")
    if tools is None:
        return None
    names = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        if isinstance(tool.get("function"), dict):  # OpenAI chat
            names.append(str(tool["function"].get("name", "")))
        elif isinstance(tool.get("functionDeclarations"), list):  # Gemini
            names += [str(d.get("name", "")) for d in tool["functionDeclarations"] if isinstance(d, dict)]
        elif tool.get("name") is not None:  # Anthropic, Responses
            names.append(str(tool["name"]))
    return names


def shell_tool(body: dict, api: str | None = None) -> str | None:
    """The shell tool a scripted command is sent to; None when the request offers no tools."""
    names = tool_names(body)
    if api in GEMINI_APIS:
        if not names:
            return None  # no function declared: the Gemini API answers with text
        for name in [GEMINI_SHELL_TOOL[0]] + [name for name, _ in SHELL_TOOLS]:
            if name in names:
                return name
        return GEMINI_SHELL_TOOL[0]
    if names is None:
        return "bash"
    if not names:
        return None
    for name, _ in SHELL_TOOLS:
        if name in names:
            return name
    return "bash"


def shell_args(tool: str | None, command: str) -> dict:
    if tool == GEMINI_SHELL_TOOL[0]:
        return GEMINI_SHELL_TOOL[1](command)
    return _SHELL_ARGS.get(tool or "bash", _SHELL_ARGS["bash"])(command)


# NamedTuples, not dataclasses: mitmproxy runs a script as a module missing from sys.modules,
# where @dataclass fails.
class ToolCall(NamedTuple):
    """A ``[[tool: NAME {...}]]`` step: a call of the tool ``name`` with ``input`` as is."""

    name: str
    input: dict


#: A step of the plan: a shell command (``[[bash]]``) or a call of a named tool (``[[tool]]``).
Step = str | ToolCall


def call_of(body: dict, step: Step, api: str | None = None) -> tuple[str, dict]:
    """(tool name, input object) of a tool call for ``step`` (``api``: the Gemini API's shell
    tool differs)."""
    if isinstance(step, ToolCall):
        return step.name, step.input
    tool = shell_tool(body, api) or ("run_shell_command" if api in GEMINI_APIS else "bash")
    return tool, shell_args(tool, step)


class DirectiveError(ValueError):
    """A ``[[tool: ...]]`` directive that cannot be read."""


class Directives(NamedTuple):
    """What the last user message scripts: ``plan`` (the steps, in order), ``rest`` (the text less
    the ``[[tool]]`` directives, where ``[[reply]]``, ``[[delay]]`` and ``[[usage]]`` are looked
    for; the text itself when it has none), ``error`` (why a ``[[tool]]`` could not be read)."""

    plan: list
    rest: str
    error: str | None = None


def _read_tool(text: str, start: int, after: int) -> tuple[ToolCall, int]:
    """The ``[[tool: ...]]`` directive whose ``[[tool:`` spans ``start:after``, and its end."""
    name = _TOOL_NAME_RE.match(text, after)
    if name is None:
        raise DirectiveError(f"[[tool:]] at offset {start} names no tool")
    i = name.end()
    while i < len(text) and text[i].isspace():
        i += 1
    if text.startswith("]]", i):
        return ToolCall(name.group(0), {}), i + 2
    try:
        value, i = _JSON.raw_decode(text, i)
    except ValueError as exc:
        raise DirectiveError(f"[[tool: {name.group(0)} ...]]: the input is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DirectiveError(f"[[tool: {name.group(0)} ...]]: the input is not a JSON object")
    end = _TOOL_END_RE.match(text, i)
    if end is None:
        raise DirectiveError(f"[[tool: {name.group(0)} ...]]: no ']]' after the JSON object")
    return ToolCall(name.group(0), value), end.end()


def directives(text: str) -> Directives:
    """The ``[[bash]]`` and ``[[tool]]`` directives of ``text``, in the order written."""
    plan: list = []
    rest: list[str] = []
    pos = kept = 0
    while True:
        bash = _BASH_RE.search(text, pos)
        tool = _TOOL_RE.search(text, pos)
        if tool is None or (bash is not None and bash.start() < tool.start()):
            if bash is None:
                break
            count, command = bash.groups()
            plan += [command.strip()] * (int(count) if count else 1)
            pos = bash.end()
            continue
        try:
            call, end = _read_tool(text, tool.start(), tool.end())
        except DirectiveError as exc:
            return Directives(plan, "".join(rest) + text[kept:], str(exc))
        plan.append(call)
        rest.append(text[kept : tool.start()])
        pos = kept = end
    return Directives(plan, "".join(rest) + text[kept:] if rest else text)


def plan_of(text: str) -> list:
    """The steps of ``text``: a ``str`` per bash call, a ``ToolCall`` per tool call."""
    return directives(text).plan


def decide(api: str, body: dict) -> tuple[Step | None, str, float]:
    """(step to call -- a bash command or a ToolCall -- or None, final text, delay seconds).

    Raises DirectiveError when the last user message holds a ``[[tool]]`` that cannot be read."""
    text, k = conversation_state(api, body)
    found = directives(text)
    if found.error is not None:
        raise DirectiveError(found.error)
    plan, text = found.plan, found.rest
    reply = _REPLY_RE.search(text)
    delay = _DELAY_RE.search(text)
    final = reply.group(1) if reply else "ok"
    seconds = min(float(delay.group(1)), 30.0) if delay else 0.0
    command = plan[k] if k < len(plan) else None
    if command is not None and shell_tool(body, api) is None:
        command = None  # the request offers no tools at all: answer with text
    return command, final, seconds


def usage_figures(api: str, body: dict) -> dict | None:
    """The ``[[usage: ...]]`` figures of the last user message (None without the directive)."""
    match = _USAGE_RE.search(directives(conversation_state(api, body)[0]).rest)
    if not match:
        return None
    figures: dict = {}
    for part in match.group(1).split():
        key, _, value = part.partition("=")
        if key in _USAGE_KEYS and value:
            figures[key] = _USAGE_KEYS[key](value)
    return figures


def _chat_usage(figures: dict | None, in_tok: int) -> dict:
    if figures is None:
        return {"prompt_tokens": in_tok, "completion_tokens": 5, "total_tokens": in_tok + 5}
    usage: dict = {}
    if "in" in figures:
        usage["prompt_tokens"] = figures["in"]
    if "out" in figures:
        usage["completion_tokens"] = figures["out"]
    if "in" in figures and "out" in figures:
        usage["total_tokens"] = figures["in"] + figures["out"]
    details = {k: figures[f] for k, f in (("cached_tokens", "cached"), ("cache_write_tokens", "write")) if f in figures}
    if details:
        usage["prompt_tokens_details"] = details
    if "cost" in figures:
        usage["cost"] = figures["cost"]
    return usage


def _anthropic_usage(figures: dict | None, in_tok: int) -> dict:
    if figures is None:
        return {
            "input_tokens": in_tok,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
    usage: dict = {}
    if "in" in figures:
        usage["input_tokens"] = figures["in"] - figures.get("cached", 0) - figures.get("write", 0)
    if "write" in figures:
        usage["cache_creation_input_tokens"] = figures["write"]
    if "cached" in figures:
        usage["cache_read_input_tokens"] = figures["cached"]
    if "out" in figures:
        usage["output_tokens"] = figures["out"]
    return usage


def _responses_usage(figures: dict | None, in_tok: int) -> dict:
    if figures is None:
        return {
            "input_tokens": in_tok,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": in_tok + 5,
        }
    usage: dict = {}
    if "in" in figures:
        usage["input_tokens"] = figures["in"]
    if "cached" in figures:
        usage["input_tokens_details"] = {"cached_tokens": figures["cached"]}
    if "out" in figures:
        usage["output_tokens"] = figures["out"]
    if "cost" in figures:
        usage["cost"] = figures["cost"]
    return usage


def _gemini_usage(figures: dict | None, in_tok: int) -> dict:
    if figures is None:
        return {
            "promptTokenCount": in_tok,
            "candidatesTokenCount": 5,
            "cachedContentTokenCount": 0,
            "totalTokenCount": in_tok + 5,
        }
    usage: dict = {}
    if "in" in figures:
        usage["promptTokenCount"] = figures["in"]
    if "out" in figures:
        usage["candidatesTokenCount"] = figures["out"]
    if "cached" in figures:
        usage["cachedContentTokenCount"] = figures["cached"]
    if "in" in figures and "out" in figures:
        usage["totalTokenCount"] = figures["in"] + figures["out"]
    return usage


def _provider(figures: dict | None) -> dict:
    return {"provider": figures["provider"]} if figures and "provider" in figures else {}


def _sse(events: list[tuple[str | None, dict | str]]) -> bytes:
    out = []
    for name, data in events:
        payload = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {payload}\n\n")
    return "".join(out).encode()


def _sse_response(body: bytes) -> http.Response:
    return http.Response.make(
        200,
        body,
        {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Standin": "1"},
    )


def _json_response(obj: Any, status: int = 200) -> http.Response:
    return http.Response.make(status, json.dumps(obj).encode(), {"Content-Type": "application/json", "X-Standin": "1"})


# --------------------------------------------------------------------------- answers


def openai_chat(body: dict, command: Step | None, text: str, n: int, in_tok: int, k: int, figures: dict | None = None):
    model = body.get("model", "standin-model")
    cid, created = f"chatcmpl-standin-{n}", int(time.time())
    usage = _chat_usage(figures, in_tok)
    extra = _provider(figures)
    tool, call_input = call_of(body, command) if command is not None else (None, None)
    args = json.dumps(call_input) if command is not None else None
    call_id = f"call_standin_{k}"
    finish = "tool_calls" if command is not None else "stop"
    if not body.get("stream"):
        if command is not None:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": tool, "arguments": args}}],
            }
        else:
            message = {"role": "assistant", "content": text}
        return _json_response(
            {
                "id": cid,
                **extra,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            }
        )

    def chunk(delta: dict, finish_reason=None, **extra) -> tuple[None, dict]:
        return None, {
            "id": cid,
            **_provider(figures),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            **extra,
        }

    events = [chunk({"role": "assistant", "content": ""})]
    if command is not None:
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": call_id, "type": "function", "function": {"name": tool, "arguments": ""}}
                    ]
                }
            )
        )
        events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args}}]}))
    else:
        events.append(chunk({"content": text}))
    events.append(chunk({}, finish))
    events.append(
        (
            None,
            {
                "id": cid,
                **extra,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            },
        )
    )
    events.append((None, "[DONE]"))
    return _sse_response(_sse(events))


def anthropic_messages(
    body: dict, command: Step | None, text: str, n: int, in_tok: int, k: int, figures: dict | None = None
):
    model = body.get("model", "standin-model")
    mid = f"msg_standin_{n}"
    stop = "tool_use" if command is not None else "end_turn"
    tool_id = f"toolu_standin_{k}"
    tool, call_input = call_of(body, command) if command is not None else (None, None)
    if command is not None:
        block = {"type": "tool_use", "id": tool_id, "name": tool, "input": call_input}
    else:
        block = {"type": "text", "text": text}
    usage = _anthropic_usage(figures, in_tok)
    extra = _provider(figures)
    cost = {"cost": figures["cost"]} if figures and "cost" in figures else {}
    if not body.get("stream"):
        return _json_response(
            {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                **extra,
                "content": [block],
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {**usage, **cost},
            }
        )
    start_block = (
        {"type": "tool_use", "id": tool_id, "name": tool, "input": {}}
        if command is not None
        else {"type": "text", "text": ""}
    )
    delta = (
        {"type": "input_json_delta", "partial_json": json.dumps(call_input)}
        if command is not None
        else {"type": "text_delta", "text": text}
    )
    events = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    **extra,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {**usage, "output_tokens": 1},
                },
            },
        ),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": start_block}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage.get("output_tokens", 5), **cost}
                if figures is None or "out" in figures
                else cost,
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return _sse_response(_sse(events))


def openai_responses(
    body: dict, command: Step | None, text: str, n: int, in_tok: int, k: int, figures: dict | None = None
):
    model = body.get("model", "standin-model")
    rid, created = f"resp_standin_{n}", int(time.time())
    usage = _responses_usage(figures, in_tok)
    extra = _provider(figures)
    if command is not None:
        tool, call_input = call_of(body, command)
        args = json.dumps(call_input)
        item = {
            "id": f"fc_standin_{k}",
            "type": "function_call",
            "status": "completed",
            "call_id": f"call_standin_{k}",
            "name": tool,
            "arguments": args,
        }
    else:
        item = {
            "id": f"msg_standin_{n}",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }

    def response_obj(status: str, output: list, use) -> dict:
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": status,
            "model": model,
            **extra,
            "output": output,
            "usage": use,
            "error": None,
            "incomplete_details": None,
        }

    if not body.get("stream"):
        return _json_response(response_obj("completed", [item], usage))
    seq = 0
    events: list[tuple[str, dict]] = []

    def ev(name: str, data: dict) -> None:
        nonlocal seq
        events.append((name, {"type": name, "sequence_number": seq, **data}))
        seq += 1

    ev("response.created", {"response": response_obj("in_progress", [], None)})
    ev("response.in_progress", {"response": response_obj("in_progress", [], None)})
    if command is not None:
        ev(
            "response.output_item.added",
            {"output_index": 0, "item": {**item, "status": "in_progress", "arguments": ""}},
        )
        ev(
            "response.function_call_arguments.delta",
            {"item_id": item["id"], "output_index": 0, "delta": item["arguments"]},
        )
        ev(
            "response.function_call_arguments.done",
            {"item_id": item["id"], "output_index": 0, "arguments": item["arguments"]},
        )
    else:
        ev("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}})
        part = {"type": "output_text", "text": "", "annotations": []}
        ev("response.content_part.added", {"item_id": item["id"], "output_index": 0, "content_index": 0, "part": part})
        ev("response.output_text.delta", {"item_id": item["id"], "output_index": 0, "content_index": 0, "delta": text})
        ev("response.output_text.done", {"item_id": item["id"], "output_index": 0, "content_index": 0, "text": text})
        ev(
            "response.content_part.done",
            {"item_id": item["id"], "output_index": 0, "content_index": 0, "part": {**part, "text": text}},
        )
    ev("response.output_item.done", {"output_index": 0, "item": item})
    ev("response.completed", {"response": response_obj("completed", [item], usage)})
    return _sse_response(_sse(events))


def _schema_value(schema: Any, depth: int = 0) -> Any:
    """A value that fits a (Gemini or JSON) schema: the first enum value, else a plain one."""
    if not isinstance(schema, dict) or depth > 16:
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _schema_value(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((t for t in kind if str(t).lower() != "null"), "null")
    kind = str(kind).lower() if kind is not None else ("object" if "properties" in schema else "string")
    if kind == "object":
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = schema.get("required")
        names = [str(r) for r in required] if isinstance(required, list) else list(props)
        return {name: _schema_value(props.get(name, {}), depth + 1) for name in names}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        low = schema.get("minimum")
        return max(1, int(low) if isinstance(low, (int, float)) else 1)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return "standin"


def gemini_json_text(body: dict) -> str | None:
    """The text answer of a Gemini request in JSON mode (None when it is not in JSON mode)."""
    config = body.get("generationConfig")
    if not isinstance(config, dict) or config.get("responseMimeType") != "application/json":
        return None
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    return json.dumps(_schema_value(schema) if isinstance(schema, dict) else {})


def _gemini(
    body: dict, command: Step | None, text: str, n: int, in_tok: int, k: int, figures: dict | None, stream: bool
):
    model = body.get("model", "standin-model")
    usage = _gemini_usage(figures, in_tok)
    if command is None:
        text = gemini_json_text(body) or text

    def chunk(parts: list, finish: bool) -> dict:
        candidate: dict = {"content": {"role": "model", "parts": parts}}
        if finish:
            candidate["finishReason"] = "STOP"
        candidate["index"] = 0
        out: dict = {"candidates": [candidate]}
        if finish:
            out["usageMetadata"] = usage
        out["modelVersion"] = model
        out["responseId"] = f"standin-{n}"
        return out

    if command is not None:
        tool, call_input = call_of(body, command, "gemini")
        pieces = [[{"functionCall": {"name": tool, "args": call_input}}]]
    elif stream and len(text) >= 2:
        half = len(text) // 2
        pieces = [[{"text": text[:half]}], [{"text": text[half:]}]]
    else:
        pieces = [[{"text": text}]]
    if not stream:
        return _json_response(chunk(pieces[0], True))
    events = [(None, chunk(parts, i == len(pieces) - 1)) for i, parts in enumerate(pieces)]
    return _sse_response(_sse(events))


def gemini_generate(
    body: dict, command: Step | None, text: str, n: int, in_tok: int, k: int, figures: dict | None = None
):
    """Gemini API ``:generateContent``: one JSON object."""
    return _gemini(body, command, text, n, in_tok, k, figures, stream=False)


def gemini_stream(
    body: dict, command: Step | None, text: str, n: int, in_tok: int, k: int, figures: dict | None = None
):
    """Gemini API ``:streamGenerateContent?alt=sse``: SSE ``data:`` chunks."""
    return _gemini(body, command, text, n, in_tok, k, figures, stream=True)


ANSWERERS = {
    "openai-chat": openai_chat,
    "anthropic-messages": anthropic_messages,
    "openai-responses": openai_responses,
    "gemini": gemini_generate,
    "gemini-stream": gemini_stream,
}


def answer_for(
    api: str, body: dict, command: Step | None, text: str, n: int, in_tok: int, k: int, host: str = ""
) -> http.Response:
    """The answer, with the ``[[usage: ...]]`` figures where the gateway puts them (Opper: headers)."""
    figures = usage_figures(api, body)
    if figures is None or host != "api.opper.ai":
        return ANSWERERS[api](body, command, text, n, in_tok, k, figures=figures)
    streamed = bool(body.get("stream"))
    in_body = {key: v for key, v in figures.items() if key != "provider" and (key != "cost" or streamed)}
    response = ANSWERERS[api](body, command, text, n, in_tok, k, figures=in_body)
    response.headers["x-opper-served-model"] = str(body.get("model", "standin-model"))
    if "provider" in figures:
        response.headers["x-opper-served-provider"] = figures["provider"]
    if "cost" in figures and not streamed:
        response.headers["x-opper-cost"] = repr(figures["cost"])
    response.headers["x-opper-trace-id"] = "standin-trace"
    return response


# --------------------------------------------------------------------------- addon


class GatewayStandin:
    def __init__(self) -> None:
        self.count = 0

    def _log(self, record: dict) -> None:
        path = os.environ.get("STANDIN_LOG")
        if not path:
            return
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with _lock, open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        self.count += 1
        n = self.count
        req = flow.request
        raw = req.raw_content or b""
        try:
            content = req.get_content(strict=False) or b""
        except Exception:  # pragma: no cover - defensive
            content = raw
        text = content.decode("utf-8", "replace")
        api = api_of(req.path)
        try:
            body = json.loads(text) if text.strip() else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}

        command, final, delay = None, "ok", 0.0
        answer, error = "other", None
        if api in ANSWERERS and req.method == "POST":
            try:
                command, final, delay = decide(api, body)
                answer = "tool_call" if command is not None else "text"
            except DirectiveError as exc:
                answer, error = "error", str(exc)
        call = isinstance(command, ToolCall)

        peer = getattr(flow.client_conn, "peername", None)
        metadata = getattr(flow, "metadata", {}) or {}
        record = {
            "kind": "request",
            "time": time.time(),
            "n": n,
            "flow_id": flow.id,
            "host": req.pretty_host,
            "port": req.port,
            "scheme": req.scheme,
            "http_version": req.http_version,
            "method": req.method,
            "path": req.path,
            "headers": [[k.decode("latin-1"), v.decode("utf-8", "replace")] for k, v in req.headers.fields],
            "body": text,
            "body_b64": base64.b64encode(raw).decode("ascii"),
            "client_port": peer[1] if peer else None,
            "comment": getattr(flow, "comment", "") or "",
            "session_ids": _json_safe(metadata.get("session_ids")),
            "api": api,
            "stream": bool(body.get("stream")) or api == "gemini-stream",
            "answer": answer,
            "tool_command": None if call else command,
            "tool_name": call_of(body, command, api)[0] if command is not None else None,
            "tool_input": command.input if call else None,
        }
        self._log(record)
        shown = f"{command.name} {json.dumps(command.input)}" if call else command
        logger.info(
            "stand-in #%d %s %s%s -> %s%s",
            n,
            req.method,
            req.pretty_host,
            req.path,
            answer,
            f" ({shown})" if shown else f" ({error})" if error else "",
        )

        if delay > 0:
            await asyncio.sleep(delay)

        if error is not None:
            flow.response = _json_response({"error": {"message": f"stand-in: {error}"}}, 400)
        elif api in ANSWERERS and req.method == "POST":
            in_tok = max(1, len(content) // 4)
            k = conversation_state(api, body)[1]
            flow.response = answer_for(api, body, command, final, n, in_tok, k, req.pretty_host)
        elif req.method == "GET" and req.path.split("?", 1)[0].rstrip("/").endswith("/models"):
            flow.response = _json_response({"object": "list", "data": []})
        else:
            flow.response = _json_response(
                {"error": {"message": f"stand-in: no answer for {req.method} {req.path}"}}, 404
            )

    def response(self, flow: http.HTTPFlow) -> None:
        """Log the answer as the client gets it (the stand-in's own, or an error)."""
        if flow.response is None or not flow.response.headers.get("X-Standin"):
            return
        self._log(
            {
                "kind": "answer",
                "time": time.time(),
                "flow_id": flow.id,
                "status": flow.response.status_code,
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in flow.response.headers.fields],
                "body_b64": base64.b64encode(flow.response.raw_content or b"").decode("ascii"),
            }
        )

    def server_connect(self, data) -> None:
        """Never let mitmproxy reach the network (see "Network guard" above)."""
        address = getattr(data.server, "address", None)
        where = f"{address[0]}:{address[1]}" if address else "?"
        self._log({"kind": "blocked_connect", "time": time.time(), "address": where})
        logger.warning("stand-in: blocked upstream connection to %s", where)
        data.server.error = "gateway stand-in: upstream connections are disabled"


class StreamingStandin:
    """The stand-in's answers from a real upstream HTTP/1.1 server on 127.0.0.1, streamed: an SSE
    answer goes out one event per chunk (``Transfer-Encoding: chunked``), optionally gzip-encoded
    (then the compressed bytes, in a few chunks). The first chunk is sent at once; the rest waits
    until ``release`` is set, or ``hold_timeout`` passes. So a test can see whether a proxy passes
    the first chunk on before the answer ends: its client reads that chunk, then sets ``release``.

        server = StreamingStandin().start()      # server.port
        server.release.clear()                   # before each request
        ...                                      # after it: server.sent[-1]
        server.stop()

    ``sent`` lists one dict per answer: ``body`` (the bytes sent, as on the wire less the
    chunking), ``first`` (the first chunk), ``released`` (True when ``release`` let the rest go,
    False when the hold timed out), ``path``, ``api``.
    """

    def __init__(self, hold_timeout: float = 60.0, encoding: str | None = None, host: str = "openrouter.ai") -> None:
        self.hold_timeout = hold_timeout
        self.encoding = encoding
        self.host = host
        self.release = threading.Event()
        self.sent: list[dict] = []
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> StreamingStandin:
        import http.server
        import socketserver

        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                standin._answer(self, raw)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.release.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _answer(self, handler, raw: bytes) -> None:
        import gzip as gzip_mod

        path = handler.path
        path = "/" + path.split("://", 1)[1].split("/", 1)[1] if "://" in path else path
        api = api_of(path)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        n = len(self.sent) + 1
        try:
            command, final, _ = decide(api, body) if api in ANSWERERS else (None, "ok", 0.0)
            response = answer_for(
                api, body, command, final, n, max(1, len(raw) // 4), conversation_state(api, body)[1], self.host
            )
        except DirectiveError as exc:
            response = _json_response({"error": {"message": f"stand-in: {exc}"}}, 400)
        data = response.content or b""
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            pieces = [e + b"\n\n" for e in data.split(b"\n\n") if e]
        else:
            pieces = [data]
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in response.headers.fields
            if k.lower() not in (b"content-length",)
        ]
        if self.encoding == "gzip":
            data = gzip_mod.compress(data)
            third = max(1, len(data) // 3)
            pieces = [data[:third], data[third : 2 * third], data[2 * third :]]
            headers.append(("Content-Encoding", "gzip"))
        record = {"path": path, "api": api, "body": data, "first": pieces[0], "released": None}
        self.sent.append(record)
        handler.send_response(response.status_code)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def chunk(piece: bytes) -> None:
            if piece:
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                handler.wfile.flush()

        chunk(pieces[0])
        record["released"] = self.release.wait(self.hold_timeout)
        for piece in pieces[1:]:
            chunk(piece)
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()


addons = [GatewayStandin()]
