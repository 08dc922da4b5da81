"""Shared helpers of the runner's tests."""

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
