"""What storing a do-eval DataFrame's result costs in SQLite, as omlweb opens it (WAL, synchronous=NORMAL).

    python bench/sqlite_outcome_bench.py [--runs 60]

For each run: an INSERT of the run (its own IMMEDIATE transaction), then the outcome's UPDATE with the
runner bench's 10,000-row DataFrame as JSON text (0.84 MB), timed with its commit. Once per
`wal_autocheckpoint` setting: the default 1000 pages (the committing connection checkpoints about every
5 such runs), 0 (no automatic checkpoint; a PASSIVE checkpoint every 5 runs, timed apart) and 10000.
A throw-away database in a temporary folder, deleted afterwards.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validation_bench import frame_json  # noqa: E402


def measure(text: str, runs: int, setting: int) -> str:
    folder = tempfile.mkdtemp(prefix="omlweb-sqlite-bench-")
    try:
        connection = sqlite3.connect(Path(folder) / "db.sqlite3", isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(f"PRAGMA wal_autocheckpoint={setting}")
        connection.execute("CREATE TABLE run (id INTEGER PRIMARY KEY, status TEXT, result_json TEXT)")
        times, checkpoints = [], []
        for number in range(runs):
            connection.execute("BEGIN IMMEDIATE")
            run_id = connection.execute("INSERT INTO run (status) VALUES ('RUNNING')").lastrowid
            connection.execute("COMMIT")
            started = time.perf_counter()
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("UPDATE run SET status = 'SUCCEEDED', result_json = ? WHERE id = ?", (text, run_id))
            connection.execute("COMMIT")
            times.append(time.perf_counter() - started)
            if setting == 0 and number % 5 == 4:
                started = time.perf_counter()
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                checkpoints.append(time.perf_counter() - started)
        connection.close()
    finally:
        shutil.rmtree(folder)
    times.sort()
    line = (
        f"wal_autocheckpoint={setting:<6} outcome transaction: median {statistics.median(times) * 1000:.2f} ms, "
        f"mean {statistics.mean(times) * 1000:.2f}, p90 {times[int(len(times) * 0.9)] * 1000:.2f}, "
        f"max {times[-1] * 1000:.2f}"
    )
    if checkpoints:
        line += f"; a PASSIVE checkpoint every 5 runs, apart: median {statistics.median(checkpoints) * 1000:.2f} ms"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    text = frame_json(10_000)
    print(f"value: {len(text):,} bytes of JSON; {args.runs} runs per setting")
    for setting in (1000, 0, 10000):
        print(measure(text, args.runs, setting))


if __name__ == "__main__":
    main()
