"""Isolation promises, each checked by a script that tries to break it."""

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from scripts_app import runner
from scripts_app.runner import Limits

from .helpers import assert_runner_still_works

SECRET = "omlweb-test-secret-5f1c"


@pytest.fixture(autouse=True)
def _secret_in_service_environment(monkeypatch):
    monkeypatch.setenv("DJANGO_SECRET_KEY", SECRET)
    monkeypatch.setenv("DATABASE_URL", f"postgres://omlweb:{SECRET}@db/omlweb")


def test_the_run_environment_is_rebuilt_from_an_allow_list(mode, run):
    """The run's environment holds only allow-listed variables, never the service's."""
    result = run("import os\ndef f():\n    return dict(os.environ)\n")
    env = result.value
    assert "DJANGO_SECRET_KEY" not in env
    assert "DATABASE_URL" not in env
    assert SECRET not in json.dumps(env)
    assert set(env) <= {
        "PATH",
        "LANG",
        "LC_ALL",
        "HOME",
        "TMPDIR",
        "MPLBACKEND",
        "MPLCONFIGDIR",
        "MALLOC_ARENA_MAX",
        "ARROW_DEFAULT_MEMORY_POOL",
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
    }
    assert env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["HOME"] == os.getcwd() or env["HOME"].startswith(("/tmp", "/var"))


def test_no_process_environment_the_run_can_read_holds_a_secret(run, isolated):
    """Reading /proc/self/environ, the parent's and every other readable environ finds no secret."""
    source = """
import os
def f(service_pid):
    found = {}
    paths = ["/proc/self/environ", f"/proc/{os.getppid()}/environ", f"/proc/{service_pid}/environ"]
    paths += [f"/proc/{p}/environ" for p in os.listdir("/proc") if p.isdigit()]
    for path in paths:
        try:
            found[path] = open(path, "rb").read().decode(errors="replace")
        except OSError as exc:
            found[path] = type(exc).__name__
    return found
"""
    result = run(source, kwargs={"service_pid": os.getpid()})
    assert result.succeeded, result.error_message
    assert SECRET not in json.dumps(result.value)
    assert_runner_still_works()


def test_the_service_database_file_is_out_of_reach(run, isolated, tmp_path):
    """A run can neither read nor write a file of the service's data folder."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    database = data_dir / "db.sqlite3"
    database.write_text(SECRET)
    runner.configure(data_dirs_to_hide=[str(data_dir)])
    try:
        source = """
def f(path):
    outcome = {}
    try:
        outcome["read"] = open(path).read()
    except OSError as exc:
        outcome["read"] = type(exc).__name__
    try:
        open(path, "w").write("owned")
        outcome["write"] = "written"
    except OSError as exc:
        outcome["write"] = type(exc).__name__
    return outcome
"""
        result = run(source, kwargs={"path": str(database)})
    finally:
        runner.configure(data_dirs_to_hide=[])
    assert result.succeeded, result.error_message
    assert result.value["read"] in ("FileNotFoundError", "PermissionError")
    assert result.value["write"] in ("FileNotFoundError", "PermissionError", "OSError")
    assert database.read_text() == SECRET


def test_the_host_filesystem_is_read_only_to_a_run(run, isolated):
    """Writing into /usr, the interpreter or the runner's code fails."""
    source = """
import os, sys
def f():
    targets = ["/usr/omlweb-x", os.path.join(sys.prefix, "omlweb-x"), os.path.join(sys.base_prefix, "omlweb-x")]
    outcome = {}
    for target in targets:
        try:
            open(target, "w").write("x")
            outcome[target] = "written"
        except OSError as exc:
            outcome[target] = type(exc).__name__
    return outcome
"""
    targets = ["/usr/omlweb-x", os.path.join(sys.prefix, "omlweb-x"), os.path.join(sys.base_prefix, "omlweb-x")]
    try:
        result = run(source)
        assert result.succeeded, result.error_message
        assert "written" not in result.value.values()
        assert not any(os.path.exists(target) for target in targets)
    finally:
        for target in targets:
            if os.path.exists(target):
                os.remove(target)


def test_the_network_is_off_by_default(run, isolated):
    """A socket to a service on the host's 127.0.0.1 does not connect, and the service sees nothing."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    source = """
import socket
def f(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__
"""
    try:
        result = run(source, kwargs={"port": port})
        assert result.value != "connected"
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


def test_the_network_can_be_turned_on(run, isolated):
    """With Limits(network=True) the same connection succeeds."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    source = """
import socket
def f(port):
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    return "connected"
"""
    try:
        result = run(source, kwargs={"port": port}, limits=Limits(wall_seconds=10, network=True))
        assert result.value == "connected", result.error_message
    finally:
        server.close()


def test_a_module_global_does_not_leak_into_the_next_run(mode, run):
    """State one run leaves in a module or in builtins is not there in the next run."""
    first = run("import json, builtins\ndef f():\n    json.LEAKED = 1\n    builtins.LEAKED = 2\n    return 'set'\n")
    assert first.value == "set"
    second = run("import json, builtins\ndef f():\n    return [hasattr(json, 'LEAKED'), hasattr(builtins, 'LEAKED')]\n")
    assert second.value == [False, False]


def test_every_run_gets_its_own_random_state(run):
    """Forked runs do not replay the template's random numbers."""
    source = "import random\nimport numpy as np\ndef f():\n    return [random.random(), float(np.random.rand())]\n"
    first, second = run(source).value, run(source).value
    assert first[0] != second[0]
    assert first[1] != second[1]


def test_a_run_cannot_signal_the_template_or_other_processes(run, isolated):
    """SIGKILL sent from a run to every pid it can name fails, and the runner keeps working."""
    if not isolated["run_uid"]:
        pytest.skip("the template shares the run's uid at this isolation level")
    source = """
import os, signal
def f():
    sent = []
    pids = {os.getppid(), *range(1, 100), *(int(p) for p in os.listdir("/proc") if p.isdigit())}
    for pid in sorted(pids - {0, os.getpid()}):
        try:
            os.kill(pid, signal.SIGKILL)
            sent.append(pid)
        except OSError:
            pass
    return sent
"""
    result = run(source)
    assert result.value == []
    assert_runner_still_works()


def test_the_isolation_report_names_the_level_and_what_it_protects():
    """isolation_report says which level is active, why, and what it protects against."""
    report = runner.isolation_report()
    assert report["level"] in ("bwrap", "unshare", "process")
    assert report["protects_against"]
    assert report["does_not_protect_against"]
    assert report["levels_tried"]


def _descendants(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def test_a_dead_template_is_restarted(run, isolated):
    """If the template and its sandbox are killed, the next run starts a new one and succeeds."""
    assert_runner_still_works()
    [before] = [t["pid"] for t in runner.isolation_report()["templates"] if not t["network"] and t["light"]]
    for pid in [before, *_descendants(before)]:
        # A spare child forked ahead may exit on its own between the listing and the kill.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    assert_runner_still_works()
    [after] = [t["pid"] for t in runner.isolation_report()["templates"] if not t["network"] and t["light"]]
    assert after != before


def test_an_isolation_level_asked_for_fails_closed_when_unavailable(run):
    """isolation="bwrap" without a working bwrap raises RunnerUnavailable instead of running weaker."""
    runner.configure(isolation="bwrap", bwrap_path="/nonexistent/bwrap")
    try:
        with pytest.raises(runner.RunnerUnavailable):
            run("def f():\n    return 1\n")
    finally:
        runner.configure(isolation=os.environ.get("RUNNER_TEST_ISOLATION", "auto"), bwrap_path="/usr/bin/bwrap")


def test_auto_isolation_falls_back_and_says_why(run):
    """With bwrap missing, "auto" still runs, at a lower level, and the report names the reason."""
    runner.configure(isolation="auto", bwrap_path="/nonexistent/bwrap")
    try:
        assert run("def f():\n    return 1\n").value == 1
        report = runner.isolation_report()
        assert report["level"] != "bwrap"
        assert "/nonexistent/bwrap not found" in report["levels_tried"]["bwrap"]
    finally:
        runner.configure(isolation=os.environ.get("RUNNER_TEST_ISOLATION", "auto"), bwrap_path="/usr/bin/bwrap")


def test_a_run_sees_only_its_own_processes_and_writes_only_its_own_tmpfs(run, isolated):
    """/proc lists only the run's own processes; only its own /tmp and /dev/shm are writable, and
    what it leaves there is gone for the next run."""
    source = """
import os
def f():
    written = []
    for folder in ["/tmp", "/tmp/runs", "/dev/shm", "/", "/usr", "/proc/sys/kernel"]:
        try:
            with open(os.path.join(folder, "omlweb-escape"), "w") as out:
                out.write("x")
            written.append(folder)
        except OSError:
            pass
    return {"pids": sorted(p for p in os.listdir("/proc") if p.isdigit()), "written": written}
"""
    result = run(source)
    assert result.succeeded, result.error_message + result.stderr
    if isolated["run_pid_namespace"]:
        assert result.value["pids"] == ["1"]
    assert result.value["written"] == ["/tmp", "/dev/shm"]
    assert not os.path.exists("/tmp/omlweb-escape")
    assert not os.path.exists("/dev/shm/omlweb-escape")
    after = run("import os\ndef f():\n    return os.listdir('/tmp') + os.listdir('/dev/shm')\n")
    assert after.succeeded, after.error_message + after.stderr
    assert "omlweb-escape" not in after.value


ENV_PROBE = """
import os
def f():
    before = dict(os.environ)
    os.environ["LEAKED_BY_A_RUN"] = "1"
    os.putenv("LEAKED_BY_PUTENV", "1")
    os.environ["PATH"] = "/nowhere"
    return before
"""


@pytest.mark.parametrize("graphics", [False, True], ids=["light", "preloaded"])
def test_the_run_environment_is_exactly_the_allow_list_and_nothing_of_the_last_run(run, isolated, graphics):
    """The child changes only what differs from the template's environment instead of rebuilding
    it: the result must still be exactly the allow-list plus the run's own folders, from either
    template, and what one run sets is not in the next."""
    from scripts_app.runner.templates import base_env

    first = run(ENV_PROBE, graphics=graphics)
    second = run(ENV_PROBE, graphics=graphics)
    for result in (first, second):
        assert result.succeeded, result.error_message + result.stderr
        workdir = result.value["HOME"]
        expected = {**base_env(), "HOME": workdir, "TMPDIR": workdir, "MPLCONFIGDIR": f"{workdir}/.matplotlib"}
        assert result.value == expected


FD_PROBE = """
import os
def f():
    # The listing's own descriptor is closed by the time each entry is checked.
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))
"""


@pytest.mark.parametrize("graphics", [False, True], ids=["light", "preloaded"])
def test_a_run_holds_only_its_stdin_stdout_stderr_and_result_descriptors(run, isolated, graphics):
    """Every descriptor of the template (its control socket, its cgroup folders, the spare's own
    socket, the job pipe) is closed before the user's code runs, in several runs in a row."""
    for _ in range(3):
        result = run(FD_PROBE, graphics=graphics)
        assert result.succeeded, result.error_message + result.stderr
        assert result.value == [0, 1, 2, 3]
