"""What isolation is active and why, for the status endpoint and the logs."""

from __future__ import annotations

from scripts_app.runner import config
from scripts_app.runner.templates import default_python, is_root, registry

PROTECTS = {
    "bwrap": [
        "service environment variables and secrets (rebuilt environment, no view of the service's processes)",
        "the service's files: only /usr, the interpreter and the run's own /tmp and /dev/shm are visible",
        "network access (own network namespace per run with only a loopback, unless the run has network)",
        "other runs: own uid per run (as root), own PID, IPC, network and mount namespaces, own /tmp and "
        "/dev/shm; no SysV IPC, loopback or abstract socket, port or file is shared between runs",
        "the kernel keyring, new namespaces (user namespaces included), mount, ptrace, bpf, perf, "
        "io_uring, userfaultfd, kernel modules and exotic socket families: denied by a seccomp filter",
        "memory of every kind (anonymous, tmpfs, SysV and POSIX shm, memfd) with a memory cgroup per run; "
        "without one, address space, sized tmpfs and IPC limits",
        "stray processes: the run's PID namespace dies with it; files it leaves die with its mount namespace",
    ],
    "unshare": [
        "service environment variables (rebuilt environment; the service's /proc is unreadable to the run's uid)",
        "the folders listed in data_dirs_to_hide (covered by an empty tmpfs) and files the run uid may not read",
        "network access (own network namespace per run with only a loopback, unless the run has network)",
        "other runs: own uid per run (when it can read the interpreter), own PID, IPC, network and mount "
        "namespaces, own /tmp and /dev/shm",
        "the kernel keyring, new namespaces (user namespaces included), mount, ptrace, bpf, perf, "
        "io_uring, userfaultfd, kernel modules and exotic socket families: denied by a seccomp filter",
        "memory of every kind with a memory cgroup per run; without one, address space, sized tmpfs and IPC limits",
        "stray processes (own PID namespace); files it leaves die with its mount namespace",
    ],
    "process": [
        "crashes and hangs of the run (separate process, rlimits, wall clock)",
        "secrets in the run's own environment (rebuilt from an allow-list)",
    ],
}

EXPOSED = {
    "bwrap": [
        "kernel bugs reachable through the system calls the seccomp filter allows",
        "runs with network on share the host's network namespace: they can reach each other over loopback",
    ],
    "unshare": [
        "every world-readable file of the host outside data_dirs_to_hide",
        "kernel bugs reachable through the system calls the seccomp filter allows",
        "runs with network on share the host's network namespace: they can reach each other over loopback",
    ],
    "process": [
        "the service's secrets: a run under the same uid can read /proc/<service pid>/environ",
        "the service's files, database and network",
        "processes left by a run that called setsid() are not killed",
        "RLIMIT_NPROC is not applied (same uid as the service)",
        "other runs: shared IPC, network, /tmp and kernel keyring; no seccomp filter; memory bounded only "
        "as address space",
    ],
}


def _mechanisms(level: str, templates: list) -> dict:
    """What bounds memory and processes, and whether the seccomp filter is on, as the templates found."""
    if level == "process" or not templates:
        return {
            "seccomp": "off (process level)" if level == "process" else "unknown (no template running)",
            "user_namespaces": "allowed (process level)" if level == "process" else "unknown",
            "memory": "rlimit-as",
            "processes": "rlimit-nproc",
            "per_run_namespaces": [],
        }
    template = templates[0]
    seccomp_on = template.uses_seccomp
    memory = template.memory_mechanism
    return {
        "seccomp": "on" if seccomp_on else f"off: {template.seccomp_state}",
        "user_namespaces": "denied (seccomp)" if seccomp_on else "allowed: no seccomp filter",
        "memory": memory,
        # Why there is no cgroup, when there is none.
        "memory_note": template.cgroup_note,
        "processes": f"{memory} pids.max" if memory.startswith("cgroup") else "rlimit-nproc+pid-namespace",
        "per_run_namespaces": [
            name
            for name, on in (
                ("pid", template.info.get("pid_namespace")),
                ("ipc", template.info.get("ipc_namespace")),
                ("net", template.info.get("net_namespace") and not template.network),
                ("mount", template.info.get("mount_namespace")),
            )
            if on
        ],
    }


def _template_summary(template) -> dict:
    return {
        "python": template.python,
        "network": template.network,
        "level": template.level,
        "pid": template.process.pid if template.process else None,
        "alive": template.alive(),
        "runs": template.runs,
        "started_at": template.started_at,
        "interpreter_version": template.info.get("version"),
        "light": not template.preload,
        "preloaded": template.info.get("preloaded", []),
        "run_uid": template.uses_run_uid,
        "run_pid_namespace": template.uses_pid_namespace,
        "seccomp": template.uses_seccomp,
        "memory": template.memory_mechanism,
    }


def warm_up(python: str | None = None) -> None:
    """Start the template of `python` (default: the service's interpreter) now rather than on first run."""
    settings = config.current()
    if settings.mode == "zygote":
        registry.get(python or default_python(), settings.network)
        if settings.light_template:
            registry.get(python or default_python(), settings.network, light=True)


def isolation_report() -> dict:
    """The isolation level in force, what it protects against, and why stronger levels are not used.

    Starts the default template when none is running yet, so the level reported is the one measured.
    """
    settings = config.current()
    error = None
    if settings.mode == "zygote" and registry.level is None:
        try:
            warm_up()
        except Exception as exc:  # noqa: BLE001 - a report must still be given
            error = str(exc)
    level = registry.level if settings.mode == "zygote" and registry.level else "process"
    with registry.lock:
        running = list(registry.templates.values())
    templates = [_template_summary(t) for t in running]
    return {
        "level": level,
        "mode": settings.mode if registry.level or settings.mode == "cold" else "cold",
        "requested": settings.isolation,
        "running_as_root": is_root(),
        "network": "on" if settings.network else "off",
        "levels_tried": dict(registry.levels_tried),
        "protects_against": PROTECTS[level],
        "does_not_protect_against": EXPOSED[level],
        **_mechanisms(level, [t for t in running if t.level == level]),
        "templates": templates,
        "max_concurrent": settings.max_concurrent,
        "error": error,
    }


def shutdown() -> None:
    """Stop every template of this process (tests, and a worker that is shutting down)."""
    registry.stop_all()
