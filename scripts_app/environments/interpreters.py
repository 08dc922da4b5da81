"""The Python interpreters of this host that an environment can be built from. Knows nothing of Django."""

from __future__ import annotations

import glob
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# The runner's harness and the pinned numpy/pandas need at least this.
MINIMUM_VERSION = (3, 11)
NAME = re.compile(r"^python3(\.\d+)?$")
CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: str
    # Whether an unprivileged uid can reach and run it; bwrap makes the folders above it
    # passable, the other isolation levels need it (docs/environments.md).
    world_readable: bool
    is_service_own: bool = False

    @property
    def label(self) -> str:
        suffix = " (the service's own)" if self.is_service_own else ""
        return f"Python {self.version}: {self.path}{suffix}"

    @property
    def major_minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


def service_python() -> str:
    """The base interpreter of the service's own virtual environment."""
    return getattr(sys, "_base_executable", None) or sys.executable


def candidates(extra: list[str]) -> list[str]:
    paths = [service_python(), *extra]
    for pattern in ("/usr/bin/python3*", "/usr/local/bin/python3*", "/opt/*/bin/python3*"):
        paths += sorted(glob.glob(pattern))
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    paths += sorted(glob.glob(os.path.join(pyenv_root, "versions", "*", "bin", "python3")))
    return paths


def probe(path: str) -> str | None:
    """The version of the interpreter at `path`, or None when it is not a usable Python 3."""
    code = "import json, platform, sys; print(json.dumps([platform.python_version(), sys.prefix == sys.base_prefix]))"
    try:
        out = subprocess.run(
            [path, "-I", "-c", code], capture_output=True, text=True, timeout=10, env={"PATH": "/usr/bin:/bin"}
        )
        version, is_base = json.loads(out.stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    # A virtual environment's interpreter is not a base to build from.
    if out.returncode != 0 or not is_base:
        return None
    return version


def world_readable(path: str) -> bool:
    real = Path(path).resolve()
    for folder in real.parents:
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(real).st_mode
    return bool(mode & stat.S_IROTH and mode & stat.S_IXOTH)


_lock = threading.Lock()
_cache: tuple[float, tuple[str, ...], list[Interpreter]] | None = None


def discover(extra: list[str] | tuple[str, ...] = ()) -> list[Interpreter]:
    """Interpreters of Python 3.11 or newer on this host, one per real file, the service's own first."""
    global _cache
    with _lock:
        if _cache is not None and _cache[1] == tuple(extra) and time.monotonic() - _cache[0] < CACHE_SECONDS:
            return _cache[2]
    own = os.path.realpath(service_python())
    found: dict[str, Interpreter] = {}
    for path in candidates(list(extra)):
        if not NAME.match(os.path.basename(path)) and path not in extra and path != service_python():
            continue
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            continue
        real = os.path.realpath(path)
        if real in found:
            continue
        version = probe(path)
        if version is None or tuple(int(part) for part in version.split(".")[:2]) < MINIMUM_VERSION:
            continue
        found[real] = Interpreter(path, version, world_readable(path), is_service_own=real == own)
    interpreters = sorted(found.values(), key=lambda i: (not i.is_service_own, i.path))
    with _lock:
        _cache = (time.monotonic(), tuple(extra), interpreters)
    return interpreters


def find(path: str, extra: list[str] | tuple[str, ...] = ()) -> Interpreter | None:
    for interpreter in discover(extra):
        if interpreter.path == path:
            return interpreter
    return None
