"""Auditors change nothing, through any route: proven by walking the whole URLconf.

Every named route of the site (API, pages, environments, Django's admin, the auth views) is called
as an auditor with every write method (POST, PUT, PATCH, DELETE), for every plausible target (objects
of another user and objects the auditor owned before becoming one), with a body that would be valid
for it, as JSON and as a multipart form with a file. No answer may be a 2xx, and neither the database
nor the media storage may change. A new route is covered without touching this test.
"""

from __future__ import annotations

import io
import json
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
from django.apps import apps
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from django.test import Client
from django.test.client import encode_multipart
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from scripts_app.models import AccessToken, Environment, Run, RunImage
from scripts_app.roles import AUDITORS
from scripts_app.services.notifications import rule_create
from scripts_app.services.schedules import schedule_save
from scripts_app.services.tokens import personal_token_create
from tests.factories import UserFactory, make_dataset, make_script

METHODS = ("post", "put", "patch", "delete")
SOURCE = "def audit_new():\n    return 1\n"
BOUNDARY = "AuditBoundary"

# What an auditor may do for themselves, and why; everything else must be refused.
ALLOWED = {
    "oml-token": "signing in to the API (and refreshing their own token) is how an auditor reads through it",
    "oml-token-revoke": "revoking a token needs the token itself: it can only be the caller's own",
    "login": "signing in",
    "logout": "signing out",
    "admin:login": "signing in (the admin then refuses a user who is not staff)",
    "admin:logout": "signing out",
    "password_change": "changing their own password",
    "admin:password_change": "changing their own password",
    "password_reset": "the anonymous reset by e-mail, the same for everyone; it writes nothing",
    "password_reset_confirm": "the anonymous reset by e-mail, with its one-time link",
    "web:token_list": "creating a personal API token for themselves, to read through the API",
    "web:script_check": "checks the syntax of a source being typed; it writes nothing",
}


def own_token_revoke(name: str, kwargs: dict, auditor_token: AccessToken) -> bool:
    """Revoking their own personal token is allowed; anyone else's must be refused."""
    return name == "web:token_revoke" and kwargs.get("pk") == auditor_token.pk


def routes(patterns=None, namespace: str = ""):
    """(qualified name, parameter names, optional parameter names) of every named route."""
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from routes(entry.url_patterns, inner)
        elif isinstance(entry, URLPattern) and entry.name:
            pattern = entry.pattern
            if hasattr(pattern, "converters") and pattern.converters:
                params, optional = list(pattern.converters), set()
            else:
                regex = getattr(pattern, "regex", None)
                params = list(regex.groupindex) if regex is not None else []
                optional = {p for p in params if f"(?P<{p}>[^/]+))?" in regex.pattern} if regex is not None else set()
            yield f"{namespace}{entry.name}", params, optional


def snapshot() -> dict:
    """Every row of every model, but sign-in bookkeeping (sessions, django-axes' logs, last_login)."""
    skip = {"sessions.session", "axes.accessattempt", "axes.accesslog", "axes.accessfailurelog"}
    rows = {}
    for model in apps.get_models():
        if model._meta.label_lower in skip:
            continue
        fields = [f.attname for f in model._meta.concrete_fields if f.attname not in {"last_login", "last_used_at"}]
        rows[model._meta.label_lower] = sorted(map(repr, model.objects.values_list(*fields)))
    return rows


def media_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@pytest.fixture
def world(admin_user, alice, bob, settings):
    """Objects of another user, and of the auditor (made before she became one)."""
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    auditor = UserFactory(username="audrey")
    objects = {
        "scripts": [
            make_script(alice, "alices", "def alices():\n    return 1\n"),
            make_script(admin_user, "globals", "def globals_():\n    return 1\n", is_global=True),
            make_script(auditor, "audreys", "def audreys():\n    return 1\n"),
        ],
        "datasets": [make_dataset(alice, "ALICE_DATA", frame), make_dataset(auditor, "AUDREY_DATA", frame)],
    }
    objects["scripts"][0].grants.create(grantee=bob)
    objects["datasets"][0].grants.create(grantee=bob)
    Environment.objects.create(name="probe", python=sys.executable, status=Environment.Status.READY)
    runs = []
    for owner, script, mode, status in [
        (alice, objects["scripts"][0], Run.Mode.SYNC, Run.Status.SUCCEEDED),
        (alice, objects["scripts"][0], Run.Mode.ASYNC, Run.Status.RUNNING),
        (alice, objects["scripts"][0], Run.Mode.ASYNC, Run.Status.QUEUED),
        (auditor, objects["scripts"][2], Run.Mode.ASYNC, Run.Status.QUEUED),
        (auditor, objects["scripts"][2], Run.Mode.ASYNC, Run.Status.SUCCEEDED),
    ]:
        run = Run.objects.create(
            script_version=script.current_version,
            script_name=script.name,
            script_owner=script.owner.username,
            user=owner,
            mode=mode,
            status=status,
            result={"a": 1},
            finished_at=timezone.now() if status == Run.Status.SUCCEEDED else None,
        )
        runs.append(run)
    image = RunImage(run=runs[0], position=1, title="t")
    image.image.save("1.png", ContentFile(b"\x89PNG fake"), save=True)
    objects["runs"] = runs
    objects["tokens"] = [personal_token_create(user=user, name="t")[1] for user in (alice, auditor)]
    objects["rules"] = [
        rule_create(owner=user, name="r", channel="WEBHOOK", url="https://hooks.example.org/")
        for user in (alice, auditor)
    ]
    objects["schedules"] = [
        schedule_save(user=alice, script=objects["scripts"][0], cron="0 7 * * *"),
        schedule_save(user=auditor, script=objects["scripts"][2], interval_seconds=3600, max_retries=1),
    ]
    auditor.groups.add(Group.objects.get_or_create(name=AUDITORS)[0])
    objects["users"] = [alice, bob, auditor, admin_user]
    return auditor, objects


def candidates(name: str, param: str, objects: dict) -> list:
    """Plausible values of one URL parameter of one route: existing objects the route could name."""
    scripts, datasets, runs = objects["scripts"], objects["datasets"], objects["runs"]
    if param == "version":
        return ["v2"]
    if param == "name":
        if "dataset" in name:
            return [d.name for d in datasets]
        if name.startswith(("oml-env", "environments:")) or name in {"list", "detail", "rebuild", "delete"}:
            return ["probe"]
        return [s.name for s in scripts]
    if param == "owner":
        return [None, "alice", "audrey"]
    if param == "user":
        return [None, "bob", "alice"]
    if param == "job_id":
        return [str(r.pk) for r in runs if r.mode == Run.Mode.ASYNC]
    if param == "pk":
        if name.startswith(("web:script", "web:version", "web:preset")):
            return [s.pk for s in scripts]
        if name.startswith("web:run"):
            return [r.pk for r in runs]
        if name.startswith("web:dataset"):
            return [d.pk for d in datasets]
        if name.startswith("web:token"):
            return [t.pk for t in objects["tokens"]]
        if name.startswith("web:user"):
            return [u.pk for u in objects["users"]]
        if name.startswith("web:notification"):
            return [r.pk for r in objects["rules"]]
        if name.startswith("web:schedule"):
            return [schedule.pk for schedule in objects["schedules"]]
    if param == "rule_id":
        return [str(r.pk) for r in objects["rules"]]
    if param == "run_pk":
        return [r.pk for r in runs]
    if param == "preset_pk":
        return [uuid.UUID(int=1)]
    if param == "preset":
        return ["probe"]
    if param == "schedule_id":
        return [str(schedule.pk) for schedule in objects["schedules"]]
    if param in {"user_id", "id"}:
        return [objects["users"][1].pk]
    if param in {"number", "position"}:
        return [1]
    if param == "fmt":
        return ["json"]
    if param == "object_id":
        # Django's admin answers a user who is not staff the same for every object: one is enough.
        return [str(scripts[0].pk)]
    if param == "content_type_id":
        return ["1"]
    if param in {"uidb64", "token"}:
        return ["MQ", "set-password"]
    if param == "app_label":
        return ["scripts_app", "auth"]
    return ["1"]


def urls(name: str, params: list[str], optional: set[str], objects: dict):
    combos = [{}]
    for param in params:
        combos = [{**combo, param: value} for combo in combos for value in candidates(name, param, objects)]
    for combo in combos:
        kwargs = {k: v for k, v in combo.items() if v is not None}
        if any(v is None for k, v in combo.items() if k not in optional):
            continue
        yield reverse(name, kwargs=kwargs), kwargs


def bodies():
    """A body each write route would accept from a writer: as JSON, and as a form with a CSV file."""
    fields = {
        "name": "audit_new",
        "script": SOURCE,
        "source": SOURCE,
        "description": "changed by an auditor",
        "overwrite": True,
        "isGlobal": False,
        "parameters": "{}",
        "input": "select 1 as a",
        "rows": 1,
        "groupBy": "a",
        "times": 1,
        "user": "bob",
        "username": "bob",
        "grantee": "bob",
        "packages": "",
        "python": sys.executable,
        "params_mode": "raw",
        "raw_parameters": "{}",
        "env_name": "default",
        "service": "LOW",
        "execution": "sync",
        "kind": "do-eval",
        "role": "admins",
        "is_active": "",
        "password": "Another long password 123",
        "format": "csv",
    }
    yield "json", json.dumps(fields), "application/json"
    form = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in fields.items()}
    upload = io.BytesIO(b"a,b\n9,z\n")
    upload.name = "audit.csv"
    form["file"] = upload
    yield "form", encode_multipart(BOUNDARY, form), f"multipart/form-data; boundary={BOUNDARY}"


@pytest.mark.django_db(transaction=True)
def test_an_auditor_changes_nothing_through_any_route(world, settings):
    """No write method on any route answers 2xx to an auditor, and nothing in the database or media
    storage changes; the few things an auditor may do for themselves are listed in ALLOWED."""
    auditor, objects = world
    browser = Client()
    browser.force_login(auditor)
    before, files_before = snapshot(), media_files(Path(settings.MEDIA_ROOT))
    failures, calls = [], 0
    for name, params, optional in routes():
        if name in ALLOWED:
            continue
        for url, kwargs in urls(name, params, optional, objects):
            if own_token_revoke(name, kwargs, objects["tokens"][1]):
                continue
            for method in METHODS:
                for encoding, body, content_type in bodies():
                    response = browser.generic(method.upper(), url, body, content_type=content_type)
                    calls += 1
                    if 200 <= response.status_code < 300:
                        failures.append(f"{method.upper()} {url} ({encoding}): {response.status_code}")
                    after = snapshot()
                    if after != before:
                        changed = sorted(label for label in after if after[label] != before[label])
                        failures.append(f"{method.upper()} {url} ({encoding}) changed {changed}")
                        before = after
    assert calls > 500
    assert not failures, "\n".join(failures)
    assert media_files(Path(settings.MEDIA_ROOT)) == files_before
