"""Shared helpers of the runner's tests."""

import sys
from pathlib import Path

from scripts_app import runner
from scripts_app.runner import Job, Limits

# Small limits so a test that hits one ends in seconds.
TEST_LIMITS = Limits(wall_seconds=5, cpu_seconds=3, memory_bytes=2 * 1024**3, max_file_bytes=10 * 1024**2)


def make_job(source: str, function: str = "f", **kwargs) -> Job:
    limits = kwargs.pop("limits", TEST_LIMITS)
    return Job(source=source, function=function, limits=limits, **kwargs)


def assert_runner_still_works() -> None:
    """The runner answers and the next run succeeds."""
    result = runner.run(make_job("def f():\n    return {'ok': True}\n"))
    assert result.succeeded, result.error_message + result.stderr
    assert result.value == {"ok": True}


def bound_back_in_tmp() -> set[str]:
    """The names a listing of a run's own /tmp shows that no run made: the runs' interpreter (this
    venv), when it lives under /tmp (a checkout cloned there), is bound back into it, read-only."""
    prefix = Path(sys.prefix)
    return {prefix.relative_to("/tmp").parts[0]} if prefix.is_relative_to("/tmp") else set()
