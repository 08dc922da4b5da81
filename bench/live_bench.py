"""What live output costs the runner: the same jobs with and without a tap, and against another checkout.

    python bench/live_bench.py [--runs 300] [--before /path/to/other/checkout]

Each target runs in its own process (fresh warm template), one job at a time:

  before   `--before`'s runner (say, main without live output), no tap: the baseline
  no tap   this checkout's runner, no tap (the sync and API path)
  tap      this checkout, a tap read every 0.5 s by a thread, as services.live reads it (the job path)

Jobs: `trivial` returns a small dict and prints nothing; `print` prints 2,000 short lines. Prints
p50 / p95 in ms side by side; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

JOBS = {
    "trivial": "def f():\n    return {'answer': 42, 'ok': True}\n",
    "print": "def f():\n    for i in range(2000):\n        print('line', i)\n    return 1\n",
}

CHILD = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
from scripts_app import runner
from scripts_app.runner import Job, Limits

source, runs, tapped = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
runner.configure(mode="zygote")
runner.warm_up()
job = Job(source=source, function="f", limits=Limits(wall_seconds=30))
for _ in range(20):
    runner.run(job)
times = []
for _ in range(runs):
    kwargs = {}
    stop = threading.Event()
    reader = None
    if tapped:
        tap = runner.Tap()
        kwargs["tap"] = tap
        def read():
            while not stop.wait(0.5):
                tap.take()
            tap.take()
        reader = threading.Thread(target=read)
        reader.start()
    start = time.perf_counter()
    result = runner.run(job, **kwargs)
    times.append(time.perf_counter() - start)
    stop.set()
    if reader is not None:
        reader.join()
    assert result.succeeded, result.error_message
runner.shutdown()
print(json.dumps(times))
"""


def measure(root: Path, source: str, runs: int, tapped: bool) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), source, str(runs), "1" if tapped else "0"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def figures(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return f"{statistics.median(ordered) * 1000:7.2f} {p95 * 1000:7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--before", type=Path, help="another checkout to compare with (no tap)")
    args = parser.parse_args()
    targets = []
    if args.before:
        targets.append(("before", args.before, False))
    targets += [("no tap", ROOT, False), ("tap", ROOT, True)]
    print(f"{args.runs} runs each, one at a time; p50 and p95 in ms")
    print(f"{'job':8} " + " ".join(f"{name:>15}" for name, _, _ in targets))
    for job, source in JOBS.items():
        row = [figures(measure(root, source, args.runs, tapped)) for _, root, tapped in targets]
        print(f"{job:8} " + " ".join(f"{cell:>15}" for cell in row))


if __name__ == "__main__":
    main()
