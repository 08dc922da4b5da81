"""A memory and pids cgroup per run, where the host delegates them to the service (docs/runner.md).

The service creates one folder per template under its own cgroup, in each hierarchy that has the
controller (cgroup v1: the `memory` and `pids` hierarchies; v2: the unified one, when the service's
cgroup already delegates both controllers), and hands the template a descriptor of each. The
template then makes, through those descriptors, one cgroup per spare child (the spare joins it
before its run arrives), reads its OOM count when the run ends and removes it when idle. Under
bubblewrap the template sees no /sys: the descriptors are its only way to the cgroups.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger("scripts_app.runner")

_counter = itertools.count(1)
# How long a stopped template's cgroups are tried again while its last processes exit.
REMOVE_RETRY_SECONDS = 10.0


@dataclass
class TemplateCgroups:
    """The per-template folders: kinds as the harness names them, their paths, and open descriptors."""

    version: str  # "cgroup-v1" or "cgroup-v2"
    kinds: list[str]
    paths: list[str]
    fds: list[int] = field(default_factory=list)

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []

    def remove(self) -> None:
        """Remove every run cgroup left under the folders, then the folders (a template stopped).

        The template's spare child may still be exiting (EBUSY): a thread tries again for a while,
        so that the caller never waits; what is left then goes with the next start's sweep."""
        self.close_fds()
        left = [path for path in self.paths if not _remove_tree(path)]
        if left:
            threading.Thread(target=_remove_later, args=(left,), name="runner-cgroup-remover", daemon=True).start()


def _remove_later(paths: list[str]) -> None:
    deadline = time.monotonic() + REMOVE_RETRY_SECONDS
    while paths and time.monotonic() < deadline:
        time.sleep(0.1)
        paths = [path for path in paths if not _remove_tree(path)]


def _remove_tree(path: str) -> bool:
    """Whether `path` and the cgroups under it are gone."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fstype, super options) of every cgroup mount."""
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                found.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup per v1 controller, and "" for the v2 hierarchy."""
    paths = {}
    with open("/proc/self/cgroup") as cgroup:
        for line in cgroup:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _join(mount_root: str, mount_point: str, path: str) -> str:
    relative = os.path.relpath(path, mount_root) if mount_root != "/" else path.lstrip("/")
    return os.path.normpath(os.path.join(mount_point, relative))


def locate() -> tuple[str, dict[str, str]] | str:
    """(version, {kind: the service's own cgroup folder}) where both controllers are delegated
    and writable, else the reason there is none."""
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError as exc:
        return f"cannot read the cgroup mounts: {exc}"
    v1 = {}
    for mount_root, point, fstype, options in mounts:
        for controller in ("memory", "pids"):
            if fstype == "cgroup" and controller in options and controller in own:
                v1[f"{controller}-v1"] = _join(mount_root, point, own[controller])
    if len(v1) == 2:
        unwritable = [path for path in v1.values() if not os.access(path, os.W_OK)]
        return ("cgroup-v1", v1) if not unwritable else f"cgroup v1 folders not writable: {unwritable}"
    for mount_root, point, fstype, _ in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        own_cgroup = _join(mount_root, point, own[""])
        # A v2 cgroup that holds processes cannot enable controllers for its children, so the
        # folders go either under the service's own cgroup, when it already delegates both (the
        # hierarchy's root), or beside it, under its parent: the layout of a delegated subtree with
        # the service in a leaf of it (systemd's Delegate=yes with DelegateSubgroup=).
        for base in (own_cgroup, os.path.dirname(own_cgroup)):
            try:
                with open(os.path.join(base, "cgroup.subtree_control")) as control:
                    delegated = set(control.read().split())
            except OSError:
                continue
            if {"memory", "pids"} <= delegated and os.access(base, os.W_OK):
                return "cgroup-v2", {"unified": base}
        return f"cgroup v2: neither {own_cgroup} nor its parent delegates memory and pids, writable"
    return "no cgroup hierarchy with the memory and pids controllers"


def _sweep_stale(base: str) -> None:
    """Folders of service processes that died without removing them."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            parts = entry.name.split("-")
            if len(parts) == 3 and parts[0] == "omlweb" and parts[1].isdigit():
                try:
                    os.kill(int(parts[1]), 0)
                except ProcessLookupError:
                    _remove_tree(entry.path)
                except PermissionError:
                    pass


def for_template() -> TemplateCgroups | str:
    """Create the folders of a new template, or say why there are none."""
    located = locate()
    if isinstance(located, str):
        return located
    version, bases = located
    name = f"omlweb-{os.getpid()}-{next(_counter)}"
    made = TemplateCgroups(version, [], [])
    try:
        for kind, base in bases.items():
            _sweep_stale(base)
            path = os.path.join(base, name)
            os.mkdir(path, 0o755)
            made.kinds.append(kind)
            made.paths.append(path)
            if kind == "unified":
                # The runs' cgroups below need the controllers enabled here (this folder holds no process).
                with open(os.path.join(path, "cgroup.subtree_control"), "w") as control:
                    control.write("+memory +pids")
            made.fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
    except OSError as exc:
        made.remove()
        return f"cannot create a cgroup under {bases}: {exc}"
    return made
