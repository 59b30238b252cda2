"""Skips are visible: under CI=true, a skipped real-client test fails the run unless README.md says
why that client cannot run here (the hook in tests/conftest.py), checked on a throwaway suite."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

SUITE = """
import pytest


@pytest.fixture
def claude():
    pytest.skip("claude_command cannot run here: no network")


@pytest.fixture
def pi_version():
    pytest.skip("Claude-free reason: pi 9.9 has nothing to check here")


def test_a_claude_run(claude):
    pass


def test_a_pi_run(pi_version):
    pass


@pytest.mark.real_client
def test_a_client_that_skips_itself():
    pytest.skip("opencode cannot run here: no Bun")


def test_no_client_at_all():
    pytest.skip("chromium is not installed")


@pytest.mark.xfail(reason="known", strict=False)
@pytest.mark.real_client
def test_an_expected_failure():
    raise AssertionError
"""

README = """
# a project

<!-- ci-allowed-skips -->
- `Claude-free reason: pi 9.9`: that version sends nothing to check.
<!-- /ci-allowed-skips -->
"""


def run_suite(tmp_path: Path, ci: str | None) -> tuple[int, str]:
    (tmp_path / "README.md").write_text(README)
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(f"""
        import importlib.util

        _spec = importlib.util.spec_from_file_location("project_conftest", {str(TESTS / "conftest.py")!r})
        _hooks = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_hooks)
        _hooks.README = {str(tmp_path / "README.md")!r}
        pytest_configure = _hooks.pytest_configure
        pytest_runtest_makereport = _hooks.pytest_runtest_makereport
    """)
    )
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return r.returncode, r.stdout + r.stderr


def test_without_ci_a_client_that_cannot_run_skips(tmp_path):
    code, out = run_suite(tmp_path, None)
    assert code == 0, out
    assert "4 skipped" in out and "1 xfailed" in out, out


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_skipped_client_test_fails_unless_the_readme_says_why(tmp_path, ci):
    code, out = run_suite(tmp_path, ci)
    assert code == 1, out
    assert "a real-client test skipped under CI=true: claude_command cannot run here: no network" in out
    assert "a real-client test skipped under CI=true: opencode cannot run here: no Bun" in out
    # the reason the README gives, a test that runs no client, and an xfail stay as they are
    assert "skipped under CI=true: Claude-free" not in out
    assert "skipped under CI=true: chromium" not in out
    assert "2 skipped" in out and "1 xfailed" in out, out
    assert "1 failed" in out and "1 error" in out, out  # a skip in a fixture fails the set-up


def test_the_readme_lists_its_allowed_reasons():
    spec = importlib.util.spec_from_file_location("project_conftest", TESTS / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    text = Path(conftest.README).read_text()
    assert conftest.ALLOWED_BEGIN in text and conftest.ALLOWED_END in text
    for reason in conftest.allowed_skip_reasons():
        assert len(reason.strip()) > 20, reason  # a reason, not a wildcard
