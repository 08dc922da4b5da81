"""Make a fresh installation usable: roles, an admin user, the demo scripts and datasets. Safe to run again."""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from scripts_app.demo import DEMO_ENVIRONMENT, DEMO_SCRIPT_ENVIRONMENTS, demo_datasets, demo_scripts
from scripts_app.models import Dataset, Environment, Script
from scripts_app.roles import ADMINS, ROLES
from scripts_app.services.datasets import dataset_create
from scripts_app.services.environments import environment_create
from scripts_app.services.jobs import broker
from scripts_app.services.scripts import script_create, script_update


class Command(BaseCommand):
    help = (
        "Create the role groups, an admin user when there is none, and load the demos: scripts, datasets, environment."
    )

    @transaction.atomic
    def handle(self, *args, **options) -> None:
        for role in ROLES:
            Group.objects.get_or_create(name=role)
        admin = self.ensure_admin()
        for name, source in demo_scripts().items():
            script = Script.objects.filter(owner=admin, name=name).first()
            if script is None:
                script_create(
                    owner=admin,
                    name=name,
                    source=source,
                    description="Demo",
                    is_global=True,
                    env_name=DEMO_SCRIPT_ENVIRONMENTS.get(name, ""),
                )
                self.stdout.write(f"Loaded demo script {name}.")
            elif script.source != source or script.env_name != DEMO_SCRIPT_ENVIRONMENTS.get(name, ""):
                script_update(script=script, by=admin, source=source, env_name=DEMO_SCRIPT_ENVIRONMENTS.get(name, ""))
                self.stdout.write(f"Updated demo script {name}.")
        if not Environment.objects.filter(name=DEMO_ENVIRONMENT["name"]).exists():
            # Built by a worker in the background; Example 2 works once it is READY.
            environment_create(by=admin, **DEMO_ENVIRONMENT)
            if broker.broker_problem() is None:
                self.stdout.write(f"Defined demo environment {DEMO_ENVIRONMENT['name']}; a worker builds it now.")
            else:
                self.stderr.write(
                    f"Defined demo environment {DEMO_ENVIRONMENT['name']}; the broker does not answer, so a worker "
                    "builds it once it does."
                )
        for name, path in demo_datasets().items():
            if not Dataset.objects.filter(owner=admin, name__iexact=name).exists():
                with path.open("rb") as upload:
                    dataset_create(
                        owner=admin, name=name, upload=upload, filename=path.name, description="Demo", is_global=True
                    )
                self.stdout.write(f"Loaded demo dataset {name}.")

    def ensure_admin(self):
        users = get_user_model().objects
        admin = users.filter(is_superuser=True).order_by("date_joined").first()
        if admin is not None:
            return admin
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or "admin"
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        admin = users.create_superuser(username=username, email="", password=password)
        admin.groups.add(Group.objects.get(name=ADMINS))
        if generated:
            self.stdout.write(
                self.style.WARNING(
                    f"Created admin user {username!r} with password {password!r}. It is shown only this once."
                )
            )
        else:
            self.stdout.write(f"Created admin user {username!r}.")
        return admin
