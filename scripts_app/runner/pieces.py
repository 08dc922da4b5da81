"""The parent side of a multi-piece child: one child of the warm template serves many pieces of ONE run.

An apply run with degree d starts d children; each takes the next piece of its run until none are
left (`serve_pieces`). The child is forked, bounded and confined exactly as a one-job child
(namespaces, seccomp, cgroup, run uid, rlimits, the run's wall clock), but reads its job pipe as
frames: the common job (source, function, parameters, limits) once, then per piece a small JSON
header and the piece's rows as raw Arrow IPC bytes, each written once from a zero-copy slice of the
input. The child answers each piece with one result frame (the piece's number and the same
three-line document as a one-job child), which the parent checks with `read_document` exactly as a
one-job result. The parent sends the next piece only after it has this one's result and has read
what the child printed before it: each piece's stdout and stderr are its own, cut as a one-job run's.

Pieces of different runs never share a child. What pieces of one run share, and why that is
acceptable, is in docs/runner.md ("Apply runs: several pieces per child").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from scripts_app.runner import config
from scripts_app.runner.execution import (
    BACKSTOP_SECONDS,
    DRAIN_GRACE_SECONDS,
    POLL_SECONDS,
    _Capture,
    _conclude,
    _Ending,
    _light,
    _memory_limit_from_cgroup,
    _pipe,
    _TemplateLost,
    _Watch,
    reaper,
)
from scripts_app.runner.live import Tap
from scripts_app.runner.templates import Template, TemplateError, UidPool, base_env, default_python, registry
from scripts_app.runner.types import Job, Result, RunnerUnavailable

FRAME = struct.Struct(">Q")  # a job-pipe frame: its length, then its bytes (harness.read_frame)
PIECE_RESULT = struct.Struct(">QQ")  # a result frame: the piece's number, the document's length
PIECE_CPU_EXIT = 128 + signal.SIGXCPU  # harness.PIECE_CPU_EXIT: a piece went over its CPU seconds


@dataclasses.dataclass
class PieceJob:
    """One piece handed to a child: its number in the run, its arguments, its rows as Arrow IPC."""

    seq: int
    args: tuple = ()
    # The rows as Arrow IPC: one bytes-like or a list of them (a pyarrow Buffer is one: the table's own
    # memory, sent without a copy), or None for a piece without rows.
    arrow: Any = None
    tap: Tap | None = None


def _job_document(job: Job, data_options: dict | None, child_cpu_seconds: int | None) -> bytes:
    document: dict[str, Any] = {
        "child_cpu_seconds": child_cpu_seconds,
        "source": job.source,
        "function": job.function,
        "args": [],
        "kwargs": job.kwargs,
        "graphics": job.graphics,
        "limits": dataclasses.asdict(job.limits),
        "frame_orient": job.frame_orient,
    }
    if data_options is not None:
        document["data"] = data_options
    return json.dumps(document).encode()


class _Writer:
    """The job pipe, written without blocking: a stuck child never holds the parent's thread."""

    def __init__(self, fd: int, selector: selectors.BaseSelector) -> None:
        self.fd: int | None = fd
        self.selector = selector
        self.parts: list[memoryview] = []
        os.set_blocking(fd, False)

    def send(self, *parts: Any) -> None:
        self.parts.extend(memoryview(part).cast("B") for part in parts if len(part))
        self.flush()

    def flush(self) -> None:
        if self.fd is None:
            return
        try:
            while self.parts:
                written = os.write(self.fd, self.parts[0])
                self.parts[0] = self.parts[0][written:]
                if not self.parts[0]:
                    self.parts.pop(0)
        except BlockingIOError:
            pass
        except OSError:
            self.parts.clear()  # the child is gone; its end is reported on the control socket
        registered = self.fd in self.selector.get_map()
        if self.parts and not registered:
            self.selector.register(self.fd, selectors.EVENT_WRITE, "write")
        elif not self.parts and registered:
            self.selector.unregister(self.fd)

    def close(self) -> None:
        if self.fd is None:
            return
        if self.fd in self.selector.get_map():
            self.selector.unregister(self.fd)
        os.close(self.fd)
        self.fd = None
        self.parts.clear()


class _PieceWatch(_Watch):
    """A `_Watch` whose result pipe carries one frame per piece, and whose captures are per piece."""

    def __init__(self, job: Job, out_r: int, err_r: int, res_r: int) -> None:
        super().__init__(job, out_r, err_r, res_r)
        self.out_fd, self.err_fd = out_r, err_r
        self.raw = bytearray()
        self.expect: int | None = None
        self.ready = False
        self.discard = False

    def begin(self, seq: int, tap: Tap | None) -> None:
        """Start the next piece: fresh captures and result."""
        limit = self.limits.max_stream_bytes
        self.stdout = _Capture(limit, tap, "stdout")
        self.stderr = _Capture(limit, tap, "stderr")
        self.result = bytearray()
        self.document = None
        self.invalid = None
        self.result_overflow = False
        self.ready = False
        self.expect = seq
        if self.discard:
            # The pipe was flooded between two pieces: nothing more is read from this child.
            self.result_overflow = self.ready = True
            return
        self._parse()

    def _keep_result(self, data: bytes) -> None:
        if self.discard:
            return
        self.raw += data
        self._parse()
        if len(self.raw) > self.result_cap + PIECE_RESULT.size:
            # Written while no piece waits for it (a thread of the script): never kept.
            self.discard = True
            self.raw = bytearray()

    def _keep_output(self, fd: int, sink, data: bytes) -> None:
        # The captures are this piece's, not the ones registered when the child started.
        (self.stdout if fd == self.out_fd else self.stderr).feed(data)

    def _parse(self) -> None:
        if self.ready or self.expect is None or len(self.raw) < PIECE_RESULT.size:
            return
        seq, length = PIECE_RESULT.unpack_from(self.raw)
        if length > self.result_cap:
            # Nothing more is read from this child: its piece is over the limit, the child is ended.
            self.result_overflow = self.ready = self.discard = True
            self.raw = bytearray()
            return
        end = PIECE_RESULT.size + length
        if len(self.raw) < end:
            return
        self.result = self.raw[PIECE_RESULT.size : end]
        del self.raw[:end]
        self.ready = True
        if seq != self.expect:
            self.invalid = f"it answers piece {seq} while piece {self.expect} was running"

    def drain_streams(self) -> None:
        """Read what stdout and stderr hold now: all the child printed before it wrote the result."""
        for fd in (self.out_fd, self.err_fd):
            while fd in self.open_fds:
                before = self.stdout.total + self.stderr.total
                self._read(fd, None)
                if fd in self.open_fds and self.stdout.total + self.stderr.total == before:
                    break


def _cpu_verdict(ending: _Ending, child_cpu_seconds: int) -> None:
    """The child's CPU time is its pieces' together: a piece over its own CPU seconds is the
    harness's exit code for SIGXCPU; past the child's hard limit it is SIGKILL at that much CPU.
    Read either as SIGXCPU; any other CPU figure says nothing of the piece's."""
    status = ending.status
    if status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == PIECE_CPU_EXIT:
        ending.status = signal.SIGXCPU  # a wait status "killed by SIGXCPU"
    elif ending.cpu_seconds is not None and ending.cpu_seconds >= child_cpu_seconds:
        ending.status = signal.SIGXCPU if status is not None and os.WIFSIGNALED(status) else status
    ending.cpu_seconds = None


def serve_pieces(
    job: Job,
    take: Callable[[], PieceJob | None],
    give: Callable[[PieceJob, Result], None],
    *,
    data_options: dict | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    child_cpu_seconds: int | Callable[[], int] | None = None,
) -> bool:
    """Serve pieces of one run in one child until `take()` gives None; `give()` gets each result.

    `job` is what all pieces share (its `data` and `args` are ignored; `data_options` holds
    oml_input_type and oml_na_omit); its wall clock bounds the child, so it is what is left of the
    run's. `job.limits.cpu_seconds` is each piece's; `child_cpu_seconds` bounds the child's pieces
    together (the run's pieces times that, say; a callable is asked when the first piece is taken).
    The child starts at once and gets the job with its first piece: `take()` may wait (for the run's
    input query, say) while the child is made. Returns False, having taken no piece, when no warm
    template can run it (the cold mode, or "auto" isolation with no template): the caller then runs
    its pieces one job each.
    The caller holds the run's slot (`runner.slot()`).
    """
    settings = config.current()
    python = job.python or default_python()
    if not os.access(python, os.X_OK):
        raise RunnerUnavailable(f"the environment's interpreter {python} does not exist or cannot be run")
    if settings.mode == "cold":
        return False
    network = settings.network or job.limits.network
    light = data_options is None and _light(job, settings)
    for attempt in (1, 2):
        try:
            template = registry.get(python, network, light=light)
        except TemplateError:
            if settings.isolation != "auto":
                raise
            return False
        try:
            _serve_warm(job, template, take, give, data_options, is_cancelled, child_cpu_seconds)
            return True
        except _TemplateLost:
            registry.discard(template)
            if attempt == 2:
                raise TemplateError("the runner's template died twice before starting the run") from None
    raise AssertionError("unreachable")


def _serve_warm(
    job: Job,
    template: Template,
    take: Callable[[], PieceJob | None],
    give: Callable[[PieceJob, Result], None],
    data_options: dict | None,
    is_cancelled: Callable[[], bool] | None,
    child_cpu_seconds: int | Callable[[], int] | None,
) -> None:
    started = time.monotonic()
    job_r, job_w = _pipe()
    out_r, out_w = _pipe()
    err_r, err_w = _pipe()
    res_r, res_w = _pipe()
    ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    uid = uid_fd = None
    if template.uses_run_uid and registry.uid_pool is not None:
        uid, uid_fd = registry.uid_pool.acquire()
    header = {"wall_seconds": job.limits.wall_seconds, "uid": uid, "env": {**base_env()}, "pieces": True}
    watch = _PieceWatch(job, out_r, err_r, res_r)
    writer = _Writer(job_w, watch.selector)
    ending = _Ending()
    backstop = started + job.limits.wall_seconds + BACKSTOP_SECONDS
    current: PieceJob | None = None
    piece_started = started
    child_pid = None
    done = False  # every piece is taken and the job pipe closed: the child's end is expected
    killed = False
    try:
        try:
            template.submit(header, [job_r, out_w, err_w, res_w, ctl_child.fileno()])
        except OSError:
            raise _TemplateLost from None
        finally:
            for fd in (job_r, out_w, err_w, res_w):
                os.close(fd)
            ctl_child.close()
        watch.add(ctl, "ctl")
        sent_job = False

        def kill(reason: str) -> None:
            nonlocal killed
            killed = True
            if reason == "timeout":
                # The template should have ended the child at its wall clock already: it is stuck.
                ending.reason = "timeout"
                registry.discard(template)
                return
            if ending.reason is None:
                ending.reason = reason
            with contextlib.suppress(OSError):
                ctl.send(b"k")

        def next_piece() -> None:
            nonlocal current, piece_started, done, sent_job, child_cpu_seconds
            current = None if (killed or done) else take()
            if current is None:
                done = True
                writer.close()  # end of file: the child exits
                return
            piece_started = time.monotonic()
            watch.begin(current.seq, current.tap)
            parts: list[Any] = []
            if not sent_job:
                # The job goes with the first piece: what it says of the pieces is known by then.
                sent_job = True
                if callable(child_cpu_seconds):
                    child_cpu_seconds = child_cpu_seconds()
                document = _job_document(job, data_options, child_cpu_seconds)
                parts += [FRAME.pack(len(document)), document]
            head = json.dumps({"seq": current.seq, "args": list(current.args), "data": current.arrow is not None})
            parts += [FRAME.pack(len(head)), head.encode()]
            if current.arrow is not None:
                rows = current.arrow if isinstance(current.arrow, list) else [current.arrow]
                parts += [FRAME.pack(sum(len(part) for part in rows)), *rows]
            writer.send(*parts)

        next_cancel_check = 0.0
        while True:
            tags = watch.poll(POLL_SECONDS)
            if "write" in tags:
                writer.flush()
            if "ctl" in tags:
                try:
                    message = ctl.recv(4096)
                except OSError:
                    message = b""
                if not message:
                    ending.template_lost = True
                    registry.discard(template)
                    if child_pid is None:
                        raise _TemplateLost
                    break
                report = json.loads(message)
                if "pid" in report:
                    child_pid = report["pid"]
                    next_piece()
                else:
                    ending.status = report["status"]
                    ending.cpu_seconds = report.get("cpu")
                    ending.oom_kills = report.get("oom_kills", 0)
                    if report.get("reason") and ending.reason is None:
                        ending.reason = report["reason"]
                    break
            if current is not None and watch.ready:
                watch.drain_streams()
                piece, current = current, None
                result = _conclude(job, watch, _Ending(status=0), piece_started)
                clean = watch.document is not None
                give(piece, result)
                if not clean:
                    # Over its size, or not a document the harness writes: the frames can no longer be trusted.
                    kill("invalid")
                next_piece()
            if done and ending.status is None and not killed:
                break  # answered; the child's exit is awaited off this path (the reaper)
            now = time.monotonic()
            if killed:
                if now >= backstop + BACKSTOP_SECONDS:
                    break
                continue
            if is_cancelled is not None and now >= next_cancel_check:
                next_cancel_check = now + POLL_SECONDS
                if is_cancelled():
                    kill("cancelled")
            if now >= backstop:
                kill("timeout")
        if current is None and not done and child_pid is not None:
            # The child ended between two pieces (a thread of the script ended it, or its time was
            # up): the next piece is the one that cannot run.
            current = take()
            piece_started = time.monotonic()
            if current is not None:
                watch.begin(current.seq, current.tap)
        if current is not None:
            watch.drain(time.monotonic() + DRAIN_GRACE_SECONDS)
            # A crash, a kill (time, cancel, memory, CPU), or the template's death: the piece is named.
            total = child_cpu_seconds if isinstance(child_cpu_seconds, int) else None
            _cpu_verdict(ending, total or job.limits.cpu_seconds)
            give(current, _memory_limit_from_cgroup(_conclude(job, watch, ending, piece_started), job, ending))
            current = None
    except BaseException:
        writer.close()
        watch.close()
        ctl.close()
        if uid_fd is not None:
            UidPool.release(uid_fd)
        raise
    writer.close()
    watch.close()
    callbacks = [] if uid_fd is None else [lambda: UidPool.release(uid_fd)]
    if ending.status is None and not ending.template_lost:
        reaper.wait_for_exit(ctl, callbacks, backstop=backstop)
    else:
        ctl.close()
        for callback in callbacks:
            callback()
