"""Polls every 2 s on one keep-alive connection, as dbt-oracle does, against gunicorn with a 2 s and a 75 s keep-alive.

    .venv/bin/python bench/keepalive_bench.py [polls]

Prints how many polls found the connection closed under them (RemoteDisconnected and kin). Measured
2026-11-29 on the 2-core dev machine, 40 polls: keep-alive 2 s (gunicorn's default): 2 of 40 failed;
75 s (omlweb's): 0 of 40.
"""

from __future__ import annotations

import http.client
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.served import free_port, gunicorn_command, served, service_env  # noqa: E402

CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def main(polls: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        env = service_env(Path(folder))
        for keepalive in ("2", "75"):
            port = free_port()
            with served(
                gunicorn_command(port),
                {**env, "OMLWEB_WEB_KEEPALIVE_SECONDS": keepalive},
                port,
                Path(folder) / f"gunicorn-{keepalive}.log",
            ):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                failed = 0
                for _ in range(polls):
                    try:
                        connection.request("GET", "/oml/api/py-scripts")
                        connection.getresponse().read()
                    except CLOSED:
                        failed += 1
                        connection.close()
                        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    time.sleep(2)
                print(f"keep-alive {keepalive:>2} s: {failed} of {polls} polls at 2 s found the connection closed")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
