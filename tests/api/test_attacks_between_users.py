"""One user's hostile run, through do-eval, leaves nothing another user's run can see or suffer from:
each attack is followed by bob's run, which must succeed untouched (docs/runner.md)."""

from __future__ import annotations

import json

import pytest

from scripts_app import runner
from scripts_app.models import Run
from scripts_app.runner import syscalls
from tests.factories import make_script
from tests.runner.helpers import bound_back_in_tmp

IPC_KEY = 0x0E1E5EEE

LEAVES_TRACES = """
import ctypes, errno, os
def attack(key, nr):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.shmat.restype = ctypes.c_void_p
    shmid = libc.shmget(key, 1 << 20, 0o1666)
    ctypes.memmove(libc.shmat(shmid, None, 0), b"alice's secret", 14)
    libc.semget(key, 1, 0o1666)
    libc.msgget(key, 0o1666)
    for path in ("/tmp/alice-was-here", "/dev/shm/alice-was-here"):
        with open(path, "w") as out:
            out.write("alice's secret")
    def call(name, *args):
        result = libc.syscall(nr[name], *[ctypes.c_long(a) for a in args])
        return errno.errorcode.get(ctypes.get_errno(), "?") if result < 0 else "allowed"
    return {
        "shm": shmid >= 0,
        "keyctl": call("keyctl", 0, -3, 1),
        "unshare(NEWUSER)": call("unshare", 0x10000000),
    }
"""

LOOKS_FOR_TRACES = """
import ctypes, os
def look(key):
    libc = ctypes.CDLL(None, use_errno=True)
    return {
        "ipc": [libc.shmget(key, 0, 0), libc.semget(key, 0, 0), libc.msgget(key, 0, 0)],
        "files": sorted(os.listdir("/tmp") + os.listdir("/dev/shm")),
    }
"""


def _numbers(*names: str) -> dict[str, int]:
    seccomp = syscalls._bindings()
    return {name: seccomp.resolve_syscall(seccomp.system_arch(), name) for name in names}


@pytest.fixture
def isolated():
    report = runner.isolation_report()
    if report["level"] == "process":
        pytest.skip(f"the process level shares IPC, /tmp and the keyring between runs: {report['levels_tried']}")
    return report


def test_ipc_files_and_keyring_of_one_user_are_invisible_to_the_next(alice, alice_api, bob, bob_api, isolated):
    """alice's run leaves SysV IPC and files in /tmp and /dev/shm and is refused the keyring and a user
    namespace; bob's next run finds nothing of hers."""
    make_script(alice, "attack", LEAVES_TRACES)
    parameters = {"key": IPC_KEY, "nr": _numbers("keyctl", "unshare")}
    response = alice_api.post(
        "/oml/api/py-scripts/v1/do-eval/attack", {"parameters": json.dumps(parameters)}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["result"] == {"shm": True, "keyctl": "EPERM", "unshare(NEWUSER)": "EPERM"}

    make_script(bob, "look", LOOKS_FOR_TRACES)
    response = bob_api.post(
        "/oml/api/py-scripts/v1/do-eval/look", {"parameters": json.dumps({"key": IPC_KEY})}, format="json"
    )
    assert response.status_code == 200, response.json()
    found = response.json()["result"]
    assert set(found) == {"ipc", "files"}
    assert found["ipc"] == [-1, -1, -1]
    assert set(found["files"]) - bound_back_in_tmp() == set()
    assert Run.objects.get(script_name="look").status == Run.Status.SUCCEEDED


HOARDS_MEMFD = """
import os
def attack():
    fd = os.memfd_create("hoard")
    chunk = b"x" * (1 << 20)
    for _ in range(3 * 1024):
        os.write(fd, chunk)
    return "held 3 GB"
"""


def test_memory_held_in_a_memfd_is_a_memory_limit_error(alice, alice_api, bob, bob_api, isolated, settings):
    """3 GB written to a memfd (no address space at all) with a 512 MB limit: OML's memory error code,
    the run FAILED, and bob's run right after succeeds."""
    if not isolated["memory"].startswith("cgroup"):
        pytest.skip(f"no memory cgroup here: {isolated.get('memory_note')}")
    settings.OMLWEB_RUN_MEMORY_MB = 512
    settings.OMLWEB_RUN_MAX_FILE_MB = 4096
    settings.OMLWEB_RUN_WALL_SECONDS = 60.0
    make_script(alice, "attack", HOARDS_MEMFD)
    response = alice_api.post("/oml/api/py-scripts/v1/do-eval/attack", {}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["errorCode"] == 1033, body
    assert "Memory limit of 512 MB reached" in body["errorMessage"]
    run = Run.objects.get(script_name="attack")
    assert run.status == Run.Status.FAILED

    make_script(bob, "healthy", "def healthy():\n    return 'untouched'\n")
    response = bob_api.post("/oml/api/py-scripts/v1/do-eval/healthy", {}, format="json")
    assert response.json() == {"result": "untouched"}
    assert Run.objects.get(script_name="healthy").status == Run.Status.SUCCEEDED


def test_the_status_endpoint_shows_the_memory_mechanism_and_the_filter(admin_api, isolated):
    """GET /oml/api/admin/status says under "isolation" what bounds memory and whether seccomp is on."""
    response = admin_api.get("/oml/api/admin/status")
    assert response.status_code == 200
    isolation = response.json()["isolation"]
    assert isolation["seccomp"] == "on"
    assert isolation["user_namespaces"] == "denied (seccomp)"
    assert isolation["memory"] == isolated["memory"]
