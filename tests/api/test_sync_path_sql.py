"""The sync path's plain statements (issue #11): each must read and write exactly what the ORM's
queryset it replaces did, on SQLite and PostgreSQL, and keep every promise of the path (revocation and
expiry at once, the share's count from its partial index, a run taken away stays taken, one
`run_finished` once committed, one body's validation never leaking into another's)."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from scripts_app.api.serializers import ExecutionRequestSerializer
from scripts_app.errors import NotAuthenticated
from scripts_app.models import AccessToken, GroupLimits, Run, RunTakenAway, ScriptVersion, run_finished
from scripts_app.services import environments, plain_sql, shares, tokens
from scripts_app.services.scripts import script_resolve
from tests.api.test_shares import hold
from tests.factories import make_script


def fields_of(instance) -> dict:
    return {field.attname: getattr(instance, field.attname) for field in type(instance)._meta.concrete_fields}


def test_the_callers_script_reads_as_the_orm_reads_it(alice, bob):
    script = make_script(alice, "mine", "def mine():\n    return 1\n")
    make_script(bob, "mine", "def mine():\n    return 2\n")
    found = script_resolve(caller=alice, name="mine")
    orm = type(script).objects.select_related("current_version").get(pk=script.pk)
    assert fields_of(found) == fields_of(orm)
    assert fields_of(found.current_version) == fields_of(orm.current_version)
    assert found.created_at.tzinfo is not None
    assert found.owner == alice
    assert isinstance(found.pk, uuid.UUID)
    # An ordinary instance: saved and refreshed as any other.
    found.description = "changed"
    found.save(update_fields=["description"])
    found.refresh_from_db()
    assert found.description == "changed"
    # Another user's script of the same name is not the caller's.
    assert script_resolve(caller=bob, name="mine").current_version.source.endswith("return 2\n")


def test_a_script_without_a_version_reads_none(alice):
    script = make_script(alice, "bare", "def bare():\n    return 1\n")
    type(script).objects.filter(pk=script.pk).update(current_version=None)
    ScriptVersion.objects.filter(script=script).delete()
    found = script_resolve(caller=alice, name="bare")
    assert found.current_version_id is None
    assert found.current_version is None


def test_the_token_reads_as_the_orm_reads_it_and_its_end_is_at_once(alice):
    raw = "raw-token-for-the-test"
    token = AccessToken.objects.create(
        user=alice, kind=AccessToken.Kind.PERSONAL, name="t", token_hash=tokens.token_hash(raw)
    )
    read = tokens.token_authenticate(raw)
    orm = AccessToken.objects.select_related("user").get(pk=token.pk)
    assert fields_of(read) == fields_of(orm)
    assert fields_of(read.user) == fields_of(orm.user)
    assert read.user.is_active is True
    AccessToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(NotAuthenticated, match="expired"):
        tokens.token_authenticate(raw)
    AccessToken.objects.filter(pk=token.pk).update(expires_at=None, revoked_at=timezone.now())
    with pytest.raises(NotAuthenticated, match="revoked"):
        tokens.token_authenticate(raw)
    AccessToken.objects.filter(pk=token.pk).update(revoked_at=None)
    type(alice).objects.filter(pk=alice.pk).update(is_active=False)
    with pytest.raises(NotAuthenticated, match="inactive"):
        tokens.token_authenticate(raw)
    with pytest.raises(NotAuthenticated, match="Invalid"):
        tokens.token_authenticate(raw + "x")


def test_the_groups_limits_are_the_most_generous_override(alice, settings):
    settings.OMLWEB_USER_MAX_CONCURRENT_RUNS = 2
    small, big, none = (Group.objects.create(name=name) for name in ("small", "big", "none"))
    GroupLimits.objects.create(group=small, max_sync_runs=3, quota_mb=1)
    GroupLimits.objects.create(group=big, max_sync_runs=7)
    alice.groups.add(small, big, none)
    limits = shares.limits_of(alice)
    assert limits == shares.limits_for(alice.pk)
    assert limits.max_sync_runs == 7
    assert limits.quota_bytes == 1024**2
    assert limits.max_queued_jobs == settings.OMLWEB_USER_MAX_QUEUED_JOBS


def test_the_share_count_reads_the_partial_index(alice, bob):
    script = make_script(alice, "s", "def s():\n    return 1\n")
    finished = hold(alice, script, 300)
    Run.objects.filter(pk__in=[run.pk for run in finished]).update(status=Run.Status.SUCCEEDED)
    hold(alice, script, 2)
    hold(alice, script, 1, mode=Run.Mode.ASYNC)
    hold(bob, script, 3)
    Run.objects.create(
        script_version=script.current_version, script_name="s", script_owner="alice", user=alice, mode="SYNC"
    )
    for mode in (Run.Mode.SYNC, Run.Mode.ASYNC):
        assert shares._count_active(alice.pk, mode) == shares.active_runs(alice.pk, mode=mode).count()
    assert shares._count_active(alice.pk, Run.Mode.SYNC) == 3
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # On a table this small PostgreSQL counts by a scan: what matters is that the statement's
            # condition matches the partial index, so that it can use it once the table is large.
            cursor.execute("SET LOCAL enable_seqscan = off")
    explain = "EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN "
    with connection.cursor() as cursor:
        cursor.execute(explain + shares._hot("count_active"), ["QUEUED", "RUNNING", "SYNC", alice.pk])
        plan = " ".join(str(part) for row in cursor.fetchall() for part in row)
    assert "run_active_of_user" in plan


def _recorded(user, script) -> Run:
    run = Run(
        id=uuid.uuid4(),
        script_version=script.current_version,
        script_name=script.name,
        script_owner=user.username,
        user=user,
        mode=Run.Mode.SYNC,
        parameters={"a": [1, "é"]},
        env_lock_id=environments.default_lock_id(),
        status=Run.Status.RUNNING,
        created_at=timezone.now(),
        started_at=timezone.now(),
    )
    plain_sql.insert(run)
    return run


def test_the_plain_insert_writes_what_create_writes(alice):
    script = make_script(alice, "s", "def s():\n    return 1\n")
    run = _recorded(alice, script)
    assert run._state.adding is False
    stored = Run.objects.get(pk=run.pk)
    assert fields_of(stored) == fields_of(run)
    assert stored.env_lock_id == environments.default_lock().pk
    # The same id again: the database's IntegrityError, either vendor.
    with pytest.raises(IntegrityError), transaction.atomic():
        plain_sql.insert(run)


@pytest.mark.django_db(transaction=True)
def test_finishing_a_run_taken_away_changes_nothing_and_a_finished_one_is_signalled_once(alice):
    script = make_script(alice, "s", "def s():\n    return 1\n")
    sent = []

    def receiver(sender, pks, **kwargs):
        sent.append(list(pks))

    run_finished.connect(receiver, weak=False)
    try:
        taken = _recorded(alice, script)
        Run.objects.filter(pk=taken.pk).update(worker="another-host")  # the reaper or a worker took it
        taken.set_result_json('{"a":1}', {"a": 1})
        with pytest.raises(RunTakenAway), transaction.atomic():
            taken.finish(Run.Status.SUCCEEDED)
        assert Run.objects.get(pk=taken.pk).status == Run.Status.RUNNING
        assert sent == []
        cancelled = _recorded(alice, script)
        Run.objects.filter(pk=cancelled.pk).update(status=Run.Status.CANCELLED)
        with pytest.raises(RunTakenAway), transaction.atomic():
            cancelled.finish(Run.Status.SUCCEEDED)
        run = _recorded(alice, script)
        run.stdout = "out\x00put"
        run.stored_bytes = 11
        run.pieces = [{"label": "p", "rows": 3}]
        with transaction.atomic():
            before = shares.lock_user(alice.pk)
            run.finish(Run.Status.FAILED, error_code=1031, error_message="late", traceback="tb")
            assert sent == []  # not before the commit
        assert sent == [[run.pk]]
        stored = Run.objects.get(pk=run.pk)
        assert (stored.status, stored.error_code, stored.error_message, stored.traceback) == (
            Run.Status.FAILED,
            1031,
            "late",
            "tb",
        )
        assert stored.stdout == run.stdout != "out\x00put"
        assert stored.pieces == [{"label": "p", "rows": 3}]
        assert stored.finished_at == run.finished_at
        assert shares.storage_used(alice.pk) == before + 11
    finally:
        run_finished.disconnect(receiver)


def test_validating_bodies_at_once_keeps_each_its_own_answer():
    """The serializer's fields are shallow copies of the declared ones: many threads validating good
    and bad bodies at once each get their own answer, and the declared fields stay unbound."""
    bodies = [
        ({"graphicsFlag": True, "service": "HIGH", "parameters": '{"n": 1}'}, True),
        ({"graphicsFlag": "yes"}, False),
        ({"service": "NOPE"}, False),
        ({"envName": "x" * 200}, False),
        ({"timeout": 30}, False),
        ({"asyncFlag": True, "timeout": 3600, "comments": "c"}, True),
    ]
    failures: list[str] = []

    def work(seed: int) -> None:
        for turn in range(200):
            body, valid = bodies[(seed + turn) % len(bodies)]
            serializer = ExecutionRequestSerializer(data=body)
            if serializer.is_valid() != valid:
                failures.append(f"{body}: {serializer.errors}")
            elif valid and serializer.validated_data["service"] != body.get("service", "LOW"):
                failures.append(f"{body}: {serializer.validated_data}")
            elif not valid and set(serializer.errors) - set(body):
                failures.append(f"{body}: {serializer.errors}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    for name, field in ExecutionRequestSerializer._declared_fields.items():
        assert getattr(field, "field_name", None) is None, name
        assert getattr(field, "parent", None) is None, name
