"""The operator's view on the command line: workers alive, queues per service level, the oldest job."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from scripts_app.services.jobs.broker import service_status


class Command(BaseCommand):
    help = "Show the workers that answer, each service level's queue, and the oldest queued job."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the same JSON as GET /oml/api/admin/status.")

    def handle(self, *args, json: bool, **options) -> None:
        status = service_status()
        if json:
            self.stdout.write(_dumps(status))
            return
        broker = "answers" if status["brokerAvailable"] else f"DOES NOT ANSWER ({status['brokerError']})"
        self.stdout.write(f"Broker: {status['broker']}, {broker}    database: {status['database']}")
        for supervisor in status["supervisors"]:
            self.stdout.write(f"serve on {supervisor['host']} (pid {supervisor['pid']}):")
            for child in supervisor["children"]:
                looping = "  CRASH-LOOPING" if child["crashLooping"] else ""
                self.stdout.write(
                    f"  {child['name']:<16} {child['status']:<10} restarts {child['restarts']}"
                    f"{', last exit ' + child['lastExit'] if child['lastExit'] else ''}{looping}"
                )
        self.stdout.write(f"Workers alive: {len(status['workers'])}")
        for worker in status["workers"]:
            self.stdout.write(f"  {worker['name']}: {', '.join(worker['queues'])}")
        self.stdout.write("Level    queue              messages  queued  running  workers")
        for level, row in status["serviceLevels"].items():
            messages = "?" if row["messages"] is None else row["messages"]
            self.stdout.write(
                f"{level:<8} {row['queue']:<18} {messages:>8}  {row['queued']:>6}  {row['running']:>7}  "
                f"{len(row['workers'])}"
            )
        oldest = status["oldestQueuedJob"]
        if oldest:
            self.stdout.write(
                f"Oldest queued job: {oldest['jobId']} ({oldest['service']}), waiting {oldest['waiting']}"
            )
        else:
            self.stdout.write("No job is queued.")


def _dumps(value) -> str:
    return json.dumps(value, indent=2)
