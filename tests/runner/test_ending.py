"""How a run ends when it does not return: time limit, cancellation, crash."""

import os
import threading
import time

import pytest

from scripts_app import runner
from scripts_app.runner import Failure, Limits, Outcome

from .helpers import assert_runner_still_works, make_job


def test_a_run_past_its_wall_clock_limit_times_out(mode, run):
    """A function that sleeps forever is killed at the limit and TIMED_OUT says so."""
    result = run("import time\ndef f():\n    time.sleep(3600)\n", limits=Limits(wall_seconds=1))
    assert result.outcome is Outcome.TIMED_OUT
    assert result.failure is Failure.TIMEOUT
    assert "time limit of 1 seconds" in result.error_message
    assert 1 <= result.duration_seconds < 3
    assert_runner_still_works()


def test_output_printed_before_a_timeout_is_kept(run):
    """What the run printed before it was killed is still returned."""
    source = "import time\ndef f():\n    print('started', flush=True)\n    time.sleep(3600)\n"
    result = run(source, limits=Limits(wall_seconds=1))
    assert result.outcome is Outcome.TIMED_OUT
    assert result.stdout == "started\n"


def test_a_cancelled_run_is_killed_within_a_second(mode):
    """When is_cancelled turns true the run is killed promptly and is CANCELLED."""
    cancel_at = time.monotonic() + 0.5
    job = make_job("import time\ndef f():\n    time.sleep(3600)\n", limits=Limits(wall_seconds=30))
    result = runner.run(job, is_cancelled=lambda: time.monotonic() >= cancel_at)
    assert result.outcome is Outcome.CANCELLED
    assert result.failure is Failure.CANCELLED
    assert time.monotonic() - cancel_at < 1.0
    assert_runner_still_works()


def test_a_child_that_exits_without_a_result_has_crashed(mode, run):
    """os._exit in the user's code ends the run as CRASHED with the exit code."""
    result = run("import os\ndef f():\n    os._exit(3)\n")
    assert result.outcome is Outcome.FAILED
    assert result.failure is Failure.CRASHED
    assert "code 3" in result.error_message
    assert_runner_still_works()


def test_a_child_killed_by_a_signal_has_crashed(mode, run):
    """A segfault in the child ends the run as CRASHED naming the signal."""
    result = run("import ctypes\ndef f():\n    ctypes.string_at(0)\n")
    assert result.failure is Failure.CRASHED
    assert "SIGSEGV" in result.error_message
    assert_runner_still_works()


def test_runs_beyond_the_slots_get_runner_busy():
    """With every slot taken and none freed within queue_timeout, run() raises RunnerBusy."""
    runner.configure(max_concurrent=1, queue_timeout=0.2)
    try:
        sleeper = threading.Thread(target=runner.run, args=(make_job("import time\ndef f():\n    time.sleep(1.5)\n"),))
        sleeper.start()
        time.sleep(0.3)
        with pytest.raises(runner.RunnerBusy, match="1 run slots are busy"):
            runner.run(make_job("def f():\n    return 1\n"))
        sleeper.join()
    finally:
        runner.configure(max_concurrent=4, queue_timeout=5.0)
    assert_runner_still_works()


def test_concurrent_runs_from_threads_all_succeed():
    """run() is safe to call from many threads at once."""
    results = [None] * 8

    def one(i):
        results[i] = runner.run(make_job(f"def f():\n    return {i}\n"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.value for r in results] == list(range(8))


def test_a_forked_worker_starts_its_own_template():
    """A process forked after runs (a prefork pool) runs jobs on its own template, not the parent's."""
    assert runner.run(make_job("def f():\n    return 1\n")).succeeded
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            result = runner.run(make_job("def f():\n    return 2\n"))
            os.write(write_end, b"ok" if result.value == 2 else result.error_message.encode()[:100] or b"bad")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 200)
    os.waitpid(pid, 0)
    assert answer == b"ok"
    assert runner.run(make_job("def f():\n    return 3\n")).value == 3
