"""The environment build task. Thin: it takes an id and a generation and calls the service."""

from __future__ import annotations

from celery import shared_task

from scripts_app.services import environments


# A redelivered build finds its generation READY or FAILED, or built on this host, and does no harm.
@shared_task(name="omlweb.build_environment", acks_late=True, ignore_result=True)
def build_environment(environment_id: str, generation: int) -> None:
    environments.environment_build(environment_id=environment_id, generation=generation)
