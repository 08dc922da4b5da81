"""An in-process stand-in for `scripts_app.runner.run`, used only while the real runner is not merged.

It runs the function in the test process (no isolation, no limits) and gives back a `Result` the way
the runner's interface describes, so the pages can be tested end to end.
"""

from __future__ import annotations

import contextlib
import io
import traceback

from scripts_app.runner import Failure, Figure, Job, Outcome, Result


def run(job: Job, is_cancelled=None) -> Result:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stdout, stderr = io.StringIO(), io.StringIO()
    namespace: dict = {"__name__": "__omlweb_script__"}
    plt.close("all")
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            exec(compile(job.source, "<script>", "exec"), namespace)
            value = namespace[job.function](*job.args, **job.kwargs)
    except Exception as error:
        return Result(
            outcome=Outcome.FAILED,
            failure=Failure.SCRIPT_ERROR,
            error_message=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(),
            stdout=stdout.getvalue(),
            stderr=stderr.getvalue(),
        )
    figures = []
    if job.graphics:
        for number in plt.get_fignums():
            figure = plt.figure(number)
            png = io.BytesIO()
            figure.savefig(png, format="png")
            title = figure._suptitle.get_text() if figure._suptitle else None
            figures.append(Figure(png=png.getvalue(), title=title))
    plt.close("all")
    if hasattr(value, "to_dict"):
        value = value.to_dict(orient="records")
    return Result(
        outcome=Outcome.SUCCEEDED, value=value, figures=figures, stdout=stdout.getvalue(), stderr=stderr.getvalue()
    )
