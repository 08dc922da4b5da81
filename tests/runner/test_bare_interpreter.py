"""An environment's interpreter that lacks the preload modules still gets a warm, isolated template."""

import os
import subprocess
import sys
import time

import pytest

from scripts_app import runner
from scripts_app.runner.config import current

from .helpers import make_job


def test_an_interpreter_without_the_preload_modules_runs_warm(tmp_path):
    """A template skips preload modules its interpreter lacks instead of failing to start (and running cold)."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    source = "import sys\ndef f():\n    return sys.prefix\n"

    result = runner.run(make_job(source, python=python))

    assert result.succeeded, result.error_message + result.stderr
    assert result.value == str(venv)
    templates = {t["python"]: t for t in runner.isolation_report()["templates"]}
    assert templates[python]["alive"]
    assert templates[python]["preloaded"] == []
    missing = runner.run(make_job("def f():\n    import numpy\n", python=python))
    assert "No module named 'numpy'" in missing.error_message


@pytest.fixture(params=["bwrap", "unshare"])
def level(request):
    if request.param == "bwrap" and not os.path.exists(current().bwrap_path):
        pytest.skip("bubblewrap is not installed")
    if request.param == "unshare" and os.geteuid() != 0:
        pytest.skip("the unshare level needs root")
    before = current()
    yield request.param
    runner.configure(isolation=before.isolation, data_dirs_to_hide=before.data_dirs_to_hide, mode=before.mode)


def test_an_environment_inside_a_hidden_data_folder_stays_visible_to_its_runs(level, tmp_path):
    """Environments live in the data folder, which runs must not see: only the run's own environment shows."""
    data = tmp_path / "data"
    (data / "envs").mkdir(parents=True)
    (data / "secret").write_text("do not show")
    venv = data / "envs" / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_packages = next((venv / "lib").glob("python3*/site-packages"))
    (site_packages / "probe_module.py").write_text("ANSWER = 42\n")
    runner.configure(isolation=level, data_dirs_to_hide=[str(data)], mode="zygote")
    source = (
        "import os\n"
        "def f():\n"
        "    import probe_module\n"
        f"    return [probe_module.ANSWER, os.path.exists({str(data / 'secret')!r})]\n"
    )

    result = runner.run(make_job(source, python=str(venv / "bin" / "python")))

    assert result.succeeded, result.error_message + result.stderr
    assert result.value == [42, False]
    assert runner.isolation_report()["level"] == level


def test_an_idle_environment_template_stops_and_starts_again_on_demand(tmp_path):
    """An environment's template exits after the idle time; the next run there starts a new one."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    before = current().template_idle_seconds
    runner.configure(template_idle_seconds=1.0)
    try:
        assert runner.run(make_job("def f():\n    return 1\n", python=python)).value == 1
        assert runner.run(make_job("def f():\n    return 0\n")).value == 0
        templates = {t["python"]: t for t in runner.isolation_report()["templates"]}
        first_pid = templates[python]["pid"]
        deadline = time.monotonic() + 10
        while templates[python]["alive"] and time.monotonic() < deadline:
            time.sleep(0.2)
            templates = {t["python"]: t for t in runner.isolation_report()["templates"]}
        assert not templates[python]["alive"]
        assert templates[sys.executable]["alive"]  # the service's own stays warm

        assert runner.run(make_job("def f():\n    return 2\n", python=python)).value == 2
        templates = {t["python"]: t for t in runner.isolation_report()["templates"]}
        assert templates[python]["alive"]
        assert templates[python]["pid"] != first_pid
    finally:
        runner.configure(template_idle_seconds=before)
