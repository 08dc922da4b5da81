"""What a running child prints, handed to another thread as it is read (live output).

The parent already reads the child's stdout and stderr while it runs (execution._Watch) and keeps
their first `max_stream_bytes` (execution._Capture). A `Tap` given to `runner.run(job, tap=...)`
receives each part that is kept, by reference, and a reader in another thread takes what is new
with `take()`: text decoded as the final stdout is (UTF-8 with U+FFFD, no NUL, no lone surrogate),
plus the cut note once a stream passes its bound. So a flood of output costs no more memory than
the capture itself, and what the reader gets in all is bounded like the stored stdout.

Without a tap the runner does exactly what it did before: one `is None` test per read.
"""

from __future__ import annotations

import codecs
import threading

from scripts_app.runner.validation import storable_text

STREAMS = ("stdout", "stderr")


def cut_note(limit: int) -> str:
    """The marker after a stream cut at its bound: the same live and in the stored output."""
    return f"\n[... output cut at {limit} bytes ...]"


class Tap:
    """New stdout and stderr of one job, for `take()` in another thread. `label` names an apply piece."""

    def __init__(self, label: str | None = None) -> None:
        self.label = label
        self._lock = threading.Lock()
        self._pending: dict[str, list[bytes]] = {name: [] for name in STREAMS}
        self._cut: dict[str, int | None] = dict.fromkeys(STREAMS)
        self._noted: set[str] = set()
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace") for name in STREAMS}

    # The runner's side (its pipe-reading thread)

    def feed(self, stream: str, part: bytes) -> None:
        with self._lock:
            self._pending[stream].append(part)

    def cut(self, stream: str, limit: int) -> None:
        with self._lock:
            self._cut[stream] = limit

    # The reader's side

    def take(self) -> dict[str, str]:
        """What each stream printed since the last take, as storable text ("" when nothing)."""
        with self._lock:
            pending = {name: self._pending[name] for name in STREAMS}
            self._pending = {name: [] for name in STREAMS}
            cut = dict(self._cut)
        texts = {}
        for name in STREAMS:
            text = self._decoders[name].decode(b"".join(pending[name])) if pending[name] else ""
            limit = cut[name]
            if limit is not None and name not in self._noted:
                self._noted.add(name)
                # A character split at the bound is ended as the stored text ends it.
                text += self._decoders[name].decode(b"", final=True) + cut_note(limit)
            texts[name] = storable_text(text)
        return texts
