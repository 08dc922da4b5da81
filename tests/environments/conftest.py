"""Environments built offline: from a wheel the tests make, without the runner's numpy/pandas/matplotlib."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from scripts_app.services import environments


def make_wheel(folder: Path, name: str = "omlweb_probe", version: str = "1.0", source: str = "ANSWER = 42\n") -> Path:
    """A minimal pure-Python wheel, written by hand so no build tool or network is needed."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": source,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: omlweb-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture
def wheelhouse(tmp_path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(folder)
    return folder


@pytest.fixture(autouse=True)
def offline_builds(settings, tmp_path, wheelhouse):
    """Builds go to a fresh folder and install only from the test's wheelhouse."""
    settings.OMLWEB_ENVS_DIR = tmp_path / "envs"
    settings.OMLWEB_ENV_FIND_LINKS = [str(wheelhouse)]
    settings.OMLWEB_ENV_NO_INDEX = True
    # The runner's needs would come from an index; a template without them still works.
    settings.OMLWEB_ENV_RUNNER_PACKAGES = []


@pytest.fixture
def queued_builds(monkeypatch):
    """Build requests, as (environment id, generation), instead of sending them to Celery."""
    queued: list[tuple[str, int]] = []
    monkeypatch.setattr(
        "scripts_app.environments.tasks.build_environment.delay", lambda *args: queued.append(tuple(args))
    )
    return queued


@pytest.fixture
def build_queued(queued_builds):
    """Run the builds that were queued, as a worker would."""

    def _build():
        results = []
        while queued_builds:
            environment_id, generation = queued_builds.pop(0)
            results.append(environments.environment_build(environment_id=environment_id, generation=generation))
        return results

    return _build
