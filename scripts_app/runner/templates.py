"""Warm templates ("zygotes"): one long-lived process per environment that forks a child per run.

A template imports the preload list once, then waits on a Unix socket. For each run the parent
sends it the run's pipes (job, stdout, stderr, result) and a control socket; the template forks a
child that runs exactly one job and exits, enforces the wall clock, and reports the exit status.

Isolation levels, strongest first (see docs/runner.md):
  bwrap    the template runs inside bubblewrap: its own mount, PID, network, IPC and UTS namespaces,
           read-only /usr and interpreter, nothing else of the host's filesystem; each run also gets
           its own PID, IPC, network and mount namespaces, its own /tmp and /dev/shm, a memory and
           pids cgroup where delegated, a seccomp filter and, as root, its own unprivileged uid.
  unshare  no bubblewrap, but root: the same per run (the data folders are hidden under an empty
           tmpfs, the rest of the host's tree read-only).
  process  neither: a separate process with rlimits, its own session and a cleaned environment.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import random
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts_app.runner import cgroups, config, syscalls
from scripts_app.runner.types import RunnerUnavailable

logger = logging.getLogger("scripts_app.runner")

HARNESS = str(Path(__file__).with_name("harness.py"))
SANDBOX_HARNESS = "/opt/omlweb-runner/harness.py"
SANDBOX_WORKROOT = "/tmp/runs"
LEVELS = ("bwrap", "unshare", "process")

# Templates this process restarted since it started, by reason ("died", "environment_changed"): its
# heartbeat thread adds them to the service's metrics (scripts_app/services/heartbeats.py).
restarts: dict[str, int] = {}

# Thread pools of numeric libraries must stay at one thread: the template forks, and a forked
# child only has the thread that called fork().
THREAD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}


def base_env() -> dict[str, str]:
    """The whole environment of a run: an allow-list, never the service's own variables."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "MPLBACKEND": "Agg",
        # glibc reserves 64 MiB of address space per thread arena; with RLIMIT_AS bounding address
        # space, a few threads would otherwise exhaust it without using any memory.
        "MALLOC_ARENA_MAX": "2",
        # pyarrow (pandas' string dtype) would reserve 1 GiB of address space for mimalloc on the
        # first string column, which alone hits a 1 GiB RLIMIT_AS.
        "ARROW_DEFAULT_MEMORY_POOL": "system",
        **THREAD_ENV,
    }


def is_root() -> bool:
    return os.geteuid() == 0


@dataclass
class Interpreter:
    executable: str
    prefix: str
    base_prefix: str
    version: str

    @classmethod
    def inspect(cls, python: str) -> Interpreter:
        code = "import json,sys; print(json.dumps([sys.prefix, sys.base_prefix, sys.version.split()[0]]))"
        out = subprocess.run(
            [python, "-I", "-c", code], capture_output=True, text=True, timeout=30, env=base_env(), check=True
        )
        prefix, base_prefix, version = json.loads(out.stdout)
        return cls(python, prefix, base_prefix, version)


def fingerprint(python: str) -> tuple:
    """Changes when the environment is rebuilt or a package is installed into it."""
    parts: list = []
    exe = Path(python)
    candidates = [exe, exe.resolve(), exe.parent.parent / "pyvenv.cfg"]
    candidates += sorted(exe.parent.parent.glob("lib/python3*/site-packages"))
    for path in candidates:
        try:
            st = path.stat()
        except OSError:
            continue
        parts.append((str(path), st.st_ino, st.st_mtime_ns))
    return tuple(parts)


def _ancestor_dirs(path: str) -> list[str]:
    parents = []
    p = Path(path).parent
    while str(p) != "/":
        parents.append(str(p))
        p = p.parent
    return list(reversed(parents))


def bwrap_command(
    settings: config.Settings, interp: Interpreter, network: bool, *, cgroup_namespace: bool = True
) -> list[str]:
    args = [settings.bwrap_path, "--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-uts"]
    if cgroup_namespace:
        # Without it under cgroup v2 with the runs' cgroups beside the service's: v2 refuses to move
        # a process to a cgroup outside the mover's cgroup namespace.
        args.append("--unshare-cgroup-try")
    args += ["--hostname", "sandbox"]
    if not network:
        args.append("--unshare-net")
    if is_root():
        # As root bwrap keeps every capability; keep only what the template needs to set up a
        # run (its uid, workdir, PID namespace, kill). The child drops them all with its uid.
        # NET_ADMIN brings up the loopback of each run's own network namespace (network off only:
        # with network on the template shares the host's namespace and has no use for it).
        args += ["--cap-drop", "ALL"]
        caps = ["SETUID", "SETGID", "SYS_ADMIN", "KILL", "CHOWN", "DAC_OVERRIDE", "FOWNER"]
        for cap in caps if network else [*caps, "NET_ADMIN"]:
            args += ["--cap-add", f"CAP_{cap}"]
    else:
        # Unprivileged: uid 0 inside a user namespace, mapped to the service's own uid outside.
        # SYS_ADMIN for the namespaces of each run, SETPCAP so a run can drop every capability.
        args += ["--unshare-user", "--uid", "0", "--gid", "0"]
        args += ["--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP", "--cap-add", "CAP_NET_ADMIN"]
    args += ["--clearenv"]
    for name, value in base_env().items():
        args += ["--setenv", name, value]
    args += ["--setenv", "HOME", "/tmp", "--setenv", "MPLCONFIGDIR", "/tmp/.matplotlib"]
    # /tmp first: a tmpfs mounted after a bind below it would hide that bind.
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(settings.sandbox_tmp_bytes), "--tmpfs", "/tmp"]
    args += ["--ro-bind", "/usr", "/usr"]
    for link, target in (("/lib", "usr/lib"), ("/lib64", "usr/lib64"), ("/bin", "usr/bin"), ("/sbin", "usr/sbin")):
        if os.path.islink(link):
            args += ["--symlink", target, link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    binds = [interp.base_prefix, interp.prefix, *settings.extra_ro_binds]
    binds += ["/etc/localtime"]
    if network:
        binds += ["/etc/resolv.conf", "/etc/hosts", "/etc/ssl", "/etc/ca-certificates"]
    made: set[str] = {"/", "/usr", "/tmp", "/proc", "/dev"}
    for path in dict.fromkeys(binds):
        if path == "/usr" or path.startswith("/usr/") or not os.path.exists(path):
            continue
        for parent in _ancestor_dirs(path):
            # bwrap would create missing parents 0700; the run's uid must be able to pass through.
            if parent not in made:
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--ro-bind", path, path]
        made.add(path)
    args += ["--perms", "0755", "--dir", "/opt", "--perms", "0755", "--dir", "/opt/omlweb-runner"]
    args += ["--ro-bind", HARNESS, SANDBOX_HARNESS, "--chdir", "/tmp"]
    return args


class TemplateError(RunnerUnavailable):
    """A template could not start, or died twice before starting a run."""


class UidPool:
    """Hands out run uids unique across every process of the service, by lock file."""

    def __init__(self, base: int, count: int, lock_dir: str) -> None:
        self.base = base
        self.count = count
        self.lock_dir = lock_dir
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)

    def acquire(self) -> tuple[int, int]:
        start = random.randrange(self.count)
        for i in range(self.count):
            uid = self.base + (start + i) % self.count
            fd = os.open(os.path.join(self.lock_dir, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return uid, fd
        raise TemplateError("no free run uid")

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)


@dataclass
class Template:
    python: str
    network: bool
    level: str
    settings: config.Settings
    # Modules imported before forking; empty for the light template of stdlib-only scripts.
    preload: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    sock: socket.socket | None = None
    info: dict = field(default_factory=dict)
    fingerprint: tuple = ()
    started_at: float = 0.0
    runs: int = 0
    workroot: str = ""
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    # The per-template cgroup folders (None: there are none, and cgroup_note says why).
    cgroup_folders: cgroups.TemplateCgroups | None = None
    cgroup_note: str = "not used at the process level"
    seccomp_state: str = "not used at the process level"
    # Whether the filter denies memfd_create (built for a template without a memory cgroup).
    memfd_denied: bool = False

    def start(self) -> None:
        settings = self.settings
        interp = Interpreter.inspect(self.python)
        self.fingerprint = fingerprint(self.python)
        if self.level != "process":
            folders = cgroups.for_template() if settings.cgroups else "turned off (cgroups=False)"
            if isinstance(folders, cgroups.TemplateCgroups):
                self.cgroup_folders, self.cgroup_note = folders, folders.version
            else:
                self.cgroup_note = folders
        if self.level == "bwrap":
            self.workroot = SANDBOX_WORKROOT
            harness = SANDBOX_HARNESS
            v2 = self.cgroup_folders is not None and self.cgroup_folders.version == "cgroup-v2"
            prefix = bwrap_command(settings, interp, self.network, cgroup_namespace=not v2)
            cwd = None
            env = {"PATH": "/usr/bin:/bin"}
        else:
            self.workroot = tempfile.mkdtemp(prefix="omlweb-runs-")
            os.chmod(self.workroot, 0o711)
            harness = HARNESS
            prefix = []
            cwd = self.workroot
            env = {**base_env(), "HOME": self.workroot, "MPLCONFIGDIR": os.path.join(self.workroot, ".matplotlib")}
        template_config: dict[str, object] = {
            "idle_seconds": (settings.template_idle_seconds or None) if self.python != default_python() else None,
            "preload": list(self.preload),
            "workroot": self.workroot,
            "probe_uid": settings.run_uid_base if is_root() and self.level != "process" else None,
            "pid_namespace": self.level != "process",
            "network": self.network,
        }
        pass_fds = []
        if self.level != "process":
            # Each run gets its own IPC, network, mount namespaces, tmpfs, cgroup and seccomp filter,
            # all prepared in the spare child before the run arrives.
            template_config["run_namespaces"] = True
            template_config["fs"] = self._filesystem(interp)
            if self.cgroup_folders is not None:
                template_config["cgroups"] = {"kinds": self.cgroup_folders.kinds, "fds": self.cgroup_folders.fds}
                pass_fds += self.cgroup_folders.fds
            # Without a memory cgroup, memfd pages would count against no limit: deny memfd_create.
            program, self.seccomp_state = syscalls.compiled(deny_memfd=self.cgroup_folders is None)
            self.memfd_denied = program is not None and self.cgroup_folders is None
            if program is None and settings.isolation != "auto":
                self._release_cgroups()
                raise TemplateError(f"{self.level} isolation needs its seccomp filter: {self.seccomp_state}")
            if program is not None:
                template_config["seccomp"] = base64.b64encode(program).decode("ascii")
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pass_fds.append(child_end.fileno())
        command = [*prefix, interp.executable, "-I", harness, "zygote", str(child_end.fileno())]
        command.append(json.dumps(template_config))
        # The template's own output, kept to explain a failed start; runs write to their own pipes.
        log = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the child, closed after the start
        try:
            self.process = subprocess.Popen(
                command,
                pass_fds=pass_fds,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except BaseException:
            self._release_cgroups()
            raise
        finally:
            child_end.close()
            if self.cgroup_folders is not None:
                self.cgroup_folders.close_fds()  # the template has its own copies
        parent_end.settimeout(settings.template_start_timeout)
        try:
            message = parent_end.recv(1 << 16)
        except (TimeoutError, OSError):
            message = b""
        if not message:
            self.process.kill()
            self.process.wait()
            log.seek(0)
            detail = log.read()[-2000:].decode(errors="replace").strip()
            self._release_cgroups()
            raise TemplateError(f"{self.level} template for {self.python} did not start: {detail}")
        log.close()
        parent_end.settimeout(None)
        self.sock = parent_end
        self.info = json.loads(message)
        if self.info.get("spare_error"):
            self.stop()
            raise TemplateError(f"{self.level} template cannot prepare a run: {self.info['spare_error']}")
        if self.level != "process" and settings.isolation != "auto" and not self.info.get("seccomp"):
            self.stop()
            raise TemplateError(f"{self.level} isolation needs its seccomp filter, which the template could not load")
        if self.cgroup_folders is not None and not self.info.get("cgroup"):
            self.cgroup_note = "the template could not make a cgroup and join it"
        self.started_at = time.time()
        logger.info(
            "runner template started: python=%s level=%s pid=%s info=%s",
            self.python,
            self.level,
            self.process.pid,
            self.info,
        )

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None or self.sock is None:
            return False
        # The template never speaks first: a readable socket means it hung up.
        readable, _, _ = select.select([self.sock], [], [], 0)
        return not readable

    def submit(self, header: dict, fds: list[int]) -> None:
        if self.sock is None:
            raise TemplateError("the template is not running")
        with self.send_lock:
            socket.send_fds(self.sock, [json.dumps(header).encode()], fds)
            self.runs += 1

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.process is not None:
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.level != "bwrap" and self.workroot:
            shutil.rmtree(self.workroot, ignore_errors=True)
        self._release_cgroups()

    def _release_cgroups(self) -> None:
        if self.cgroup_folders is not None:
            self.cgroup_folders.remove()

    def _filesystem(self, interp: Interpreter) -> dict:
        """What each run's mount namespace looks like: its own /tmp and /dev/shm (sized tmpfs), the
        data folders hidden (unshare level; under bwrap they do not exist), the rest read-only.
        The interpreter stays visible where a cover would hide it (inside a hidden folder, or
        under /tmp, as an environment made in a test's temporary folder is)."""
        hide = list(self.settings.data_dirs_to_hide) if self.level == "unshare" else []
        covered = [*hide, "/tmp", "/dev/shm"]
        keep = [
            path
            for path in dict.fromkeys([interp.prefix, interp.base_prefix])
            if path and any(Path(path).is_relative_to(cover) for cover in covered)
        ]
        return {"hide": hide, "keep": keep, "tmp_bytes": self.settings.sandbox_tmp_bytes}

    # What a run of this template gets, given what the template found it can do.
    @property
    def uses_pid_namespace(self) -> bool:
        return self.level != "process" and bool(self.info.get("pid_namespace"))

    @property
    def uses_run_uid(self) -> bool:
        return self.level != "process" and bool(self.info.get("setuid"))

    @property
    def memory_mechanism(self) -> str:
        if self.level == "process":
            return "rlimit-as"
        if self.cgroup_folders is not None and self.info.get("cgroup"):
            return self.cgroup_folders.version
        # memfd_create is denied by the seccomp filter when there is no cgroup to count its pages
        # (not when a cgroup was expected and the template then failed to join it: say so).
        memfd = "+memfd-denied" if self.uses_seccomp and self.memfd_denied else ""
        return "rlimit-as+tmpfs-size+ipc-shm-limits" + memfd

    @property
    def uses_seccomp(self) -> bool:
        return self.level != "process" and bool(self.info.get("seccomp"))


class Registry:
    """The templates of this process, one per (interpreter, network, light), started lazily."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.templates: dict[tuple[str, bool, bool], Template] = {}
        self.levels_tried: dict[str, str] = {}
        self.level: str | None = None
        self.uid_pool: UidPool | None = None
        self.checked_at: dict[tuple[str, bool, bool], float] = {}

    def candidate_levels(self, settings: config.Settings) -> list[str]:
        if settings.isolation != "auto":
            return [settings.isolation]
        levels = []
        if os.path.exists(settings.bwrap_path):
            levels.append("bwrap")
        else:
            self.levels_tried["bwrap"] = f"{settings.bwrap_path} not found"
        if is_root():
            levels.append("unshare")
        else:
            self.levels_tried["unshare"] = "needs root (the service is not running as root)"
        levels.append("process")
        return levels

    def get(self, python: str, network: bool, *, light: bool = False) -> Template:
        """The template for runs in `python`; `light` is the one that preloads nothing."""
        key = (python, network, light)
        with self.lock:
            template = self.templates.get(key)
            if template is not None and self._healthy(template, key):
                return template
            if template is not None:
                template.stop()
                del self.templates[key]
            settings = config.current()
            levels = [self.level] if self.level else self.candidate_levels(settings)
            errors = []
            for level in levels:
                preload = () if light else settings.preload
                template = Template(python, network, level, settings, preload=preload)
                try:
                    template.start()
                except (TemplateError, OSError, subprocess.SubprocessError, ValueError) as exc:
                    errors.append(str(exc))
                    self.levels_tried[level] = str(exc)
                    logger.warning("runner isolation level %s unavailable: %s", level, exc)
                    continue
                if self.level is None:
                    self.level = level
                    self.levels_tried[level] = "active"
                    log = logger.info if level == levels[0] and level == "bwrap" else logger.warning
                    log("runner isolation level: %s", level)
                if template.uses_run_uid and self.uid_pool is None:
                    lock_dir = os.path.join(tempfile.gettempdir(), "omlweb-run-uids")
                    self.uid_pool = UidPool(settings.run_uid_base, settings.run_uid_count, lock_dir)
                self.templates[key] = template
                self.checked_at[key] = time.monotonic()
                return template
            raise TemplateError("; ".join(errors))

    def _healthy(self, template: Template, key) -> bool:
        if not template.alive():
            logger.warning("runner template for %s died; restarting it", template.python)
            restarts["died"] = restarts.get("died", 0) + 1
            return False
        now = time.monotonic()
        if now - self.checked_at.get(key, 0) > 2.0:
            self.checked_at[key] = now
            if fingerprint(template.python) != template.fingerprint:
                logger.info("environment of %s changed; restarting its template", template.python)
                restarts["environment_changed"] = restarts.get("environment_changed", 0) + 1
                return False
        return True

    def discard(self, template: Template) -> None:
        with self.lock:
            for key, existing in list(self.templates.items()):
                if existing is template:
                    del self.templates[key]
        template.stop()

    def stop_all(self, *, forget_level: bool = False) -> None:
        with self.lock:
            templates = list(self.templates.values())
            self.templates.clear()
            if forget_level:
                self.level = None
                self.levels_tried.clear()
                self.uid_pool = None
        for template in templates:
            template.stop()


registry = Registry()


def _forget_templates_in_forked_child() -> None:
    # A process forked from one that already runs templates (a Celery prefork pool, a gunicorn
    # worker forked after import) must start its own: the templates, their sockets and locks
    # belong to the parent. Dropping our copies of the sockets does not disturb the parent.
    registry.lock = threading.Lock()
    registry.templates = {}
    registry.checked_at = {}


os.register_at_fork(after_in_child=_forget_templates_in_forked_child)


# Settings a running template depends on; changing any of them restarts the templates.
TEMPLATE_SETTINGS = (
    "preload",
    "light_template",
    "network",
    "data_dirs_to_hide",
    "isolation",
    "run_uid_base",
    "run_uid_count",
    "sandbox_tmp_bytes",
    "cgroups",
    "extra_ro_binds",
    "bwrap_path",
)


def _settings_changed(old: config.Settings, new: config.Settings) -> None:
    if any(getattr(old, name) != getattr(new, name) for name in TEMPLATE_SETTINGS):
        registry.stop_all(forget_level=True)


config.on_change(_settings_changed)


def default_python() -> str:
    return sys.executable
