"""Demo scripts and datasets loaded by `manage.py bootstrap`: one per file, named like the file."""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).parent

# The environment the seed's Example 2 runs test_seaborn_noinp in.
DEMO_ENVIRONMENT = {
    "name": "seaborn",
    "packages": "seaborn",
    "description": "seaborn for statistical plots (the demo script test_seaborn_noinp runs here).",
}


# Demo scripts that run in an environment of their own when a run names none.
DEMO_SCRIPT_ENVIRONMENTS = {"test_seaborn_noinp": DEMO_ENVIRONMENT["name"]}


def demo_scripts() -> dict[str, str]:
    return {path.stem: path.read_text() for path in sorted(DEMO_DIR.glob("*.py")) if path.stem != "__init__"}


def demo_datasets() -> dict[str, Path]:
    """CSV files loaded as global datasets: IRIS (Fisher's iris data, with OML's column names)."""
    return {path.stem: path for path in sorted(DEMO_DIR.glob("*.csv"))}
