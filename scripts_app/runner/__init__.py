"""Runs a user's function in a separate, bounded OS process.

Knows nothing of Django or HTTP. Callers build a `Job` and call `run()`.
"""

from scripts_app.runner.config import Settings, configure
from scripts_app.runner.execution import run, slot
from scripts_app.runner.live import Tap
from scripts_app.runner.pieces import PieceJob, serve_pieces
from scripts_app.runner.report import isolation_report, shutdown, warm_up
from scripts_app.runner.source import ScriptSourceError, entry_function
from scripts_app.runner.types import (
    DataInput,
    Failure,
    Figure,
    Job,
    Limits,
    Outcome,
    Result,
    RunnerBusy,
    RunnerUnavailable,
)

__all__ = [
    "DataInput",
    "Failure",
    "Figure",
    "Job",
    "Limits",
    "Outcome",
    "PieceJob",
    "Result",
    "RunnerBusy",
    "RunnerUnavailable",
    "ScriptSourceError",
    "Settings",
    "Tap",
    "configure",
    "entry_function",
    "isolation_report",
    "run",
    "serve_pieces",
    "shutdown",
    "slot",
    "warm_up",
]
