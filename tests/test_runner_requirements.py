"""What the runner needs in every environment (services/environments.runner_requirements), pinned to the
versions this process runs: read from the package metadata once per process, not at every heartbeat."""

from __future__ import annotations

import importlib.metadata

import pytest

from scripts_app.services import environments


@pytest.fixture
def versions_read(monkeypatch):
    """Each package name whose version is read from the metadata, with a fresh per-process cache."""
    real = importlib.metadata.version
    read: list[str] = []

    def version(name: str) -> str:
        read.append(name)
        return real(name)

    environments._installed_version.cache_clear()
    monkeypatch.setattr(importlib.metadata, "version", version)
    yield read
    environments._installed_version.cache_clear()


def test_the_runners_packages_are_pinned_to_the_installed_versions_read_once(settings, versions_read):
    settings.OMLWEB_ENV_RUNNER_PACKAGES = ["numpy", "pandas"]
    pinned = environments.runner_requirements()
    assert pinned == (
        f"numpy=={importlib.metadata.distribution('numpy').version}",
        f"pandas=={importlib.metadata.distribution('pandas').version}",
    )
    for _ in range(3):
        assert environments.runner_requirements() == pinned
    assert versions_read == ["numpy", "pandas"]


def test_a_changed_setting_and_a_missing_package_are_followed(settings, versions_read):
    """The cache is per package, not per answer: the setting is read each time, and a package that is
    not installed is named without a version."""
    settings.OMLWEB_ENV_RUNNER_PACKAGES = ["numpy"]
    [numpy] = environments.runner_requirements()
    settings.OMLWEB_ENV_RUNNER_PACKAGES = ["numpy", "omlweb-no-such-package"]
    assert environments.runner_requirements() == (numpy, "omlweb-no-such-package")
    assert environments.runner_requirements() == (numpy, "omlweb-no-such-package")
    settings.OMLWEB_ENV_RUNNER_PACKAGES = []
    assert environments.runner_requirements() == ()
    assert versions_read == ["numpy", "omlweb-no-such-package"]
