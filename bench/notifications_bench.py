"""Benchmark: what notifications add to a run, and how fast a worker sends them.

    /work/main/.venv/bin/python bench/notifications_bench.py [--runs 30] [--deliveries 100]

Sets up a throwaway data dir (SQLite, the embedded filesystem broker) and prints, side by side:
1. a sync run (a tiny script, through services.pipeline.start_run) with no rule, and with 3 matching rules
   (each run then records 3 deliveries and publishes 3 messages after its commit);
2. the time one worker takes per delivery (services.notifications.deliver, as the Celery task runs it)
   to a local HTTP receiver and to a local SMTP server (aiosmtpd).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--deliveries", type=int, default=100)
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="omlweb-notify-bench-")
    os.environ["OMLWEB_DATA_DIR"] = data_dir
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")
    os.environ["OMLWEB_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    os.environ.setdefault("OMLWEB_LOG_LEVEL", "WARNING")
    os.environ["OMLWEB_RUNNER_PRELOAD"] = ""
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model

    from scripts_app.models import NotificationDelivery, NotificationRule
    from scripts_app.services import notifications
    from scripts_app.services.pipeline import RunRequest, start_run
    from scripts_app.services.scripts import script_create
    from tests.notifications.receivers import SMTPServer, WebhookReceiver

    receiver, smtp = WebhookReceiver().start(), SMTPServer().start()
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp.port
    user = get_user_model().objects.create_user("bench", email="bench@example.org")
    script = script_create(owner=user, name="tiny", source="def tiny():\n    return 1\n")

    def sync_runs() -> list[float]:
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            start_run(RunRequest(script=script, user=user))
            times.append(time.perf_counter() - started)
        return times

    sync_runs()  # warm the runner
    bare = sync_runs()
    for index in range(3):
        notifications.rule_create(owner=user, name=f"r{index}", channel="WEBHOOK", url=receiver.url(), on_success=True)
    with_rules = sync_runs()
    queued = NotificationDelivery.objects.count()

    def deliver_all(channel: str) -> float:
        rule = NotificationRule.objects.filter(channel=channel).first()
        ids = [
            notifications._record(rule=rule, run=None, event="test", now=notifications.timezone.now()).pk
            for _ in range(args.deliveries)
        ]
        started = time.perf_counter()
        for pk in ids:
            notifications.deliver(delivery_id=pk)
        return (time.perf_counter() - started) / len(ids)

    webhook = deliver_all("WEBHOOK")
    notifications.rule_create(owner=user, name="mail", channel="EMAIL")
    mail = deliver_all("EMAIL")
    receiver.stop()
    smtp.stop()

    median = statistics.median
    print(f"sync run, median of {args.runs}       no rule: {median(bare) * 1000:7.1f} ms")
    print(
        f"sync run, median of {args.runs}  3 rules match: {median(with_rules) * 1000:7.1f} ms"
        f"   (+{(median(with_rules) - median(bare)) * 1000:.1f} ms; {queued} deliveries queued)"
    )
    print(f"one webhook delivery (local receiver): {webhook * 1000:7.1f} ms")
    print(f"one e-mail delivery (local aiosmtpd):  {mail * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
