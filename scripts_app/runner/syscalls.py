"""The seccomp filter of every run at the bwrap and unshare levels (docs/runner.md, "System calls").

Compiled here, in the service's process, with libseccomp (through `pyseccomp`, or libseccomp's own
`seccomp` bindings when installed), exported as a raw BPF program and handed to the template, whose
spare children load it with one prctl(). So the run's interpreter, which may be an environment's
venv without pyseccomp, needs nothing but ctypes, and the filter costs no time when a run arrives.

Default action: allow. A data script needs none of the calls below; each is denied with an errno
(not a kill), so a library that probes for a feature sees it unsupported and goes on.
"""

from __future__ import annotations

import errno
import functools
import logging
import tempfile

logger = logging.getLogger("scripts_app.runner")

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (
    CLONE_NEWNS,
    CLONE_NEWCGROUP,
    CLONE_NEWUTS,
    CLONE_NEWIPC,
    CLONE_NEWUSER,
    CLONE_NEWPID,
    CLONE_NEWNET,
)

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
NETLINK_ROUTE = 0
ALLOWED_FAMILIES = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)

# (system calls, errno the run sees, why a data script never needs them). docs/runner.md shows this table.
DENIED: tuple[tuple[tuple[str, ...], int, str], ...] = (
    (("add_key", "keyctl", "request_key"), errno.EPERM, "the kernel keyring is shared by the whole host"),
    (("unshare", "setns"), errno.EPERM, "new or other namespaces: a user namespace gives back every capability"),
    (("clone3",), errno.ENOSYS, "its flags sit in memory a filter cannot read; libc falls back to clone()"),
    (
        (
            "mount",
            "umount2",
            "pivot_root",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
        ),
        errno.EPERM,
        "changing the mount tree",
    ),
    (("ptrace", "process_vm_readv", "process_vm_writev"), errno.EPERM, "reading or changing another process"),
    (("bpf",), errno.EPERM, "kernel programs: a large attack surface"),
    (("perf_event_open",), errno.EPERM, "performance counters: side channels and kernel attack surface"),
    (("userfaultfd",), errno.EPERM, "a classic tool to widen kernel race windows in exploits"),
    (
        ("io_uring_setup", "io_uring_enter", "io_uring_register"),
        errno.EPERM,
        "io_uring bypasses this filter and has had many kernel bugs",
    ),
    (("kexec_load", "kexec_file_load"), errno.EPERM, "loading a new kernel"),
    (("init_module", "finit_module", "delete_module"), errno.EPERM, "kernel modules"),
)
# Also denied: clone() with any namespace flag (EPERM); socket()/socketpair() of a family other than
# AF_UNIX, AF_INET, AF_INET6 (EAFNOSUPPORT), and AF_NETLINK other than NETLINK_ROUTE (EPROTONOSUPPORT):
# glibc's getaddrinfo() and getifaddrs() read the interfaces over NETLINK_ROUTE, which shows only the
# run's own loopback; AF_PACKET, AF_VSOCK, AF_ALG, AF_BLUETOOTH and the rest have no use in a data
# script and a long kernel bug history. Without a memory cgroup, memfd_create (ENOSYS) too: its pages
# would count against no limit.
MEMFD = (("memfd_create",), errno.ENOSYS, "without a memory cgroup its pages would count against no limit")


def _bindings():
    try:
        import seccomp  # libseccomp's own bindings, where the system has them
    except ImportError:
        import pyseccomp as seccomp  # ctypes over the system's libseccomp, the same API
    return seccomp


@functools.cache
def compiled(*, deny_memfd: bool) -> tuple[bytes | None, str]:
    """The filter as a BPF program, or None and the reason it cannot be had."""
    try:
        seccomp = _bindings()
    except Exception as exc:  # noqa: BLE001 - pyseccomp raises RuntimeError at import without libseccomp.so.2
        return None, f"libseccomp bindings unavailable: {type(exc).__name__}: {exc}"
    try:
        program = _build(seccomp, deny_memfd=deny_memfd)
    except Exception as exc:  # noqa: BLE001 - any failure means no filter, said in the report
        logger.warning("runner seccomp filter could not be built: %s", exc)
        return None, f"the seccomp filter could not be built: {exc}"
    return program, "on"


def _build(seccomp, *, deny_memfd: bool) -> bytes:
    native = seccomp.system_arch()
    filt = seccomp.SyscallFilter(seccomp.ALLOW)

    def deny(name: str, code: int, *args) -> None:
        # A call this libseccomp does not know on this architecture has nothing to deny.
        if seccomp.resolve_syscall(native, name) < 0:
            logger.info("runner seccomp: %s unknown to libseccomp here; not filtered", name)
            return
        filt.add_rule(seccomp.ERRNO(code), name, *args)

    for names, code, _ in (*DENIED, *((MEMFD,) if deny_memfd else ())):
        for name in names:
            deny(name, code)
    for flag in NAMESPACE_FLAGS:
        deny("clone", errno.EPERM, seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    for call in ("socket", "socketpair"):
        # Every family below the highest allowed one that is not allowed, then all above it (as a
        # 64-bit value, so a family with bits set above 32 is refused too): a short program.
        for family in range(max(ALLOWED_FAMILIES)):
            if family not in ALLOWED_FAMILIES:
                deny(call, errno.EAFNOSUPPORT, seccomp.Arg(0, seccomp.EQ, family))
        deny(call, errno.EAFNOSUPPORT, seccomp.Arg(0, seccomp.GT, max(ALLOWED_FAMILIES)))
        deny(
            call,
            errno.EPROTONOSUPPORT,
            seccomp.Arg(0, seccomp.EQ, AF_NETLINK),
            seccomp.Arg(2, seccomp.NE, NETLINK_ROUTE),
        )
    with tempfile.TemporaryFile() as out:
        filt.export_bpf(out)
        out.seek(0)
        return out.read()
