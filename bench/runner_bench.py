"""Benchmark of the runner against its floor and its peers, with the same three functions.

    python bench/runner_bench.py [--service-url URL --username U --password P] [--start-service CMD]
                                 [--kernel-gateway-python PY] [--quick]

Targets, side by side in one run, each at concurrency 1 (p50/p95/p99 latency) and 8 (runs/s):

  floor     the function called directly in this warm interpreter, plus JSON/PNG encoding
  runner    scripts_app.runner.run() called in this process: a fresh isolated child per run, no HTTP
  service   the real omlweb service over HTTP (bearer token, do-eval), when --service-url is given
  naive     an HTTP server that starts `python` per request (the usual first implementation)
  kernelgw  Jupyter Kernel Gateway in notebook-http mode serving the same functions, when
            --kernel-gateway-python points to an interpreter with jupyter_kernel_gateway installed

It prints a table with every figure and its ratio to the floor and to each peer, and writes it as
JSON to bench/results/runner-<time>.json. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts_app import runner  # noqa: E402

# The three functions, as the service stores them: one script each, entry function named like it.
SCRIPTS = {
    "bench_trivial": (
        "def bench_trivial():\n    return {'answer': 42, 'ok': True}\n",
        False,
    ),
    "bench_plot": (
        textwrap.dedent(
            """
            import numpy as np
            import matplotlib.pyplot as plt

            def bench_plot():
                x = np.linspace(0, 10, 100)
                plt.figure()
                plt.plot(x, np.sin(x))
                plt.title("sine")
                return {"points": 100}
            """
        ),
        True,
    ),
    "bench_frame": (
        textwrap.dedent(
            """
            import numpy as np
            import pandas as pd

            def bench_frame():
                n = 10_000
                return pd.DataFrame({
                    "id": np.arange(n),
                    "x": np.linspace(0, 1, n),
                    "name": ["row%d" % i for i in range(n)],
                    "when": pd.date_range("2024-01-01", periods=n, freq="min"),
                })
            """
        ),
        False,
    ),
}
BENCH_LIMITS = runner.Limits(wall_seconds=60, max_output_items=100_000)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure(call: Callable[[], None], *, count: int, concurrency: int, warmup: int = 3) -> dict:
    """Latency percentiles (concurrency 1) or throughput (concurrency > 1) of `call`."""
    for _ in range(warmup):
        call()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    remaining = [count]

    def worker() -> None:
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            started = time.perf_counter()
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - a failed call is counted and reported
                with lock:
                    errors.append(repr(exc)[:200])
                continue
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    figures = {
        "n": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "runs_per_second": len(latencies) / wall if wall else 0.0,
    }
    if latencies:
        figures.update(
            p50_ms=percentile(latencies, 50) * 1000,
            p95_ms=percentile(latencies, 95) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
        )
    return figures


# ------------------------------------------------------------------------------------------------
# Targets: each gives a callable per function name, or raises Unavailable.


class Unavailable(Exception):
    pass


class Floor:
    """The function in this interpreter, plus the encoding a response needs."""

    name = "floor"

    def __init__(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.functions = {}
        for name, (source, _) in SCRIPTS.items():
            namespace: dict = {}
            exec(compile(source, name, "exec"), namespace)
            self.functions[name] = namespace[name]

    lock = threading.Lock()

    def call(self, name: str) -> Callable[[], None]:
        function = self.functions[name]
        graphics = SCRIPTS[name][1]
        plt = self.plt
        lock = self.lock

        def once() -> None:
            # One interpreter runs one call at a time (the GIL, and pyplot is not thread-safe).
            with lock:
                encode()

        def encode() -> None:
            value = function()
            if hasattr(value, "to_json"):
                text = value.to_json(orient="records", date_format="iso", double_precision=15)
            else:
                text = json.dumps(value)
            images = []
            if graphics:
                for number in plt.get_fignums():
                    buffer = io.BytesIO()
                    plt.figure(number).savefig(buffer, format="png")
                    images.append(base64.b64encode(buffer.getvalue()).decode())
                plt.close("all")
            json.dumps({"result": text, "images": images})

        return once


class RunnerDirect:
    """scripts_app.runner.run() in this process: what the service adds on top of HTTP and Django."""

    name = "runner"

    def __init__(self) -> None:
        runner.configure(max_concurrent=8, queue_timeout=60)
        runner.warm_up()
        self.report = runner.isolation_report()

    def call(self, name: str) -> Callable[[], None]:
        source, graphics = SCRIPTS[name]
        job = runner.Job(source=source, function=name, graphics=graphics, limits=BENCH_LIMITS)

        def once() -> None:
            result = runner.run(job)
            if not result.succeeded:
                raise RuntimeError(result.error_message or result.stderr)
            images = [base64.b64encode(figure.png).decode() for figure in result.figures]
            body = '{"result":' + result.value_json + ',"images":' + json.dumps(images) + "}"
            if not body:
                raise RuntimeError("empty response")

        return once


class _HttpClient:
    """One keep-alive connection per thread."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.hostname not in ("127.0.0.1", "localhost"):
            raise SystemExit("the benchmark only talks to 127.0.0.1")
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.prefix = parsed.path.rstrip("/")
        self.headers = headers or {}
        self.local = threading.local()

    def get(self, path: str) -> tuple[int, bytes]:
        return self.post(path, method="GET")

    def post(
        self, path: str, body: dict | None = None, headers: dict[str, str] | None = None, *, method: str = "POST"
    ) -> tuple[int, bytes]:
        data = json.dumps(body or {}).encode() if method == "POST" else None
        all_headers = {"Content-Type": "application/json", "Accept": "application/json", **self.headers}
        all_headers.update(headers or {})
        for attempt in (1, 2):
            connection = getattr(self.local, "connection", None)
            if connection is None:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
                self.local.connection = connection
            try:
                connection.request(method, self.prefix + path, body=data, headers=all_headers)
                response = connection.getresponse()
                payload = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    self.local.connection = None
                return response.status, payload
            except (http.client.HTTPException, OSError):
                connection.close()
                self.local.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


class Service:
    """The real omlweb service: token once, then do-eval with the bearer token on every call."""

    name = "service"

    def __init__(self, base_url: str, username: str, password: str) -> None:
        client = _HttpClient(base_url)
        status, body = client.post(
            "/omlusers/api/oauth2/v1/token", {"grant_type": "password", "username": username, "password": password}
        )
        if status != 200:
            raise Unavailable(f"token request answered {status}: {body[:200]!r}")
        token = json.loads(body)["accessToken"]
        self.client = _HttpClient(base_url, {"Authorization": f"Bearer {token}"})
        self._wait_for_builds()
        for name, (source, _) in SCRIPTS.items():
            status, body = self.client.post(
                "/oml/api/py-scripts/v1/scripts",
                {"name": name, "script": source, "description": "benchmark", "isGlobal": False, "overwrite": True},
            )
            if status not in (200, 201):
                raise Unavailable(f"creating script {name} answered {status}: {body[:200]!r}")

    def _wait_for_builds(self, timeout: float = 600) -> None:
        """A freshly started service builds its demo environment (bootstrap): seconds of CPU that would
        be measured against whichever target came first. Wait until no environment is BUILDING."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.client.get("/oml/api/py-scripts/v1/envs")
            if status != 200:
                raise Unavailable(f"listing environments answered {status}: {body[:200]!r}")
            building = [
                env["name"] for env in json.loads(body)["result"]["envs"] if env["tags"].get("status") == "BUILDING"
            ]
            if not building:
                return
            print(f"waiting for environment builds: {', '.join(building)}", file=sys.stderr)
            time.sleep(2)
        raise Unavailable(f"environments still building after {timeout:g} s")

    def call(self, name: str) -> Callable[[], None]:
        graphics = SCRIPTS[name][1]
        path = f"/oml/api/py-scripts/v1/do-eval/{name}"
        body = {"graphicsFlag": graphics, "service": "LOW"}

        def once() -> None:
            status, payload = self.client.post(path, body)
            if status != 200:
                raise RuntimeError(f"do-eval {name} answered {status}: {payload[:200]!r}")

        return once


NAIVE_CHILD = textwrap.dedent(
    """
    import base64, io, json, sys
    source, name, graphics = json.loads(sys.stdin.read())
    if graphics:
        import matplotlib
        matplotlib.use("Agg")
    namespace = {}
    exec(compile(source, name, "exec"), namespace)
    value = namespace[name]()
    if hasattr(value, "to_json"):
        value = json.loads(value.to_json(orient="records", date_format="iso"))
    images = []
    if graphics:
        import matplotlib.pyplot as plt
        for number in plt.get_fignums():
            buffer = io.BytesIO()
            plt.figure(number).savefig(buffer, format="png")
            images.append(base64.b64encode(buffer.getvalue()).decode())
    sys.stdout.write(json.dumps({"result": value, "images": images}))
    """
)


class Naive:
    """An HTTP server that starts a new `python` for every request."""

    name = "naive"

    def __init__(self) -> None:
        python = sys.executable

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                name = self.path.rsplit("/", 1)[-1]
                source, graphics = SCRIPTS[name]
                env = {"PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", "OPENBLAS_NUM_THREADS": "1"}
                with tempfile.TemporaryDirectory() as workdir:
                    env["MPLCONFIGDIR"] = str(Path(tempfile.gettempdir()) / "omlweb-bench-naive-mpl")
                    done = subprocess.run(
                        [python, "-I", "-c", NAIVE_CHILD],
                        input=json.dumps([source, name, graphics]).encode(),
                        capture_output=True,
                        cwd=workdir,
                        env=env,
                        timeout=120,
                    )
                status = 200 if done.returncode == 0 else 500
                body = done.stdout if status == 200 else done.stderr[-500:]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.client = _HttpClient(f"http://127.0.0.1:{self.server.server_port}")

    def call(self, name: str) -> Callable[[], None]:
        def once() -> None:
            status, payload = self.client.post(f"/run/{name}")
            if status != 200:
                raise RuntimeError(f"naive {name} answered {status}: {payload[:300]!r}")

        return once

    def close(self) -> None:
        self.server.shutdown()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class KernelGateway:
    """Jupyter Kernel Gateway, notebook-http mode: each function is a `# POST /name` cell."""

    name = "kernelgw"

    def __init__(self, python: str, pool: int) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="omlweb-bench-kg-"))
        cells = ["import json, base64, io\nimport matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt"]
        cells += [source for source, _ in SCRIPTS.values()]
        for name, (_, graphics) in SCRIPTS.items():
            cells.append(
                textwrap.dedent(
                    f"""\
                    # POST /{name}
                    value = {name}()
                    if hasattr(value, "to_json"):
                        value = value.to_json(orient="records", date_format="iso", double_precision=15)
                    images = []
                    if {graphics}:
                        for number in plt.get_fignums():
                            buffer = io.BytesIO()
                            plt.figure(number).savefig(buffer, format="png")
                            images.append(base64.b64encode(buffer.getvalue()).decode())
                        plt.close("all")
                    print(json.dumps({{"result": value, "images": images}}))
                    """
                )
            )
        notebook = {
            "cells": [
                {"cell_type": "code", "metadata": {}, "source": cell, "outputs": [], "execution_count": None}
                for cell in cells
            ],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        seed = self.workdir / "bench.ipynb"
        seed.write_text(json.dumps(notebook))
        port = _free_port()
        env = {
            "PATH": f"{Path(python).parent}:/usr/bin:/bin",
            "HOME": str(self.workdir),
            "JUPYTER_RUNTIME_DIR": str(self.workdir / "runtime"),
            "MPLCONFIGDIR": str(self.workdir / "mpl"),
            "OPENBLAS_NUM_THREADS": "1",
        }
        command = [
            python,
            "-m",
            "kernel_gateway",
            "--KernelGatewayApp.api=kernel_gateway.notebook_http",
            f"--KernelGatewayApp.seed_uri={seed}",
            "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={port}",
            f"--KernelGatewayApp.prespawn_count={pool}",
        ]
        self.log = open(self.workdir / "kernelgw.log", "wb")  # noqa: SIM115 - lives as long as the gateway
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log, env=env, cwd=self.workdir)
        self.client = _HttpClient(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable(f"kernel gateway exited: {(self.workdir / 'kernelgw.log').read_text()[-1000:]}")
            try:
                status, _ = self.client.post("/bench_trivial")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise Unavailable("kernel gateway did not answer within 120 s")

    def call(self, name: str) -> Callable[[], None]:
        def once() -> None:
            status, payload = self.client.post(f"/{name}")
            if status != 200:
                raise RuntimeError(f"kernel gateway {name} answered {status}: {payload[:300]!r}")

        return once

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@contextlib.contextmanager
def started_service(command: str | None, base_url: str | None):
    if not command:
        yield
        return
    process = subprocess.Popen(shlex.split(command), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        parsed = urllib.parse.urlsplit(base_url)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((parsed.hostname, parsed.port or 80), 1):
                break
            time.sleep(0.5)
        yield
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


# ------------------------------------------------------------------------------------------------


def format_table(results: dict, order: list[str]) -> str:
    nan = float("nan")
    lines = [f"{'function':<14}{'target':<10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'runs/s c=8':>12}  errors"]
    lines.append("-" * len(lines[0]))
    for function in SCRIPTS:
        rows = results[function]
        for target in order:
            row = rows.get(target)
            if row is None:
                continue
            if "unavailable" in row:
                lines.append(f"{function:<14}{target:<10}  unavailable: {row['unavailable'][:80]}")
                continue
            c1, c8 = row["c1"], row["c8"]
            line = f"{function:<14}{target:<10}"
            line += f"{c1.get('p50_ms', nan):>9.2f}{c1.get('p95_ms', nan):>9.2f}{c1.get('p99_ms', nan):>9.2f}"
            line += f"{c8.get('runs_per_second', 0):>12.1f}"
            errors = c1.get("errors", 0) + c8.get("errors", 0)
            if errors:
                line += f"  {errors}: {c1.get('first_error') or c8.get('first_error')}"
            lines.append(line)
        lines.append("")
    lines.append("Ratios: p50 latency (lower is better) / runs per second at c=8 (higher is better),")
    lines.append("row target divided by column target.")
    for function in SCRIPTS:
        rows = {t: r for t, r in results[function].items() if "unavailable" not in r}
        present = [t for t in order if t in rows]
        lines.append(f"{function:<14}" + "".join(f"{'/' + t:>17}" for t in present))
        for target in present:
            cells = []
            for peer in present:
                a, b = rows[target], rows[peer]
                p50 = a["c1"].get("p50_ms", nan) / b["c1"].get("p50_ms", nan) if b["c1"].get("p50_ms") else nan
                rps = a["c8"]["runs_per_second"] / b["c8"]["runs_per_second"] if b["c8"]["runs_per_second"] else nan
                cells.append(f"{p50:>8.2f}/{rps:<8.2f}")
            lines.append(f"  {target:<12}" + "".join(f"{cell:>17}" for cell in cells))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service-url", help="base URL of a running omlweb, e.g. http://127.0.0.1:8000")
    parser.add_argument("--username", default=os.environ.get("OMLWEB_BENCH_USERNAME", "admin"))
    parser.add_argument("--password", default=os.environ.get("OMLWEB_BENCH_PASSWORD"))
    parser.add_argument("--start-service", help="command that starts the service (stopped at the end)")
    parser.add_argument("--kernel-gateway-python", help="python of a venv with jupyter_kernel_gateway + ipykernel")
    parser.add_argument("--kernel-pool", type=int, default=2, help="Kernel Gateway prespawned kernels")
    parser.add_argument("--targets", default="floor,runner,service,naive,kernelgw")
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke run")
    parser.add_argument("--output", help="JSON file to write (default bench/results/runner-<time>.json)")
    args = parser.parse_args(argv)

    scale = 0.2 if args.quick else 1.0
    counts = {  # calls at concurrency 1 and 8, per target speed class
        "fast": (int(300 * scale), int(400 * scale)),
        "slow": (int(20 * scale) or 3, int(24 * scale) or 8),
    }
    wanted = args.targets.split(",")
    targets: dict[str, object] = {}
    unavailable: dict[str, str] = {}
    with started_service(args.start_service, args.service_url):
        for name in wanted:
            try:
                if name == "floor":
                    targets[name] = Floor()
                elif name == "runner":
                    targets[name] = RunnerDirect()
                elif name == "service":
                    if not args.service_url:
                        raise Unavailable("no --service-url given")
                    if not args.password:
                        raise Unavailable("no --password (or OMLWEB_BENCH_PASSWORD) given")
                    targets[name] = Service(args.service_url, args.username, args.password)
                elif name == "naive":
                    targets[name] = Naive()
                elif name == "kernelgw":
                    if not args.kernel_gateway_python:
                        raise Unavailable("no --kernel-gateway-python given")
                    targets[name] = KernelGateway(args.kernel_gateway_python, args.kernel_pool)
            except Unavailable as exc:
                unavailable[name] = str(exc)
                print(f"{name}: unavailable: {exc}", file=sys.stderr)

        results: dict = {function: {} for function in SCRIPTS}
        for function, (_, _graphics) in SCRIPTS.items():
            for name in wanted:
                if name in unavailable:
                    results[function][name] = {"unavailable": unavailable[name]}
                    continue
                target = targets[name]
                speed = "slow" if name == "naive" else "fast"
                if function != "bench_trivial" and speed == "fast":
                    n1, n8 = counts["fast"][0] // 3, counts["fast"][1] // 3
                else:
                    n1, n8 = counts[speed]
                call = target.call(function)
                print(f"measuring {function} on {name} ...", file=sys.stderr)
                results[function][name] = {
                    "c1": measure(call, count=n1, concurrency=1),
                    "c8": measure(call, count=n8, concurrency=8),
                }
        for target in targets.values():
            if hasattr(target, "close"):
                target.close()

    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "isolation": targets["runner"].report if "runner" in targets else None,
        "results": results,
    }
    table = format_table(results, wanted)
    print(table)
    output = Path(args.output) if args.output else ROOT / "bench" / "results" / f"runner-{int(time.time())}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    report["table"] = table
    output.write_text(json.dumps(report, indent=2, default=str))
    print(f"written to {output}")
    summary = results["bench_trivial"]
    if "runner" in summary and "floor" in summary and "p50_ms" in summary["runner"]["c1"]:
        gap = summary["runner"]["c1"]["p50_ms"] - summary["floor"]["c1"]["p50_ms"]
        print(f"trivial: runner p50 is {gap:.1f} ms above the in-process floor")
    runner.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
