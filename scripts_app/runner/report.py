"""What isolation is active and why, for the status endpoint and the logs."""

from __future__ import annotations

from scripts_app.runner import config
from scripts_app.runner.templates import default_python, is_root, registry

PROTECTS = {
    "bwrap": [
        "service environment variables and secrets (rebuilt environment, no view of the service's processes)",
        "the service's files: only /usr, the interpreter and the run's own directory are visible",
        "network access (own network namespace with only a loopback)",
        "other runs (own uid per run when the service runs as root; own PID namespace)",
        "stray processes: the run's PID namespace dies with it",
    ],
    "unshare": [
        "service environment variables (rebuilt environment; the service's /proc is unreadable to the run's uid)",
        "the folders listed in data_dirs_to_hide (covered by an empty tmpfs) and files the run uid may not read",
        "network access (own network namespace without interfaces)",
        "other runs (own uid per run) and stray processes (own PID namespace)",
    ],
    "process": [
        "crashes and hangs of the run (separate process, rlimits, wall clock)",
        "secrets in the run's own environment (rebuilt from an allow-list)",
    ],
}

EXPOSED = {
    "bwrap": [
        "the kernel: a kernel bug reachable from a user namespace-free sandbox is still reachable",
        "memory is bounded by address space (RLIMIT_AS), not by resident memory",
    ],
    "unshare": [
        "every world-readable file of the host outside data_dirs_to_hide",
        "memory is bounded by address space (RLIMIT_AS), not by resident memory",
    ],
    "process": [
        "the service's secrets: a run under the same uid can read /proc/<service pid>/environ",
        "the service's files, database and network",
        "processes left by a run that called setsid() are not killed",
        "RLIMIT_NPROC is not applied (same uid as the service)",
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
        templates = [_template_summary(t) for t in registry.templates.values()]
    return {
        "level": level,
        "mode": settings.mode if registry.level or settings.mode == "cold" else "cold",
        "requested": settings.isolation,
        "running_as_root": is_root(),
        "network": "on" if settings.network else "off",
        "levels_tried": dict(registry.levels_tried),
        "protects_against": PROTECTS[level],
        "does_not_protect_against": EXPOSED[level],
        "templates": templates,
        "max_concurrent": settings.max_concurrent,
        "error": error,
    }


def shutdown() -> None:
    """Stop every template of this process (tests, and a worker that is shutting down)."""
    registry.stop_all()
