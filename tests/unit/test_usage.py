"""The usage ledger (issue 11): each gateway's usage format, non-streamed and SSE; the stream
observer (bytes unchanged, bounded, fail open); the ledger file (crash-safe, rotation); the report;
and the addon's hooks with mitmproxy's own test helpers."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from mitmproxy.test import taddons, tflow, tutils

from agent_session_ids.addon import DEFAULT_RULES, SessionIds
from agent_session_ids.cli import report
from agent_session_ids.usage import grouping, ledger, observer, parse, timespec
from agent_session_ids.usage.addon import UsageLedger
from agent_session_ids.usage.parse import Usage

# -- realistic answers of each format --------------------------------------------------------------


def sse(*events: tuple[str | None, object], crlf: bool = False) -> bytes:
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
    body = "".join(out)
    return (body.replace("\n", "\r\n") if crlf else body).encode()


OPENAI_CHAT_JSON = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": 'The "usage" is fine.', "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}


def _chunk(delta, finish=None, usage=None, **extra):
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_fc9f1d7035",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
        **extra,
    }


# stream_options.include_usage: every chunk has "usage": null, one more chunk with empty choices
OPENAI_CHAT_SSE = sse(
    (None, _chunk({"role": "assistant", "content": "", "refusal": None})),
    (None, _chunk({"content": "Hello"})),
    (None, _chunk({"content": " there"})),
    (None, _chunk({}, "stop")),
    (
        None,
        {
            **_chunk({}),
            "choices": [],
            "usage": {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        },
    ),
    (None, "[DONE]"),
)

OPENROUTER_CHAT_JSON = {
    "id": "gen-1747000000-abc",
    "provider": "Anthropic",
    "model": "anthropic/claude-sonnet-4",
    "object": "chat.completion",
    "created": 1747000000,
    "choices": [
        {
            "logprobs": None,
            "finish_reason": "stop",
            "native_finish_reason": "end_turn",
            "index": 0,
            "message": {"role": "assistant", "content": "ok", "refusal": None, "reasoning": None},
        }
    ],
    "usage": {
        "prompt_tokens": 10450,
        "completion_tokens": 212,
        "total_tokens": 10662,
        "cost": 0.0061395,
        "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": 9600, "cache_write_tokens": 310, "audio_tokens": 0},
        "cost_details": {"upstream_inference_cost": None},
        "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 0},
    },
}


def _or_chunk(delta, finish=None, usage=None):
    chunk = {
        "id": "gen-1747000000-abc",
        "provider": "Google",
        "model": "anthropic/claude-sonnet-4",
        "object": "chat.completion.chunk",
        "created": 1747000000,
        "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish, "native_finish_reason": None, "logprobs": None}
        ],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


# OpenRouter: keep-alive comments, usage (with cost) in the last chunk, always
OPENROUTER_CHAT_SSE = b": OPENROUTER PROCESSING\n\n" + sse(
    (None, _or_chunk({"role": "assistant", "content": ""})),
    (None, _or_chunk({"role": "assistant", "content": "ok"})),
    (None, _or_chunk({"role": "assistant", "content": ""}, "stop")),
    (
        None,
        {
            **_or_chunk({"role": "assistant", "content": ""}),
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
            "usage": {
                "prompt_tokens": 5000,
                "completion_tokens": 80,
                "total_tokens": 5080,
                "cost": 0.01702,
                "is_byok": False,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 4800},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        },
    ),
    (None, "[DONE]"),
)

RESPONSES_JSON = {
    "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
    "object": "response",
    "created_at": 1741476542,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "model": "gpt-5-codex",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "done", "annotations": []}],
        }
    ],
    "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 123,
    },
}

_RESP_BASE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1741476542,
    "model": "gpt-5-codex",
    "error": None,
    "incomplete_details": None,
}
RESPONSES_SSE = sse(
    (
        "response.created",
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {**_RESP_BASE, "status": "in_progress", "output": [], "usage": None},
        },
    ),
    (
        "response.in_progress",
        {
            "type": "response.in_progress",
            "sequence_number": 1,
            "response": {**_RESP_BASE, "status": "in_progress", "output": [], "usage": None},
        },
    ),
    (
        "response.output_text.delta",
        {
            "type": "response.output_text.delta",
            "sequence_number": 2,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "done",
        },
    ),
    (
        "response.completed",
        {
            "type": "response.completed",
            "sequence_number": 3,
            "response": {
                **_RESP_BASE,
                "status": "completed",
                "output": [
                    {
                        "type": "message",
                        "id": "msg_1",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "done", "annotations": []}],
                    }
                ],
                "usage": {
                    "input_tokens": 48213,
                    "input_tokens_details": {"cached_tokens": 47104},
                    "output_tokens": 512,
                    "output_tokens_details": {"reasoning_tokens": 448},
                    "total_tokens": 48725,
                },
            },
        },
    ),
)

ANTHROPIC_JSON = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hello!"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 188086,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 393,
        "service_tier": "standard",
    },
}

ANTHROPIC_SSE = sse(
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-sonnet-4-5-20250929",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 25,
                    "cache_creation_input_tokens": 512,
                    "cache_read_input_tokens": 18432,
                    "output_tokens": 1,
                },
            },
        },
    ),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 15},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
)

# Opper, Anthropic shape, streamed: no cost header; the cost in the last message_delta
OPPER_ANTHROPIC_SSE = sse(
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_2",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-haiku-4-5",
                "stop_reason": None,
                "usage": {
                    "input_tokens": 13,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 1,
                },
            },
        },
    ),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {
                "input_tokens": 13,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 6,
                "cost": 0.000043,
            },
        },
    ),
    ("message_stop", {"type": "message_stop"}),
)


# -- parse ----------------------------------------------------------------------------------------


def test_openai_chat_json():
    u = parse.from_json(OPENAI_CHAT_JSON)
    assert u == Usage(served_model="gpt-4o-2024-08-06", input_tokens=1117, cache_read_tokens=1024, output_tokens=46)
    assert "cost" not in u.known() and "cache_write_tokens" not in u.known()  # never 0 for unknown
    assert round(u.cache_hit_ratio, 3) == 0.917


def test_openai_chat_sse_reads_the_usage_chunk_before_done():
    assert parse.from_sse(OPENAI_CHAT_SSE) == Usage(
        served_model="gpt-4o-2024-08-06", input_tokens=2006, cache_read_tokens=1920, output_tokens=300
    )


def test_openai_chat_without_usage_knows_only_the_model():
    body = sse((None, _chunk({"content": "x"})), (None, _chunk({}, "stop")), (None, "[DONE]"))
    assert parse.from_sse(body).known() == {"served_model": "gpt-4o-2024-08-06"}


def test_openrouter_additions_json_and_sse():
    assert parse.from_json(OPENROUTER_CHAT_JSON) == Usage(
        served_model="anthropic/claude-sonnet-4",
        provider="Anthropic",
        input_tokens=10450,
        cache_read_tokens=9600,
        cache_write_tokens=310,
        output_tokens=212,
        cost=0.0061395,
    )
    assert parse.from_sse(OPENROUTER_CHAT_SSE) == Usage(
        served_model="anthropic/claude-sonnet-4",
        provider="Google",
        input_tokens=5000,
        cache_read_tokens=0,
        cache_write_tokens=4800,
        output_tokens=80,
        cost=0.01702,
    )


def test_responses_json_and_sse():
    assert parse.from_json(RESPONSES_JSON) == Usage(
        served_model="gpt-5-codex", input_tokens=36, cache_read_tokens=0, output_tokens=87
    )
    assert parse.from_sse(RESPONSES_SSE) == Usage(
        served_model="gpt-5-codex", input_tokens=48213, cache_read_tokens=47104, output_tokens=512
    )


def test_anthropic_input_counts_cached_tokens_too():
    assert parse.from_json(ANTHROPIC_JSON) == Usage(
        served_model="claude-sonnet-4-5-20250929",
        input_tokens=21 + 188086,
        cache_read_tokens=0,
        cache_write_tokens=188086,
        output_tokens=393,
    )
    u = parse.from_sse(ANTHROPIC_SSE)
    assert u == Usage(
        served_model="claude-sonnet-4-5-20250929",
        input_tokens=25 + 512 + 18432,
        cache_read_tokens=18432,
        cache_write_tokens=512,
        output_tokens=15,
    )
    assert round(u.cache_hit_ratio, 2) == 0.97


def test_opper_headers_and_stream_cost():
    headers = {
        "x-opper-cost": "0.000043",
        "x-opper-served-model": "anthropic/claude-haiku-4.5",
        "x-opper-served-provider": "anthropic",
        "x-opper-trace-id": "t",
    }
    assert parse.from_headers(headers) == Usage(
        served_model="anthropic/claude-haiku-4.5", provider="anthropic", cost=0.000043
    )
    assert parse.from_headers({"x-opper-cost": "n/a"}).empty
    u = parse.from_sse(OPPER_ANTHROPIC_SSE)
    assert (u.cost, u.input_tokens, u.output_tokens) == (0.000043, 13, 6)


def test_fireworks_headers_give_the_prompt_and_cached_tokens():
    from mitmproxy.http import Headers

    for headers in (
        Headers([(b"Fireworks-Prompt-Tokens", b"5200"), (b"fireworks-cached-prompt-tokens", b"4096")]),
        {"fireworks-prompt-tokens": "5200", "fireworks-cached-prompt-tokens": "4096"},
    ):
        got = parse.from_headers(headers)
        assert (got.input_tokens, got.cache_read_tokens, got.cache_hit_ratio) == (5200, 4096, 4096 / 5200)
    assert parse.from_headers(Headers([(b"fireworks-prompt-tokens", b"lots")])).input_tokens is None


def test_opencode_zen_cost_json_and_every_stream_shape():
    """Zen's billed cost: top-level in a held answer, and one more event at a stream's end (a
    chat chunk with no choices, or an `event: ping`); a string of USD, "0" under a subscription."""
    assert parse.from_json({**OPENAI_CHAT_JSON, "cost": "0.00123456"}).cost == 0.00123456
    chat = OPENAI_CHAT_SSE.replace(b"data: [DONE]", sse((None, {"choices": [], "cost": "0.0042"})) + b"data: [DONE]")
    got = parse.from_sse(chat)
    assert got.cost == 0.0042 and got.input_tokens == 2006  # the usage chunk's figures stay
    for shape in (ANTHROPIC_SSE, RESPONSES_SSE):
        got = parse.from_sse(shape + sse(("ping", {"type": "ping", "cost": "0"})))
        assert got.cost == 0.0 and got.input_tokens == parse.from_sse(shape).input_tokens
    # streamed through the observer too: the last event is read though it names no usage
    obs = observer.StreamObserver(None)
    assert feed(obs, chat, 7) == chat and obs.result().cost == 0.0042


@pytest.mark.parametrize("bad", [True, -1, 1.5, "12", None, float("nan")])
def test_odd_numbers_are_not_believed(bad):
    u = parse.from_json(
        {
            "object": "chat.completion",
            "model": "m",
            "usage": {"prompt_tokens": bad, "completion_tokens": 3, "cost": bad},
        }
    )
    assert u.input_tokens is None and u.output_tokens == 3
    assert u.cost is None or u.cost == float(bad)


def test_usage_in_tail_finds_the_last_usage_object():
    tail = b'...lots of text "usage" in prose", "x": 1}], "usage": {"input_tokens": 9, "output_tokens": 2}, "z": 0}'
    assert parse.usage_in_tail(tail) == Usage(input_tokens=9, output_tokens=2)
    assert parse.usage_in_tail(b'"usage": {"input_tokens": 5, "cache_read_input_tokens": 4}').input_tokens == 9


# -- the stream observer ---------------------------------------------------------------------------


def feed(obs, body: bytes, step: int) -> bytes:
    out = b""
    for i in range(0, len(body), step):
        out += obs(body[i : i + step])
    out += obs(b"") or b""
    obs.settled().result(30)  # a compressed stream may be read on a pool: as the recorder, wait for it
    return out


@pytest.mark.parametrize(
    "body",
    [OPENAI_CHAT_SSE, OPENROUTER_CHAT_SSE, RESPONSES_SSE, ANTHROPIC_SSE, OPPER_ANTHROPIC_SSE],
    ids=["chat", "openrouter", "responses", "anthropic", "opper"],
)
@pytest.mark.parametrize("step", [1, 5, 64, 100_000])
def test_every_chunk_passes_unchanged_and_the_figures_match(body, step):
    obs = observer.StreamObserver(None)
    chunks = [body[i : i + step] for i in range(0, len(body), step)]
    for chunk in chunks:
        assert obs(chunk) is chunk  # the very object: nothing copied, nothing held
    assert obs(b"") == b""
    assert obs.result() == parse.from_sse(body) and not obs.result().empty and obs.failure is None


@pytest.mark.parametrize("step", [1, 2, 7, 4096])
def test_crlf_lines(step):
    obs = observer.StreamObserver(None)
    feed(obs, sse(*[(None, json.loads(d)) for d in parse.sse_events(ANTHROPIC_SSE)], crlf=True), step)
    assert obs.result() == parse.from_sse(ANTHROPIC_SSE)


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    "encoding,encode",
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", _raw_deflate)],
    ids=["gzip", "deflate", "raw-deflate"],
)
def test_compressed_streams_are_read_and_passed_on_compressed(encoding, encode):
    wire = encode(ANTHROPIC_SSE)
    obs = observer.StreamObserver(encoding)
    assert feed(obs, wire, 11) == wire
    assert obs.result().cache_read_tokens == 18432


def test_a_compressed_stream_is_read_on_the_pool_it_is_given_not_the_callers_thread():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    readers: list[str] = []

    class Pool(ThreadPoolExecutor):  # a real pool that notes the thread each read runs on
        def submit(self, fn, /, *args, **kwargs):
            def read():
                readers.append(threading.current_thread().name)
                return fn(*args, **kwargs)

            return super().submit(read)

    wire = gzip.compress(ANTHROPIC_SSE)
    with Pool(2, thread_name_prefix="given-pool") as pool:
        obs = observer.StreamObserver("gzip", None, pool)
        assert feed(obs, wire, 11) == wire
        assert obs.result().cache_read_tokens == 18432
    assert readers and all(name.startswith("given-pool") for name in readers)


def test_the_recorder_decodes_on_a_pool_of_its_own_and_stamps_with_a_clock_of_its_own():
    from agent_session_ids.usage.recorder import Recorder

    one, two = Recorder(lambda key, why: None), Recorder(lambda key, why: None)
    assert one.decoding is not two.decoding and one.clock is not two.clock
    assert one.clock.timestamp(1_700_000_000.25) == ledger.timestamp(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"


def test_brotli_stream():
    import brotli

    wire = brotli.compress(OPENROUTER_CHAT_SSE)
    obs = observer.StreamObserver("br")
    assert feed(obs, wire, 9) == wire
    assert obs.result().cost == 0.01702


def test_zstd_stream():
    try:
        try:
            from compression import zstd  # type: ignore[import-not-found]
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        wire = zstd.compress(RESPONSES_SSE)
    except ImportError:  # mitmproxy 11
        import zstandard

        wire = zstandard.ZstdCompressor().compress(RESPONSES_SSE)
    obs = observer.StreamObserver("zstd")
    assert feed(obs, wire, 13) == wire
    assert obs.result() == parse.from_sse(RESPONSES_SSE)


def _zstd(data: bytes) -> bytes:
    try:
        try:
            from compression import zstd  # type: ignore[import-not-found]
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        return zstd.compress(data)
    except ImportError:  # mitmproxy 11
        import zstandard

        return zstandard.ZstdCompressor().compress(data)


def _brotli(data: bytes) -> bytes:
    import brotli

    return brotli.compress(data)


ENCODERS = [("gzip", gzip.compress), ("deflate", zlib.compress), ("br", _brotli), ("zstd", _zstd)]


@pytest.mark.parametrize("encoding,encode", ENCODERS, ids=[e for e, _ in ENCODERS])
def test_a_decoder_gives_bounded_pieces_of_a_bomb(encoding, encode):
    bomb = encode(b"\0" * (64 << 20))  # 64 MiB of zeros, a few KB on the wire
    assert len(bomb) < (1 << 20)
    biggest, total = 0, 0
    decode = observer.decoder_for(encoding)
    for i in range(0, len(bomb), 4096):
        for piece in decode(bomb[i : i + 4096]):
            biggest, total = max(biggest, len(piece)), total + len(piece)
    total += len(decode.flush())
    assert total == 64 << 20
    # a piece is bounded by PIECE where the library takes a bound (brotli 1.2, the standard
    # library's zstd, zlib); brotli 1.1 and zstandard (mitmproxy 11) are fed slices of their input,
    # down to one byte, so a piece is at most what one byte decodes to (issue 17, 3)
    if getattr(decode, "sliced", False):
        assert biggest <= 16 << 20
    else:
        assert biggest <= 2 * observer.PIECE


@pytest.mark.parametrize("encoding,encode", ENCODERS, ids=[e for e, _ in ENCODERS])
def test_a_held_bomb_stops_at_the_limit_and_a_small_answer_decodes(encoding, encode):
    with pytest.raises(observer.TooLarge):
        observer.decode_bounded(encoding, encode(b"\0" * (16 << 20)), 1 << 20)
    assert (
        observer.decode_bounded(encoding, encode(json.dumps(OPENAI_CHAT_JSON).encode()), 1 << 20)
        == json.dumps(OPENAI_CHAT_JSON).encode()
    )


def test_a_streamed_bomb_stops_the_reading_not_the_stream(monkeypatch):
    monkeypatch.setattr(observer, "MAX_DECODED", 4 << 20)
    wire = gzip.compress(OPENROUTER_CHAT_SSE[:200] + b"\0" * (32 << 20))
    obs = observer.StreamObserver("gzip")
    assert feed(obs, wire, 4096) == wire  # every chunk passed on
    assert obs.failure and "decodes to more than 4 MiB" in obs.failure
    assert obs.decoded <= (4 << 20) + observer.PIECE


def test_an_unknown_encoding_is_refused_up_front():
    with pytest.raises(observer.Unsupported):
        observer.StreamObserver("compress")


def test_a_broken_stream_is_passed_on_and_the_reading_stops():
    wire = gzip.compress(ANTHROPIC_SSE)[:30] + b"\x00garbage" * 10
    obs = observer.StreamObserver("gzip")
    assert feed(obs, wire, 16) == wire
    assert obs.failure and "Error" in obs.failure


def test_a_wrapped_stream_callable_decides_what_is_sent():
    sent = []

    def other(chunk):
        sent.append(chunk)
        return [chunk.upper()] if chunk else b""

    obs = observer.StreamObserver(None, other)
    out = [obs(ANTHROPIC_SSE[:50]), obs(ANTHROPIC_SSE[50:]), obs(b"")]
    assert out == [[ANTHROPIC_SSE[:50].upper()], [ANTHROPIC_SSE[50:].upper()], b""]
    assert b"".join(sent) == ANTHROPIC_SSE  # the upstream bytes are what is read
    assert obs.result().output_tokens == 15


def test_memory_stays_bounded_on_a_huge_event_and_the_usage_is_still_found():
    text = "x" * (5 * observer.MAX_EVENT)
    completed = {
        "type": "response.completed",
        "response": {
            **_RESP_BASE,
            "status": "completed",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}],
            "usage": {"input_tokens": 700, "input_tokens_details": {"cached_tokens": 600}, "output_tokens": 9},
        },
    }
    body = sse(
        ("response.created", {"type": "response.created", "response": {**_RESP_BASE, "output": []}}),
        ("response.completed", completed),
    )
    obs = observer.StreamObserver(None)
    peak = 0
    for i in range(0, len(body), 65536):
        obs(body[i : i + 65536])
        reader = obs.reader
        peak = max(peak, len(reader._pending))
    obs(b"")
    assert peak <= observer.MAX_EVENT + 65536
    assert obs.result() == Usage(served_model="gpt-5-codex", input_tokens=700, cache_read_tokens=600, output_tokens=9)


def test_a_long_stream_keeps_nothing_of_what_it_passed():
    delta = (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "y" * 200}},
    )
    body = ANTHROPIC_SSE.replace(b"event: message_delta", sse(*[delta] * 5000) + b"event: message_delta")
    obs = observer.StreamObserver(None)
    for i in range(0, len(body), 4096):
        obs(body[i : i + 4096])
        assert len(obs.reader._pending) < 4096 + 400
    obs(b"")
    assert obs.result().output_tokens == 15


def test_tail_observer_for_a_streamed_json_answer():
    body = json.dumps(OPENROUTER_CHAT_JSON).encode()
    obs = observer.TailObserver(None)
    assert feed(obs, body, 10) == body
    assert obs.result() == parse.from_json(OPENROUTER_CHAT_JSON)
    big = json.dumps({**OPENAI_CHAT_JSON, "choices": [{"message": {"content": "z" * (3 * observer.MAX_EVENT)}}]})
    obs = observer.TailObserver(None)
    feed(obs, big.encode(), 100_000)
    assert obs.result() == Usage(input_tokens=1117, cache_read_tokens=1024, output_tokens=46)


# -- the ledger -----------------------------------------------------------------------------------


def record(session="s1", ts="2026-11-21T10:00:00.000Z", **figures) -> dict:
    return {
        "ts": ts,
        "session": session,
        "label": f"label-{session}",
        "agent": "pi",
        "rule": "openrouter-session-id",
        "host": "openrouter.ai",
        "model": "m",
        "status": 200,
        "stream": True,
        **figures,
    }


def test_ledger_appends_lines_with_mode_0600(tmp_path):
    path = str(tmp_path / "d" / "usage.jsonl")
    book = ledger.Ledger(path)
    for i in range(3):
        assert book.append(record(f"s{i}", input_tokens=i))
    book.close()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    records, skipped = ledger.read(path)
    assert [r["session"] for r in records] == ["s0", "s1", "s2"] and skipped == 0
    assert Path(path).read_bytes().count(b"\n") == 3


def test_a_partial_last_line_is_skipped_and_the_next_writer_starts_a_fresh_line(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    line = ledger.encode(record("whole"))
    with open(path, "wb") as f:
        f.write(line + line[: len(line) // 2])  # what a kill -9 mid-write could leave
    records, skipped = ledger.read(path)
    assert [r["session"] for r in records] == ["whole"] and skipped == 1
    book = ledger.Ledger(path)
    book.append(record("after"))
    book.close()
    records, skipped = ledger.read(path)
    assert [r["session"] for r in records] == ["whole", "after"] and skipped == 1


WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from agent_session_ids.usage import ledger
book = ledger.Ledger(sys.argv[2])
i = 0
while True:
    book.append({"ts": "2026-11-21T10:00:00.000Z", "session": "s", "n": i, "pad": "p" * (i % 3000)})
    i += 1
    if i == 200:
        print("writing", flush=True)
    if i % 50 == 0:
        time.sleep(0.001)
"""


def test_kill_9_of_a_writer_leaves_only_whole_lines_and_at_most_one_partial(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    addon_dir = os.path.join(os.path.dirname(__file__), "..", "..", "addon")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, addon_dir, path], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"writing\n"
        while not os.path.exists(path) or os.path.getsize(path) < 200_000:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    whole, partial = lines[:-1], lines[-1]
    assert all(json.loads(x)["session"] == "s" for x in whole)
    records, skipped = ledger.read(path)
    assert len(records) == len(whole) and skipped == (1 if partial else 0)
    assert [r["n"] for r in records] == list(range(len(records)))


def test_rotation_keeps_a_few_files_and_the_reader_reads_them_oldest_first(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    book = ledger.Ledger(path, max_bytes=2000, keep=2)
    for i in range(60):
        book.append(record(f"s{i:02d}"))
    book.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["usage.jsonl", "usage.jsonl.1", "usage.jsonl.2"]
    assert all(os.path.getsize(tmp_path / n) <= 2000 for n in names)
    sessions = [r["session"] for r in ledger.read(path)[0]]
    assert sessions == sorted(sessions) and sessions[-1] == "s59" and len(sessions) < 60


def test_a_ledger_that_cannot_be_written_is_said_and_nothing_raises(tmp_path):
    said = []
    blocker = tmp_path / "file"
    blocker.write_text("")
    book = ledger.Ledger(str(blocker / "usage.jsonl"), on_error=lambda k, m: said.append(m))
    assert book.append(record())
    book.close()
    assert said and "cannot write the usage ledger" in said[0]


# -- the report -----------------------------------------------------------------------------------


def _ledger(tmp_path, records) -> str:
    path = str(tmp_path / "usage.jsonl")
    with open(path, "wb") as f:
        for r in records:
            f.write(ledger.encode(r))
    return path


LINES = [
    record(
        "a",
        "2026-11-20T09:00:00.000Z",
        model="claude",
        provider="Anthropic",
        input_tokens=1000,
        cache_read_tokens=0,
        cache_write_tokens=900,
        output_tokens=10,
        cost=0.004,
    ),
    record(
        "a",
        "2026-11-20T09:01:00.000Z",
        model="claude",
        provider="Anthropic",
        input_tokens=1100,
        cache_read_tokens=900,
        output_tokens=20,
        cost=0.001,
    ),
    record("b", "2026-11-21T12:00:00.000Z", model="gpt", input_tokens=500, output_tokens=5),
    record(
        "a",
        "2026-11-21T12:15:30.000Z",
        model="claude",
        provider="Google",
        input_tokens=1200,
        cache_read_tokens=0,
        output_tokens=30,
        cost=0.006,
    ),
]


def test_report_groups_by_session_with_flips(tmp_path):
    records, _ = ledger.read(_ledger(tmp_path, LINES))
    groups = {g.key: g for g in grouping.group(records)}
    a = groups["a"]
    assert a.requests == 3 and a.sums["input_tokens"] == 3300 and a.sums["cache_read_tokens"] == 900
    assert a.sums["cache_write_tokens"] == 900 and a.sums["output_tokens"] == 60
    assert round(a.cost, 6) == 0.011 and a.providers == {"Anthropic": 2, "Google": 1}
    assert round(a.cache_hit_ratio, 4) == round(900 / 3300, 4)
    (flip,) = a.flips
    assert (flip["from"], flip["to"], flip["idle_s"]) == ("Anthropic", "Google", 86400 + 3 * 3600 + 14 * 60 + 30)
    b = groups["b"]
    assert b.cost is None and b.cache_hit_ratio is None and b.sums["cache_read_tokens"] is None


def test_report_by_day_and_model_and_since(tmp_path):
    records, _ = ledger.read(_ledger(tmp_path, LINES))
    by_model = {g.key: g.requests for g in grouping.group(records, "model")}
    assert by_model == {"claude": 3, "gpt": 1}
    days = {g.key: g.requests for g in grouping.group(records, "day")}
    assert sum(days.values()) == 4 and len(days) in (2, 3)  # local days
    since = ledger.parse_ts("2026-11-21T00:00:00.000Z")
    assert [r["session"] for r in ledger.read(_ledger(tmp_path, LINES), since)[0]] == ["b", "a"]
    assert timespec.parse_moment("2h", now=10_000.0) == 10_000.0 - 7200
    assert timespec.parse_moment("2026-11-21T00:00:00+00:00") == since
    with pytest.raises(ValueError):
        timespec.parse_moment("yesterday")


def test_report_command_json_and_text(tmp_path, capsys):
    path = _ledger(tmp_path, LINES)
    with open(path, "ab") as f:
        f.write(b'{"ts": "2026-11-21T13:00:00.000Z", "sess')  # a killed writer's last line
    assert report.main(["--file", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [g["session"] for g in out] == ["a", "b"]
    a = out[0]
    assert {k: a[k] for k in ("requests", "input_tokens", "cache_read_tokens", "output_tokens", "cost_requests")} == {
        "requests": 3,
        "input_tokens": 3300,
        "cache_read_tokens": 900,
        "output_tokens": 60,
        "cost_requests": 3,
    }
    assert a["cache_hit_ratio"] == round(900 / 3300, 4) and a["label"] == "label-a"
    assert a["flips"][0]["from"] == "Anthropic" and a["flips"][0]["to"] == "Google"
    assert out[1]["cost"] is None and out[1]["cache_hit_ratio"] is None
    assert report.main(["--file", path, "--since", "2026-11-21T12:10:00+00:00", "--by", "model", "--json"]) == 0
    assert [(g["model"], g["requests"]) for g in json.loads(capsys.readouterr().out)] == [("claude", 1)]
    assert report.main(["--file", path]) == 0
    text = capsys.readouterr().out
    assert "label-a" in text and "27%" in text and "provider flip" in text and "TOTAL" in text
    assert "1 unreadable ledger lines skipped" in text


def test_report_html_is_one_page_without_scripts(tmp_path, capsys):
    path = _ledger(tmp_path, LINES)
    page = tmp_path / "report.html"
    assert report.main(["--file", path, "--html", str(page)]) == 0
    html = page.read_text()
    assert (
        "<svg" in html
        and "<script" not in html.lower()
        and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    assert html.count("<svg") == 2 and "provider flip" in html


def test_report_without_a_ledger(tmp_path, capsys):
    assert report.main(["--file", str(tmp_path / "none.jsonl")]) == 1


# -- the addon's hooks ----------------------------------------------------------------------------


def _flow(path="/api/v1/chat/completions", body=None):
    body = (
        body
        or json.dumps(
            {
                "model": "anthropic/claude-sonnet-4",
                "stream": True,
                "messages": [{"role": "user", "content": "secret prompt"}],
            }
        ).encode()
    )
    f = tflow.tflow(
        req=tutils.treq(
            host="openrouter.ai",
            port=443,
            path=path.encode(),
            method=b"POST",
            content=body,
            headers=[(b"content-type", b"application/json")],
        )
    )
    f.request.headers["content-length"] = str(len(body))
    return f


def _answer(f, body: bytes, ctype="text/event-stream", headers=()):
    f.response = tutils.tresp(content=body, headers=[(b"content-type", ctype.encode()), *headers])


class _Addons:
    """SessionIds and UsageLedger as mitmproxy calls them: each hook on each addon, in order."""

    def __init__(self, *addons) -> None:
        self.addons = addons

    def __getattr__(self, name):
        def call(*args):
            out = None
            for addon in self.addons:
                hook = getattr(addon, name, None)
                result = hook(*args) if hook is not None else None
                out = result if result is not None else out
            return out

        return call


async def _with_addon(tmp_path, go, **options):
    session_ids, usage_ledger = SessionIds(), UsageLedger()
    with taddons.context(session_ids, usage_ledger) as tctx:
        tctx.configure(session_ids, confdir=str(tmp_path), session_rules=DEFAULT_RULES, **options)
        addon = _Addons(session_ids, usage_ledger)
        result = await go(addon)
        addon.done()
        return result


def _read(tmp_path):
    return ledger.read(str(tmp_path / "agent-session-ids" / "usage.jsonl"))[0]


def test_a_streamed_answer_passes_chunk_by_chunk_and_lands_in_the_ledger(tmp_path):
    async def go(addon):
        f = _flow()
        await addon.request(f)
        _answer(f, b"")
        f.response.stream, f.response.raw_content = False, None  # as from upstream: headers only
        addon.responseheaders(f)
        stream = f.response.stream
        assert callable(stream)
        out = [stream(OPENROUTER_CHAT_SSE[i : i + 40]) for i in range(0, len(OPENROUTER_CHAT_SSE), 40)] + [stream(b"")]
        assert b"".join(out) == OPENROUTER_CHAT_SSE
        addon.response(f)
        return f

    f = asyncio.run(_with_addon(tmp_path, go))
    (line,) = _read(tmp_path)
    session = f.metadata["session_ids"]["session"]
    assert {k: v for k, v in line.items() if k != "_epoch"} == {
        "ts": line["ts"],
        "session": session["id"],
        "label": session["label"],
        "agent": session["agent"],
        "rule": "openrouter-session-id",
        "host": "openrouter.ai",
        "model": "anthropic/claude-sonnet-4",
        "served_model": "anthropic/claude-sonnet-4",
        "provider": "Google",
        "status": 200,
        "stream": True,
        "input_tokens": 5000,
        "cache_read_tokens": 0,
        "cache_write_tokens": 4800,
        "output_tokens": 80,
        "cost": 0.01702,
    }
    assert "secret prompt" not in json.dumps(line)
    assert f.comment.endswith(" · 5000 in · 80 out · cache 0% · $0.0170 · Google")
    assert f.metadata["session_ids"]["usage"]["cost"] == 0.01702


def test_a_held_json_answer_with_opper_headers(tmp_path):
    async def go(addon):
        f = _flow()
        f.request.host = "api.opper.ai"
        await addon.request(f)
        _answer(
            f,
            json.dumps(ANTHROPIC_JSON).encode(),
            "application/json",
            [(b"x-opper-cost", b"0.0059"), (b"x-opper-served-provider", b"anthropic")],
        )
        addon.responseheaders(f)
        assert not f.response.stream  # a JSON answer is held by mitmproxy as it would be anyway
        addon.response(f)
        return f

    asyncio.run(_with_addon(tmp_path, go))
    (line,) = _read(tmp_path)
    assert (line["host"], line["stream"], line["cost"], line["provider"]) == (
        "api.opper.ai",
        False,
        0.0059,
        "anthropic",
    )
    assert (line["input_tokens"], line["cache_write_tokens"], line["output_tokens"]) == (188107, 188086, 393)


def test_flows_no_rule_rewrote_are_left_alone(tmp_path):
    async def go(addon):
        f = _flow()
        f.request.host = "example.com"
        await addon.request(f)
        _answer(f, OPENAI_CHAT_SSE)
        f.response.stream, f.response.raw_content = False, None
        addon.responseheaders(f)
        assert f.response.stream is False
        addon.response(f)
        return f

    f = asyncio.run(_with_addon(tmp_path, go))
    assert _read(tmp_path) == [] and not f.comment


def test_usage_off_leaves_answers_alone(tmp_path):
    async def go(addon):
        f = _flow()
        await addon.request(f)
        _answer(f, OPENAI_CHAT_SSE)
        f.response.stream, f.response.raw_content = False, None
        addon.responseheaders(f)
        assert f.response.stream is False
        addon.response(f)
        return f

    f = asyncio.run(_with_addon(tmp_path, go, session_usage=False))
    assert not (tmp_path / "agent-session-ids" / "usage.jsonl").exists() and "usage" not in f.metadata["session_ids"]


def test_a_provider_flip_is_logged_once_and_shown(tmp_path, caplog):
    async def go(addon):
        flows = []
        for provider in ("Anthropic", "Anthropic", "Google", "Google"):
            f = _flow()
            f.request.headers["x-session-id"] = "0198c2d0-7b1e-7c3a-9f00-5e6d4f2a9c1d"
            await addon.request(f)
            _answer(f, json.dumps({**OPENROUTER_CHAT_JSON, "provider": provider}).encode(), "application/json")
            addon.response(f)
            flows.append(f)
        return addon.cmd_sessions(), flows

    with caplog.at_level("INFO"):
        table, flows = asyncio.run(_with_addon(tmp_path, go))
    flips = [r.message for r in caplog.records if r.levelname == "WARNING" and "provider flip" in r.message]
    assert len(flips) == 1 and "Google" in flips[0] and "Anthropic" in flips[0]
    assert "provider flip Anthropic → Google" in flows[2].comment and "flip" not in flows[3].comment
    assert "⚠Google" in table and "Anthropic → Google" in table and "92%" in table
    assert "How each session was decided:" in table
    summary = [r.message for r in caplog.records if "usage this run" in r.message]
    assert summary and "⚠Google" in summary[0] and "provider flip" in summary[0] and "TOTAL" in summary[0]


def test_a_failure_in_the_usage_path_is_logged_once_and_the_answer_passes(tmp_path, caplog, monkeypatch):
    from agent_session_ids.usage import recorder

    def boom(*a):
        raise RuntimeError("boom")

    monkeypatch.setattr(recorder, "from_json", boom)

    async def go(addon):
        out = []
        for _ in range(3):
            f = _flow()
            await addon.request(f)
            _answer(f, json.dumps(OPENAI_CHAT_JSON).encode(), "application/json")
            before = f.response.get_state()
            addon.response(f)
            assert f.response.get_state() == before
            out.append(f)
        return out

    with caplog.at_level("WARNING"):
        asyncio.run(_with_addon(tmp_path, go))
    assert len([r for r in caplog.records if "boom" in r.message]) == 1


def test_a_stream_cut_short_is_recorded_with_what_it_said(tmp_path):
    async def go(addon):
        f = _flow()
        await addon.request(f)
        _answer(f, b"")
        f.response.stream, f.response.raw_content = False, None
        addon.responseheaders(f)
        half = ANTHROPIC_SSE[: ANTHROPIC_SSE.index(b"event: content_block_delta")]
        assert f.response.stream(half) is half
        from mitmproxy import flow as mflow

        f.error = mflow.Error("server disconnected")
        addon.error(f)
        addon.error(f)  # said once
        return f

    asyncio.run(_with_addon(tmp_path, go))
    (line,) = _read(tmp_path)
    assert (line["input_tokens"], line["cache_read_tokens"], line["stream"]) == (18969, 18432, True)
    assert line["output_tokens"] == 1  # what message_start said; the final count never came


def test_an_sse_answer_an_addon_set_whole_is_read_in_response(tmp_path):
    async def go(addon):
        f = _flow("/api/v1/responses")
        await addon.request(f)
        _answer(f, RESPONSES_SSE)  # as the gateway stand-in does: mitmproxy emulates responseheaders
        addon.responseheaders(f)
        assert not f.response.stream
        addon.response(f)
        return f

    f = asyncio.run(_with_addon(tmp_path, go))
    (line,) = _read(tmp_path)
    assert (line["input_tokens"], line["cache_read_tokens"], line["output_tokens"]) == (48213, 47104, 512)
    assert "cache 98%" in f.comment


def test_the_session_ids_view_and_explain_show_the_turns_figures():
    from agent_session_ids.view import contentview, display

    usage = {
        "model": "anthropic/claude-sonnet-4",
        "served_model": "anthropic/claude-4-sonnet-20250522",
        "provider": "Google",
        "status": 200,
        "stream": True,
        "input_tokens": 12000,
        "cache_read_tokens": 11040,
        "output_tokens": 240,
        "cost": 0.0041,
        "cache_hit_ratio": 0.92,
        "provider_flip": {"from": "Anthropic", "to": "Google", "idle_s": 680.0},
    }
    meta = {
        "session": {
            "id": "s",
            "label": "l",
            "trace_uuid": "t",
            "name": "",
            "agent": "pi",
            "file": None,
            "source": "x",
            "fallback": False,
        },
        "rules": [],
        "changes": [],
        "skipped": [],
        "usage": usage,
    }
    text = contentview.to_text(contentview.summary(meta))
    line = "12.0k in · 240 out · cache 92% · $0.0041 · Google · provider flip Anthropic → Google after 11m 20s idle"
    assert "Usage of this turn" in text and line in text
    assert "cache reads:" in text and "11040" in text and "cache writes" not in text  # unknown: not shown
    f = tflow.tflow()
    f.metadata["session_ids"] = meta
    assert f"usage     {line}" in display.explain(f)
