"""Script pages: who may list, read, create, edit, delete, version and share which script."""

from __future__ import annotations

import pytest
from django.urls import reverse

from scripts_app.models import Run, Script, ScriptGrant
from scripts_app.services.pipeline import RunRequest, start_run
from tests.factories import make_script
from tests.web.conftest import logged_in

SOURCE = "def hello(name: str = 'world'):\n    return 'hello ' + name\n"


@pytest.fixture
def alices_script(alice):
    return make_script(alice, "hello", SOURCE, description="Says hello")


def detail(script):
    return reverse("web:script_detail", args=[script.pk])


# The list


def test_list_shows_own_global_and_granted_but_not_private(client, alice, bob, admin_user):
    """An analyst lists their own, the global and the granted scripts, never another's private one."""
    make_script(alice, "mine", SOURCE)
    make_script(admin_user, "shared", SOURCE, is_global=True)
    granted = make_script(bob, "lent", SOURCE)
    granted.grants.create(grantee=alice)
    make_script(bob, "secret", SOURCE)
    response = logged_in(client, alice).get(reverse("web:script_list"))
    names = [script.name for script in response.context["page"].object_list]
    assert names == ["lent", "mine", "shared"]
    assert b"secret" not in response.content
    assert b"badge-global" in response.content


def test_list_search_and_owner_filter(client, alice, bob):
    """The search looks in names and descriptions; the owner filter narrows to one user."""
    make_script(alice, "alpha", SOURCE, description="sales report")
    make_script(alice, "beta", SOURCE)
    make_script(bob, "gamma", SOURCE, description="sales too", is_global=False)
    client = logged_in(client, alice)
    names = lambda r: [s.name for s in r.context["page"].object_list]  # noqa: E731
    assert names(client.get(reverse("web:script_list"), {"q": "sales"})) == ["alpha"]
    assert names(client.get(reverse("web:script_list"), {"q": "BET"})) == ["beta"]
    assert names(client.get(reverse("web:script_list"), {"owner": "bob"})) == []


def test_list_htmx_request_gets_only_the_results(alice_client, alices_script):
    """An htmx search swaps only the results section."""
    response = alice_client.get(reverse("web:script_list"), {"q": "hel"}, headers={"HX-Request": "true"})
    assert b'id="results"' in response.content
    assert b"<html" not in response.content


def test_list_queries_do_not_grow_with_scripts(client, alice, django_assert_max_num_queries):
    """Owners and versions come with the list: no query per script."""
    for number in range(30):
        make_script(alice, f"s{number}", SOURCE)
    client = logged_in(client, alice)
    with django_assert_max_num_queries(6):
        client.get(reverse("web:script_list"))


def test_auditor_and_admin_list_every_script(client, bob, auditor, admin_user):
    """Auditors and admins see private scripts too."""
    make_script(bob, "secret", SOURCE)
    for user in (auditor, admin_user):
        response = logged_in(client, user).get(reverse("web:script_list"))
        assert [s.name for s in response.context["page"].object_list] == ["secret"]


# Reading


def test_owner_reads_a_script(alice_client, alices_script):
    """The detail page shows the source (escaped), the owner and the actions."""
    response = alice_client.get(detail(alices_script))
    assert response.status_code == 200
    assert b"return &#x27;hello &#x27; + name" in response.content
    assert response.context["may_edit"]
    assert response.context["may_run"]
    assert response.context["may_share"]


def test_another_users_private_script_is_not_found(client, bob, alices_script):
    """A private script of someone else is a 404 on every page, as if it did not exist."""
    client = logged_in(client, bob)
    for url in (
        detail(alices_script),
        reverse("web:script_edit", args=[alices_script.pk]),
        reverse("web:script_versions", args=[alices_script.pk]),
        reverse("web:version_detail", args=[alices_script.pk, 1]),
        reverse("web:run_script", args=[alices_script.pk]),
        reverse("web:script_delete", args=[alices_script.pk]),
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("web:script_grant", args=[alices_script.pk]), {"username": "bob"}).status_code == 404
    assert not ScriptGrant.objects.exists()


def test_a_granted_user_reads_and_runs_but_cannot_edit(client, bob, alices_script):
    """A grantee may read and run the script, not change, delete or share it."""
    alices_script.grants.create(grantee=bob)
    client = logged_in(client, bob)
    response = client.get(detail(alices_script))
    assert response.status_code == 200
    assert response.context["may_run"]
    assert not response.context["may_edit"]
    assert client.get(reverse("web:script_edit", args=[alices_script.pk])).status_code == 403
    assert client.post(reverse("web:script_delete", args=[alices_script.pk])).status_code == 403
    assert client.post(reverse("web:script_grant", args=[alices_script.pk]), {"username": "bob"}).status_code == 403
    assert Script.objects.filter(pk=alices_script.pk).exists()


def test_auditor_reads_everything_and_changes_nothing(client, auditor, alices_script):
    """An auditor reads a private script but may not run, edit, delete, restore, share or create."""
    client = logged_in(client, auditor)
    response = client.get(detail(alices_script))
    assert response.status_code == 200
    assert not response.context["may_run"]
    assert not response.context["may_edit"]
    assert not response.context["may_share"]
    assert client.get(reverse("web:run_script", args=[alices_script.pk])).status_code == 403
    assert client.get(reverse("web:script_edit", args=[alices_script.pk])).status_code == 403
    assert client.get(reverse("web:script_create")).status_code == 403
    assert client.post(reverse("web:script_delete", args=[alices_script.pk])).status_code == 403
    restore = reverse("web:version_restore", args=[alices_script.pk, 1])
    assert client.post(restore).status_code == 403
    assert (
        client.post(reverse("web:script_set_global", args=[alices_script.pk]), {"is_global": "true"}).status_code == 403
    )
    alices_script.refresh_from_db()
    assert not alices_script.is_global


# Creating and editing


def test_it_creates_a_script(alice_client, alice):
    """Create saves version 1 and goes to the script."""
    response = alice_client.post(
        reverse("web:script_create"), {"name": "add", "source": "def add(a, b):\n    return a + b\n"}
    )
    script = Script.objects.get(owner=alice, name="add")
    assert response.status_code == 302
    assert response["Location"] == detail(script)
    assert script.current_version.number == 1
    assert script.current_version.entry_function == "add"
    assert not script.is_global


def test_a_syntax_error_is_shown_with_its_line(alice_client, alice):
    """A syntax error stays on the form, with the line marked for the editor."""
    response = alice_client.post(
        reverse("web:script_create"), {"name": "bad", "source": "def f():\n    return (\n\nx = 1\n"}
    )
    assert response.status_code == 422
    assert response.context["form"].error_line == 2
    assert b"syntax error" in response.content
    assert b'data-error-line="2"' in response.content
    assert not Script.objects.exists()


def test_a_missing_function_is_shown_inline(alice_client):
    """A source without a function is refused next to the source field."""
    response = alice_client.post(reverse("web:script_create"), {"name": "nofn", "source": "x = 1\ny = 2\n"})
    assert response.status_code == 422
    assert "defines no top-level function" in " ".join(response.context["form"].errors["source"])


def test_a_duplicate_name_is_refused(alice_client, alices_script):
    """A second script of the same name is refused on the name field."""
    response = alice_client.post(reverse("web:script_create"), {"name": "hello", "source": SOURCE})
    assert response.status_code == 422
    assert "already exists" in " ".join(response.context["form"].errors["name"])


def test_an_analyst_cannot_make_a_script_global(alice_client, alice):
    """The global box is not offered to analysts, and sending it does nothing."""
    response = alice_client.get(reverse("web:script_create"))
    assert "is_global" not in response.context["form"].fields
    alice_client.post(reverse("web:script_create"), {"name": "g", "source": SOURCE, "is_global": "on"})
    assert not Script.objects.get(name="g").is_global


def test_an_admin_creates_a_global_script(client, group_admin):
    """An admin (by group) may create a global script."""
    logged_in(client, group_admin).post(
        reverse("web:script_create"), {"name": "g", "source": SOURCE, "is_global": "on"}
    )
    assert Script.objects.get(name="g").is_global


def test_editing_the_source_makes_a_new_version(alice_client, alices_script):
    """A changed source is saved as version 2; the name cannot change."""
    new_source = SOURCE.replace("hello ", "hi ")
    response = alice_client.post(
        reverse("web:script_edit", args=[alices_script.pk]),
        {"name": "renamed", "source": new_source, "description": "new"},
    )
    assert response.status_code == 302
    alices_script.refresh_from_db()
    assert alices_script.name == "hello"
    assert alices_script.current_version.number == 2
    assert alices_script.source == new_source
    assert alices_script.description == "new"
    assert alices_script.versions.count() == 2


def test_editing_only_the_description_makes_no_version(alice_client, alices_script):
    """Saving the same source keeps the version."""
    alice_client.post(reverse("web:script_edit", args=[alices_script.pk]), {"source": SOURCE, "description": "changed"})
    alices_script.refresh_from_db()
    assert alices_script.versions.count() == 1
    assert alices_script.description == "changed"


def test_an_admin_edits_anyones_script(client, admin_user, alices_script):
    """Admins may change any script."""
    response = logged_in(client, admin_user).post(
        reverse("web:script_edit", args=[alices_script.pk]), {"source": SOURCE + "\n# reviewed\n"}
    )
    assert response.status_code == 302
    alices_script.refresh_from_db()
    assert alices_script.current_version.created_by == admin_user


# Versions


@pytest.fixture
def three_versions(alice, alices_script):
    from scripts_app.services.scripts import script_update

    script_update(script=alices_script, by=alice, source=SOURCE.replace("hello ", "hi "))
    script_update(script=alices_script, by=alice, source=SOURCE.replace("hello ", "hey "))
    return alices_script


def test_versions_list_and_diff(alice_client, three_versions):
    """The versions page lists every version and shows the diff of any two."""
    url = reverse("web:script_versions", args=[three_versions.pk])
    response = alice_client.get(url, {"a": 1, "b": 3})
    assert [v.number for v in response.context["versions"]] == [3, 2, 1]
    diff = response.context["diff"]
    assert ("del", "-    return 'hello ' + name") in diff
    assert ("add", "+    return 'hey ' + name") in diff
    assert b'class="diff-add"' in response.content


def test_restore_makes_the_old_source_current_as_a_new_version(alice_client, three_versions):
    """Restoring version 1 saves its source as version 4."""
    response = alice_client.post(reverse("web:version_restore", args=[three_versions.pk, 1]))
    assert response.status_code == 302
    three_versions.refresh_from_db()
    assert three_versions.current_version.number == 4
    assert three_versions.source == SOURCE


def test_restore_needs_post(alice_client, three_versions):
    """A GET never changes anything."""
    assert alice_client.get(reverse("web:version_restore", args=[three_versions.pk, 1])).status_code == 405


def test_version_page_shows_its_source(alice_client, three_versions):
    """A version's page shows that version's source."""
    response = alice_client.get(reverse("web:version_detail", args=[three_versions.pk, 2]))
    assert b"hi &#x27; + name" in response.content


# Deleting


def test_delete_keeps_the_runs_and_their_version(alice_client, alice, alices_script):
    """Deleting a script leaves its runs, each with the version it ran."""
    run = start_run(RunRequest(script=alices_script, user=alice, parameters={}))
    url = reverse("web:script_delete", args=[alices_script.pk])
    assert b"stay in the history" in alice_client.get(url).content
    response = alice_client.post(url)
    assert response.status_code == 302
    assert not Script.objects.exists()
    run = Run.objects.get(pk=run.pk)
    assert run.script_version.source == SOURCE
    page = alice_client.get(reverse("web:run_detail", args=[run.pk]))
    assert page.status_code == 200
    assert b"script deleted" in page.content


# Sharing


def test_owner_grants_and_revokes(alice_client, bob, alices_script):
    """The owner grants bob the right to run, then revokes it."""
    alice_client.post(reverse("web:script_grant", args=[alices_script.pk]), {"username": "bob"})
    assert list(alices_script.grantees.all()) == [bob]
    alice_client.post(reverse("web:script_revoke", args=[alices_script.pk, bob.pk]))
    assert not alices_script.grantees.exists()


def test_granting_an_unknown_user_says_so(alice_client, alices_script):
    """An unknown user name is an error message, and nothing is granted."""
    response = alice_client.post(
        reverse("web:script_grant", args=[alices_script.pk]), {"username": "nobody"}, follow=True
    )
    assert b"There is no active user" in response.content
    assert not ScriptGrant.objects.exists()


def test_only_admins_make_a_script_global(alice_client, client, admin_user, alices_script):
    """The owner may not make a script global; an admin may, and may make it private again."""
    url = reverse("web:script_set_global", args=[alices_script.pk])
    assert alice_client.post(url, {"is_global": "true"}).status_code == 403
    admin = logged_in(client, admin_user)
    admin.post(url, {"is_global": "true"})
    alices_script.refresh_from_db()
    assert alices_script.is_global
    admin.post(url, {"is_global": "false"})
    alices_script.refresh_from_db()
    assert not alices_script.is_global


def test_pages_escape_user_content(alice_client, alice):
    """A script's description and source are escaped everywhere."""
    script = make_script(alice, "xss", "def xss():\n    return '<script>alert(1)</script>'\n", description="<b>x</b>")
    content = alice_client.get(detail(script)).content
    assert b"<script>alert(1)" not in content
    assert b"&lt;b&gt;x&lt;/b&gt;" in content


def test_the_live_check_reports_an_error_with_its_line(alice_client):
    """The editor's live check answers the error and its line, without saving anything."""
    response = alice_client.post(reverse("web:script_check"), {"name": "x", "source": "def x(:\n  pass\n"})
    assert b'data-check-line="1"' in response.content
    assert b"Line 1: syntax error" in response.content
    assert not Script.objects.exists()


def test_the_live_check_names_the_entry_function(alice_client):
    """A good source answers the function a run calls, with its parameters."""
    response = alice_client.post(reverse("web:script_check"), {"name": "x", "source": SOURCE})
    assert b"hello(name)" in response.content


def test_auditors_cannot_use_the_live_check(client, auditor):
    """The check is part of writing scripts, which auditors do not do."""
    assert logged_in(client, auditor).post(reverse("web:script_check"), {"source": SOURCE}).status_code == 403


def test_the_script_page_sums_up_its_runs(client, alice, bob, admin_user):
    """Success rate, median duration, a point per finished run (failed in red) and who ran it most."""
    import datetime as dt

    from django.utils import timezone

    script = make_script(alice, "busy", "def busy():\n    return 1\n")
    ScriptGrant.objects.create(script=script, grantee=bob)
    now = timezone.now()
    for user, status, seconds in [
        (alice, "SUCCEEDED", 1),
        (bob, "SUCCEEDED", 3),
        (alice, "FAILED", 2),
        (alice, "QUEUED", 0),
    ]:
        Run.objects.create(
            script_version=script.current_version,
            script_name="busy",
            script_owner="alice",
            user=user,
            status=status,
            started_at=now if status != "QUEUED" else None,
            finished_at=now + dt.timedelta(seconds=seconds) if status != "QUEUED" else None,
        )
    url = reverse("web:script_detail", args=[script.pk])
    activity = logged_in(client, admin_user).get(url).context["activity"]
    assert (activity["count"], activity["success_percent"], activity["median_seconds"]) == (3, 67, 2.0)
    assert [point["ok"] for point in activity["points"]] == [True, True, False]
    assert activity["runners"] == [{"user__username": "alice", "count": 3}, {"user__username": "bob", "count": 1}]
    # Analysts see only their own runs of the script.
    alice_view = logged_in(client, alice).get(url).context["activity"]
    assert (alice_view["count"], alice_view["success_percent"]) == (2, 50)
    bob_view = logged_in(client, bob).get(url).context["activity"]
    assert (bob_view["count"], bob_view["runners"]) == (1, [{"user__username": "bob", "count": 1}])
