"""Script management over REST: list, create, read, change (versions), delete, visibility."""

from __future__ import annotations

import pytest

from scripts_app.models import Run, Script, ScriptVersion
from scripts_app.services.scripts import script_grant
from tests.factories import make_script

URL = "/oml/api/py-scripts/v1/scripts"
SOURCE = "def hello(name='world'):\n    return 'hello ' + name\n"


def create(api, **fields):
    return api.post(URL, {"name": "hello", "script": SOURCE, **fields}, format="json")


def test_create_script(alice_api, alice):
    """POST scripts stores the script and its first version, and answers 201 with the row."""
    response = create(alice_api, description="greets")
    assert response.status_code == 201
    row = response.json()["result"]
    assert row["OWNER"] == "alice"
    assert row["NAME"] == "hello"
    assert row["SCRIPT"] == SOURCE
    assert row["DESCRIPTION"] == "greets"
    assert row["VERSION"] == 1
    script = Script.objects.get(owner=alice, name="hello")
    assert script.current_version.entry_function == "hello"
    assert script.current_version.number == 1


def test_create_existing_name_needs_overwrite(alice_api, alice):
    """Creating a name that exists is a 409 unless overwrite is true, which makes a new version."""
    create(alice_api)
    response = create(alice_api, script=SOURCE.replace("hello ", "hi "))
    assert response.status_code == 409
    assert response.json()["errorCode"] == 1005
    response = create(alice_api, script=SOURCE.replace("hello ", "hi "), overwrite=True)
    assert response.status_code == 200
    assert response.json()["result"]["VERSION"] == 2
    assert ScriptVersion.objects.filter(script__owner=alice).count() == 2


@pytest.mark.parametrize(
    ("source", "line", "why"),
    [
        ("def f(:\n    pass\n", 1, "syntax error"),
        ("x = 1\n\n\nif x:\n  print(\n", 5, "syntax error"),
        ("x = 1\ny = 2\n", 2, "defines no top-level function"),
    ],
)
def test_invalid_source_names_the_line(alice_api, source, line, why):
    """A syntax error or a missing function is a 400 whose message names the line; nothing is stored."""
    response = create(alice_api, script=source)
    assert response.status_code == 400
    body = response.json()
    assert body["errorCode"] == 1004
    assert f"line {line}" in body["errorMessage"]
    assert why in body["errorMessage"]
    assert not Script.objects.exists()


@pytest.mark.parametrize("name", ["", "has space", "a/b", "x" * 129, "ünïcode"])
def test_invalid_names_are_refused(alice_api, name):
    """Names are 1 to 128 letters, digits, '_', '.', '-'."""
    response = create(alice_api, name=name)
    assert response.status_code == 400
    assert not Script.objects.exists()


def test_name_of_128_characters_with_dots_and_dashes_is_fine(alice_api):
    """The longest allowed name, with every allowed punctuation, is accepted."""
    name = ("a.b-c_" * 22)[:128]
    assert create(alice_api, name=name).status_code == 201


def test_same_name_for_two_owners(alice_api, bob_api):
    """Names are unique per owner only."""
    assert create(alice_api).status_code == 201
    assert create(bob_api).status_code == 201


def test_only_admins_create_global_scripts(alice_api, admin_api):
    """isGlobal needs an admin; others get 403 and nothing is stored."""
    response = create(alice_api, isGlobal=True)
    assert response.status_code == 403
    assert not Script.objects.exists()
    response = create(admin_api, isGlobal=True)
    assert response.status_code == 201
    assert response.json()["result"]["GLOBAL"] is True


def test_list_shows_own_global_and_granted_only(alice, bob, admin_user, alice_api):
    """GET scripts lists the caller's own, the global and the granted scripts, not others' private ones."""
    make_script(alice, "mine", SOURCE)
    make_script(admin_user, "shared", SOURCE, is_global=True)
    granted = make_script(bob, "lent", SOURCE)
    script_grant(script=granted, grantee=alice)
    make_script(bob, "private", SOURCE)
    response = alice_api.get(URL)
    assert response.status_code == 200
    rows = response.json()["result"]
    assert {(row["OWNER"], row["NAME"]) for row in rows} == {
        ("alice", "mine"),
        ("root", "shared"),
        ("bob", "lent"),
    }
    assert set(rows[0]) == {"OWNER", "NAME", "SCRIPT", "DESCRIPTION", "GLOBAL", "VERSION", "DATE"}


def test_get_one_script(alice, alice_api):
    """GET scripts/{name} shows one script."""
    make_script(alice, "hello", SOURCE, description="d")
    response = alice_api.get(f"{URL}/hello")
    assert response.status_code == 200
    assert response.json()["result"]["SCRIPT"] == SOURCE


def test_private_script_of_another_user_is_404(bob, alice_api):
    """Another user's private script does not exist for the caller."""
    make_script(bob, "secret", SOURCE)
    assert alice_api.get(f"{URL}/secret").status_code == 404


def test_put_changes_source_as_a_new_version(alice, alice_api):
    """PUT with new source makes version 2; the first version stays as it was."""
    script = make_script(alice, "hello", SOURCE)
    first = script.current_version
    response = alice_api.put(f"{URL}/hello", {"script": SOURCE + "\n# v2\n", "description": "new"}, format="json")
    assert response.status_code == 200
    assert response.json()["result"]["VERSION"] == 2
    first.refresh_from_db()
    assert first.source == SOURCE
    script.refresh_from_db()
    assert script.description == "new"
    assert script.current_version.number == 2


def test_put_same_source_makes_no_version(alice, alice_api):
    """Saving unchanged source does not make a new version."""
    make_script(alice, "hello", SOURCE)
    alice_api.put(f"{URL}/hello", {"script": SOURCE, "description": "only this"}, format="json")
    assert ScriptVersion.objects.count() == 1


def test_put_invalid_source_keeps_the_script(alice, alice_api):
    """A PUT with broken source is refused and the script keeps its version."""
    make_script(alice, "hello", SOURCE)
    response = alice_api.put(f"{URL}/hello", {"script": "def broken(:"}, format="json")
    assert response.status_code == 400
    assert Script.objects.get().source == SOURCE


def test_cannot_change_or_delete_anothers_script(bob, alice_api, admin_user):
    """PUT and DELETE act only on the caller's own scripts, even global ones of others."""
    make_script(bob, "hello", SOURCE)
    make_script(admin_user, "shared", SOURCE, is_global=True)
    assert alice_api.put(f"{URL}/hello", {"script": SOURCE}, format="json").status_code == 404
    assert alice_api.delete(f"{URL}/hello").status_code == 404
    assert alice_api.delete(f"{URL}/shared").status_code == 404
    assert Script.objects.count() == 2


def test_delete_keeps_versions_that_runs_ran(alice, alice_api):
    """Deleting a script keeps the version its runs point to."""
    script = make_script(alice, "hello", SOURCE)
    version = script.current_version
    Run.objects.create(script_version=version, script_name="hello", script_owner="alice", user=alice)
    response = alice_api.delete(f"{URL}/hello")
    assert response.status_code == 200
    assert response.json() == {"result": "script deleted successfully"}
    assert not Script.objects.exists()
    version.refresh_from_db()
    assert version.source == SOURCE
    assert Run.objects.get().script_version == version


def test_v2_serves_the_same(alice, alice_api):
    """/v2/scripts answers like /v1/scripts."""
    make_script(alice, "hello", SOURCE)
    assert alice_api.get("/oml/api/py-scripts/v2/scripts").json() == alice_api.get(URL).json()
