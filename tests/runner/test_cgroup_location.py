"""Where the runs' cgroups go, from the mount table and the service's own cgroup. The kernel side
is exercised by test_between_runs.py on this host's cgroup v1; cgroup v2 is not mounted with
controllers here, so its choice is checked on a folder tree that mimics one."""

from __future__ import annotations

import pytest

from scripts_app.runner import cgroups


@pytest.fixture
def unified(tmp_path, monkeypatch):
    """A cgroup2 mount at tmp_path with the service in `delegated/service` (a leaf)."""
    leaf = tmp_path / "delegated" / "service"
    leaf.mkdir(parents=True)
    (leaf / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(cgroups, "_mounts", lambda: [("/", str(tmp_path), "cgroup2", {"rw"})])
    monkeypatch.setattr(cgroups, "_own_paths", lambda: {"": "/delegated/service"})
    return tmp_path


def test_v2_uses_the_parent_of_the_service_leaf_when_it_delegates_both_controllers(unified):
    (unified / "delegated" / "cgroup.subtree_control").write_text("cpu memory pids\n")
    assert cgroups.locate() == ("cgroup-v2", {"unified": str(unified / "delegated")})


def test_v2_uses_the_service_cgroup_itself_when_it_delegates_both(unified):
    (unified / "delegated" / "service" / "cgroup.subtree_control").write_text("memory pids\n")
    assert cgroups.locate() == ("cgroup-v2", {"unified": str(unified / "delegated" / "service")})


def test_v2_without_memory_and_pids_delegated_gives_the_reason(unified):
    (unified / "delegated" / "cgroup.subtree_control").write_text("cpu\n")
    reason = cgroups.locate()
    assert isinstance(reason, str)
    assert "delegates memory and pids" in reason


def test_v1_needs_both_the_memory_and_the_pids_hierarchy(tmp_path, monkeypatch):
    for name in ("memory", "pids"):
        (tmp_path / name / "svc").mkdir(parents=True)
    mounts = [("/", str(tmp_path / "memory"), "cgroup", {"rw", "memory"})]
    monkeypatch.setattr(cgroups, "_mounts", lambda: mounts)
    monkeypatch.setattr(cgroups, "_own_paths", lambda: {"memory": "/svc", "pids": "/svc"})
    assert cgroups.locate() == "no cgroup hierarchy with the memory and pids controllers"
    mounts.append(("/", str(tmp_path / "pids"), "cgroup", {"rw", "pids"}))
    assert cgroups.locate() == (
        "cgroup-v1",
        {"memory-v1": str(tmp_path / "memory" / "svc"), "pids-v1": str(tmp_path / "pids" / "svc")},
    )


def test_folders_of_dead_service_processes_are_swept(tmp_path):
    dead = tmp_path / "omlweb-999999999-1"
    (dead / "run-3").mkdir(parents=True)
    alive = tmp_path / "omlweb-1-1"
    alive.mkdir()
    cgroups._sweep_stale(str(tmp_path))
    assert not dead.exists()
    assert alive.exists()
