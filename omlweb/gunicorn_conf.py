"""gunicorn settings that `manage.py serve` loads (`--config python:omlweb.gunicorn_conf`).

Connection handling is tuned for OML clients that poll: an async client polls its job's `Location`
every few seconds on one keep-alive connection (dbt-oracle: every 2 s). gunicorn's default keep-alive
is 2 s, so the server closed the idle connection just as the client reused it and the client saw
`RemoteDisconnected` and failed the model. docs/deployment.md gives the reverse-proxy settings to match.
"""

import threading
import traceback

from gunicorn.config import AccessLogFormat  # type: ignore[import-untyped]
from gunicorn.glogging import Logger  # type: ignore[import-untyped]

from omlweb.env import env_int

DEFAULT_ACCESS_FORMAT = AccessLogFormat.default

# gthread workers keep idle keep-alive connections in a poller, not in a thread: a long keep-alive
# costs a file descriptor, never a thread. 75 s is nginx's default and well above any poll interval.
keepalive = env_int("OMLWEB_WEB_KEEPALIVE_SECONDS", 75, minimum=1)
# Connections (active and idle keep-alive) one worker process holds; beyond it new ones wait.
worker_connections = 1000
# Threaded workers: a sync run holds its request's thread while it waits on the run's process, so
# there are more threads than run slots (OMLWEB_WEB_THREADS, default 16, against
# OMLWEB_RUNNER_MAX_CONCURRENT, default 4): polls, tokens and submits always find a free thread.
worker_class = "gthread"
# The worker's main thread reports to the arbiter between requests' events, whatever its request
# threads do: a sync run of many minutes is not a silent worker. A hung process is replaced after this.
timeout = 120
# On a stop, requests in flight (sync runs among them) get this long to finish.
graceful_timeout = 30


def post_worker_init(worker) -> None:
    # Start the runner's templates now, beside the first requests: the isolation level is found and
    # logged at start-up, and the first run is already warm.
    from scripts_app import runner

    threading.Thread(target=runner.warm_up, name="runner-warm-up", daemon=True).start()
    # The worker health page lists web processes too (their runner runs the sync runs).
    from scripts_app.services import heartbeats

    heartbeats.start(kind="web")


def worker_exit(server, worker) -> None:
    from scripts_app.services import heartbeats

    heartbeats.stop()


class AccessLogger(Logger):
    """gunicorn's logger, with the access line of its default format built directly.

    gunicorn builds every request's line from a dict of all its "atoms" (each request and response
    header and every WSGI environ entry, lower-cased and escaped) to fill the nine of the default
    format: about 6% of a trivial do-eval's CPU in the web process. The same line, byte for byte,
    costs a fifth of that here; a custom `--access-logformat` goes through gunicorn's own path.
    """

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        if self.cfg.access_log_format != DEFAULT_ACCESS_FORMAT:
            super().access(resp, req, environ, request_time)
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        parts = (
            environ.get("REMOTE_ADDR", "-"),
            self._get_user(environ) or "-",
            self.now(),
            f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}",
            status,
            sent is not None and str(sent) or "-",
            environ.get("HTTP_REFERER", "-"),
            environ.get("HTTP_USER_AGENT", "-"),
        )
        # As gunicorn's SafeAtoms: a double quote in any text is escaped.
        h, u, t, r, s, b, f, a = (part.replace('"', '\\"') if isinstance(part, str) else part for part in parts)
        try:
            # The line as the message with no arguments: logging leaves a "%" in it alone.
            self.access_log.info(f'{h} - {u} {t} "{r}" {s} {b} "{f}" "{a}"')
        except Exception:
            self.error(traceback.format_exc())


logger_class = AccessLogger
