"""The child side of a run: runs one user function and writes its result to a pipe.

This file is executed by path with `python -I` in the run's own interpreter, so it must not import
anything outside the standard library at import time (numpy, pandas and matplotlib are only used
when the user's code has already loaded them). Two entry points:

    python -I harness.py cold RESULT_FD        one run; the job arrives as JSON on stdin
    python -I harness.py zygote CONTROL_FD     a warm template that forks one child per run

The result travels on its own pipe (never stdout), as three lines: a JSON object
`{"outcome", "failure", "error_message", "traceback"}`, the return value's JSON text, and a JSON
list of figures `[{"title", "png"}]` with the PNG bytes in base64.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import ctypes
import datetime
import errno
import fcntl
import gc
import io
import json
import linecache
import math
import os
import resource
import selectors
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
import types
import zlib
from typing import Any

SCRIPT_FILENAME = "<script>"
MAX_NESTING = 100
NOFILE_LIMIT = 1024

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_BIND = 0x1000
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS_LOCKED, SECBIT_NO_CAP_AMBIENT_RAISE and their locks.
SECURE_NOROOT_ALL_LOCKED = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64 alike (the new syscall table)
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def unshare(flags: int) -> None:
    # os.unshare only arrived in Python 3.12.
    _check(libc().unshare(flags), "unshare")


def setns(fd: int, flags: int) -> None:
    _check(libc().setns(fd, flags), "setns")


# --------------------------------------------------------------------------------------------
# Running the user's function


class RunFailure(Exception):
    def __init__(self, failure: str, message: str, tb: str = "") -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message
        self.tb = tb


def _user_traceback(exc: BaseException) -> str:
    """The traceback of `exc` with only the frames of the user's script."""
    if isinstance(exc, SyntaxError) and exc.filename == SCRIPT_FILENAME:
        return "".join(traceback.format_exception_only(type(exc), exc))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == SCRIPT_FILENAME]
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.StackSummary.from_list(frames).format()
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def _error_message(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _classify(exc: BaseException, limits: dict) -> RunFailure:
    """Turn an exception from the user's code into the failure it stands for."""
    tb = _user_traceback(exc)
    message = _error_message(exc)
    if isinstance(exc, MemoryError):
        limit_mb = limits["memory_bytes"] // 1024**2
        return RunFailure("memory_limit", f"Memory limit of {limit_mb} MB reached ({message})", tb)
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return RunFailure(
            "file_too_large", f"File size limit of {limits['max_file_bytes']} bytes reached ({message})", tb
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and limits.get("tmp_bytes"):
        size_mb = limits["tmp_bytes"] // 1024**2
        text = f"The run's /tmp and /dev/shm are limited to {size_mb} MB each and are full ({message})"
        return RunFailure("file_too_large", text, tb)
    process_limit = (isinstance(exc, OSError) and exc.errno == errno.EAGAIN) or (
        isinstance(exc, RuntimeError) and "can't start new thread" in str(exc)
    )
    if process_limit:
        return RunFailure(
            "process_limit",
            f"Process and thread limit of {limits['max_processes']} reached ({message})",
            tb,
        )
    return RunFailure("script_error", message, tb)


def load_input(data: dict):
    """The rows of OML's table/row/group apply as the function's first argument, per oml_input_type."""
    if "arrow" in data:
        # A piece of a multi-piece child (serve_pieces): raw Arrow IPC bytes, read without a copy.
        import pyarrow as pa

        with pa.ipc.open_stream(pa.py_buffer(data["arrow"])) as reader:
            table = reader.read_all()
    else:
        # Imported only here: pyarrow.parquet brings pyarrow.fs and its cloud file systems (ssl and
        # all), some 30 ms that a piece child's first piece paid for rows that come as Arrow IPC.
        import pyarrow.parquet as pq

        # One thread: the run is bounded in processes and threads, and its piece is small.
        table = pq.read_table(io.BytesIO(base64.b64decode(data["parquet"])), use_threads=False)
    frame = table.to_pandas(use_threads=False)
    if data.get("na_omit"):
        frame = frame.dropna().reset_index(drop=True)
    input_type = data.get("input_type", "default")
    if input_type == "numpy.recarray":
        return frame.to_records(index=False)
    if input_type == "default":
        import numpy as np
        import pandas as pd

        if len(frame.columns) and all(pd.api.types.is_numeric_dtype(t) for t in frame.dtypes):
            return frame.to_numpy(dtype=np.float64, na_value=np.nan)
    return frame


def call_user_function(job: dict):
    source = job["source"]
    # A fresh module per call: a piece of a multi-piece child (serve_pieces) sees no global of the last.
    linecache.cache[SCRIPT_FILENAME] = (len(source), None, source.splitlines(True), SCRIPT_FILENAME)
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    sys.argv = [""]
    args = tuple(job.get("args", ()))
    if job.get("data") is not None:
        try:
            args = (load_input(job["data"]), *args)
        except MemoryError as exc:
            raise _classify(exc, job["limits"]) from None
        except Exception as exc:  # noqa: BLE001 - a broken input is the run's failure, not the harness's
            raise RunFailure("script_error", f"The input data could not be loaded: {_error_message(exc)}") from None
    try:
        code = compile(source, SCRIPT_FILENAME, "exec")
    except (RecursionError, MemoryError) as exc:
        # The compiler's own bound on nesting (`x = -(-(-...))`, `1+1+...`), not the run's memory.
        raise RunFailure(
            "script_error",
            f"SyntaxError: the source is too deeply nested or too large to compile ({type(exc).__name__})",
        ) from None
    except BaseException as exc:  # noqa: BLE001 - a syntax error is the user's
        raise _classify(exc, job["limits"]) from None
    try:
        exec(code, module.__dict__)
        function = module.__dict__.get(job["function"])
        if not callable(function):
            raise NameError(f"the script defines no function named {job['function']!r}")
        return function(*args, **job.get("kwargs", {}))
    except BaseException as exc:  # noqa: BLE001 - everything the user's code raises is reported
        raise _classify(exc, job["limits"]) from None


class NotSerializable(Exception):
    pass


def _key(key) -> str:
    if isinstance(key, str):
        return key
    plain = to_plain(key, MAX_NESTING)
    return plain if isinstance(plain, str) else str(plain)


def _frame_json(frame, orient: str) -> str:
    def refuse(obj):
        raise NotSerializable(f"a value of type {type(obj).__module__}.{type(obj).__qualname__}")

    return frame.to_json(orient=orient, date_format="iso", double_precision=15, default_handler=refuse)


def to_plain(value, depth: int = 0):
    """`value` as plain JSON types: NaN and infinities become None, DataFrames lists of records."""
    if depth > MAX_NESTING:
        raise NotSerializable(f"a value nested more than {MAX_NESTING} levels deep")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [to_plain(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {_key(k): to_plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (datetime.date, datetime.time)):
        pd = sys.modules.get("pandas")
        if pd is not None and value is pd.NaT:
            return None
        return value.isoformat()
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(value, np.datetime64):
            return None if np.isnat(value) else str(value)
        if isinstance(value, np.generic):
            return to_plain(value.item(), depth + 1)
        if isinstance(value, np.ndarray):
            return to_plain(value.tolist(), depth + 1)
    pd = sys.modules.get("pandas")
    if pd is not None:
        if isinstance(value, pd.DataFrame):
            return json.loads(_frame_json(value, "records"))
        if isinstance(value, pd.Series):
            return json.loads(_frame_json(value, "values"))
        if isinstance(value, pd.Index):
            return to_plain(value.tolist(), depth + 1)
        if value is pd.NA or value is pd.NaT:
            return None
    raise NotSerializable(f"a value of type {type(value).__module__}.{type(value).__qualname__}")


def _length(value) -> int | None:
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, (pd.DataFrame, pd.Series)):
        return len(value)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray) and value.ndim > 0:
        return len(value)
    return None


def encode_value(value, limits: dict, frame_orient: str = "records") -> str:
    """The JSON text of the return value, within the output and size limits."""
    length = _length(value)
    if length is not None and length > limits["max_output_items"]:
        raise RunFailure("output_too_long", f"Output exceeds maximum length {limits['max_output_items']}")
    try:
        pd = sys.modules.get("pandas")
        if pd is not None and isinstance(value, pd.DataFrame):
            text = _frame_json(value, frame_orient)
        elif pd is not None and isinstance(value, pd.Series):
            text = _frame_json(value, "values")
        else:
            plain = to_plain(value)
            # Counted again on the plain copy: a list subclass's own len() may lie.
            if isinstance(plain, (list, dict)) and len(plain) > limits["max_output_items"]:
                raise RunFailure("output_too_long", f"Output exceeds maximum length {limits['max_output_items']}")
            text = json.dumps(plain, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except NotSerializable as exc:
        raise RunFailure(
            "not_serializable",
            f"The function returned {exc}, which cannot be converted to JSON. "
            "Return None, a bool, number, str, list, tuple, dict, numpy value or pandas DataFrame/Series.",
        ) from None
    except RecursionError:
        raise RunFailure("not_serializable", "The returned value is nested too deeply to convert to JSON") from None
    except (ValueError, UnicodeError, OverflowError) as exc:
        # An int of more than 4300 digits, a lone surrogate in a DataFrame's strings, ...
        raise RunFailure(
            "not_serializable", f"The returned value cannot be converted to JSON: {_error_message(exc)}"
        ) from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits["max_result_bytes"]:
        raise RunFailure(
            "result_too_large",
            f"The result is {size} bytes as JSON, over the limit of {limits['max_result_bytes']} bytes",
        )
    return text


def _figure_title(figure) -> str | None:
    suptitle = getattr(figure, "_suptitle", None)
    if suptitle is not None and suptitle.get_text():
        return suptitle.get_text()
    if figure.axes and figure.axes[0].get_title():
        return figure.axes[0].get_title()
    return None


# zlib's fastest level for a figure's PNG: about 2.5 ms less than Pillow's default (6) for a 640x480
# line plot here, for a file about a fifth larger (27 KB -> 33 KB); the pixels are the same.
PNG_COMPRESS_LEVEL = 1


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def png_bytes(rgba, dpi: float, software: str) -> bytes:
    """A PNG of an Agg canvas's RGBA pixels (height x width x 4 bytes) with the chunks Pillow writes for
    matplotlib's savefig (IHDR, the Software text, pHYs for the dpi, IDAT, IEND), every row after the
    first filtered as "up" (its difference from the row above).

    Pillow tries four filters on every row and keeps the one whose bytes sum closest to zero: about
    5 ms of a 640x480 figure's 7 ms of encoding here. One filter for every row takes 0.3 ms; "up" keeps
    the files within about a tenth of Pillow's for line plots, histograms, heatmaps and images (none,
    the cheapest, made a 2x2 grid of histograms 60% larger). The pixels, their size, the dpi and the
    text are the same (tests/runner/test_results.py decodes both)."""
    np = sys.modules["numpy"]
    height, width = rgba.shape[0], rgba.shape[1]
    rows = np.ascontiguousarray(rgba, dtype=np.uint8).reshape(height, width * 4)
    # Row by row into the compressor: a filtered copy of the canvas would be 1.2 MB of fresh pages in
    # the child, about 300 page faults (0.5 ms here). The compressor has taken a row when it returns.
    difference = np.empty(width * 4, dtype=np.uint8)
    compressor = zlib.compressobj(PNG_COMPRESS_LEVEL)
    compressed = [compressor.compress(b"\x00"), compressor.compress(rows[0])]
    for above, row in zip(rows, rows[1:], strict=False):
        np.subtract(row, above, out=difference)  # modulo 256, as PNG's filters are
        compressed.append(compressor.compress(b"\x02"))
        compressed.append(compressor.compress(difference))
    compressed.append(compressor.flush())
    pixels_per_metre = struct.pack(">I", int(dpi / 0.0254 + 0.5))
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", struct.pack(">II", width, height) + b"\x08\x06\x00\x00\x00"),
            _png_chunk(b"tEXt", b"Software\x00" + software.encode("latin-1")),
            _png_chunk(b"pHYs", pixels_per_metre + pixels_per_metre + b"\x01"),
            _png_chunk(b"IDAT", b"".join(compressed)),
            _png_chunk(b"IEND", b""),
        )
    )


def _fast_print_png(canvas):
    """A `print_png` for one Agg canvas that draws as matplotlib's does and writes `png_bytes`; None
    when the canvas is not plain Agg (an environment's own backend or matplotlib) or predates the
    calls it relies on. savefig still does everything else (dpi, facecolor, bbox_inches, rcParams)."""
    mpl = sys.modules.get("matplotlib")
    agg = sys.modules.get("matplotlib.backends.backend_agg")
    if mpl is None or agg is None or type(canvas) is not getattr(agg, "FigureCanvasAgg", None):
        return None
    if "print_png" in vars(canvas):
        return None  # the script's own, used by savefig as before

    def print_png(filename_or_obj, *args, metadata=None, pil_kwargs=None, **_print_figure_kwargs):
        if args or metadata or pil_kwargs or not hasattr(filename_or_obj, "write"):
            return agg.FigureCanvasAgg.print_png(
                canvas, filename_or_obj, *args, metadata=metadata, pil_kwargs=pil_kwargs
            )
        agg.FigureCanvasAgg.draw(canvas)
        np = sys.modules["numpy"]
        rgba = np.asarray(canvas.buffer_rgba())
        if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
            return agg.FigureCanvasAgg.print_png(canvas, filename_or_obj)
        software = f"Matplotlib version{mpl.__version__}, https://matplotlib.org/"
        filename_or_obj.write(png_bytes(rgba, canvas.figure.dpi, software))
        return None

    return print_png


def _save_png(figure, buffer) -> None:
    canvas = figure.canvas
    fast = _fast_print_png(canvas)
    if fast is not None:
        # savefig finds the canvas's print_png by name: this instance's, for this one call.
        canvas.print_png = fast
        try:
            figure.savefig(buffer, format="png")
        finally:
            canvas.__dict__.pop("print_png", None)
        return
    try:
        figure.savefig(buffer, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    except TypeError:
        # A matplotlib older than 3.3 (an environment's own) has no pil_kwargs.
        buffer.seek(0)
        buffer.truncate()
        figure.savefig(buffer, format="png")


def collect_figures(limits: dict) -> list[tuple[str | None, bytes]]:
    """Every figure still open, in figure-number order: its title and its PNG in base64."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    numbers = plt.get_fignums()
    if len(numbers) > limits["max_figures"]:
        raise RunFailure(
            "image_too_large", f"{len(numbers)} figures are open, over the limit of {limits['max_figures']}"
        )
    figures = []
    for position, number in enumerate(numbers, start=1):
        figure = plt.figure(number)
        buffer = io.BytesIO()
        try:
            _save_png(figure, buffer)
        except Exception as exc:  # noqa: BLE001 - a figure that cannot be drawn is the script's error
            raise RunFailure(
                "script_error", f"Figure {position} could not be saved as PNG: {_error_message(exc)}"
            ) from None
        png = buffer.getvalue()
        if len(png) > limits["max_image_bytes"]:
            raise RunFailure(
                "image_too_large",
                f"Figure {position} is {len(png)} bytes as PNG, over the limit of {limits['max_image_bytes']} bytes",
            )
        figures.append((_figure_title(figure), base64.b64encode(png)))
    return figures


def figures_line(figures: list[tuple[str | None, bytes]]) -> bytes:
    """The document's figures line, the bytes `json.dumps` writes for `[{"title", "png"}, ...]`: base64
    needs no escaping, so only the titles go through the encoder (a figure's 45 KB through it cost
    about 0.1 ms)."""
    return (
        b"["
        + b", ".join(b'{"title": ' + json.dumps(title).encode() + b', "png": "' + png + b'"}' for title, png in figures)
        + b"]"
    )


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        # A user who closed stdout loses only their own output.
        with contextlib.suppress(Exception):
            stream.flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... cut at {limit} characters ...]"


def execute(job: dict, result_fd: int, *, seq: int | None = None) -> None:
    """Run the job and write its result document to `result_fd`.

    `seq`: the job is piece number `seq` of a multi-piece child (serve_pieces): the document goes
    out as one frame (PIECE_RESULT: seq, length) and the pipe stays open for the next piece.
    """
    limits = job["limits"]
    pid = os.getpid()
    meta = {"outcome": "SUCCEEDED", "failure": None, "error_message": "", "traceback": ""}
    value_text = "null"
    figures: list[tuple[str | None, bytes]] = []
    try:
        value = call_user_function(job)
        if os.getpid() != pid:
            # A process the user's code forked returned into the harness: it has no result to give.
            os._exit(0)
        value_text = encode_value(value, limits, job.get("frame_orient", "records"))
        if job.get("graphics"):
            figures = collect_figures(limits)
    except RunFailure as failure:
        if os.getpid() != pid:
            os._exit(1)
        # A message of any size may be raised; cut, it keeps the document within the parent's cap.
        limit = limits["max_stream_bytes"]
        meta.update(
            outcome="FAILED",
            failure=failure.failure,
            error_message=_cut(failure.message, limit),
            traceback=_cut(failure.tb, limit),
        )
        value_text = "null"
        figures = []
    _flush_std_streams()
    # Three lines: the outcome, the value's JSON text as is (so the service can pass it on without
    # decoding and encoding it again), the figures. JSON text holds no raw newline. Written part by
    # part: a large value is encoded once and never copied into one document.
    parts = [
        json.dumps(meta, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n",
        value_text.encode("utf-8", "surrogatepass"),
        b"\n" + figures_line(figures),
    ]
    if seq is not None:
        parts.insert(0, PIECE_RESULT.pack(seq, sum(map(len, parts))))
    for part in parts:
        _write_all(result_fd, part)
    if seq is None:
        os.close(result_fd)


# Multi-piece children (apply runs): frames on the job pipe and the result pipe.
FRAME = struct.Struct(">Q")  # a job-pipe frame: its length, then its bytes
PIECE_RESULT = struct.Struct(">QQ")  # a result frame: the piece's number and the document's length
PIECE_CPU_EXIT = 128 + signal.SIGXCPU  # a piece went over its CPU seconds (serve_pieces)


def _read_exact(fd: int, size: int) -> bytearray | None:
    """`size` bytes from `fd`, read into one buffer, or None at a clean end of file before the first byte."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = os.readv(fd, [view[got:]])
        if not count:
            if got == 0:
                return None
            raise EOFError("the job pipe ended inside a frame")
        got += count
    view.release()
    return buffer


def read_frame(fd: int) -> bytearray | None:
    header = _read_exact(fd, FRAME.size)
    if header is None:
        return None
    (length,) = FRAME.unpack(header)
    return _read_exact(fd, length) if length else bytearray()


def _between_pieces() -> None:
    """What one piece leaves in the interpreter that the next must not see: open figures and the
    script's module. Files in /tmp and imported modules stay (docs/runner.md). The piece's rows and
    values go by reference counting; cycles are left to the collector (a full collection per piece
    costs more than a light piece's work)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        with contextlib.suppress(Exception):
            plt.close("all")
    sys.modules.pop("__main__", None)


def _piece_cpu_limit(per_piece: int) -> None:
    """Each piece gets its own CPU seconds: the soft limit (SIGXCPU) is moved to what this process
    used so far plus a piece's; the hard limit, set once for the child, bounds all its pieces."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + per_piece
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def serve_pieces(job: dict, job_r: int, result_fd: int) -> None:
    """Run pieces of one apply run until the parent closes the job pipe.

    Each piece is a frame with its JSON header {"seq", "args", "data"}, followed, when "data" is
    true, by a frame of the piece's rows as Arrow IPC. The parent sends the next piece only after
    it has this one's result, so what a piece prints before its result is that piece's output.
    """
    # The input's options (oml_input_type, oml_na_omit): the same for every piece that has rows.
    options = job.pop("data", None) or {}
    per_piece = max(1, int(job["limits"]["cpu_seconds"]))
    # A piece past its CPU seconds gets SIGXCPU; as PID 1 of its namespace the child would ignore it
    # by default, so the harness ends the child with an exit code the parent reads as that signal.
    signal.signal(signal.SIGXCPU, lambda *_: os._exit(PIECE_CPU_EXIT))
    while (frame := read_frame(job_r)) is not None:
        _piece_cpu_limit(per_piece)
        piece = json.loads(frame)
        piece_job = {**job, "args": piece.get("args", [])}
        if piece.get("data"):
            rows = read_frame(job_r)
            if rows is None:
                raise EOFError("the job pipe ended before a piece's rows")
            piece_job["data"] = {**options, "arrow": rows}
            del rows
        execute(piece_job, result_fd, seq=int(piece["seq"]))
        del piece_job
        _between_pieces()


def apply_rlimits(limits: dict, *, nproc: bool, cpu_hard: int | None = None) -> None:
    cpu = max(1, int(limits["cpu_seconds"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu_hard or cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["max_file_bytes"], limits["max_file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_LIMIT, NOFILE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if nproc:
        # Counted per real uid, and not enforced for root: only meaningful with a run uid of its own.
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["max_processes"], limits["max_processes"]))


def reseed_random() -> None:
    """A forked child inherits the template's random state; every run must get its own."""
    import random

    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()


# --------------------------------------------------------------------------------------------
# Cold start: one interpreter per run


def cold_main(result_fd: int) -> None:
    job = json.loads(sys.stdin.buffer.read())
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)
    apply_rlimits(job["limits"], nproc=False)
    execute(job, result_fd)
    _flush_std_streams()
    os._exit(0)


# --------------------------------------------------------------------------------------------
# Warm start: the template ("zygote")


def _preload(modules: list[str]) -> list[str]:
    import importlib

    loaded = []
    for name in modules:
        try:
            if name.startswith("matplotlib"):
                import matplotlib

                matplotlib.use("Agg")
            importlib.import_module(name)
        except ImportError:
            # An environment without one of them still runs; its runs import what they need.
            continue
        loaded.append(name)
    _warm_up()
    return loaded


# Compiled and run once in every template (_warm_up): the first compile() in a process sets up the
# parser, which cost each run's child about 1 ms of CPU (and 160 more page faults) when its own
# script was the first.
WARM_UP_SOURCE = """
import math

class Point:
    def __init__(self, x=0.0, *args, **kwargs):
        self.x = x

def warm(values, scale=2, *, name="w"):
    total = 0
    for index, value in enumerate(values):
        if value is None or not isinstance(value, (int, float)):
            continue
        total += value * scale
    try:
        ratio = total / len(values)
    except ZeroDivisionError:
        ratio = math.nan
    text = f"{name}: {total!r} {ratio:.2f}"
    squares = [v * v for v in values if v] + list({k: v for k, v in zip("ab", values)}.values())
    return {"answer": 42, "ok": True, "text": text, "items": squares, "lambda": (lambda a: a + 1)(1)}
"""


def _warm_up() -> None:
    """Exercise the preloaded libraries once, so what they load or cache lazily on first use
    (fonts, pandas' pyarrow string conversions, the JSON writer) is in the template, not paid again
    by every run. Also the compiler and the harness's own encoding, in every template."""
    namespace: dict[str, Any] = {"__builtins__": builtins, "__name__": "__warm_up__"}
    exec(compile(WARM_UP_SOURCE, "<warm-up>", "exec"), namespace)
    value = namespace["warm"]([1, 2.5, None, 3])
    encode_value(value, {"max_output_items": 100, "max_result_bytes": 1 << 20})
    json.dumps({"outcome": "SUCCEEDED", "failure": None}, ensure_ascii=False)
    pd = sys.modules.get("pandas")
    if pd is not None:
        frame = pd.DataFrame(
            {"n": [1, 2], "x": [0.5, None], "s": ["a", "b"], "d": pd.date_range("2024-01-01", periods=2)}
        )
        frame.to_json(orient="records", date_format="iso", double_precision=15)
        frame["s"].to_json(orient="values")
        frame.describe()
        frame.groupby("s")["n"].sum()
        pa = sys.modules.get("pyarrow")
        if pa is not None:
            # An apply piece's rows arrive as Arrow IPC (serve_pieces): the reader and the conversion.
            with contextlib.suppress(Exception):
                import pyarrow.ipc

                sink = pa.BufferOutputStream()
                # One thread: no pool of Arrow's may exist in a process that forks.
                table = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
                with pyarrow.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
                with pyarrow.ipc.open_stream(sink.getvalue()) as reader:
                    reader.read_all().to_pandas(use_threads=False)
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        figure, axes = plt.subplots()
        axes.plot([0, 1], [0, 1])
        axes.bar([0, 1], [1, 2])
        axes.scatter([0, 1], [1, 0])
        axes.set_title("warm-up")
        figure.suptitle("warm-up")
        _save_png(figure, io.BytesIO())
        plt.close("all")


def _probe(action) -> bool:
    """Whether `action` succeeds in a throwaway child, so the template itself stays untouched."""
    pid = os.fork()
    if pid == 0:
        try:
            action()
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _probe_error(action) -> str | None:
    """What goes wrong when `action` runs in a throwaway child, or None when it succeeds."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            action()
            os._exit(0)
        except BaseException as exc:  # noqa: BLE001
            with contextlib.suppress(BaseException):
                os.write(write_end, f"{type(exc).__name__}: {exc}".encode()[:2000])
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        detail = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return None if os.waitstatus_to_exitcode(status) == 0 else (detail or f"exit status {status}")


def _probe_net_namespaces(own_netns: int) -> None:
    """In a throwaway child: the template can make a run's network namespace, come back, and a
    spare can join it, and a new one reads as untouched."""
    nets = _NetNamespaces(own_netns)
    fd = nets.take()
    if os.stat("/proc/self/ns/net").st_ino == os.fstat(fd).st_ino:
        raise RuntimeError("the template did not come back to its own network namespace")
    setns(fd, CLONE_NEWNET)
    if not net_namespace_untouched():
        raise RuntimeError("a new network namespace does not read as untouched")


def _probe_pid_namespace(own_pidns: int) -> bool:
    try:
        unshare(CLONE_NEWPID)
    except OSError:
        return False
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if os.getpid() == 1 else 1)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) == 0
    finally:
        setns(own_pidns, CLONE_NEWPID)


def _drop_to(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _drop_and_read_interpreter(uid: int) -> None:
    """Drop to `uid` and check it can still read the interpreter's library and site-packages.

    A venv whose base interpreter sits in a 0700 home directory is unreadable after the drop:
    imports not preloaded would fail, so such a template must not drop.
    """
    _drop_to(uid)
    os.listdir(os.path.dirname(os.__file__))
    for path in sys.path:
        if path.endswith("site-packages") and os.path.isdir(path):
            os.listdir(path)


class _Run:
    def __init__(self, pid, pidfd, ctl, workdir, deadline, own_ns):
        self.pid = pid
        self.pidfd = pidfd
        self.ctl = ctl
        self.workdir = workdir
        self.deadline = deadline
        self.own_ns = own_ns
        self.reason = None
        self.ctl_open = True
        self.cgroup = None
        self.netns: int | None = None

    def kill(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        # In its own PID namespace the run is PID 1 there: killing it kills every process it made.
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(self.pid, signal.SIGKILL)


def _close_other_fds(keep: set[int]) -> None:
    """Close every descriptor above 2 but `keep`: close_range(2) over the gaps (os.closerange uses
    it), not a listing of /proc/self/fd (about 0.25 ms of a child's CPU here, most of it page faults)."""
    low = 3
    for fd in sorted(fd for fd in keep if fd >= low):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    # No descriptor of a template or its children can be at or above its soft RLIMIT_NOFILE, which
    # it never lowers (a kernel without close_range would have Python close each number up to it).
    os.closerange(low, max(low, os.sysconf("SC_OPEN_MAX")))


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _mount_setattr(path: str, *, set_flags: int = 0, clear_flags: int = 0, recursive: bool = True) -> None:
    attr = _MountAttr(set_flags, clear_flags, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    result = libc().syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr))
    _check(result, f"mount_setattr {path}")


# The run's own writable places: a fresh tmpfs each, in the run's mount namespace only. The kernel
# frees them, with whatever the run left there, when the namespace dies with the run's last process
# (in that process's exit), so the template never deletes a run's files.
RUN_TMPFS = ("/tmp", "/dev/shm")
# SysV IPC limits of each run's own IPC namespace: its shared memory is bounded like its /dev/shm
# even without a memory cgroup (a segment counts as address space only while attached).
SHM_SEGMENTS = 64
MSG_QUEUES = 16


def _ipc_limits(tmp_bytes: int) -> dict[str, int]:
    return {
        "shmmax": tmp_bytes,
        "shmall": tmp_bytes // os.sysconf("SC_PAGE_SIZE"),
        "shmmni": SHM_SEGMENTS,
        "msgmni": MSG_QUEUES,
    }


def confine_filesystem(fs: dict, *, own_ipc: bool) -> None:
    """In a new mount namespace: a sized tmpfs of its own on /tmp (the run's working directory) and
    /dev/shm, the data folders hidden, everything else read-only, and a /proc of the run's own PID
    namespace. With an IPC namespace of its own, its limits are set while /proc is still writable."""
    unshare(CLONE_NEWNS)
    _check(libc().mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount private")
    if fs.get("new_proc"):
        _check(libc().mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
        if own_ipc:
            for name, value in _ipc_limits(int(fs["tmp_bytes"])).items():
                sysctl = os.open(f"/proc/sys/kernel/{name}", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(sysctl, str(value).encode())
                finally:
                    os.close(sysctl)
    # Folders that must stay visible inside covered ones (an environment inside a hidden data
    # folder, or under /tmp): held by a descriptor opened in this namespace, bound back after.
    held = []
    for path in fs.get("keep", []):
        with contextlib.suppress(OSError):
            held.append((path, os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)))
    for path in fs.get("hide", []):
        if os.path.isdir(path):
            # Writable only until the whole tree is made read-only below, so kept folders can be placed.
            flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
            _check(libc().mount(b"tmpfs", path.encode(), b"tmpfs", flags, b"size=4k"), f"hide {path}")
    options = f"size={int(fs['tmp_bytes'])},mode=0700".encode()
    for path in RUN_TMPFS:
        os.makedirs(path, exist_ok=True)
        _check(libc().mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options), f"tmpfs {path}")
    for path, fd in held:
        os.makedirs(path, exist_ok=True)
        source = f"/proc/self/fd/{fd}".encode()
        _check(libc().mount(source, path.encode(), None, MS_BIND | MS_REC, None), f"keep {path}")
        os.close(fd)
    _mount_setattr("/", set_flags=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
    for path in RUN_TMPFS:
        # Not recursive: a kept folder bound below /tmp stays read-only.
        _mount_setattr(path, clear_flags=MOUNT_ATTR_RDONLY, recursive=False)
    os.chdir("/tmp")


def loopback_up() -> None:
    """Bring up `lo` in a fresh network namespace: the run gets a loopback, and nothing else.
    Through a Unix socket: freed at once, where an inet one stays counted in the namespace's
    sockstat for an RCU grace period, and the namespace would not read as untouched."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


class _SockFprog(ctypes.Structure):
    # The filter's address is that of the bytes object's own buffer, which the structure keeps
    # alive; the kernel copies the program. (A ctypes.create_string_buffer would build a new array
    # type in every spare: about 0.1 ms of its CPU.)
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def load_seccomp(program: bytes) -> None:
    """Install the BPF program libseccomp compiled in the service (scripts_app/runner/syscalls.py)."""
    _check(libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    fprog = _SockFprog(len(program) // 8, program)
    _check(libc().prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


# Per cgroup kind: the file that joins it, the memory limit files (in order), the process limit
# file, and where the kernel counts the run's OOM kills.
CGROUP_FILES: dict[str, dict[str, Any]] = {
    "memory-v1": {"limits": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"), "oom": "memory.oom_control"},
    "pids-v1": {"pids": "pids.max"},
    "unified": {"limits": ("memory.max",), "swap": "memory.swap.max", "pids": "pids.max", "oom": "memory.events"},
}


def _write_at(dir_fd: int, name: str, value: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def join_cgroups(cgroups: list) -> None:
    for _, dir_fd in cgroups:
        _write_at(dir_fd, "cgroup.procs", "0")


def limit_cgroups(cgroups: list, limits: dict) -> None:
    """Bound the run's cgroups to its limits: every page it holds (anonymous, page cache, tmpfs,
    SysV and POSIX shm, memfd) counts against memory_bytes; its tasks against max_processes."""
    for kind, dir_fd in cgroups:
        files = CGROUP_FILES[kind]
        for name in files.get("limits", ()):
            # memory.memsw.* exists only with swap accounting: without it there is no swap to bound.
            with contextlib.suppress(FileNotFoundError):
                _write_at(dir_fd, name, str(limits["memory_bytes"]))
        if "swap" in files:
            with contextlib.suppress(FileNotFoundError):
                _write_at(dir_fd, files["swap"], "0")
        if "pids" in files:
            _write_at(dir_fd, files["pids"], str(limits["max_processes"]))
        os.close(dir_fd)


def cgroup_oom_kills(cgroups: list) -> int:
    for kind, dir_fd in cgroups:
        name = CGROUP_FILES[kind].get("oom")
        if name is None:
            continue
        with contextlib.suppress(OSError, ValueError):
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                text = os.read(fd, 4096).decode()
            finally:
                os.close(fd)
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


def prepare_spare(prep: dict, cgroups: list, netns: int | None = None) -> int:
    """What a run's child sets up before its job arrives, off the run's path: its cgroups, its own
    IPC and network (loopback only) namespaces, its mount namespace, and last the seccomp filter.
    `netns`: a descriptor of the network namespace the template made or kept for this run
    (_NetNamespaces); None: the spare makes its own.
    Returns the size of the run's own /tmp and /dev/shm, 0 when it has none (no mount namespace)."""
    join_cgroups(cgroups)
    flags = CLONE_NEWIPC if prep.get("ipcns") else 0
    if prep.get("netns") and netns is None:
        flags |= CLONE_NEWNET
    if flags:
        unshare(flags)
    if prep.get("netns") and netns is not None:
        setns(netns, CLONE_NEWNET)
        os.close(netns)
    elif prep.get("netns"):
        loopback_up()
    if prep.get("fs"):
        confine_filesystem(prep["fs"], own_ipc=bool(flags & CLONE_NEWIPC))
    if prep.get("seccomp"):
        load_seccomp(prep["seccomp"])
    return int(prep["fs"]["tmp_bytes"]) if prep.get("fs") else 0


def drop_all_capabilities() -> None:
    """Stay uid 0 but without any capability, now or after an exec.

    Emptying the bounding set and locking SECBIT_NOROOT need CAP_SETPCAP, which a template in an
    unprivileged user namespace may lack; there uid 0 maps to an unprivileged host uid anyway.
    Emptying the current sets never needs a capability and must succeed.
    """
    for cap in range(64):
        if libc().prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    libc().prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    libc().prctl(PR_SET_SECUREBITS, SECURE_NOROOT_ALL_LOCKED, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(libc().capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def _set_environ(wanted: dict[str, str]) -> None:
    """Make the environment exactly `wanted`, changing only what differs from the template's: it
    is nearly the same, and clearing and refilling it cost a child about 0.3 ms (page faults)."""
    for name in [name for name in os.environ if name not in wanted]:
        del os.environ[name]
    for name, value in wanted.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _run_child(header: dict, fds: list[int], tmp_bytes: int, cgroups: list) -> None:
    """The forked child of one run: set its bounds, drop privileges, run, exit. Never returns."""
    code = 70
    try:
        # Move the received pipes out of the way first: any of them may sit on fd 0-3.
        job_r, out_w, err_w, res_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds[:4])
        with contextlib.suppress(PermissionError):
            os.setsid()  # a spare is a session leader already
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(res_w, 3)
        keep = {job_r, 3, *(fd for _, fd in cgroups)}
        _close_other_fds(keep)
        pieces = bool(header.get("pieces"))
        if pieces:
            # A multi-piece child: the common job is the first frame; the pieces follow (serve_pieces).
            first = read_frame(job_r)
            if first is None:
                # Started while the run's input was read, and no piece was left for it: nothing ran.
                os._exit(0)
            job = json.loads(first)
        else:
            chunks = []
            while chunk := os.read(job_r, 1 << 20):
                chunks.append(chunk)
            os.close(job_r)
            job = json.loads(b"".join(chunks))
        limits = job["limits"]
        limit_cgroups(cgroups, limits)
        limits["tmp_bytes"] = tmp_bytes
        uid = header.get("uid")
        if tmp_bytes:
            # The run's own tmpfs mounts, made by the spare: /tmp is its working directory.
            workdir = "/tmp"
            if uid is not None:
                for path in RUN_TMPFS:
                    os.chown(path, uid, uid)
        else:
            workdir = header["workdir"]
        os.chdir(workdir)
        _set_environ(
            {**header["env"], "HOME": workdir, "TMPDIR": workdir, "MPLCONFIGDIR": os.path.join(workdir, ".matplotlib")}
        )
        tempfile.tempdir = None
        cpu_hard = None
        if pieces:
            # The child's pieces together; each piece's own bound is the soft limit, moved per piece
            # (serve_pieces). Set once, before privileges go: a hard limit is never raised later.
            cpu_hard = max(1, int(limits["cpu_seconds"]), int(job.get("child_cpu_seconds") or 0)) + 1
        apply_rlimits(limits, nproc=uid is not None, cpu_hard=cpu_hard)
        _check(libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        if uid is not None:
            _drop_to(uid)
        elif os.geteuid() == 0:
            drop_all_capabilities()
            # Sharing a uid with other runs: keep them from reading this one's memory.
            libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace")
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
        )
        gc.enable()
        if pieces:
            serve_pieces(job, job_r, 3)
        else:
            execute(job, 3)
        _flush_std_streams()
        # Closing stdout and stderr lets the parent answer now, while this process is torn down.
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                os.close(fd)
        code = 0
    except BaseException:  # noqa: BLE001 - the harness itself failed; say so on stderr
        try:
            traceback.print_exc()
            _flush_std_streams()
        except BaseException:  # noqa: BLE001, S110
            pass
    finally:
        os._exit(code)


# Spares kept ready. A spare's preparation (namespaces, mounts, cgroup, filter: a few ms of CPU, and
# a new network namespace waits while the kernel tears down the previous run's) can outlast one
# short run; two give each spare the time of two runs, so back-to-back runs never wait for one.
SPARES = 2


class _Spare:
    def __init__(self, pid: int, sock: socket.socket, cgroup: _RunCgroup | None, netns: int | None) -> None:
        self.pid = pid
        self.sock = sock
        self.cgroup = cgroup
        self.netns = netns


# /proc/self/net/sockstat and sockstat6: every count of a network namespace no socket was ever left
# in. "orphan", "alloc" and "mem" of TCP are the host's, not the namespace's.
_SOCKSTAT_PER_NAMESPACE = {
    "sockets": ("used",),
    "TCP": ("inuse", "tw"),
    "UDP": ("inuse", "mem"),
    "UDPLITE": ("inuse",),
    "RAW": ("inuse",),
    "FRAG": ("inuse", "memory"),
    "TCP6": ("inuse",),
    "UDP6": ("inuse",),
    "UDPLITE6": ("inuse",),
    "RAW6": ("inuse",),
    "FRAG6": ("inuse", "memory"),
}


def _read_small(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


def net_namespace_untouched() -> bool:
    """Whether the calling thread's network namespace is as a new one: only `lo`, which has never
    carried a byte, and no socket of any kind (TIME_WAIT included). Read from the per-namespace
    counters only (/proc/net/tcp would walk the host's whole connection table: ms, not µs)."""
    devices = _read_small("/proc/self/net/dev").splitlines()[2:]
    if len(devices) != 1:
        return False
    name, _, counters = devices[0].partition(":")
    if name.strip() != "lo" or any(int(value) for value in counters.split()):
        return False
    seen = set()
    for path in ("/proc/self/net/sockstat", "/proc/self/net/sockstat6"):
        for line in _read_small(path).splitlines():
            kind, _, rest = line.partition(":")
            fields = rest.split()
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            for key in _SOCKSTAT_PER_NAMESPACE.get(kind, ()):
                if values[key] != "0":
                    return False
                seen.add((kind, key))
    # A kernel that words sockstat otherwise: nothing is known, so nothing is reused.
    return len(seen) == sum(map(len, _SOCKSTAT_PER_NAMESPACE.values()))


class _NetNamespaces:
    """The runs' loopback-only network namespaces, made by the template (unshare, bring `lo` up,
    keep a descriptor, go back to its own) and each joined by one spare. When that run has ended —
    its PID namespace gone, so no process is left in it — a namespace it left untouched (no socket,
    not a byte on `lo`: net_namespace_untouched) serves a later run; any other is let go. Making one
    costs about 0.5 ms of CPU and tearing one down (a kernel worker, after the run) about 0.5 ms
    more; most runs never open a socket."""

    KEEP = SPARES + 2

    def __init__(self, own: int) -> None:
        self.own = own
        self.free: list[int] = []

    def take(self) -> int:
        if self.free:
            return self.free.pop()
        unshare(CLONE_NEWNET)
        try:
            loopback_up()
            return os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            self._back()

    def give_back(self, fd: int) -> None:
        """Keep `fd` for a later run if its run left it untouched; the run must be over."""
        keep = False
        if len(self.free) < self.KEEP:
            setns(fd, CLONE_NEWNET)
            try:
                keep = net_namespace_untouched()
            except (OSError, ValueError, KeyError):
                keep = False
            finally:
                self._back()
        if keep:
            self.free.append(fd)
        else:
            os.close(fd)

    def _back(self) -> None:
        try:
            setns(self.own, CLONE_NEWNET)
        except BaseException:
            # A template left in a run's network namespace must not go on.
            os._exit(72)


class _RunCgroup:
    """One run's cgroup in each delegated hierarchy (memory and pids), made and removed by the template."""

    def __init__(self, name: str, dirs: list[tuple[str, int]]) -> None:
        self.name = name
        self.dirs = dirs


class _Cgroups:
    def __init__(self, config: dict | None) -> None:
        # (kind, descriptor of the service's per-template folder) per hierarchy; see runner/cgroups.py.
        self.roots: list[tuple[str, int]] = list(zip(config["kinds"], config["fds"], strict=True)) if config else []
        self.count = 0
        self.to_remove: list[str] = []

    def make(self) -> _RunCgroup | None:
        if not self.roots:
            return None
        self.count += 1
        name = f"run-{self.count}"
        dirs = []
        for kind, root in self.roots:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=root)
            dirs.append((kind, os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root)))
        return _RunCgroup(name, dirs)

    def finish(self, cgroup: _RunCgroup) -> int:
        """The run's OOM kills; its folders are removed later, when the template is idle."""
        kills = cgroup_oom_kills(cgroup.dirs)
        for _, fd in cgroup.dirs:
            os.close(fd)
        self.to_remove.append(cgroup.name)
        return kills

    def remove_finished(self) -> None:
        left = []
        for name in self.to_remove:
            for _, root in self.roots:
                try:
                    os.rmdir(name, dir_fd=root)
                except FileNotFoundError:
                    pass
                except OSError:
                    # EBUSY: a task is still leaving it; try again next time.
                    left.append(name)
        self.to_remove = list(dict.fromkeys(left))


def _make_spare(use_pidns: bool, own_pidns: int, prep: dict, cgroups: _Cgroups, nets: _NetNamespaces | None) -> _Spare:
    """Fork a child that waits for its job, already in its cgroup, namespaces and seccomp filter:
    the next run starts without paying for any of it."""
    template_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cgroup = cgroups.make()
    netns = nets.take() if nets is not None else None
    if use_pidns:
        unshare(CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        try:
            dirs = cgroup.dirs if cgroup else []
            _close_other_fds({child_end.fileno(), *(fd for _, fd in dirs), *([netns] if netns is not None else [])})
            os.setsid()
            reseed_random()
            tmp_bytes = prepare_spare(prep, dirs, netns)
            message, fds, _, _ = socket.recv_fds(child_end, 1 << 16, 8)
        except BaseException:  # noqa: BLE001
            with contextlib.suppress(BaseException):
                traceback.print_exc()
                _flush_std_streams()
            os._exit(71)
        if not message:
            os._exit(0)
        header = json.loads(message)
        child_end.close()
        _run_child(header, fds, tmp_bytes, dirs)
    if use_pidns:
        setns(own_pidns, CLONE_NEWPID)
    child_end.close()
    return _Spare(pid, template_end, cgroup, netns)


def _probe_seccomp(program: str) -> None:
    load_seccomp(base64.b64decode(program))
    try:
        unshare(CLONE_NEWNS)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            return
    raise RuntimeError("the seccomp filter did not deny unshare()")


def zygote_main(control_fd: int, config: dict) -> None:
    control = socket.socket(fileno=control_fd)
    loaded = _preload(config.get("preload", []))
    own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY)
    uid = config.get("probe_uid")
    seccomp: str = config.get("seccomp") or ""  # the compiled filter, base64; empty: none
    info: dict[str, Any] = {
        "pid": os.getpid(),
        "version": sys.version.split()[0],
        "prefix": sys.prefix,
        "executable": sys.executable,
        "preloaded": loaded,
        "pid_namespace": _probe_pid_namespace(own_pidns),
        "setuid": uid is not None and _probe(lambda: _drop_and_read_interpreter(uid)),
        "net_namespace": _probe(lambda: unshare(CLONE_NEWNET)),
        "ipc_namespace": _probe(lambda: unshare(CLONE_NEWIPC)),
        "mount_namespace": _probe(lambda: unshare(CLONE_NEWNS)),
        "seccomp": bool(seccomp) and _probe(lambda: _probe_seccomp(seccomp)),
    }
    cgroups = _Cgroups(config.get("cgroups"))
    if cgroups.roots:
        try:
            cgroup = cgroups.make()
            assert cgroup is not None  # roots is not empty
            info["cgroup"] = _probe(lambda: join_cgroups(cgroup.dirs))
            cgroups.finish(cgroup)
            cgroups.remove_finished()
        except OSError:
            info["cgroup"] = False
        if not info["cgroup"]:
            cgroups.roots = []
    workroot = config["workroot"]
    os.makedirs(workroot, mode=0o711, exist_ok=True)
    use_pidns = bool(config.get("pid_namespace")) and info["pid_namespace"]
    run_ns = bool(config.get("run_namespaces"))
    fs = config.get("fs") if run_ns and info["mount_namespace"] else None
    # What each spare sets up before its run arrives (prepare_spare).
    prep = {
        "ipcns": run_ns and info["ipc_namespace"],
        "netns": run_ns and not config.get("network") and info["net_namespace"],
        "fs": {**fs, "new_proc": use_pidns} if fs else None,
        "seccomp": base64.b64decode(seccomp) if info["seccomp"] else None,  # decoded once, here
    }
    # A spare that cannot prepare would make every run crash: find out now, so the service can say
    # why and (under "auto") use another level.
    info["spare_error"] = _probe_error(lambda: prepare_spare(prep, []))
    # The runs' network namespaces are the template's to make and keep only where every process of
    # a run dies with it (its own PID namespace) and the template can come back to its own.
    nets = None
    if prep["netns"] and use_pidns and not info["spare_error"]:
        own_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        if _probe(lambda: _probe_net_namespaces(own_netns)):
            nets = _NetNamespaces(own_netns)
        else:
            os.close(own_netns)
    info["net_namespaces_kept"] = nets is not None
    _flush_std_streams()
    gc.collect()
    gc.freeze()  # fewer copy-on-write page faults in the children
    gc.disable()
    control.send(json.dumps(info).encode())

    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, "control")
    runs: dict[int, _Run] = {}  # by pidfd

    def finish(run: _Run) -> None:
        selector.unregister(run.pidfd)
        if run.ctl_open:
            selector.unregister(run.ctl)
        if not run.own_ns:
            # Leftovers of its process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.pid, signal.SIGKILL)
        _, status, usage = os.wait4(run.pid, 0)
        if run.workdir:
            # Only without a mount namespace (the process level): a confined run's files live in
            # its own tmpfs, which the kernel freed as its last process exited.
            shutil.rmtree(run.workdir, ignore_errors=True)
        report = {"status": status, "reason": run.reason, "cpu": usage.ru_utime + usage.ru_stime}
        if run.cgroup is not None:
            report["oom_kills"] = cgroups.finish(run.cgroup)
        if run.netns is not None and nets is not None:
            nets.give_back(run.netns)
        with contextlib.suppress(OSError):
            run.ctl.send(json.dumps(report).encode())
        run.ctl.close()
        os.close(run.pidfd)
        del runs[run.pidfd]

    spares: list[_Spare] = []
    # An environment's template that has served no run for this long exits; the parent starts it
    # again on the next run there. None: stay (the service's own environment).
    idle_seconds = config.get("idle_seconds")
    last_active = time.monotonic()

    while True:
        now = time.monotonic()
        timeout = min((r.deadline for r in runs.values()), default=now + 3600) - now
        if idle_seconds and not runs:
            timeout = min(timeout, last_active + idle_seconds - now)
        events = selector.select(max(0.0, timeout))
        if not events and idle_seconds and not runs and time.monotonic() - last_active >= idle_seconds:
            os._exit(0)
        for key, _ in events:
            if key.data == "control":
                message, fds, _, _ = socket.recv_fds(control, 1 << 16, 8)
                if not message:
                    for run in runs.values():
                        run.kill("parent gone")
                    os._exit(0)
                header = json.loads(message)
                workdir = None
                if not prep["fs"]:
                    workdir = tempfile.mkdtemp(prefix="run-", dir=workroot)
                    if header.get("uid") is not None:
                        os.chown(workdir, header["uid"], header["uid"])
                    header["workdir"] = workdir
                spare = spares.pop(0) if spares else _make_spare(use_pidns, own_pidns, prep, cgroups, nets)
                # A spare that died unexpectedly shows up as a run that crashed.
                with contextlib.suppress(OSError):
                    socket.send_fds(spare.sock, [json.dumps(header).encode()], fds[:4])
                spare.sock.close()
                for fd in fds[:4]:
                    os.close(fd)
                ctl = socket.socket(fileno=fds[4])
                with contextlib.suppress(OSError):
                    ctl.send(json.dumps({"pid": spare.pid}).encode())
                pidfd = os.pidfd_open(spare.pid)
                run = _Run(spare.pid, pidfd, ctl, workdir, time.monotonic() + header["wall_seconds"], use_pidns)
                run.cgroup = spare.cgroup
                run.netns = spare.netns
                runs[pidfd] = run
                selector.register(pidfd, selectors.EVENT_READ, ("exit", run))
                selector.register(ctl, selectors.EVENT_READ, ("ctl", run))
            elif key.data[0] == "ctl":
                run = key.data[1]
                try:
                    data = run.ctl.recv(16)
                except OSError:
                    data = b""
                run.kill("cancelled" if data else "parent gone")
                if not data:
                    selector.unregister(run.ctl)
                    run.ctl_open = False
            elif key.data[0] == "exit":
                finish(key.data[1])
        now = time.monotonic()
        if runs:
            last_active = now
        for run in list(runs.values()):
            if now >= run.deadline:
                run.kill("timeout")
                run.deadline = now + 3600
        # Fork the next run's child ahead of time, so a fork is never on a run's critical path;
        # remove finished runs' cgroups, also only when no run is waiting.
        while len(spares) < SPARES and not selector.select(0):
            spares.append(_make_spare(use_pidns, own_pidns, prep, cgroups, nets))
        if cgroups.to_remove and not selector.select(0):
            cgroups.remove_finished()


def main(argv: list[str]) -> None:
    if argv[1] == "cold":
        cold_main(int(argv[2]))
    elif argv[1] == "zygote":
        zygote_main(int(argv[2]), json.loads(argv[3]))
    else:
        raise SystemExit(f"usage: {argv[0]} cold RESULT_FD | zygote CONTROL_FD CONFIG_JSON")


if __name__ == "__main__":
    main(sys.argv)
