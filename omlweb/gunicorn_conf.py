"""gunicorn settings that `manage.py serve` loads (`--config python:omlweb.gunicorn_conf`)."""

import threading


def post_worker_init(worker) -> None:
    # Start the runner's templates now, beside the first requests: the isolation level is found and
    # logged at start-up, and the first run is already warm.
    from scripts_app import runner

    threading.Thread(target=runner.warm_up, name="runner-warm-up", daemon=True).start()
