"""Benchmark: group-apply and row-apply through omlweb against pandas doing the same in one process.

    /work/main/.venv/bin/python bench/apply_bench.py [--rows 1000000] [--groups 100] [--chunks 10]
        [--reps 0 200] [--repeat 1] [--medium-only]

Sets up a throwaway data dir (SQLite, media), uploads one dataset, and runs each workload through
the same services the REST API calls (query in DuckDB, pieces in runner processes), sequentially
and in parallel at LOW (2) and MEDIUM (4), then the same function with pandas in this process.
Prints seconds and the ratios omlweb / pandas (below 1 is faster than pandas); with --repeat N,
each figure is the median of N runs (pandas' too), which a shared machine needs.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GROUP_FUNCTION = """
import numpy as np
import pandas as pd

def fit(df, reps=0):
    # A least-squares fit of Y on X1..X3 per group and a few statistics; `reps` bootstrap refits
    # make the work per group heavier.
    x = np.column_stack([np.ones(len(df)), df["X1"], df["X2"], df["X3"]])
    y = df["Y"].to_numpy()
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    rng = np.random.default_rng(0)
    spread = []
    for _ in range(reps):
        pick = rng.integers(0, len(y), len(y))
        spread.append(np.linalg.lstsq(x[pick], y[pick], rcond=None)[0][1])
    q = np.quantile(y, [0.1, 0.5, 0.9])
    sd = float(np.std(spread)) if spread else 0.0
    return pd.DataFrame({"G": [df["G"].iloc[0]], "N": [len(df)], "B1": [coef[1]], "Q50": [q[1]], "SD": [sd]})
"""

ROW_FUNCTION = """
import numpy as np
import pandas as pd

def score(df, reps=0):
    x = np.column_stack([df["X1"], df["X2"], df["X3"]])
    for _ in range(reps):
        np.linalg.svd(x[:20000], full_matrices=False)
    # Pairwise-ish work per chunk: a 3x3 covariance, a sort and a rolling mean.
    cov = np.cov(x, rowvar=False)
    ordered = np.sort(df["Y"].to_numpy())
    rolled = pd.Series(ordered).rolling(50).mean().iloc[-1]
    return pd.DataFrame({"N": [len(df)], "C12": [cov[0, 1]], "MAX": [ordered[-1]], "ROLL": [rolled]})
"""


def setup(data_dir: str) -> None:
    os.environ["OMLWEB_DATA_DIR"] = data_dir
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")
    os.environ.setdefault("OMLWEB_RUN_WALL_SECONDS", "600")
    os.environ.setdefault("OMLWEB_RUN_CPU_SECONDS", "600")
    os.environ.setdefault("OMLWEB_LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_frame(rows: int, groups: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "G": rng.integers(0, groups, rows),
            "X1": rng.normal(size=rows),
            "X2": rng.normal(size=rows),
            "X3": rng.normal(size=rows),
        }
    )
    frame["Y"] = 2 * frame.X1 - frame.X2 + 0.5 * frame.X3 + rng.normal(scale=0.1, size=rows)
    return frame


def timed(function):
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def median_of(count: int, function):
    """The median time of `count` calls, and the value of the call that took it."""
    results = sorted((timed(function) for _ in range(count)), key=lambda result: result[0])
    return results[len(results) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument(
        "--reps", type=int, nargs="+", default=[0, 200], help="work per piece: bootstrap refits / SVDs (0 = light)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure; the median is printed")
    parser.add_argument("--medium-only", action="store_true", help="only MEDIUM (degree 4), the issue's targets")
    args = parser.parse_args()
    setup(tempfile.mkdtemp(prefix="omlweb-bench-"))

    import io

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from django.contrib.auth import get_user_model

    from scripts_app import runner
    from scripts_app.models import Run
    from scripts_app.services.datasets import dataset_create
    from scripts_app.services.execution import execute_run
    from scripts_app.services.pipeline import ApplyInput, RunRequest, record_run
    from scripts_app.services.scripts import script_create

    frame = make_frame(args.rows, args.groups)
    user = get_user_model().objects.create_user("bench")
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    buffer.seek(0)
    dataset_create(owner=user, name="DATA", upload=buffer, filename="data.parquet")
    script_create(owner=user, name="fit", source=GROUP_FUNCTION)
    script_create(owner=user, name="score", source=ROW_FUNCTION)

    def omlweb(kind: str, script: str, service: str, parallel: bool, reps: int, **options):
        from scripts_app.models import Script

        run = record_run(
            RunRequest(
                kind=kind,
                script=Script.objects.get(name=script),
                user=user,
                apply_input=ApplyInput(input_query="select * from DATA", parallel_flag=parallel, **options),
                parameters={"oml_input_type": "pandas.DataFrame", "reps": reps},
                service=service,
            )
        )
        run = execute_run(run)
        assert run.status == Run.Status.SUCCEEDED, run.error_message
        return run

    namespace: dict = {}
    exec(GROUP_FUNCTION, namespace)
    fit = namespace["fit"]
    exec(ROW_FUNCTION, namespace)
    score = namespace["score"]
    size = -(-args.rows // args.chunks)

    def pandas_group(reps: int):
        return pd.concat([fit(group, reps=reps) for _, group in frame.groupby("G", sort=True)])

    def pandas_rows(reps: int):
        return pd.concat([score(frame.iloc[i : i + size], reps=reps) for i in range(0, len(frame), size)])

    print(f"rows={args.rows} groups={args.groups} chunks={args.chunks} cores={os.cpu_count()}")
    print(f"runner: {runner.isolation_report().get('level')} / {runner.isolation_report().get('mode')}")
    print("ratio = omlweb seconds / pandas seconds (below 1: faster than pandas in one process)")
    for reps in args.reps:
        for label, kind, script, reference, options in (
            (f"group-apply, {args.groups} groups", Run.Kind.GROUP_APPLY, "fit", pandas_group, {"group_by": "G"}),
            (f"row-apply, {args.chunks} chunks", Run.Kind.ROW_APPLY, "score", pandas_rows, {"rows": size}),
        ):
            omlweb(kind, script, "LOW", True, reps, **options)  # warm the templates and the file cache
            base = median_of(args.repeat, functools.partial(reference, reps))[0]
            print(f"\n{label}, work {reps}: pandas in one process {base:.2f} s")
            levels = (("MEDIUM", True),) if args.medium_only else (("LOW", False), ("LOW", True), ("MEDIUM", True))
            for service, parallel in levels:
                seconds, run = median_of(
                    args.repeat, functools.partial(omlweb, kind, script, service, parallel, reps, **options)
                )
                pieces = sum(p["seconds"] for p in run.pieces)
                print(
                    f"  omlweb {service:<6} degree {run.apply_options['degree']}: {seconds:6.2f} s"
                    f"  ratio {seconds / base:5.2f}  (pieces' own time {pieces:.2f} s)"
                )
    runner.shutdown()


if __name__ == "__main__":
    main()
