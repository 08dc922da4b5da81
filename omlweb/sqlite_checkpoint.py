"""SQLite's WAL checkpoints, taken off the request that stored a large value (docs/runner.md, "A large
value's checkpoint, after the answer").

Each committing connection checkpoints the WAL once it holds `wal_autocheckpoint` pages: with the
default 1000 (4 MB) one DataFrame request in five paid a ~9 ms checkpoint before its answer. The
connections now checkpoint at BACKSTOP_PAGES (env.sqlite_database), and the recorder of a run hands
what it stored to `stored()` after its commit: once a process has stored CHECKPOINT_BYTES since its
last checkpoint, its checkpointer thread runs a PASSIVE one (it never blocks a reader or a writer).
If that thread fails or stops, the backstop still checkpoints: the WAL stays bounded by it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

logger = logging.getLogger(__name__)

# The connections' own automatic checkpoint, kept as the backstop (16 MB of 4 KB pages).
BACKSTOP_PAGES = 4000
# What this process stores between two of its checkpoints: about what the default autocheckpoint took.
CHECKPOINT_BYTES = 4 * 1024 * 1024


class Checkpointer:
    """One daemon thread per process that checkpoints the database at `path` when woken."""

    def __init__(self, path: str, threshold: int = CHECKPOINT_BYTES) -> None:
        self.path = path
        self.threshold = threshold
        self.pending = 0
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid = 0
        self.connection: sqlite3.Connection | None = None
        self.checkpoints = 0  # done, for tests

    def stored(self, size: int) -> None:
        """`size` bytes were committed; wake the thread once they add up to the threshold."""
        with self.lock:
            self.pending += size
            if self.pending < self.threshold:
                return
            self.pending = 0
            if self.thread is None or not self.thread.is_alive() or self.pid != os.getpid():
                # First use in this process: a forked worker inherits no thread, and no connection to use.
                if self.pid != os.getpid():
                    self.connection = None
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._loop, name="sqlite-checkpoint", daemon=True)
                self.thread.start()
        self.wake.set()

    def _loop(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            self.checkpoint()

    def checkpoint(self) -> None:
        try:
            if self.connection is None:
                self.connection = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
            self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
        except Exception:
            # The backstop still checkpoints; the next wake tries again on a new connection.
            logger.exception("SQLite checkpoint of %s failed", self.path)
            if self.connection is not None:
                self.connection.close()
            self.connection = None


_checkpointers: dict[str, Checkpointer] = {}
_checkpointers_lock = threading.Lock()


def stored(size: int, using: str = "default") -> None:
    """Tell the checkpointer of database `using` that a commit stored `size` bytes (not SQLite: nothing)."""
    from django.db import connections

    settings_dict = connections[using].settings_dict
    if not settings_dict["ENGINE"].endswith("sqlite3"):
        return
    path = str(settings_dict["NAME"])
    if path == ":memory:" or path.startswith("file:"):
        return
    with _checkpointers_lock:
        checkpointer = _checkpointers.get(path)
        if checkpointer is None:
            checkpointer = _checkpointers[path] = Checkpointer(path)
    checkpointer.stored(size)
