"""Each limit holds against a script that tries to break it, and the runner still works after."""

import contextlib
import os
import time
from pathlib import Path

import pytest

from scripts_app.runner import Failure, Limits, Outcome

from .helpers import assert_runner_still_works, bound_back_in_tmp

SMALL = Limits(
    wall_seconds=5,
    cpu_seconds=1,
    memory_bytes=1024**3,
    max_processes=16,
    max_file_bytes=10 * 1024**2,
)


def _processes_with_cmdline(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _processes_of_uid(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        if int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]) == uid:
            found.append(int(entry.name))
    return found


def _processes_in_pid_namespace(namespace: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "pid") == namespace:
                    found.append(int(entry.name))
    return found


def _eventually_none_of_uid(uid: int, seconds: float = 3.0) -> list[int]:
    """The run answers before its processes are all reaped: give the teardown a moment."""
    deadline = time.monotonic() + seconds
    while (left := _processes_of_uid(uid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_sleeping_forever_is_stopped_by_the_wall_clock(mode, run):
    """time.sleep is not CPU time: the wall clock ends it as TIMED_OUT."""
    result = run("import time\ndef f():\n    time.sleep(10**6)\n", limits=Limits(wall_seconds=1, cpu_seconds=1))
    assert result.outcome is Outcome.TIMED_OUT
    assert result.failure is Failure.TIMEOUT
    assert_runner_still_works()


def test_spinning_the_cpu_is_stopped_by_the_cpu_limit(mode, run):
    """A busy loop, even one that swallows exceptions, is ended by the CPU limit and says so."""
    source = """
def f():
    while True:
        try:
            pass
        except Exception:
            pass
"""
    result = run(source, limits=Limits(wall_seconds=30, cpu_seconds=1))
    assert result.outcome is Outcome.TIMED_OUT
    assert result.failure is Failure.CPU_LIMIT
    assert "CPU time limit of 1 seconds" in result.error_message
    assert_runner_still_works()


@pytest.mark.parametrize(
    "allocation", ["bytearray(50 * 1024**3)", "numpy.ones(50 * 1024**3 // 8)", "[0] * (50 * 1024**3 // 8)"]
)
def test_allocating_50_gb_fails_with_the_memory_limit(mode, run, allocation):
    """A 50 GB allocation fails with MEMORY_LIMIT naming the limit; the host is untouched."""
    result = run(f"import numpy\ndef f():\n    x = {allocation}\n    return len(x)\n", limits=SMALL)
    assert result.outcome is Outcome.FAILED
    assert result.failure is Failure.MEMORY_LIMIT
    assert "Memory limit of 1024 MB" in result.error_message
    assert_runner_still_works()


def test_a_fork_bomb_is_contained(run, isolated):
    """Forking without end hits the process limit; every process it made is gone afterwards."""
    if not isolated["run_uid"]:
        pytest.skip("RLIMIT_NPROC needs a run uid of its own (isolation level without per-run uid)")
    source = "import os\ndef f():\n    print(os.getuid(), flush=True)\n    while True:\n        os.fork()\n"
    result = run(source, limits=SMALL)
    assert result.outcome is Outcome.FAILED
    assert result.failure is Failure.PROCESS_LIMIT
    assert "limit of 16" in result.error_message
    assert _eventually_none_of_uid(int(result.stdout.split()[0])) == []
    assert_runner_still_works()


def test_a_fork_bomb_that_ignores_errors_is_killed_whole(run, isolated):
    """A fork bomb that swallows EAGAIN runs into the wall clock and all its processes die."""
    if not isolated["run_pid_namespace"]:
        pytest.skip("killing every process of a run needs a PID namespace per run")
    source = """
import os
def f():
    print(os.readlink("/proc/self/ns/pid"), flush=True)
    while True:
        try:
            os.fork()
        except OSError:
            pass
"""
    result = run(source, limits=Limits(wall_seconds=2, cpu_seconds=10, max_processes=16))
    assert result.outcome is Outcome.TIMED_OUT
    namespace = result.stdout.split()[0]
    deadline = time.monotonic() + 3
    while _processes_in_pid_namespace(namespace) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_in_pid_namespace(namespace) == []
    assert_runner_still_works()


def test_a_string_dataframe_fits_in_a_small_address_space(mode, run):
    """pandas' pyarrow strings do not eat the address-space limit (mimalloc reserves 1 GiB)."""
    source = "import pandas as pd\ndef f():\n    return pd.DataFrame({'s': ['a', 'b']})\n"
    result = run(source, limits=Limits(wall_seconds=10, memory_bytes=768 * 1024**2))
    assert result.succeeded, result.error_message + result.stderr
    assert result.value == [{"s": "a"}, {"s": "b"}]


def test_threads_count_against_the_process_limit(run, isolated):
    """Starting threads without end stops at the process and thread limit."""
    if not isolated["run_uid"]:
        pytest.skip("RLIMIT_NPROC needs a run uid of its own")
    source = """
import threading, time
def f():
    while True:
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
"""
    result = run(source, limits=SMALL)
    assert result.failure is Failure.PROCESS_LIMIT
    assert_runner_still_works()


def test_a_grandchild_in_its_own_session_does_not_outlive_the_run(run, isolated):
    """A process started with setsid() is killed with the run (its PID namespace dies)."""
    if not isolated["run_pid_namespace"]:
        pytest.skip("a setsid() grandchild escapes killpg without a PID namespace per run")
    source = """
import subprocess
def f():
    subprocess.Popen(["sleep", "777.25"], start_new_session=True)
    return "started"
"""
    result = run(source)
    assert result.value == "started"
    assert _processes_with_cmdline("777.25") == []


def test_writing_a_huge_file_fails_with_the_file_size_limit(mode, run):
    """Writing past max_file_bytes fails with FILE_TOO_LARGE and the workdir is removed."""
    source = """
import os
def f():
    chunk = b"x" * (1 << 20)
    with open("big.bin", "wb") as out:
        for _ in range(10_000):
            out.write(chunk)
            out.flush()
"""
    result = run(source, limits=SMALL)
    assert result.outcome is Outcome.FAILED
    assert result.failure is Failure.FILE_TOO_LARGE
    assert "File size limit of 10485760 bytes" in result.error_message
    assert_runner_still_works()


def test_printing_gigabytes_is_cut_and_the_run_succeeds(run):
    """2 GB printed in 1 MB chunks: stdout is kept to its limit with a marker, the result is intact."""
    source = """
import sys
def f():
    chunk = "x" * (1 << 20)
    for _ in range(2048):
        sys.stdout.write(chunk)
        sys.stderr.write("e" * 1000)
    return "done"
"""
    result = run(source, limits=Limits(wall_seconds=30, max_stream_bytes=1 << 20))
    assert result.succeeded, result.error_message
    assert result.value == "done"
    assert result.stdout.endswith("\n[... output cut at 1048576 bytes ...]")
    assert len(result.stdout) == (1 << 20) + len("\n[... output cut at 1048576 bytes ...]")
    assert result.stderr.startswith("e" * 1000)
    assert_runner_still_works()


def test_returning_a_huge_list_fails_with_output_too_long(mode, run):
    """A list of ten million items fails with OML's output limit message, not a cut list."""
    result = run("def f():\n    return list(range(10_000_000))\n", limits=Limits(wall_seconds=10))
    assert result.failure is Failure.OUTPUT_TOO_LONG
    assert result.error_message == "Output exceeds maximum length 5000"
    assert_runner_still_works()


def test_returning_a_huge_string_fails_with_result_too_large(run):
    """A 100 MB string is refused with RESULT_TOO_LARGE and the parent does not keep it."""
    result = run("def f():\n    return 'x' * (100 * 1024**2)\n", limits=Limits(wall_seconds=10))
    assert result.failure is Failure.RESULT_TOO_LARGE
    assert result.value is None
    assert_runner_still_works()


def test_too_many_figures_fail_with_image_too_large(run):
    """More open figures than max_figures fail the run rather than being dropped silently."""
    source = "import matplotlib.pyplot as plt\ndef f():\n    for i in range(5):\n        plt.figure()\n"
    result = run(source, graphics=True, limits=Limits(wall_seconds=5, max_figures=4))
    assert result.failure is Failure.IMAGE_TOO_LARGE
    assert "5 figures" in result.error_message


def test_the_working_directory_is_fresh_and_removed(mode, run):
    """Each run starts in an empty directory of its own, which is gone after the run (with a mount
    namespace it is the run's own tmpfs on /tmp: same path, a fresh file system each time)."""
    source = (
        "import os\ndef f():\n    open('mine.txt', 'w').write('x')\n    return [os.getcwd(), sorted(os.listdir('.'))]\n"
    )
    first = run(source)
    second = run(source)
    mine = [[name for name in listing if name not in bound_back_in_tmp()] for _, listing in (first.value, second.value)]
    assert mine == [["mine.txt"], ["mine.txt"]]
    if first.value[0] != "/tmp":
        assert first.value[0] != second.value[0]
        if mode == "cold":
            assert not os.path.exists(first.value[0])
