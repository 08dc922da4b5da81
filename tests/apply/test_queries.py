"""Input queries: one SELECT over the datasets the caller may read, and nothing else."""

from __future__ import annotations

import resource

import pandas as pd
import pytest

from scripts_app.models import Run
from scripts_app.services.datasets import dataset_grant
from tests.apply.test_endpoints import apply
from tests.factories import make_dataset, make_script

COUNT = "def count(df):\n    return len(df)\n"


def table_apply(api, query, name="count", **extra):
    return apply(api, "table-apply", name, {"input": query, **extra})


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("", "may not be blank"),
        ("drop table IRIS", "only a SELECT"),
        ("insert into IRIS values (1, 2, 'x')", "only a SELECT"),
        ("select * from IRIS; select 1", "exactly one SELECT"),
        ("copy IRIS to '/tmp/out.csv'", "only a SELECT"),
        ("attach '/tmp/x.db'", "only a SELECT"),
        ("install httpfs", "only a SELECT"),
        ("selec * from IRIS", "does not parse"),
        ("select * from read_csv('/etc/passwd')", "not files"),
        ("select * from read_parquet('/etc/passwd')", "not files"),
        ("select * from NOPE", "no dataset 'NOPE'"),
        ("select * from a.b.c", "not a dataset name"),
        ("select no_such_column from IRIS", "no_such_column"),
    ],
)
def test_bad_queries_are_400_with_a_clear_message(alice, alice_api, alice_iris, query, says):
    """Anything but one SELECT over readable datasets is a 400 saying why, and nothing runs."""
    make_script(alice, "count", COUNT)
    response = table_apply(alice_api, query)
    assert response.status_code == 400, response.json()
    body = response.json()
    assert body["errorCode"] == 1000
    assert says in body["errorMessage"]
    assert body["errorMessage"].startswith("input")
    assert not Run.objects.filter(status=Run.Status.SUCCEEDED).exists()


def test_missing_input_is_400(alice, alice_api):
    """table-apply needs input; row-apply needs rows; group-apply needs groupBy; index-apply needs times."""
    make_script(alice, "count", COUNT)
    assert apply(alice_api, "table-apply", "count", {}).json()["errorMessage"] == "input: This field is required."
    assert "rows" in apply(alice_api, "row-apply", "count", {"input": "select 1"}).json()["errorMessage"]
    assert "groupBy" in apply(alice_api, "group-apply", "count", {"input": "select 1"}).json()["errorMessage"]
    assert "times" in apply(alice_api, "index-apply", "count", {}).json()["errorMessage"]


def test_another_users_private_dataset_is_invisible(alice, bob, bob_api, alice_iris):
    """Bob cannot read Alice's private dataset, by bare name or owner.NAME: the same 400 as a missing one."""
    make_script(bob, "count", COUNT)
    for query in ("select * from IRIS", "select * from alice.IRIS"):
        response = table_apply(bob_api, query)
        assert response.status_code == 400
        assert "no dataset" in response.json()["errorMessage"]
    missing = table_apply(bob_api, "select * from alice.NOTHING").json()["errorMessage"]
    hidden = table_apply(bob_api, "select * from alice.IRIS").json()["errorMessage"]
    assert hidden == missing.replace("NOTHING", "IRIS")


def test_a_granted_dataset_is_read_as_owner_dot_name_or_bare_name(alice, bob, bob_api, alice_iris, iris):
    """Granted to Bob, Alice's IRIS reads as alice.IRIS, or IRIS while Bob has none of his own."""
    make_script(bob, "count", COUNT)
    dataset_grant(dataset=alice_iris, grantee=bob)
    assert table_apply(bob_api, "select * from alice.IRIS").json() == {"result": len(iris)}
    assert table_apply(bob_api, "select * from iris").json() == {"result": len(iris)}
    make_dataset(bob, "IRIS", iris.head(3))
    assert table_apply(bob_api, "select * from IRIS").json() == {"result": 3}
    assert table_apply(bob_api, "select * from alice.IRIS").json() == {"result": len(iris)}


def test_two_shared_datasets_of_one_name_are_ambiguous(alice, bob, admin_user, bob_api, iris):
    """A bare name that two other users' shared datasets have is a 400 listing owner.NAME choices."""
    make_script(bob, "count", COUNT)
    dataset_grant(dataset=make_dataset(alice, "SALES", iris), grantee=bob)
    make_dataset(admin_user, "SALES", iris.head(2), is_global=True)
    message = table_apply(bob_api, "select * from SALES").json()["errorMessage"]
    assert "ambiguous" in message
    assert "alice.SALES" in message
    assert "root.SALES" in message
    assert table_apply(bob_api, 'select * from "root"."SALES"').json() == {"result": 2}


def test_queries_join_datasets(alice, alice_api, alice_iris, iris):
    """A query may join several datasets and aggregate; the function gets exactly its result."""
    make_dataset(alice, "NAMES", pd.DataFrame({"SPECIES": ["setosa", "virginica"], "LATIN": ["Iris s.", "Iris v."]}))
    make_script(alice, "rows", "def rows(df):\n    return df\n")
    query = (
        "select n.LATIN, count(*) as N from IRIS i join NAMES n on i.SPECIES = n.SPECIES group by n.LATIN order by 1"
    )
    response = table_apply(alice_api, query, name="rows", parameters='{"oml_input_type":"pandas.DataFrame"}')
    assert response.json() == {"result": [{"LATIN": "Iris s.", "N": 7}, {"LATIN": "Iris v.", "N": 7}]}


def test_query_time_limit(alice, alice_api, alice_iris, settings):
    """A query past OMLWEB_QUERY_TIMEOUT_SECONDS is interrupted: a 400 saying so."""
    settings.OMLWEB_QUERY_TIMEOUT_SECONDS = 0.5
    make_script(alice, "count", COUNT)
    slow = "select count(*) as n from range(100000000000) a"
    response = table_apply(alice_api, slow)
    assert response.status_code == 400
    assert "longer than its limit" in response.json()["errorMessage"]


def test_query_row_limit(alice, alice_api, alice_iris, settings):
    """More rows than OMLWEB_QUERY_MAX_ROWS is a 400, not a silent cut."""
    settings.OMLWEB_QUERY_MAX_ROWS = 5
    make_script(alice, "count", COUNT)
    response = table_apply(alice_api, "select * from IRIS")
    assert response.status_code == 400
    assert "more than 5 rows" in response.json()["errorMessage"]


def test_query_byte_limit_stops_a_huge_result_as_it_streams(alice, alice_api, settings):
    """Rows past OMLWEB_QUERY_MAX_RESULT_MB are a 400 while they arrive: 10 GB of rows never reach memory."""
    settings.OMLWEB_QUERY_MAX_RESULT_MB = 1
    make_script(alice, "count", COUNT)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    response = table_apply(alice_api, "select repeat('x', 1000) as s from range(10000000)")
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert response.status_code == 400
    body = response.json()
    assert body["errorCode"] == 1000
    assert body["errorMessage"].startswith("input: the query's rows take more than 1 MB")
    assert peak_after - peak_before < 200 * 1024**2
    run = Run.objects.get()
    assert (run.status, run.error_code) == (Run.Status.FAILED, 1000)

    small = table_apply(alice_api, "select repeat('x', 1000) as s from range(100)")
    assert small.json() == {"result": 100}


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        ("IRIS", ["IRIS"]),
        ("IRIS AS i", ["IRIS"]),
        ('"my-data" AS "x y"', ["my-data"]),
        ("alice.IRIS AS a", ["alice", "IRIS"]),
        ('"bob@x.org"."a.b"', ["bob@x.org", "a.b"]),
        ('"say ""hi"""', ['say "hi"']),
    ],
)
def test_table_names_as_duckdb_reports_them(raw, parts):
    """DuckDB's qualified table names split into owner and name; quotes and aliases handled."""
    from scripts_app.services.queries import _split_qualified

    assert _split_qualified(raw) == parts


def test_a_quoted_dataset_name_with_a_dash(alice, alice_api, iris):
    """A dataset whose name has a '-' is read in double quotes."""
    make_dataset(alice, "iris-2024", iris)
    make_script(alice, "count", COUNT)
    assert table_apply(alice_api, 'select * from "iris-2024"').json() == {"result": len(iris)}


def test_query_connections_see_no_python_objects_and_no_files(db):
    """DuckDB's replacement scans are off (a DataFrame in scope is not a table) and file access is locked."""
    import duckdb

    from scripts_app.services.queries import _base_connection, _lock

    leaked = pd.DataFrame({"secret": [42]})  # noqa: F841 - what a replacement scan would find
    connection = _base_connection()
    _lock(connection, [])
    with pytest.raises(duckdb.CatalogException):
        connection.sql("select * from leaked").fetchall()
    for query in ("select * from glob('/*')", "select * from read_blob('/etc/hostname')"):
        with pytest.raises(duckdb.PermissionException):
            connection.sql(query).fetchall()
    with pytest.raises(duckdb.Error, match="locked"):
        connection.execute("SET enable_external_access = true")


def test_a_database_made_ahead_of_time_follows_the_settings_and_serves_one_query(alice, settings):
    """The next query's DuckDB database is made ahead of time: one made with other settings is never
    handed out, and no two queries get the same one."""
    from scripts_app.services import queries

    settings.OMLWEB_QUERY_THREADS = 1
    text = "select current_setting('threads') as threads"
    assert queries.query_table(caller=alice, text=text).column(0).to_pylist() == [1]
    settings.OMLWEB_QUERY_THREADS = 3  # the spare made after the first query has 1 thread
    assert queries.query_table(caller=alice, text=text).column(0).to_pylist() == [3]
    seen = []
    for _ in range(3):
        query = queries.Query(caller=alice, text=text)
        with query.open():
            seen.append(query.connection)
    assert len({id(connection) for connection in seen}) == 3
