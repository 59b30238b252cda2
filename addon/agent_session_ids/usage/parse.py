"""Usage, cache and cost figures from a gateway's answer: pure functions over parsed JSON, SSE
event payloads and response headers. Nothing here reads a prompt or keeps an answer's text.

Each format, as its gateway documents it:

- OpenAI chat completions: ``usage.prompt_tokens`` (all input, cached included),
  ``usage.prompt_tokens_details.cached_tokens``, ``usage.completion_tokens``. When streamed, the
  usage comes in one chunk before ``data: [DONE]`` whose ``choices`` is empty; every other chunk
  has ``"usage": null``. (OpenAI API reference, ChatCompletionStreamOptions.include_usage:
  platform.openai.com/docs/api-reference/chat/create#chat-create-stream_options)
- OpenRouter's additions to that shape: ``usage.cost`` (credits, 1 credit = 1 USD),
  ``usage.prompt_tokens_details.cache_write_tokens``; usage is always sent, in the last SSE
  message of a stream (openrouter.ai/docs/use-cases/usage-accounting). A top-level ``provider``
  names the upstream that served it (OpenRouter's chat response schema, also in each chunk).
- OpenAI Responses: the ``response`` object of ``response.completed`` (or ``response.incomplete``
  / ``response.failed``) carries ``usage.input_tokens`` (cached included),
  ``usage.input_tokens_details.cached_tokens`` and ``usage.output_tokens``
  (developers.openai.com/api/reference/resources/responses/streaming-events).
- Anthropic messages: ``usage.input_tokens`` counts only the input after the last cache
  breakpoint; all input is ``input_tokens + cache_creation_input_tokens +
  cache_read_input_tokens`` (platform.claude.com/docs/en/build-with-claude/prompt-caching,
  "Tracking cache performance"). A stream gives them in ``message_start`` and again, cumulative,
  in ``message_delta`` with the final ``output_tokens`` (Anthropic SDK MessageDeltaUsage:
  "The cumulative number of ... tokens").
- Opper (``api.opper.ai/v3/compat``, any of the shapes above): the ``X-Opper-Cost`` response
  header (USD) on a plain call (opper-ai/opper-skills, opper-api/references/compatibility.md:
  compat endpoints "return X-Opper-Cost on the response"), with ``x-opper-served-model`` and
  ``x-opper-served-provider``; a streamed call has no cost header, its ``usage.cost`` arrives in
  the stream's last usage event (``message_delta`` in the Anthropic shape).

- Fireworks: the ``fireworks-prompt-tokens`` and ``fireworks-cached-prompt-tokens`` response
  headers (docs.fireworks.ai/guides/prompt-caching).
- OpenCode Zen and Go (``opencode.ai/zen``): the cost billed for the request (USD, a string
  such as ``"0.00123456"``; ``"0"`` when a subscription pays) as a top-level ``cost`` of a
  non-streamed answer, and in one extra event at the end of a stream: ``{"choices": [], "cost":
  ...}`` for chat completions, ``event: ping`` ``{"type": "ping", "cost": ...}`` for Anthropic
  and Responses (anomalyco/opencode ``packages/console/app/src/routes/zen/util/handler.ts``,
  ``calculateOccurredCost``, and ``provider/provider.ts``, ``buildCostChunk``, @0098e63).

A figure the answer does not give stays None: it is never guessed and never written as 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

#: The ledger's figure fields, in the order they are written.
FIGURES = (
    "served_model",
    "provider",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "cost",
)
MAX_NAME = 200  # a model or provider name longer than this is not believed


def _count(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            return None
        value = int(value)
    return value if 0 <= value < 10**12 else None


def _money(value) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0 <= value < 1e6 else None


def _name(value) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > MAX_NAME or not value.isprintable():
        return None
    return value


def _get(obj, *path):
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


@dataclass(slots=True)
class Usage:
    """One answer's figures; None = the answer did not say."""

    served_model: str | None = None
    provider: str | None = None
    input_tokens: int | None = None  # all input tokens, cached ones included
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None  # USD, as the gateway reported it

    def update(self, other: Usage) -> Usage:
        """Take every figure ``other`` knows (later answers' parts win)."""
        for name in FIGURES:
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, value)
        return self

    def known(self) -> dict:
        """The known figures, in ledger order."""
        return {k: getattr(self, k) for k in FIGURES if getattr(self, k) is not None}

    @property
    def empty(self) -> bool:
        return not self.known()

    @property
    def cache_hit_ratio(self) -> float | None:
        if self.input_tokens and self.cache_read_tokens is not None:
            return min(1.0, self.cache_read_tokens / self.input_tokens)
        return None


# -- the shapes -----------------------------------------------------------------------------------


def _usage_object(usage, input_key: str, output_key: str, details_key: str) -> Usage:
    """A ``usage`` object of the OpenAI shapes, whose names differ by API."""
    out = Usage()
    if not isinstance(usage, dict):
        return out
    out.input_tokens = _count(usage.get(input_key))
    out.output_tokens = _count(usage.get(output_key))
    details = usage.get(details_key)
    out.cache_read_tokens = _count(_get(details, "cached_tokens"))
    out.cache_write_tokens = _count(_get(details, "cache_write_tokens"))
    out.cost = _money(usage.get("cost"))
    return out


def _openai_usage(usage) -> Usage:
    """A chat completions ``usage`` object (OpenAI, OpenRouter, Opper)."""
    return _usage_object(usage, "prompt_tokens", "completion_tokens", "prompt_tokens_details")


def _responses_usage(usage) -> Usage:
    """A Responses API ``usage`` object."""
    return _usage_object(usage, "input_tokens", "output_tokens", "input_tokens_details")


class AnthropicCounts:
    """Anthropic's raw counters, merged over ``message_start`` and ``message_delta``; the total
    input is only known once the parts are (see the module doc)."""

    def __init__(self) -> None:
        self.input = self.read = self.write = self.output = None
        self.cost: float | None = None

    def add(self, usage) -> None:
        if not isinstance(usage, dict):
            return
        for attr, key in (
            ("input", "input_tokens"),
            ("read", "cache_read_input_tokens"),
            ("write", "cache_creation_input_tokens"),
            ("output", "output_tokens"),
        ):
            value = _count(usage.get(key))
            if value is not None:  # cumulative: the latest known value wins
                setattr(self, attr, value)
        cost = _money(usage.get("cost"))
        if cost is not None:
            self.cost = cost

    def usage(self) -> Usage:
        out = Usage(
            cache_read_tokens=self.read, cache_write_tokens=self.write, output_tokens=self.output, cost=self.cost
        )
        if self.input is not None:
            out.input_tokens = self.input + (self.read or 0) + (self.write or 0)
        return out


def _top(obj: dict) -> Usage:
    """What any shape may say at its top: the model that served it, (OpenRouter) the provider,
    and (OpenCode Zen) the cost."""
    return Usage(
        served_model=_name(obj.get("model")), provider=_name(obj.get("provider")), cost=_money(obj.get("cost"))
    )


def from_json(obj) -> Usage:
    """Figures from a non-streamed JSON answer of any of the formats."""
    if not isinstance(obj, dict):
        return Usage()
    out = _top(obj)
    usage = obj.get("usage")
    if obj.get("type") == "message" or (isinstance(usage, dict) and "cache_read_input_tokens" in usage):
        counts = AnthropicCounts()
        counts.add(obj.get("usage"))
        return out.update(counts.usage())
    if obj.get("object") == "response" or isinstance(obj.get("output"), list):
        return out.update(_responses_usage(obj.get("usage")))
    usage = obj.get("usage")
    if isinstance(usage, dict) and "input_tokens" in usage and "prompt_tokens" not in usage:
        return out.update(_responses_usage(usage))
    return out.update(_openai_usage(usage))


def _count_text(value: str | None) -> int | None:
    try:
        return _count(int(value.strip())) if value is not None else None
    except ValueError:
        return None


# response headers that carry figures -> (Usage field, how it is read)
USAGE_HEADERS = {
    "x-opper-served-model": ("served_model", _name),
    "x-opper-served-provider": ("provider", _name),
    "x-opper-cost": ("cost", _money),
    "fireworks-prompt-tokens": ("input_tokens", _count_text),  # cached ones included
    "fireworks-cached-prompt-tokens": ("cache_read_tokens", _count_text),
}
_USAGE_HEADER_NAMES = {name.encode(): name for name in USAGE_HEADERS}


def from_headers(headers) -> Usage:
    """Figures in response headers (Opper, Fireworks). ``headers``: a case-insensitive mapping, or
    mitmproxy's Headers, whose raw fields are then read in one pass (most answers have none)."""
    fields = getattr(headers, "fields", None)
    if fields is None:
        found = {name: headers.get(name) for name in USAGE_HEADERS if headers.get(name) is not None}
    else:
        found = {}
        for raw_name, raw_value in fields:
            name = _USAGE_HEADER_NAMES.get(raw_name.lower())
            if name is not None:  # several: joined, as Headers.get does
                text = raw_value.decode("utf-8", "surrogateescape")
                found[name] = f"{found[name]}, {text}" if name in found else text
    out = Usage()
    for name, text in found.items():
        field, read = USAGE_HEADERS[name]
        setattr(out, field, read(text))
    return out


class EventState:
    """Figures gathered from the SSE events of one stream, one event's data at a time."""

    #: the Responses events that carry the usage
    FINAL = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')

    def __init__(self) -> None:
        self.usage = Usage()
        self.anthropic: AnthropicCounts | None = None
        self.model_seen = False
        self.events = 0

    def wants(self, data: bytes) -> bool:
        """Is this event's data (or a block of events) worth parsing? Text deltas, most of a
        stream, are not: a few C-level searches say so."""
        if not self.model_seen:
            return True
        n = data.count(b'"usage"')  # every event that carries usage names it: one scan rules out the rest
        if not n:
            return b'"cost":' in data  # OpenCode Zen's last event: the cost alone
        if b"message_start" in data or b"message_delta" in data:
            return True
        if b'"response.' in data and any(m in data for m in self.FINAL):
            return True
        return n > data.count(b'"usage":null') + data.count(b'"usage": null')

    def feed(self, data: bytes | str) -> None:
        """One event's data (its ``data:`` lines joined)."""
        self.events += 1
        if isinstance(data, bytes):
            if data.strip() == b"[DONE]" or not self.wants(data):
                return
        elif data.strip() == "[DONE]":
            return
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return
        self.feed_object(obj)

    def feed_object(self, obj) -> None:
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if kind == "message_start":  # Anthropic
            message = obj.get("message")
            if isinstance(message, dict):
                self._model(message)
                self._anthropic().add(message.get("usage"))
            return
        if kind == "message_delta":
            self._anthropic().add(obj.get("usage"))
            self.usage.update(Usage(provider=_name(obj.get("provider"))))
            return
        if isinstance(kind, str) and kind.startswith("response."):  # Responses
            response = obj.get("response")
            if isinstance(response, dict):
                self._model(response)
                if kind in ("response.completed", "response.incomplete", "response.failed"):
                    self.usage.update(_responses_usage(response.get("usage")))
            return
        if kind == "ping":  # OpenCode Zen's last event (Anthropic, Responses): the cost
            self.usage.update(Usage(cost=_money(obj.get("cost"))))
            return
        if kind is not None and kind not in ("message",):
            return  # content_block_*, error and other typed events carry no usage
        # chat completions chunk (OpenAI, OpenRouter, Opper)
        self._model(obj)
        if isinstance(obj.get("usage"), dict):
            self.usage.update(_openai_usage(obj["usage"]))

    def _model(self, obj: dict) -> None:
        top = _top(obj)
        if top.served_model:
            self.model_seen = True
        self.usage.update(top)

    def _anthropic(self) -> AnthropicCounts:
        if self.anthropic is None:
            self.anthropic = AnthropicCounts()
        return self.anthropic

    def result(self) -> Usage:
        out = Usage().update(self.usage)
        if self.anthropic is not None:
            out.update(self.anthropic.usage())
        return out


def sse_events(body: bytes):
    """The data of each event of a whole SSE body (for answers mitmproxy already holds)."""
    data: list[bytes] = []
    for line in body.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            if data:
                yield b"\n".join(data)
                data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)


def from_sse(body: bytes) -> Usage:
    """Figures from a whole SSE body."""
    state = EventState()
    for data in sse_events(body):
        state.feed(data)
    return state.result()


def usage_in_tail(tail: bytes) -> Usage:
    """Figures from the end of a JSON text too long to keep whole: the last ``"usage": {...}``
    object in it (every format puts usage after the content). Best effort."""
    decoder = json.JSONDecoder()
    text = tail.decode("utf-8", "replace")
    at = len(text)
    while True:
        at = text.rfind('"usage"', 0, at)
        if at < 0:
            return Usage()
        colon = text.find(":", at + 7)
        start = text.find("{", colon)
        if colon < 0 or start < 0 or text[at + 7 : start].strip(" \t\r\n:") != "":
            continue
        try:
            usage, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if not isinstance(usage, dict):
            continue
        if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
            counts = AnthropicCounts()
            counts.add(usage)
            return counts.usage()
        if "prompt_tokens" in usage:
            return _openai_usage(usage)
        return _responses_usage(usage)
