"""What checking a run's result document costs the parent, on the runner bench's 10,000-row DataFrame.

    python bench/validation_bench.py [--repeat 50]

Prints the best and median time of: the bare json.loads of the value the parent always did, the whole
`read_document` (meta, value, depth/items/finite walk, figures), and the same document with a value that
holds a lone surrogate (the slow path that cleans strings). Ratios are to the bare json.loads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from scripts_app.runner import Limits  # noqa: E402
from scripts_app.runner.validation import read_document  # noqa: E402

META = b'{"outcome": "SUCCEEDED", "failure": null, "error_message": "", "traceback": ""}'


def frame_json(rows: int) -> str:
    """The value as the harness writes the runner bench's `bench_frame`."""
    frame = pd.DataFrame(
        {
            "id": np.arange(rows),
            "x": np.linspace(0, 1, rows),
            "name": [f"row{i}" for i in range(rows)],
            "when": pd.date_range("2024-01-01", periods=rows, freq="min"),
        }
    )
    return frame.to_json(orient="records", date_format="iso", double_precision=15)


def timed(call, repeat: int) -> tuple[float, float]:
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    limits = Limits(max_output_items=100_000)
    value = frame_json(args.rows)
    document = bytearray(META + b"\n" + value.encode() + b"\n[]")
    # One lone surrogate in the last row: the cleaning path walks every string.
    dirty = bytearray(META + b"\n" + value[:-3].encode() + b'\\ud800"}]' + b"\n[]")
    assert read_document(dirty, limits).value[-1]["when"].endswith("\ufffd")
    rows = [
        ("json.loads of the value (before)", timed(lambda: json.loads(value), args.repeat)),
        ("read_document, whole check", timed(lambda: read_document(document, limits), args.repeat)),
        ("read_document, lone surrogate", timed(lambda: read_document(dirty, limits), args.repeat)),
    ]
    base = rows[0][1][1]
    print(f"value: {len(value):,} bytes of JSON, {args.rows:,} rows; {args.repeat} repeats")
    print(f"{'':36} {'best ms':>9} {'median ms':>10} {'x loads':>8}")
    for name, (best, median) in rows:
        print(f"{name:36} {best * 1000:9.2f} {median * 1000:10.2f} {median / base:8.2f}")


if __name__ == "__main__":
    main()
