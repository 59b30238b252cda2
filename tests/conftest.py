import os
import re
import sys

import pytest

# The tests import the addon's package straight from the checkout, as `mitmdump -s` does.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "addon"))
# ...and the unit tests share small helpers between their modules; the helpers every test uses
# (the harness, the gateway stand-in, the fake agent, real clients) live in tests/support.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "unit"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

# --------------------------------------------------------------------------- skips are visible in CI
#
# Under CI=true, a test that runs a real agent client and skips fails instead: a client that could
# not be installed or started must not pass unseen. The only skips allowed are those whose reason
# starts with one of the reasons README.md lists between the markers below, each saying why that
# client cannot run here.

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
ALLOWED_BEGIN, ALLOWED_END = "<!-- ci-allowed-skips -->", "<!-- /ci-allowed-skips -->"
#: fixtures that run a real agent client (tests/e2e/conftest.py)
REAL_CLIENT_FIXTURES = {"pi_version", "claude", "codex", "opencode", "omp"}
#: modules whose every test runs real agent clients through fixtures of their own
REAL_CLIENT_MODULES = {"test_beyond_process.py"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "real_client: the test runs a real agent client (pi, Claude Code, Codex, "
        "opencode, Oh My Pi); under CI=true it may not skip",
    )


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def allowed_skip_reasons(readme: str | None = None) -> list[str]:
    """The skip reasons README.md allows under CI=true: the first `code` span of each list item
    between the ci-allowed-skips markers."""
    try:
        with open(readme or README, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    start, end = text.find(ALLOWED_BEGIN), text.find(ALLOWED_END)
    if start < 0 or end < start:
        return []
    return re.findall(r"^\s*[-*]\s+`([^`]+)`", text[start:end], re.M)


def runs_a_real_client(item) -> bool:
    return (
        item.get_closest_marker("real_client") is not None
        or bool(REAL_CLIENT_FIXTURES & set(getattr(item, "fixturenames", ())))
        or os.path.basename(str(item.fspath)) in REAL_CLIENT_MODULES
    )


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len("Skipped: ") :] if reason.startswith("Skipped: ") else reason


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and not hasattr(report, "wasxfail") and in_ci() and runs_a_real_client(item)):
        return
    reason = _skip_reason(report)
    if any(reason.startswith(allowed) for allowed in allowed_skip_reasons()):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"a real-client test skipped under CI=true: {reason}\n"
        f"Make the client run here, or say in README.md why it cannot: a list item between "
        f"{ALLOWED_BEGIN} and {ALLOWED_END} whose first `code` span starts this reason."
    )
