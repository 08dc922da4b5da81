"""Celery tasks: thin. They take ids and call a service; the database rows are the truth."""

from scripts_app.environments.tasks import build_environment

__all__ = ["build_environment"]
