"""The builder on one host: one build per folder at a time, and a folder without its marker is rebuilt."""

from __future__ import annotations

import threading

from scripts_app.environments import builder
from scripts_app.environments.interpreters import service_python


def spec_and_options(wheelhouse):
    spec = builder.Spec(name="probe", python=service_python(), packages=("omlweb-probe",))
    options = builder.Options(find_links=(str(wheelhouse),), no_index=True, timeout=120)
    return spec, options


def test_two_processes_asking_at_once_build_the_folder_once(tmp_path, wheelhouse):
    """The host's file lock makes the second caller wait and take the first one's build."""
    spec, options = spec_and_options(wheelhouse)
    results, logs = [], []

    def ensure():
        results.append(builder.ensure(tmp_path, spec, options, logs.append))

    threads = [threading.Thread(target=ensure) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(result.built_now for result in results) == [False, True]
    assert results[0].lock == results[1].lock
    assert sum(line.startswith("Building environment") for line in logs) == 1


def test_an_unfinished_build_is_built_again(tmp_path, wheelhouse):
    """A folder without its marker (a build that died) does not count as built."""
    spec, options = spec_and_options(wheelhouse)
    first = builder.ensure(tmp_path, spec, options, lambda line: None)
    (first.path / builder.MARKER).unlink()

    again = builder.ensure(tmp_path, spec, options, lambda line: None)

    assert again.built_now
    assert again.lock == first.lock
