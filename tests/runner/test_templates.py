"""Which template a run forks from, and what each template holds."""

from scripts_app import runner
from scripts_app.runner.source import imports_only_stdlib


def test_stdlib_only_scripts_are_recognised():
    """Imports anywhere in the source count; a non-stdlib or dynamic import disqualifies it."""
    assert imports_only_stdlib("def f():\n    return 1\n")
    assert imports_only_stdlib("import json, os.path\nfrom collections import Counter\ndef f():\n    import math\n")
    assert not imports_only_stdlib("def f():\n    import numpy\n")
    assert not imports_only_stdlib("from pandas import DataFrame\n")
    assert not imports_only_stdlib("def f():\n    return __import__('numpy')\n")
    assert not imports_only_stdlib("import importlib\ndef f():\n    return importlib.import_module('numpy')\n")
    assert not imports_only_stdlib("from . import sibling\n")


def test_a_stdlib_script_forks_from_the_light_template(run, isolated):
    """A script that imports only the standard library runs without numpy loaded at all."""
    assert run("import sys\ndef f():\n    return 'numpy' in sys.modules\n").value is False


def test_a_numpy_script_forks_from_the_preloaded_template(run, isolated):
    """A script that imports numpy finds it already loaded by its template."""
    source = "import sys\nloaded = 'numpy' in sys.modules\nimport numpy\ndef f():\n    return loaded\n"
    assert run(source).value is True


def test_graphics_runs_use_the_preloaded_template(run, isolated):
    """With graphics on, the run forks from the template that has pyplot loaded."""
    result = run("import sys\ndef f():\n    return 'matplotlib.pyplot' in sys.modules\n", graphics=True)
    assert result.value is True


def test_the_light_template_can_be_turned_off(run, isolated):
    """With light_template off, every run forks from the preloaded template."""
    runner.configure(light_template=False)
    try:
        assert run("import sys\ndef f():\n    return 'numpy' in sys.modules\n").value is True
    finally:
        runner.configure(light_template=True)
