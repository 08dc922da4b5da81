"""An environment's interpreter that lacks the preload modules still gets a warm, isolated template."""

import subprocess
import sys

from scripts_app import runner

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
