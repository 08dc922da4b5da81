"""Runs a user's function in a separate, bounded OS process.

Knows nothing of Django or HTTP. Callers build a `Job` and call `run()`.
"""

from scripts_app.runner.source import ScriptSourceError, entry_function
from scripts_app.runner.types import Failure, Figure, Job, Limits, Outcome, Result, RunnerBusy

__all__ = [
    "Failure",
    "Figure",
    "Job",
    "Limits",
    "Outcome",
    "Result",
    "RunnerBusy",
    "ScriptSourceError",
    "entry_function",
]
