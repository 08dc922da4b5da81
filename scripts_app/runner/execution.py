"""The parent side of a run: start the child, feed it the job, read its output, judge the end."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

from scripts_app.runner import config
from scripts_app.runner.live import Tap, cut_note
from scripts_app.runner.source import imports_only_stdlib
from scripts_app.runner.templates import (
    HARNESS,
    Template,
    TemplateError,
    UidPool,
    base_env,
    default_python,
    registry,
)
from scripts_app.runner.types import Failure, Job, Outcome, Result, RunnerBusy, RunnerUnavailable
from scripts_app.runner.validation import Document, InvalidResult, read_document, storable_text

logger = logging.getLogger("scripts_app.runner")

POLL_SECONDS = 0.1
# After the child is gone, how long stdout/stderr may stay open (a grandchild outside a PID
# namespace can hold them) before we stop reading.
DRAIN_GRACE_SECONDS = 1.0
# Extra seconds the parent waits beyond the wall-clock limit for the template to report the kill.
BACKSTOP_SECONDS = 5.0
READ_CHUNK = 1 << 20
# Larger pipes mean fewer wake-ups of both sides for a large result or a lot of output.
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = 1031


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_BYTES)
    return read_end, write_end


class _Capture:
    """Keeps the first `limit` bytes of a stream and counts the rest."""

    def __init__(self, limit: int, tap: Tap | None = None, stream: str = "") -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.kept = 0
        self.total = 0
        # Live output: the tap gets each kept part as it is read (runner.live).
        self.tap = tap
        self.stream = stream
        self.told_cut = False

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if self.kept < self.limit:
            part = data[: self.limit - self.kept]
            self.parts.append(part)
            self.kept += len(part)
            if self.tap is not None:
                self.tap.feed(self.stream, part)
        if self.tap is not None and self.total > self.limit and not self.told_cut:
            self.told_cut = True
            self.tap.cut(self.stream, self.limit)

    @property
    def overflowed(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        # errors="replace" leaves no lone surrogate; NUL goes too, as PostgreSQL text cannot hold it.
        text = storable_text(b"".join(self.parts).decode("utf-8", errors="replace"))
        if self.overflowed:
            text += cut_note(self.limit)
        return text


def _job_document(job: Job) -> bytes:
    limits = dataclasses.asdict(job.limits)
    document = {
        "source": job.source,
        "function": job.function,
        "args": list(job.args),
        "kwargs": job.kwargs,
        "graphics": job.graphics,
        "limits": limits,
        "frame_orient": job.frame_orient,
    }
    if job.data is not None:
        # The job pipe is the one channel that reaches a sandboxed child, so the rows travel in it.
        document["data"] = {
            "parquet": base64.b64encode(job.data.parquet).decode("ascii"),
            "input_type": job.data.input_type,
            "na_omit": job.data.na_omit,
        }
    return json.dumps(document).encode()


def _feed_job(fd: int, data: bytes) -> None:
    """Write the job to the child's pipe without blocking the caller on a large job."""

    def write() -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            pass
        finally:
            os.close(fd)

    if len(data) <= 60_000:
        write()
    else:
        threading.Thread(target=write, name="runner-job-writer", daemon=True).start()


def _result_cap(job: Job) -> int:
    limits = job.limits
    return limits.max_result_bytes + limits.max_figures * (limits.max_image_bytes * 4 // 3 + 1024) + (1 << 20)


@dataclasses.dataclass
class _Ending:
    """How the child ended, as far as the parent knows."""

    status: int | None = None  # waitpid status
    reason: str | None = None  # "timeout", "cancelled", "parent gone", None
    cpu_seconds: float | None = None
    template_lost: bool = False
    # Processes of the run the kernel's OOM killer ended in the run's memory cgroup.
    oom_kills: int = 0


class _TemplateLost(Exception):
    """The template died before it started the run: the run can safely go to a new template."""


class _Watch:
    """Reads stdout, stderr and the result pipe of one run until the child is gone."""

    def __init__(self, job: Job, out_r: int, err_r: int, res_r: int, tap: Tap | None = None) -> None:
        self.selector = selectors.DefaultSelector()
        self.stdout = _Capture(job.limits.max_stream_bytes, tap, "stdout")
        self.stderr = _Capture(job.limits.max_stream_bytes, tap, "stderr")
        self.result = bytearray()
        self.result_cap = _result_cap(job)
        self.result_overflow = False
        self.frame_orient = job.frame_orient
        self.limits = job.limits
        self.document: Document | None = None
        # Why the document is not one the harness could have written, once it is whole.
        self.invalid: str | None = None
        self.open_fds = {out_r, err_r, res_r}
        for fd in (out_r, err_r, res_r):
            os.set_blocking(fd, False)
        self.selector.register(out_r, selectors.EVENT_READ, self.stdout)
        self.selector.register(err_r, selectors.EVENT_READ, self.stderr)
        self.selector.register(res_r, selectors.EVENT_READ, "result")

    def add(self, fileobj, tag) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, tag)

    def remove(self, fileobj) -> None:
        self.selector.unregister(fileobj)

    def poll(self, timeout: float) -> list:
        """Read whatever pipes are ready; return the tags of other ready objects."""
        others = []
        for key, _ in self.selector.select(timeout):
            if isinstance(key.fd, int) and key.fd in self.open_fds:
                self._read(key.fd, key.data)
            else:
                others.append(key.data)
        return others

    def _read(self, fd: int, sink) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(fd)
            os.close(fd)
            self.open_fds.discard(fd)
            return
        if sink == "result":
            self._keep_result(data)
        else:
            self._keep_output(fd, sink, data)

    def _keep_result(self, data: bytes) -> None:
        if len(self.result) + len(data) > self.result_cap:
            self.result_overflow = True
        else:
            self.result += data

    def _keep_output(self, fd: int, sink, data: bytes) -> None:
        sink.feed(data)

    def complete_document(self) -> bool:
        """Whether every pipe is closed and the result document is whole and valid."""
        if self.open_fds:
            return False
        return self.read_document() is not None

    def read_document(self) -> Document | None:
        """The checked result document, or None when it is missing, cut short, over its cap or invalid."""
        if self.document is None and self.invalid is None and self.result and not self.result_overflow:
            try:
                self.document = read_document(self.result, self.limits, frame_orient=self.frame_orient)
            except InvalidResult as error:
                self.invalid = error.message
            except Exception:
                # Nothing a run writes may raise in the parent: a gap in the checks is still the run's failure.
                logger.exception("runner: a result document could not be checked")
                self.invalid = "it could not be read"
            if self.document is not None or self.invalid is not None:
                # Up to hundreds of MB with figures: not kept beside what was read from it.
                self.result = bytearray()
        return self.document

    def drain(self, deadline: float) -> None:
        while self.open_fds and time.monotonic() < deadline:
            self.poll(max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))

    def close(self) -> None:
        for fd in list(self.open_fds):
            self.selector.unregister(fd)
            os.close(fd)
        self.open_fds.clear()
        self.selector.close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _conclude(job: Job, watch: _Watch, ending: _Ending, started: float) -> Result:
    limits = job.limits
    result = Result(outcome=Outcome.FAILED, stdout=watch.stdout.text(), stderr=watch.stderr.text())
    document = watch.read_document()
    status = ending.status
    term_signal = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None
    killed_by_us = ending.reason is not None and (document is None or term_signal is not None)
    if killed_by_us and ending.reason == "cancelled":
        result.outcome = Outcome.CANCELLED
        result.failure = Failure.CANCELLED
        result.error_message = "The run was cancelled"
    elif killed_by_us and ending.reason in ("timeout", "parent gone"):
        result.outcome = Outcome.TIMED_OUT
        result.failure = Failure.TIMEOUT
        result.error_message = f"The run exceeded its time limit of {limits.wall_seconds:g} seconds"
    elif document is not None:
        result.outcome = document.outcome
        result.failure = document.failure
        result.error_message = document.error_message
        result.traceback = document.traceback
        result.take_value(document)
        result.figures = document.figures
    elif watch.result_overflow:
        result.failure = Failure.RESULT_TOO_LARGE
        result.error_message = f"The result is over the limit of {limits.max_result_bytes} bytes"
    elif term_signal is not None and (
        term_signal == signal.SIGXCPU or (ending.cpu_seconds is not None and ending.cpu_seconds >= limits.cpu_seconds)
    ):
        result.outcome = Outcome.TIMED_OUT
        result.failure = Failure.CPU_LIMIT
        result.error_message = f"The run used more than its CPU time limit of {limits.cpu_seconds} seconds"
    elif term_signal is not None:
        result.failure = Failure.CRASHED
        name = _signal_name(term_signal)
        hint = " (possibly out of memory)" if term_signal == signal.SIGKILL else ""
        result.error_message = f"The script's process was killed by {name}{hint} before giving a result"
    elif status is None:
        result.failure = Failure.CRASHED
        result.error_message = "The runner's template process died during the run"
    elif watch.invalid is not None:
        # The script wrote on the result pipe itself, or patched the harness: a run's own failure.
        result.failure = Failure.INVALID_RESULT
        result.error_message = f"The run gave a result the service cannot accept: {watch.invalid}"
    else:
        result.failure = Failure.CRASHED
        result.error_message = f"The script's process exited with code {os.WEXITSTATUS(status)} before giving a result"
    result.duration_seconds = time.monotonic() - started
    return result


def _watch_until_end(
    watch: _Watch,
    job: Job,
    *,
    is_cancelled: Callable[[], bool] | None,
    finished: Callable[[list], bool],
    kill: Callable[[str], None],
    deadline: float,
) -> None:
    """Pump the pipes until `finished` says the child is gone; kill on cancel or deadline."""
    next_cancel_check = 0.0
    killed = False
    while True:
        tags = watch.poll(POLL_SECONDS)
        if finished(tags):
            return
        now = time.monotonic()
        if killed:
            continue
        if is_cancelled is not None and now >= next_cancel_check:
            next_cancel_check = now + POLL_SECONDS
            if is_cancelled():
                kill("cancelled")
                killed = True
        if now >= deadline:
            kill("timeout")
            killed = True


def _run_cold(job: Job, is_cancelled, started: float, tap: Tap | None = None) -> Result:
    """A new interpreter for this run: slow to start (imports), but needs nothing else."""
    workdir = tempfile.mkdtemp(prefix="omlweb-run-")
    out_r, out_w = _pipe()
    err_r, err_w = _pipe()
    res_r, res_w = _pipe()
    env = {
        **base_env(),
        "HOME": workdir,
        "TMPDIR": workdir,
        "MPLCONFIGDIR": os.path.join(workdir, ".matplotlib"),
    }
    watch = _Watch(job, out_r, err_r, res_r, tap)
    ending = _Ending()
    try:
        try:
            process = subprocess.Popen(
                [job.python or default_python(), "-I", HARNESS, "cold", str(res_w)],
                stdin=subprocess.PIPE,
                stdout=out_w,
                stderr=err_w,
                pass_fds=[res_w],
                cwd=workdir,
                env=env,
                start_new_session=True,
            )
        finally:
            for fd in (out_w, err_w, res_w):
                os.close(fd)
        assert process.stdin is not None  # stdin=PIPE
        stdin_fd = os.dup(process.stdin.fileno())
        process.stdin.close()
        _feed_job(stdin_fd, _job_document(job))
        pidfd = os.pidfd_open(process.pid)
        watch.add(pidfd, "exit")

        def kill(reason: str) -> None:
            if ending.reason is None:
                ending.reason = reason
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

        def finished(tags: list) -> bool:
            if "exit" not in tags:
                return False
            # Kill what is left of its process group, then reap it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = 0
            ending.status = status
            ending.cpu_seconds = usage.ru_utime + usage.ru_stime
            return True

        _watch_until_end(
            watch,
            job,
            is_cancelled=is_cancelled,
            finished=finished,
            kill=kill,
            deadline=started + job.limits.wall_seconds,
        )
        watch.remove(pidfd)
        os.close(pidfd)
        watch.drain(time.monotonic() + DRAIN_GRACE_SECONDS)
        return _conclude(job, watch, ending, started)
    finally:
        watch.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _run_warm(
    job: Job,
    template: Template,
    is_cancelled,
    started: float,
    release: Callable[[], None],
    tap: Tap | None = None,
) -> Result:
    """Run in a child forked from the environment's warm template.

    The caller gets its answer as soon as the result and both streams are complete; the child's
    exit is then awaited by the reaper, which frees the run's slot (`release`) and uid.
    """
    job_r, job_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = _pipe()
    err_r, err_w = _pipe()
    res_r, res_w = _pipe()
    ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    uid = uid_fd = None
    if template.uses_run_uid and registry.uid_pool is not None:
        uid, uid_fd = registry.uid_pool.acquire()
    header = {
        "wall_seconds": job.limits.wall_seconds,
        "uid": uid,
        "env": {**base_env()},
    }
    watch = _Watch(job, out_r, err_r, res_r, tap)
    ending = _Ending()
    try:
        try:
            template.submit(header, [job_r, out_w, err_w, res_w, ctl_child.fileno()])
        except OSError:
            # It exited just now (idle, or died): run() starts it again.
            raise _TemplateLost from None
        finally:
            for fd in (job_r, out_w, err_w, res_w):
                os.close(fd)
            ctl_child.close()
        _feed_job(job_w, _job_document(job))
        watch.add(ctl, "ctl")
        child_pid = None

        def kill(reason: str) -> None:
            if ending.reason is None:
                ending.reason = reason
            with contextlib.suppress(OSError):
                ctl.send(b"k")

        def finished(tags: list) -> bool:
            nonlocal child_pid
            if "ctl" not in tags:
                return ending.reason is None and watch.complete_document()
            try:
                message = ctl.recv(4096)
            except OSError:
                message = b""
            if not message:
                # The template died: without a PID namespace per template its child may live on.
                ending.template_lost = True
                if child_pid is not None and template.level != "bwrap":
                    for kill_fn in (os.killpg, os.kill):
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            kill_fn(child_pid, signal.SIGKILL)
                registry.discard(template)
                return True
            report = json.loads(message)
            if "pid" in report:
                child_pid = report["pid"]
                return False
            ending.status = report["status"]
            ending.cpu_seconds = report.get("cpu")
            ending.oom_kills = report.get("oom_kills", 0)
            if report.get("reason") and ending.reason is None:
                ending.reason = report["reason"]
            return True

        # The template enforces the wall clock itself; the parent's deadline is only a backstop
        # for a template that failed to report a run past its limit.
        backstop = started + job.limits.wall_seconds + BACKSTOP_SECONDS
        _watch_until_end(
            watch,
            job,
            is_cancelled=is_cancelled,
            finished=finished,
            kill=lambda reason: _warm_kill(reason, kill, template, ending),
            deadline=backstop,
        )
        if ending.template_lost and child_pid is None:
            raise _TemplateLost
        watch.drain(time.monotonic() + DRAIN_GRACE_SECONDS)
        result = _memory_limit_from_cgroup(_conclude(job, watch, ending, started), job, ending)
    except BaseException:
        watch.close()
        ctl.close()
        if uid_fd is not None:
            UidPool.release(uid_fd)
        raise
    watch.close()
    callbacks = [release]
    if uid_fd is not None:
        callbacks.insert(0, lambda: UidPool.release(uid_fd))
    if ending.status is None and not ending.template_lost:
        reaper.wait_for_exit(ctl, callbacks, backstop=started + job.limits.wall_seconds + BACKSTOP_SECONDS)
    else:
        ctl.close()
        for callback in callbacks:
            callback()
    return result


def _memory_limit_from_cgroup(result: Result, job: Job, ending: _Ending) -> Result:
    """A run the OOM killer of its own memory cgroup ended is over its memory limit, not crashed:
    memory that is no address space (tmpfs, shared memory, memfd) hits the cgroup, not RLIMIT_AS."""
    if ending.oom_kills and result.failure is Failure.CRASHED:
        result.failure = Failure.MEMORY_LIMIT
        result.error_message = (
            f"Memory limit of {job.limits.memory_bytes // 1024**2} MB reached: the run's memory, counting "
            "files in /tmp and /dev/shm and shared memory, went over it and the kernel killed it"
        )
    return result


class _Reaper:
    """Waits, off the caller's path, for the exit report of runs that have already answered."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.thread: threading.Thread | None = None

    def wait_for_exit(self, ctl: socket.socket, callbacks: list, *, backstop: float) -> None:
        with self.lock:
            self.selector.register(ctl, selectors.EVENT_READ, (callbacks, backstop))
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="runner-reaper", daemon=True)
                self.thread.start()
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_w, b"x")

    def _done(self, ctl: socket.socket, callbacks: list) -> None:
        with self.lock:
            self.selector.unregister(ctl)
        ctl.close()
        for callback in callbacks:
            callback()

    def _loop(self) -> None:
        while True:
            for key, _ in self.selector.select(1.0):
                ctl = cast(socket.socket, key.fileobj)  # only the wake pipe (data None) is not a socket
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                    continue
                try:
                    message = ctl.recv(4096)
                except OSError:
                    message = b""
                if message and b'"status"' not in message:
                    continue  # the child's pid, sent before the run started
                self._done(ctl, key.data[0])
            now = time.monotonic()
            with self.lock:
                overdue = [key for key in self.selector.get_map().values() if key.data and now > key.data[1]]
            for key in overdue:
                self._done(cast(socket.socket, key.fileobj), key.data[0])


reaper = _Reaper()


def _warm_kill(reason: str, kill: Callable[[str], None], template: Template, ending: _Ending) -> None:
    if reason == "timeout":
        # The template should have killed the run at its wall clock already: it is stuck.
        ending.reason = "timeout"
        registry.discard(template)
    else:
        kill(reason)


_slots_lock = threading.Lock()
_slots: threading.BoundedSemaphore | None = None
_slots_size = 0


def _fresh_state_in_forked_child() -> None:
    global reaper, _slots_lock, _slots, _slots_size
    reaper = _Reaper()
    _slots_lock = threading.Lock()
    _slots = None
    _slots_size = 0


os.register_at_fork(after_in_child=_fresh_state_in_forked_child)


def _slot_semaphore() -> threading.BoundedSemaphore:
    global _slots, _slots_size
    settings = config.current()
    with _slots_lock:
        if _slots is None or _slots_size != settings.max_concurrent:
            _slots = threading.BoundedSemaphore(settings.max_concurrent)
            _slots_size = settings.max_concurrent
        return _slots


def _light(job: Job, settings: config.Settings) -> bool:
    return settings.light_template and not job.graphics and imports_only_stdlib(job.source)


def _acquire_slot(settings: config.Settings) -> threading.BoundedSemaphore:
    slots = _slot_semaphore()
    if not slots.acquire(timeout=settings.queue_timeout):
        raise RunnerBusy(
            f"All {settings.max_concurrent} run slots are busy; no slot freed within {settings.queue_timeout:g} seconds"
        )
    return slots


@contextlib.contextmanager
def slot() -> Iterator[None]:
    """Hold one run slot of this process for a run made of several jobs (apply's pieces).

    The jobs are then started with `run(job, in_slot=True)`: the run counts once against
    `max_concurrent`, and its own degree of parallelism (LOW 2, MEDIUM 4, HIGH 8) is not lowered
    by a per-process cap meant for whole runs. Raises RunnerBusy as `run()` does.
    """
    slots = _acquire_slot(config.current())
    try:
        yield
    finally:
        slots.release()


def run(
    job: Job,
    *,
    is_cancelled: Callable[[], bool] | None = None,
    in_slot: bool = False,
    tap: Tap | None = None,
) -> Result:
    """Run `job` in a fresh, bounded child process and return what happened.

    Raises RunnerBusy when every run slot of this process stays taken for `queue_timeout` seconds.
    `in_slot`: the caller holds a slot already (`slot()`), and this job takes none of its own.
    `tap`: receives the child's stdout and stderr as they are read, for live output (runner.live).
    """
    settings = config.current()
    slots = None if in_slot else _acquire_slot(settings)
    # The slot is held until the child has exited, which for a warm run can be after we answer.
    released = threading.Event()
    handed_over = False

    def release() -> None:
        if not released.is_set():
            released.set()
            if slots is not None:
                slots.release()

    try:
        started = time.monotonic()
        python = job.python or default_python()
        if not os.access(python, os.X_OK):
            raise RunnerUnavailable(f"the environment's interpreter {python} does not exist or cannot be run")
        if settings.mode == "cold":
            return _run_cold(job, is_cancelled, started, tap)
        network = settings.network or job.limits.network
        for attempt in (1, 2):
            try:
                template = registry.get(python, network, light=_light(job, settings))
                started = time.monotonic()  # a template's start-up is not part of the run
            except TemplateError:
                if settings.isolation != "auto":
                    raise
                registry.levels_tried["zygote"] = "no template could start; running cold"
                return _run_cold(job, is_cancelled, started, tap)
            try:
                result = _run_warm(job, template, is_cancelled, started, release, tap)
                handed_over = True
                return result
            except _TemplateLost:
                registry.discard(template)
                if attempt == 2:
                    raise TemplateError("the runner's template died twice before starting the run") from None
        raise AssertionError("unreachable")
    finally:
        if not handed_over:
            release()
