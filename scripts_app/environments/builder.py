"""Builds an environment's virtual environment on this host. Knows nothing of Django.

A `Spec` says what to build; `ensure()` makes sure `<root>/<name>-<spec hash>/` holds it, building it
under a file lock when it is missing, so two processes of one host never build it at once and every
host builds the same thing from the same spec (and, once one host resolved it, the same lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MARKER = ".omlweb-env.json"
SUPERSEDED = ".omlweb-superseded"
# Bump when the way environments are built changes, so every host builds them anew.
FORMAT = 1

Log = Callable[[str], None]

# The build's own environment: never the service's secrets (a package's setup code runs in it).
PASSED_VARIABLES = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class Spec:
    name: str
    python: str
    # The admin's requirement lines, and what the runner needs (pinned), installed together.
    packages: tuple[str, ...] = ()
    runner_packages: tuple[str, ...] = ()
    generation: int = 1
    # The exact `name==version` lines to install; empty: resolve `packages` afresh.
    lock: str = ""

    @property
    def hash(self) -> str:
        # The lock is not part of it: the first build resolves it, later hosts install it.
        document = {
            "format": FORMAT,
            "python": self.python,
            "packages": list(self.packages),
            "runner_packages": list(self.runner_packages),
            "generation": self.generation,
        }
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.hash[:16]}"


@dataclass(frozen=True)
class Options:
    """How this host builds: the tool, and where packages come from."""

    tool: str = "auto"  # "auto", "uv" or "pip"
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    timeout: float = 1800.0
    # Building a package from source runs its setup code with the worker's rights: off by default.
    source_builds: bool = False


@dataclass
class Built:
    path: Path
    python: str
    lock: str
    python_version: str
    size_bytes: int
    package_count: int
    built_now: bool = False
    log: list[str] = field(default_factory=list)


def lock_sha256(lock: str) -> str:
    return hashlib.sha256(lock.encode()).hexdigest()


def find_uv() -> str | None:
    try:
        import uv

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        pass
    beside = Path(sys.executable).with_name("uv")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("uv")


def folder(root: Path, spec: Spec) -> Path:
    path = (root / spec.folder_name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BuildError(f"environment name {spec.name!r} leaves the environments folder")
    return path


def read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def built(root: Path, spec: Spec) -> Built | None:
    """The environment of `spec` if this host has it complete (and with `spec.lock`, when given)."""
    path = folder(root, spec)
    marker = read_marker(path)
    if marker is None or marker.get("spec_hash") != spec.hash:
        return None
    if spec.lock and marker.get("lock_sha256") != lock_sha256(spec.lock):
        return None
    python = path / "bin" / "python"
    if not python.exists():
        return None
    return Built(
        path=path,
        python=str(python),
        lock=(path / "omlweb-lock.txt").read_text(),
        python_version=marker["python_version"],
        size_bytes=marker["size_bytes"],
        package_count=marker["package_count"],
    )


@contextlib.contextmanager
def _host_lock(root: Path, spec: Spec, timeout: float) -> Iterator[None]:
    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{spec.folder_name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError(f"another process has been building {spec.name} for too long") from None
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


def ensure(root: Path, spec: Spec, options: Options, log: Log) -> Built:
    """The environment of `spec` on this host, built now if it is missing or incomplete."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    found = built(root, spec)
    if found is not None:
        return found
    with _host_lock(root, spec, options.timeout):
        # Another process may have built it while this one waited for the lock.
        found = built(root, spec)
        if found is not None:
            return found
        return _build(root, spec, options, log)


def _build(root: Path, spec: Spec, options: Options, log: Log) -> Built:
    path = folder(root, spec)
    started = time.monotonic()
    deadline = started + options.timeout
    shutil.rmtree(path, ignore_errors=True)
    tool = _choose_tool(options.tool)
    python = path / "bin" / "python"
    log(f"Building environment {spec.name} in {path} with {tool}, from {spec.python}")
    try:
        if tool == "uv":
            uv = find_uv()
            if uv is None:  # _choose_tool chose uv because it was found; it went away since
                raise BuildError("uv is no longer installed")
            _run([uv, "venv", "--no-config", "--quiet", "--python", spec.python, str(path)], log, deadline)
            # Bytecode now: runs see the environment read-only, so they could never cache it themselves.
            installer = [uv, "pip", "install", "--no-config", "--compile-bytecode", "--python", str(python)]
            syncer = [uv, "pip", "sync", "--no-config", "--compile-bytecode", "--python", str(python)]
            freezer = [uv, "pip", "freeze", "--no-config", "--python", str(python)]
            sources = [f"--find-links={link}" for link in options.find_links]
        else:
            _run([spec.python, "-m", "venv", "--without-pip", str(path)], log, deadline)
            # The service's own pip installs into the environment, which then needs no pip of its own.
            pip = [sys.executable, "-m", "pip", "--python", str(python)]
            installer = [*pip, "install", "--no-input", "--progress-bar", "off"]
            syncer = [*installer, "--no-deps"]
            freezer = [*pip, "freeze"]
            sources = [f"--find-links={link}" for link in options.find_links]
        if options.no_index:
            sources.append("--no-index")
        if not options.source_builds:
            sources.append("--only-binary=:all:")
        if spec.lock:
            lock_file = path / "omlweb-install-lock.txt"
            lock_file.write_text(_requirement_lines(spec.lock))
            # uv pip sync takes the file itself; pip install takes -r FILE.
            _run([*syncer, *sources, *([] if tool == "uv" else ["-r"]), str(lock_file)], log, deadline)
        else:
            wanted = [*spec.runner_packages, *spec.packages]
            if wanted:
                requirements = path / "omlweb-requirements.txt"
                requirements.write_text("".join(f"{line}\n" for line in wanted))
                _run([*installer, *sources, "-r", str(requirements)], log, deadline)
        version = _run([str(python), "-I", "-c", "import platform; print(platform.python_version())"], None, deadline)
        frozen = _run(freezer, None, deadline)
    except BuildError:
        shutil.rmtree(path, ignore_errors=True)
        raise
    packages = sorted((line for line in frozen.splitlines() if line.strip()), key=str.lower)
    lock = f"# python {version.strip()}\n" + "".join(f"{line}\n" for line in packages)
    (path / "omlweb-lock.txt").write_text(lock)
    _open_to_everyone(path)
    size = folder_size(path)
    marker = {
        "spec_hash": spec.hash,
        "lock_sha256": lock_sha256(lock),
        "python_version": version.strip(),
        "size_bytes": size,
        "package_count": len(packages),
        "built_at": time.time(),
    }
    # The marker is written last, and atomically: a folder without it is an unfinished build.
    (path / f"{MARKER}.tmp").write_text(json.dumps(marker))
    os.replace(path / f"{MARKER}.tmp", path / MARKER)
    log(f"Built {spec.name}: {len(packages)} packages, {human_size(size)}, in {time.monotonic() - started:.1f} s")
    return Built(
        path=path,
        python=str(python),
        lock=lock,
        python_version=version.strip(),
        size_bytes=size,
        package_count=len(packages),
        built_now=True,
    )


def remove_other_generations(root: Path, name: str, keep: str | None, *, grace: float | None) -> list[Path]:
    """Delete this host's folders of environment `name` other than `keep`.

    A folder is first marked superseded, and deleted by a later call once `grace` seconds have passed
    since: runs that started before the rebuild still import from it. `grace=None` deletes at once.
    """
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for path in root.iterdir():
        if path.name == keep or not path.is_dir() or path.name.rpartition("-")[0] != name:
            continue
        superseded = path / SUPERSEDED
        if grace is not None:
            try:
                since = superseded.stat().st_mtime
            except FileNotFoundError:
                with contextlib.suppress(OSError):
                    superseded.touch()
                continue
            if now - since < grace:
                continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _requirement_lines(lock: str) -> str:
    return "".join(f"{line}\n" for line in lock.splitlines() if line.strip() and not line.startswith("#"))


def _choose_tool(tool: str) -> str:
    if tool == "pip":
        return "pip"
    if find_uv() is not None:
        return "uv"
    if tool == "uv":
        raise BuildError("OMLWEB_ENV_BUILDER is uv, but uv is not installed")
    return "pip"


def _build_env() -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_VARIABLES if name in os.environ}
    # pip's and uv's own settings (index, cache, certificates) are the operator's to give.
    env.update({k: v for k, v in os.environ.items() if k.startswith(("PIP_", "UV_"))})
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(command: list[str], log: Log | None, deadline: float) -> str:
    """Run a build step; its output goes line by line to `log` (or is returned when log is None)."""
    if log is not None:
        log("$ " + " ".join(command))
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if log is not None else subprocess.PIPE,
        text=True,
        errors="replace",
        env=_build_env(),
        start_new_session=True,
    )
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), _kill_group, [process])
    timer.start()
    output: list[str] = []
    assert process.stdout is not None  # stdout=PIPE
    try:
        for line in process.stdout:
            if log is not None:
                log(line.rstrip("\n"))
            else:
                output.append(line)
        stderr = process.stderr.read() if process.stderr else ""
        code = process.wait()
    finally:
        timer.cancel()
    if time.monotonic() >= deadline:
        raise BuildError("the build took longer than its time limit")
    if code != 0:
        detail = f": {stderr.strip()[-2000:]}" if stderr.strip() else ""
        raise BuildError(f"{Path(command[0]).name} {command[1]} exited with code {code}{detail}")
    return "".join(output)


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, 9)


def _open_to_everyone(path: Path) -> None:
    """Runs use unprivileged uids: they must read every file of the environment and enter every folder."""
    for folder_path, folders, files in os.walk(path):
        for name in [*folders, *files]:
            child = os.path.join(folder_path, name)
            mode = os.lstat(child).st_mode
            if stat.S_ISLNK(mode):
                continue
            extra = stat.S_IRGRP | stat.S_IROTH
            if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
                extra |= stat.S_IXGRP | stat.S_IXOTH
            if mode & extra != extra:
                os.chmod(child, mode | extra)
    os.chmod(path, 0o755)


def folder_size(path: Path) -> int:
    total = 0
    for folder_path, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder_path, name)).st_size
    return total


def human_size(size: int) -> str:
    """As Oracle shows it: "1.7 GiB"."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
