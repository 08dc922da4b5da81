"""Live output: a tap sees what the child prints while it runs, bounded, and cleaned as the stored text."""

from __future__ import annotations

import threading
import time

from scripts_app import runner
from scripts_app.runner import Limits

from .helpers import make_job

SLOW_PRINTER = """
import sys, time

def f():
    for i in range(4):
        print(f"line {i}", flush=True)
        print(f"warn {i}", file=sys.stderr, flush=True)
        time.sleep(0.4)
    return "done"
"""


def _run_in_thread(job, tap):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", runner.run(job, tap=tap)))
    thread.start()
    return thread, box


def test_a_tap_sees_early_lines_before_the_run_ends(mode):
    tap = runner.Tap()
    thread, box = _run_in_thread(make_job(SLOW_PRINTER, limits=Limits(wall_seconds=20)), tap)
    seen = {"stdout": "", "stderr": ""}
    deadline = time.monotonic() + 15
    while "line 0" not in seen["stdout"] and time.monotonic() < deadline:
        for stream, text in tap.take().items():
            seen[stream] += text
        time.sleep(0.05)
    assert thread.is_alive(), "the run ended before its first line was seen"
    assert seen["stdout"].startswith("line 0\n")
    thread.join(30)
    for stream, text in tap.take().items():
        seen[stream] += text
    result = box["result"]
    assert result.succeeded, result.error_message + result.stderr
    # Everything taken, in order, is exactly what is stored.
    assert seen["stdout"] == result.stdout == "".join(f"line {i}\n" for i in range(4))
    assert seen["stderr"] == result.stderr


def test_a_flood_reaches_the_tap_only_up_to_the_bound_with_the_same_note(mode):
    """50 MB printed, 10 kB bound: the tap gets 10 kB and the cut note once, as the stored stdout."""
    source = "import sys\ndef f():\n    for _ in range(50):\n        sys.stdout.write('x' * (1 << 20))\n    return 1\n"
    tap = runner.Tap()
    taken = []
    result = runner.run(make_job(source, limits=Limits(wall_seconds=30, max_stream_bytes=10_000)), tap=tap)
    taken.append(tap.take()["stdout"])
    assert result.succeeded, result.error_message
    assert "".join(taken) == result.stdout == "x" * 10_000 + "\n[... output cut at 10000 bytes ...]"
    assert tap.take() == {"stdout": "", "stderr": ""}


def test_hostile_bytes_come_out_as_the_stored_text(mode):
    """NUL, invalid UTF-8, a character split across writes, a surrogate escape: U+FFFD as stored."""
    source = (
        "import sys, time\n"
        "def f():\n"
        "    out = sys.stdout.buffer\n"
        "    out.write(b'a\\x00b\\xff\\xfe c\\xe2\\x82'); out.flush(); time.sleep(0.3)\n"
        "    out.write(b'\\xac d\\xed\\xa0\\x80 e'); out.flush()\n"
        "    print('\\udc80', file=sys.stderr)\n"
    )
    tap = runner.Tap()
    thread, box = _run_in_thread(make_job(source, limits=Limits(wall_seconds=10)), tap)
    parts = []
    while thread.is_alive():
        parts.append(tap.take()["stdout"])
        time.sleep(0.05)
    thread.join()
    parts.append(tap.take()["stdout"])
    result = box["result"]
    live = "".join(parts)
    assert live == result.stdout
    assert "\x00" not in live
    assert "€" in live  # split across two writes, whole again
    live.encode("utf-8")  # no lone surrogate
