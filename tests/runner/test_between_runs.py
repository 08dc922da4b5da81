"""Nothing is shared between runs: each attack of one run is followed by another user's run, which
must succeed untouched (docs/runner.md, "Isolation levels"). Zygote mode: the cold path is the
process level, which promises none of this."""

from __future__ import annotations

import os
import threading
import time

import pytest

from scripts_app import runner
from scripts_app.runner import Failure, Limits, Outcome, syscalls
from scripts_app.runner.harness import SPARES
from scripts_app.runner.templates import registry

from .helpers import assert_runner_still_works, bound_back_in_tmp, make_job

IPC_KEY = 0x0E1E5EED
PORT = 47231


def _syscall_numbers(*names: str) -> dict[str, int]:
    seccomp = syscalls._bindings()
    arch = seccomp.system_arch()
    return {name: seccomp.resolve_syscall(arch, name) for name in names}


def _template_pid(light: bool = True) -> int:
    [pid] = [t["pid"] for t in runner.isolation_report()["templates"] if not t["network"] and t["light"] is light]
    return pid


@pytest.fixture
def cgroup(isolated):
    report = runner.isolation_report()
    if not report["memory"].startswith("cgroup"):
        pytest.skip(f"no memory cgroup here: {report.get('memory_note')}")
    return report["memory"]


@pytest.fixture
def settings_restored():
    """Settings a test changes go back to the defaults after it (templates restart either way)."""
    yield runner.configure
    runner.configure(sandbox_tmp_bytes=512 * 1024**2, cgroups=True)


IPC_LEFT_BEHIND = """
import ctypes
def f(key):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    shmid = libc.shmget(key, 1 << 20, 0o1666)
    ctypes.memmove(libc.shmat(shmid, None, 0), b"secret of alice", 15)
    return [shmid, libc.semget(key, 1, 0o1666), libc.msgget(key, 0o1666)]
"""

IPC_LOOKED_FOR = """
import ctypes
def f(key):
    libc = ctypes.CDLL(None, use_errno=True)
    found = [libc.shmget(key, 0, 0), libc.semget(key, 0, 0), libc.msgget(key, 0, 0)]
    return {"found": found, "listed": open("/proc/sysvipc/shm").read().count("\\n") - 1}
"""


def test_sysv_ipc_left_by_a_run_is_gone_for_the_next(isolated):
    """A SysV shared memory segment, semaphore and message queue a run leaves die with its IPC
    namespace: the next run, and the host, see none of them."""
    left = runner.run(make_job(IPC_LEFT_BEHIND, kwargs={"key": IPC_KEY}))
    assert left.succeeded, left.error_message + left.stderr
    assert all(ipc_id >= 0 for ipc_id in left.value), left.value
    after = runner.run(make_job(IPC_LOOKED_FOR, kwargs={"key": IPC_KEY}))
    assert after.succeeded, after.error_message + after.stderr
    assert after.value == {"found": [-1, -1, -1], "listed": 0}
    with open("/proc/sysvipc/shm") as host:
        assert f"{IPC_KEY:10d}" not in host.read()


HOLDER = """
import ctypes, os, socket, time
def f(port, key, hold):
    libc = ctypes.CDLL(None, use_errno=True)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", port))
    tcp.listen()
    tcp.settimeout(0.05)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\\0omlweb-between-runs")
    abstract.listen()
    abstract.settimeout(0.05)
    for path in ("/tmp/omlweb-run-a", "/dev/shm/omlweb-run-a"):
        with open(path, "w") as out:
            out.write("alice")
    libc.shmget(key, 4096, 0o1666)
    bound_at = time.time()
    accepted = []
    while time.time() < bound_at + hold:
        for sock in (tcp, abstract):
            try:
                sock.accept()[0].close()
                accepted.append(str(sock.family))
            except OSError:
                pass
    return {"from": bound_at, "to": time.time(), "accepted": accepted}
"""

PROBER = """
import ctypes, os, socket, time
def f(port, key, window):
    libc = ctypes.CDLL(None, use_errno=True)
    seen = set()
    start = time.time()
    while time.time() < start + window:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            seen.add("tcp")
        except OSError:
            pass
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(0.2)
            sock.connect("\\0omlweb-between-runs")
            seen.add("abstract")
        except OSError:
            pass
        for path in ("/tmp/omlweb-run-a", "/dev/shm/omlweb-run-a"):
            if os.path.exists(path):
                seen.add(path)
        if libc.shmget(key, 0, 0) >= 0:
            seen.add("shm")
        time.sleep(0.05)
    squat = socket.socket()
    squat.bind(("127.0.0.1", port))
    squat.listen()
    return {"from": start, "to": time.time(), "seen": sorted(seen), "squatted": True}
"""


def test_concurrent_runs_cannot_reach_each_other(isolated):
    """While run A listens on loopback TCP and an abstract unix socket, and holds files in /tmp and
    /dev/shm and a SysV segment, a concurrent run B of the same template finds none of them, and can
    bind A's port itself: each run has its own network, IPC and mount namespaces."""
    results = {}
    limits = Limits(wall_seconds=20, cpu_seconds=20)

    def holder():
        results["a"] = runner.run(make_job(HOLDER, kwargs={"port": PORT, "key": IPC_KEY, "hold": 6}, limits=limits))

    thread = threading.Thread(target=holder)
    thread.start()
    time.sleep(1.5)
    results["b"] = runner.run(make_job(PROBER, kwargs={"port": PORT, "key": IPC_KEY, "window": 3}, limits=limits))
    thread.join(30)
    a, b = results["a"], results["b"]
    assert a.succeeded, a.error_message + a.stderr
    assert b.succeeded, b.error_message + b.stderr
    # The premise: B probed while A held everything.
    assert a.value["from"] < b.value["to"], (a.value, b.value)
    assert b.value["from"] < a.value["to"], (a.value, b.value)
    assert b.value["seen"] == []
    assert b.value["squatted"] is True
    assert a.value["accepted"] == []
    assert_runner_still_works()


def test_filling_tmp_or_dev_shm_hits_a_clear_limit(isolated, settings_restored):
    """Each run's /tmp and /dev/shm are sized: filling either ends the run with FILE_TOO_LARGE and
    a message naming the limit; the next run has them empty again."""
    settings_restored(sandbox_tmp_bytes=32 * 1024**2)
    for folder in ("/tmp", "/dev/shm"):
        source = f"""
def f():
    for n in range(8):  # 64 MB in files under the size limit of one file
        with open(f"{folder}/fill-{{n}}", "wb") as out:
            for _ in range(8):
                out.write(b"x" * (1 << 20))
                out.flush()
"""
        result = runner.run(make_job(source))
        assert result.outcome is Outcome.FAILED
        assert result.failure is Failure.FILE_TOO_LARGE, result.error_message
        assert "/tmp and /dev/shm are limited to 32 MB each and are full" in result.error_message
        empty = runner.run(make_job("import os\ndef f():\n    return os.listdir('/tmp') + os.listdir('/dev/shm')\n"))
        assert set(empty.value) - bound_back_in_tmp() == set()


NAMESPACE_ATTEMPTS = """
import ctypes, errno, os, subprocess
def f(nr):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def call(name, *args):
        result = libc.syscall(nr[name], *[ctypes.c_long(a) for a in args])
        if result == 0 and name == "clone":
            os._exit(0)  # a child that should never have been
        return errno.errorcode.get(ctypes.get_errno(), "?") if result < 0 else "allowed"
    CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17
    out = {
        "unshare(NEWUSER)": call("unshare", CLONE_NEWUSER),
        "unshare(NEWNET)": call("unshare", CLONE_NEWNET),
        "clone(NEWUSER)": call("clone", CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
        "clone3": call("clone3", 0, 0),
        "setns": call("setns", -1, 0),
    }
    if hasattr(os, "unshare"):
        try:
            os.unshare(os.CLONE_NEWUSER)
            out["os.unshare"] = "allowed"
        except OSError as exc:
            out["os.unshare"] = errno.errorcode[exc.errno]
    unshare_tool = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True)
    out["unshare --user"] = unshare_tool.returncode
    status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
    out["CapEff"] = status["CapEff"].strip()
    out["Seccomp"] = status["Seccomp"].strip()
    return out
"""


def test_a_run_cannot_create_a_user_namespace_or_any_namespace(isolated):
    """unshare(), clone() with namespace flags and setns() fail with EPERM, clone3 with ENOSYS (so libc
    falls back to clone), the unshare tool fails, and the run holds no capability."""
    nr = _syscall_numbers("unshare", "clone", "clone3", "setns")
    result = runner.run(make_job(NAMESPACE_ATTEMPTS, kwargs={"nr": nr}))
    assert result.succeeded, result.error_message + result.stderr
    value = result.value
    assert value["unshare(NEWUSER)"] == "EPERM"
    assert value["unshare(NEWNET)"] == "EPERM"
    assert value["clone(NEWUSER)"] == "EPERM"
    assert value["clone3"] == "ENOSYS"
    assert value["setns"] == "EPERM"
    assert value.get("os.unshare", "EPERM") == "EPERM"
    assert value["unshare --user"] != 0
    assert value["CapEff"] == "0000000000000000"
    assert value["Seccomp"] == "2"
    assert_runner_still_works()


DENIED_CALLS = """
import ctypes, errno
def f(nr):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def call(name, *args):
        result = libc.syscall(nr[name], *[ctypes.c_long(a) for a in args])
        return errno.errorcode.get(ctypes.get_errno(), "?") if result < 0 else "allowed"
    KEY_SPEC_SESSION_KEYRING, KEYCTL_GET_KEYRING_ID, PTRACE_TRACEME = -3, 0, 0
    return {
        "keyctl": call("keyctl", KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1),
        "add_key": call("add_key", 0, 0, 0, 0, KEY_SPEC_SESSION_KEYRING),
        "request_key": call("request_key", 0, 0, 0, 0),
        "ptrace": call("ptrace", PTRACE_TRACEME, 0, 0, 0),
        "bpf": call("bpf", 0, 0, 0),
        "perf_event_open": call("perf_event_open", 0, 0, -1, -1, 0),
        "userfaultfd": call("userfaultfd", 0),
        "io_uring_setup": call("io_uring_setup", 1, 0),
        "mount": call("mount", 0, 0, 0, 0, 0),
        "umount2": call("umount2", 0, 0),
        "pivot_root": call("pivot_root", 0, 0),
        "init_module": call("init_module", 0, 0, 0),
        "kexec_load": call("kexec_load", 0, 0, 0, 0),
    }
"""


def test_keyring_ptrace_bpf_mount_and_friends_are_denied(isolated):
    """The kernel keyring, ptrace, bpf, perf, userfaultfd, io_uring, mount and kernel modules all
    fail with EPERM from the run's seccomp filter (keyctl and ptrace(TRACEME) would succeed without)."""
    names = ("keyctl", "add_key", "request_key", "ptrace", "bpf", "perf_event_open", "userfaultfd")
    names += ("io_uring_setup", "mount", "umount2", "pivot_root", "init_module", "kexec_load")
    result = runner.run(make_job(DENIED_CALLS, kwargs={"nr": _syscall_numbers(*names)}))
    assert result.succeeded, result.error_message + result.stderr
    assert result.value == dict.fromkeys(names, "EPERM")
    assert_runner_still_works()


SOCKETS = """
import ctypes, errno, socket
def f(nr_socket):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def open_socket(family, kind=socket.SOCK_STREAM, proto=0):
        try:
            socket.socket(family, kind, proto).close()
            return "allowed"
        except OSError as exc:
            return errno.errorcode[exc.errno]
    raw = libc.syscall(nr_socket, ctypes.c_long((1 << 32) | 40), ctypes.c_long(1), ctypes.c_long(0))
    return {
        "vsock": open_socket(40),
        "packet": open_socket(17, socket.SOCK_RAW),
        "alg": open_socket(38, socket.SOCK_SEQPACKET),
        "netlink_audit": open_socket(16, socket.SOCK_RAW, 9),
        "vsock_high_bits": errno.errorcode[ctypes.get_errno()] if raw < 0 else "allowed",
        "unix": open_socket(socket.AF_UNIX),
        "inet": open_socket(socket.AF_INET),
        "inet6": open_socket(socket.AF_INET6),
        "netlink_route": open_socket(16, socket.SOCK_RAW, 0),
        "interfaces": [name for _, name in socket.if_nameindex()],
    }
"""


def test_only_unix_inet_and_route_netlink_sockets_can_be_opened(isolated):
    """AF_VSOCK, AF_PACKET, AF_ALG and netlink other than NETLINK_ROUTE fail, even with a family
    smuggled in the upper bits; the run sees only its own loopback."""
    result = runner.run(make_job(SOCKETS, kwargs={"nr_socket": _syscall_numbers("socket")["socket"]}))
    assert result.succeeded, result.error_message + result.stderr
    value = result.value
    for denied in ("vsock", "packet", "alg", "vsock_high_bits"):
        assert value[denied] == "EAFNOSUPPORT", (denied, value)
    assert value["netlink_audit"] == "EPROTONOSUPPORT"
    for allowed in ("unix", "inet", "inet6", "netlink_route"):
        assert value[allowed] == "allowed", (allowed, value)
    assert value["interfaces"] == ["lo"]
    assert_runner_still_works()


LIBRARIES = """
import io, multiprocessing, subprocess, threading
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq
import matplotlib.pyplot as plt

def square(x):
    return x * x

def f():
    with multiprocessing.get_context("fork").Pool(2) as pool:
        squares = pool.map(square, range(5))
    queue = multiprocessing.Queue()
    queue.put("through a queue")
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    frame = pd.DataFrame({"a": np.arange(5), "b": list("abcde")})
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame), buffer)
    back = pq.read_table(io.BytesIO(buffer.getvalue())).to_pandas()
    plt.plot(frame["a"], frame["a"] ** 2)
    plt.title("under seccomp")
    return {
        "squares": squares,
        "queue": queue.get(timeout=5),
        "echo": subprocess.run(["echo", "spawned"], capture_output=True, text=True).stdout.strip(),
        "parquet": back["b"].tolist(),
    }
"""


def test_data_libraries_and_multiprocessing_work_under_the_filter(isolated):
    """numpy, pandas, pyarrow, matplotlib, threads, a multiprocessing pool and queue, and a
    subprocess all work in a run under the seccomp filter (glibc falls back from clone3 to clone)."""
    result = runner.run(make_job(LIBRARIES, graphics=True, limits=Limits(wall_seconds=30, cpu_seconds=20)))
    assert result.succeeded, result.error_message + result.stderr
    assert result.value == {
        "squares": [0, 1, 4, 9, 16],
        "queue": "through a queue",
        "echo": "spawned",
        "parquet": list("abcde"),
    }
    assert [figure.title for figure in result.figures] == ["under seccomp"]


HOLD_MEMORY = {
    "sysv-shm": """
import ctypes
def f():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    segment = 128 << 20
    for _ in range(24):  # 3 GB, attached one segment at a time so that address space stays small
        shmid = libc.shmget(0, segment, 0o1600)
        if shmid < 0:
            raise OSError(ctypes.get_errno(), "shmget")
        address = libc.shmat(shmid, None, 0)
        ctypes.memset(address, 1, segment)
        libc.shmdt(ctypes.c_void_p(address))
    return "held 3 GB"
""",
    "memfd": """
import os
def f():
    fd = os.memfd_create("hoard")
    chunk = b"x" * (1 << 20)
    for _ in range(3 * 1024):
        os.write(fd, chunk)
    return "held 3 GB"
""",
    "tmpfs": """
def f():
    chunk = b"x" * (1 << 20)
    with open("/tmp/hoard", "wb") as out:
        for _ in range(3 * 1024):
            out.write(chunk)
    return "held 3 GB"
""",
    "dev-shm": """
def f():
    chunk = b"x" * (1 << 20)
    with open("/dev/shm/hoard", "wb") as out:
        for _ in range(3 * 1024):
            out.write(chunk)
    return "held 3 GB"
""",
}


@pytest.mark.parametrize("kind", list(HOLD_MEMORY))
def test_memory_held_outside_the_address_space_counts_against_the_limit(cgroup, settings_restored, kind):
    """3 GB held in SysV shm, a memfd, /tmp or /dev/shm with a 512 MB limit: the run's memory cgroup
    ends it as MEMORY_LIMIT, the template survives, and another run then succeeds."""
    # /tmp and /dev/shm larger than the limit: the memory cgroup, not the tmpfs size, must stop it.
    settings_restored(sandbox_tmp_bytes=4 * 1024**3)
    assert_runner_still_works()
    template = _template_pid()
    limits = Limits(wall_seconds=60, cpu_seconds=30, memory_bytes=512 * 1024**2, max_file_bytes=4 * 1024**3)
    result = runner.run(make_job(HOLD_MEMORY[kind], limits=limits))
    assert result.outcome is Outcome.FAILED, (result.outcome, result.value)
    assert result.failure is Failure.MEMORY_LIMIT, result.error_message + result.stderr
    assert "Memory limit of 512 MB reached" in result.error_message
    assert_runner_still_works()
    assert _template_pid() == template


def test_without_a_cgroup_shared_memory_and_memfd_are_still_bounded(isolated, settings_restored):
    """With cgroups turned off, SysV shm is bounded by the run's IPC namespace limits and memfd_create
    is denied, and the report says which mechanism bounds memory."""
    settings_restored(cgroups=False, sandbox_tmp_bytes=64 * 1024**2)
    assert_runner_still_works()
    report = runner.isolation_report()
    assert report["memory"] == "rlimit-as+tmpfs-size+ipc-shm-limits+memfd-denied"
    source = """
import ctypes, errno, os
def f():
    libc = ctypes.CDLL(None, use_errno=True)
    big = libc.shmget(0, 128 << 20, 0o1600)
    big_error = errno.errorcode[ctypes.get_errno()] if big < 0 else "allowed"
    segments = 0
    for _ in range(8):
        if libc.shmget(0, 16 << 20, 0o1600) < 0:
            break
        segments += 1
    try:
        os.memfd_create("x")
        memfd = "allowed"
    except OSError as exc:
        memfd = errno.errorcode[exc.errno]
    return {"big": big_error, "segments": segments, "memfd": memfd}
"""
    result = runner.run(make_job(source))
    assert result.succeeded, result.error_message + result.stderr
    # shmmax and shmall are the size of /tmp (64 MB): one 128 MB segment or a fifth 16 MB one fail.
    assert result.value == {"big": "EINVAL", "segments": 4, "memfd": "ENOSYS"}
    assert_runner_still_works()


def test_a_million_files_left_behind_do_not_stall_the_template(isolated):
    """A run that leaves a million files in /tmp: the next run of another user succeeds from the same
    template, which never deletes them itself (the kernel frees the run's tmpfs in the run's exit)."""
    assert_runner_still_works()
    template = _template_pid()
    source = """
import os
def f():
    for i in range(1_000_000):
        os.close(os.open(f"/tmp/{i}", os.O_CREAT | os.O_WRONLY, 0o600))
    return len(os.listdir("/tmp"))
"""
    left = runner.run(make_job(source, limits=Limits(wall_seconds=120, cpu_seconds=100)))
    assert left.succeeded, left.error_message + left.stderr
    assert left.value == 1_000_000 + len(bound_back_in_tmp())
    assert_runner_still_works()
    assert _template_pid() == template


def test_the_report_says_what_bounds_memory_and_that_the_filter_is_on(isolated):
    report = runner.isolation_report()
    assert report["seccomp"] == "on"
    assert report["user_namespaces"] == "denied (seccomp)"
    assert report["memory"] in ("cgroup-v1", "cgroup-v2", "rlimit-as+tmpfs-size+ipc-shm-limits+memfd-denied")
    assert set(report["per_run_namespaces"]) == {"pid", "ipc", "net", "mount"}


def test_without_seccomp_auto_says_so_and_an_explicit_level_fails_closed(isolated, monkeypatch, settings_restored):
    """libseccomp missing: "auto" runs and reports the filter off with the reason; a level asked for
    by name refuses to run without it."""
    level = runner.isolation_report()["level"]
    monkeypatch.setattr(syscalls, "compiled", lambda **_: (None, "libseccomp bindings unavailable: test"))
    settings_restored(sandbox_tmp_bytes=256 * 1024**2)  # restarts the templates
    runner.configure(isolation="auto")
    try:
        assert_runner_still_works()
        report = runner.isolation_report()
        assert report["seccomp"] == "off: libseccomp bindings unavailable: test"
        assert report["user_namespaces"].startswith("allowed")
        runner.configure(isolation=level)
        with pytest.raises(runner.RunnerUnavailable, match="seccomp"):
            runner.run(make_job("def f():\n    return 1\n"))
    finally:
        monkeypatch.undo()
        runner.configure(isolation=os.environ.get("RUNNER_TEST_ISOLATION", "auto"))
    assert_runner_still_works()


def _eventually_gone(paths: list[str], seconds: float = 15.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := [p for p in paths if os.path.exists(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_run_cgroups_are_removed_and_a_stopped_template_leaves_none(cgroup):
    """A run's cgroup is gone after it (only the waiting spare's is left), and stopping the templates
    removes their folders."""
    for _ in range(3):
        assert_runner_still_works()
    folders = [path for t in registry.templates.values() if t.cgroup_folders for path in t.cgroup_folders.paths]
    assert folders
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        runs = [name for path in folders for name in os.listdir(path) if name.startswith("run-")]
        if len(runs) <= SPARES * len(folders):  # the waiting spares, in each hierarchy
            break
        time.sleep(0.1)
    assert len(runs) <= SPARES * len(folders), runs
    runner.shutdown()
    assert _eventually_gone(folders) == []
    assert_runner_still_works()


# Network namespaces: the template keeps one a run left untouched (no socket, nothing sent on lo)
# for a later run (harness._NetNamespaces). Each attack below leaves something in its namespace;
# the runs after it, from both spares, must find a namespace as new.
NET_LEFT_BEHIND = """
import array, os, socket
def f(port, name):
    # A TCP connection over lo, closed: TIME_WAIT stays in the kernel after the run.
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    client = socket.create_connection(("127.0.0.1", port))
    peer, _ = server.accept()
    client.sendall(b"secret of alice")
    peer.recv(100)
    client.close(); peer.close(); server.close()
    # A datagram to a port nobody listens on, and one to itself.
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.sendto(b"x", ("127.0.0.1", port + 1))
    # An abstract Unix socket holding a descriptor of itself in flight: it outlives its process
    # until the kernel's garbage collector finds the cycle.
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unix.bind(name)
    unix.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [unix.fileno()]))], 0, name)
    # A listening socket left open in a grandchild that detached from the run's session.
    if os.fork() == 0:
        os.setsid()
        keep = socket.socket()
        keep.bind(("127.0.0.1", port + 2))
        keep.listen()
        os.write(1, b"")
        import time
        time.sleep(30)
    return os.stat("/proc/self/ns/net").st_ino
"""

NET_LOOKED_FOR = """
import os, socket
def f(port, name):
    seen = {}
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "unix"):
        with open(f"/proc/self/net/{table}") as listing:
            seen[table] = listing.read().splitlines()[1:]
    with open("/proc/self/net/dev") as devices:
        seen["dev"] = [line.split() for line in devices.read().splitlines()[2:]]
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        unix.sendto(b"hello", name)
        seen["abstract_reached"] = True
    except OSError:
        seen["abstract_reached"] = False
    bound = []
    for offset in (0, 2):
        server = socket.socket()
        server.bind(("127.0.0.1", port + offset))  # no SO_REUSEADDR: TIME_WAIT or a listener would refuse it
        bound.append(port + offset)
        server.close()
    seen["bound"] = bound
    seen["ns"] = os.stat("/proc/self/ns/net").st_ino
    return seen
"""


def _template_net_namespaces() -> set[int]:
    """The network namespace of each running template's own process (not of its spares)."""
    found = set()
    for template in registry.templates.values():
        assert template.process is not None
        pid = template.process.pid
        # bwrap, then bwrap's PID 1 in the sandbox, then the template: the first that is no bwrap.
        while True:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if not cmdline.read().split(b"\0")[0].endswith(b"bwrap"):
                    break
            with open(f"/proc/{pid}/task/{pid}/children") as children:
                pid = int(children.read().split()[0])
        found.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
    return found


@pytest.mark.parametrize("graphics", [False, True], ids=["light", "preloaded"])
def test_a_network_namespace_a_run_used_is_never_handed_to_the_next(isolated, graphics):
    """Sockets in TIME_WAIT, traffic counters, an abstract Unix socket kept alive by a descriptor
    of itself in flight, a listener in a detached grandchild: none is seen by the runs after it."""
    name = f"\0omlweb-leak-{os.getpid()}"
    limits = Limits(wall_seconds=10)
    quiet = make_job(NET_LOOKED_FOR, kwargs={"port": PORT, "name": name}, graphics=graphics, limits=limits)
    every = []
    for _ in range(2):
        left = runner.run(
            make_job(NET_LEFT_BEHIND, kwargs={"port": PORT, "name": name}, graphics=graphics, limits=limits)
        )
        assert left.succeeded, left.error_message + left.stderr
        # Back to back, then concurrently: each spare in turn, and namespaces given back meanwhile.
        results = [runner.run(quiet) for _ in range(SPARES + 3)]
        threads = [threading.Thread(target=lambda into=results: into.append(runner.run(quiet))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for result in results:
            assert result.succeeded, result.error_message + result.stderr
            seen = result.value
            assert all(not seen[table] for table in ("tcp", "tcp6", "udp", "udp6", "raw", "unix")), seen
            assert [device[0] for device in seen["dev"]] == ["lo:"], seen
            assert all(value == "0" for value in seen["dev"][0][1:]), seen
            assert not seen["abstract_reached"], seen
            assert seen["bound"] == [PORT, PORT + 2], seen
        every += results
    templates = _template_net_namespaces()
    assert templates
    assert all(result.value["ns"] not in templates for result in every)


def test_untouched_network_namespaces_are_reused(isolated):
    """The saving is real: runs that open no socket go through a few namespaces, not one each."""
    [template] = [t for t in registry.templates.values() if not t.network and t.preload == ()] or [None]
    if template is None or not template.info.get("net_namespaces_kept"):
        pytest.skip("this template makes each run's network namespace in its spare")
    source = "import os\ndef f():\n    return os.stat('/proc/self/ns/net').st_ino\n"
    inodes = [runner.run(make_job(source)).value for _ in range(20)]
    # About SPARES + 3 in turn (the spares', the running one's, those kept); one each without reuse.
    assert len(set(inodes)) <= 10, inodes
