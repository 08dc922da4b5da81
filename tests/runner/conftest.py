import os
import sys
from pathlib import Path

import pytest

# The repository's pytest configuration puts the root on sys.path; this keeps the runner's tests
# runnable on their own (`pytest tests/runner`) before and without it.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts_app import runner  # noqa: E402

from .helpers import make_job  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolation_under_test():
    """RUNNER_TEST_ISOLATION=bwrap|unshare|process runs the suite at that level (default: auto)."""
    runner.configure(isolation=os.environ.get("RUNNER_TEST_ISOLATION", "auto"))
    yield
    runner.shutdown()


@pytest.fixture(params=["zygote", "cold"])
def mode(request):
    """Run the test once with a warm template and once with a cold interpreter."""
    runner.configure(mode=request.param)
    yield request.param
    runner.configure(mode="zygote")


@pytest.fixture
def run():
    def _run(source: str, function: str = "f", **kwargs):
        return runner.run(make_job(source, function, **kwargs))

    return _run


@pytest.fixture
def isolated():
    """The active isolation level's details; skips where the level gives no namespaces."""
    runner.configure(mode="zygote")
    report = runner.isolation_report()
    if report["level"] == "process":
        pytest.skip(f"no isolation on this host: {report['levels_tried']}")
    return report["templates"][0]
