"""What `manage.py serve` and its Celery workers tell each other, through small files in the data dir.

The supervisor (`serve`) and the workers it starts share one host and one OMLWEB_DATA_DIR, so plain
files are enough, and they keep working while the database or the broker is down:

- `<node>.ready`: written by a worker once it consumes (its pid), so the supervisor knows when to probe.
- `<node>.busy`: written while the worker runs a task (its start and hard limit), removed after.
- `<node>.probe`: the token of the last probe task the worker ran: proof that it takes messages.
- `serve-<pid>.json`: the supervisor's own view of its children, read by the status endpoint.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

from django.conf import settings

# A supervisor that has not rewritten its state for this long is gone (killed, or its host is down).
STATE_FRESH_SECONDS = 30


def folder() -> Path:
    path = settings.DATA_DIR / "supervisor"
    path.mkdir(parents=True, exist_ok=True)
    return path


def node_name(level: str, slot: int) -> str:
    """The Celery node name of one worker process of a level: stable across restarts, unique per deployment."""
    return f"{settings.OMLWEB_QUEUE_PREFIX}-{level.lower()}-{slot}@{socket.gethostname()}"


def probe_queue(node: str) -> str:
    """The queue only this worker consumes: the supervisor's probes reach it there."""
    # Brokers allow only these characters in queue and exchange names ("@" is not one of them).
    return re.sub(r"[^A-Za-z0-9_.:-]", ".", node) + ".probe"


def _write(path: Path, text: str) -> None:
    # Whole or nothing: a reader never sees half a file.
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, OSError):
        return None


# Written by the worker processes (scripts_app.tasks)


def mark_ready(node: str) -> None:
    _write(folder() / f"{node}.ready", str(os.getpid()))


def mark_busy(node: str, *, limit_seconds: float | None) -> None:
    _write(folder() / f"{node}.busy", json.dumps({"since": time.time(), "limit": limit_seconds}))


def mark_idle(node: str) -> None:
    (folder() / f"{node}.busy").unlink(missing_ok=True)


def mark_probed(node: str, token: str) -> None:
    _write(folder() / f"{node}.probe", token)


# Read by the supervisor


def ready_pid(node: str) -> int | None:
    text = _read(folder() / f"{node}.ready")
    return int(text) if text and text.strip().isdigit() else None


def busy(node: str) -> dict | None:
    text = _read(folder() / f"{node}.busy")
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def probed(node: str) -> str | None:
    return _read(folder() / f"{node}.probe")


def forget(node: str) -> None:
    """A new process of this node starts: what the last one wrote says nothing about it."""
    for suffix in ("ready", "busy", "probe"):
        (folder() / f"{node}.{suffix}").unlink(missing_ok=True)


# The supervisor's state, for the status endpoint


def state_path(pid: int | None = None) -> Path:
    return folder() / f"serve-{pid or os.getpid()}.json"


def write_state(state: dict) -> None:
    _write(state_path(), json.dumps({**state, "updatedAt": time.time()}))


def remove_state() -> None:
    state_path().unlink(missing_ok=True)


def supervisors() -> list[dict]:
    """The supervisors of this host that are alive, each with its children (see serve.Supervisor.state)."""
    found = []
    for path in sorted(folder().glob("serve-*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if time.time() - state.get("updatedAt", 0) <= STATE_FRESH_SECONDS:
            found.append(state)
    return found
