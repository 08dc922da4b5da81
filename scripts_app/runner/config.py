"""Process-wide runner settings, set once by the caller through `configure()`.

The runner reads no environment variables itself: Django settings read them and call `configure()`.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

ISOLATION_CHOICES = ("auto", "bwrap", "unshare", "process")
MODE_CHOICES = ("zygote", "cold")


@dataclass(frozen=True)
class Settings:
    # Modules each template imports before forking runs.
    preload: tuple[str, ...] = ("numpy", "pandas", "matplotlib.pyplot")
    # Scripts that import only the standard library (and draw nothing) fork from a second template
    # that preloads nothing: a small process forks and exits in a fraction of the time.
    light_template: bool = True
    # Runs at once in this process; more wait up to queue_timeout seconds, then RunnerBusy.
    max_concurrent: int = 4
    queue_timeout: float = 5.0
    # Network for every run; a single run can also ask for it with Limits(network=True).
    network: bool = False
    # Paths a run must not see (service data folder, database file's folder). The bwrap level
    # hides everything not needed anyway; the unshare level lays an empty tmpfs over these.
    data_dirs_to_hide: tuple[str, ...] = ()
    # "auto" takes the strongest level that works; any other value fails closed if unavailable.
    isolation: str = "auto"
    # "zygote": fork from a warm template; "cold": a new interpreter per run.
    mode: str = "zygote"
    # Runs drop to uids run_uid_base .. run_uid_base + run_uid_count - 1 (one per concurrent run).
    run_uid_base: int = 61000
    run_uid_count: int = 1000
    # Size of each run's own /tmp (its working directory) and of its own /dev/shm: a tmpfs each,
    # at the bwrap and unshare levels. With a memory cgroup their pages also count as the run's memory.
    sandbox_tmp_bytes: int = 512 * 1024**2
    # A memory and pids cgroup per run where the host delegates them (runner/cgroups.py).
    cgroups: bool = True
    # Extra host paths bound read-only into the sandbox, e.g. "/etc/ssl" for an environment with network.
    extra_ro_binds: tuple[str, ...] = ()
    bwrap_path: str = "/usr/bin/bwrap"
    # An environment's template (not the service's own) exits after this many seconds without a
    # run, and starts again on the next one; 0 keeps every template running.
    template_idle_seconds: float = 600.0
    # Seconds a template may take to import the preload list and report ready.
    template_start_timeout: float = 60.0


_lock = threading.Lock()
_settings = Settings()
_listeners: list = []


def current() -> Settings:
    return _settings


def configure(**changes) -> Settings:
    """Change runner settings (see `Settings`); templates restart when a setting they use changed."""
    global _settings
    unknown = set(changes) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise TypeError(f"unknown runner settings: {', '.join(sorted(unknown))}")
    for name in ("preload", "data_dirs_to_hide", "extra_ro_binds"):
        if name in changes:
            changes[name] = tuple(changes[name])
    if changes.get("isolation", "auto") not in ISOLATION_CHOICES:
        raise ValueError(f"isolation must be one of {ISOLATION_CHOICES}")
    if changes.get("mode", "zygote") not in MODE_CHOICES:
        raise ValueError(f"mode must be one of {MODE_CHOICES}")
    if changes.get("sandbox_tmp_bytes", 1 << 20) < 1 << 20:
        raise ValueError("sandbox_tmp_bytes must be at least 1 MiB")
    if changes.get("max_concurrent", 1) < 1:
        raise ValueError("max_concurrent must be at least 1")
    with _lock:
        old = _settings
        _settings = dataclasses.replace(_settings, **changes)
        listeners = list(_listeners)
    for listener in listeners:
        listener(old, _settings)
    return _settings


def on_change(listener) -> None:
    with _lock:
        _listeners.append(listener)
