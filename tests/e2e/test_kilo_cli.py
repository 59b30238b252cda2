"""Kilo CLI 7.7.9, for real, through a real mitmdump running the addon, with the gateway stand-in
answering OpenRouter (``kilo run -m openrouter/openai/gpt-4o-mini ...``).

Kilo names its session itself (``x-session-affinity`` and ``x-session-id``: its ``ses_`` id),
so the body ``session_id`` the OpenRouter rule writes must be that id: one per session, the same
across a tool call and ``-c``, a new one for a new session, and the session its database holds
(``~/.local/share/kilo/kilo.db``). Its newest version, 7.8.1, cannot install here
(``agent_clients.KILO_PACKAGE`` says why); 7.7.9 is its newest binary. If the client cannot
install or start, the tests skip with the exact error (under CI=true such a skip fails:
``real_client``).
"""

from __future__ import annotations

import json
import platform

import pytest

import agent_clients as ac
import harness
from harness import header

pytestmark = [pytest.mark.e2e, pytest.mark.real_client]

# a read-only shell call, in space-free words (see agent_clients' notes on Kilo)
TOOL = ["[[tool:", "bash", '{"command":"pwd","description":"where"}]]']


@pytest.fixture(scope="module")
def kilo(tmp_path_factory) -> str:
    if (platform.system(), platform.machine()) != ("Linux", "x86_64"):
        pytest.skip(f"Kilo CLI's package here is linux-x64 only, not {platform.system()} {platform.machine()}")
    try:
        binary = str(ac.kilo_binary())
        version = ac.client_version([binary], {"HOME": str(tmp_path_factory.mktemp("kilo-version"))})
    except Exception as exc:  # the reason is the point
        pytest.skip(f"kilo_binary cannot run here: {exc}")
    assert version == ac.KILO_PACKAGE[1]
    return binary


def _openrouter(proxy) -> list[dict]:
    return [
        r for r in proxy.requests() if r.get("host") == "openrouter.ai" and r.get("path") == "/api/v1/chat/completions"
    ]


def _run(args, env, work, proxy):
    result = ac.run_kilo(["run", "-m", ac.KILO_OPENROUTER_MODEL, *args], env, work)
    harness.assert_ran(result, proxy)


def test_each_kilo_session_keeps_its_own_id_toward_openrouter(kilo, addon_proxy, tmp_path):
    proxy, home, work = addon_proxy, tmp_path / "home", tmp_path / "work"
    work.mkdir()
    env = ac.kilo_env(proxy, home, work)
    _run(["first", "session", *TOOL], env, work, proxy)
    first = _openrouter(proxy)
    _run(["-c", "more", "of", "it"], env, work, proxy)
    continued = _openrouter(proxy)[len(first) :]
    _run(["a", "new", "session"], env, work, proxy)
    new = _openrouter(proxy)[len(first) + len(continued) :]
    assert len(first) == 2 and continued and new, (len(first), len(continued), len(new))
    sessions = ac.kilo_sessions(home)
    assert [d for _, d in sessions] == [str(work)] * 2, sessions
    (a, _), (b, _) = sessions
    for group, own in ((first, a), (continued, a), (new, b)):
        for r in group:
            assert header(r, "x-session-id") == own  # what Kilo sent itself
            assert json.loads(r["body"])["session_id"] == own  # what the rule wrote
            session = r["session_ids"]["session"]
            assert (session["id"], session["agent"]) == (own, "kilo"), session
            # Kilo's profile knows its headers: its own field, not a stranger's
            assert session["source"] == "request header x-session-affinity", session
            assert session["file"] == f"{home}/.local/share/kilo/kilo.db#{own}" and session["cwd"] == str(work), session
