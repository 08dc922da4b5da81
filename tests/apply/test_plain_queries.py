"""Plain queries (whole columns of one dataset) are read straight from its Parquet file: the same rows,
types, names and limits as DuckDB's answer, only the named dataset, and anything else still in DuckDB."""

from __future__ import annotations

import resource

import duckdb
import pandas as pd
import pytest

from scripts_app.models import Run
from scripts_app.services import queries
from scripts_app.services.datasets import dataset_create
from tests.apply.test_endpoints import apply
from tests.factories import make_dataset, make_script

COUNT = "def count(df):\n    return len(df)\n"
ECHO = "def echo(df):\n    return df\n"

# Every type a dataset may hold, as DuckDB writes it: DuckDB's Arrow answer differs from pyarrow's
# reading of the file for some (uuid, interval, timestamptz, timestamp_ms, list, struct).
ALL_TYPES = """
SELECT (i % 100)::TINYINT AS "a", (i % 30000)::SMALLINT AS "B", i::INTEGER AS "c", i::BIGINT AS "d",
       (i % 200)::UTINYINT AS "e",
       i::UBIGINT AS "f", i::FLOAT / 3 AS "g", i::DOUBLE / 7 AS "h", i % 2 = 0 AS "i",
       CASE WHEN i % 3 = 0 THEN NULL ELSE 'text ' || i END AS "j", DATE '2020-01-02' + i::INTEGER AS "k",
       TIMESTAMP '2020-01-02 03:04:05' + INTERVAL (i) SECOND AS "l",
       TIMESTAMPTZ '2020-01-02 03:04:05+00' + INTERVAL (i) HOUR AS "m", (i / 4)::DECIMAL(10, 2) AS "n",
       uuid() AS "o", [i, i + 1] AS "p", {'x': i} AS "q", ('b' || i)::BLOB AS "r", TIME '01:02:03' AS "s",
       INTERVAL (i) DAY AS "t", i::HUGEINT AS "u", CASE WHEN i = 5 THEN 'NaN'::DOUBLE END AS "v",
       TIMESTAMP_NS '2020-01-01' AS "x", TIMESTAMP_MS '2020-01-01 00:00:01' AS "y", i AS "a.b"
FROM range(40000) t(i)
"""


def parquet_dataset(owner, tmp_path, name: str, select: str):
    """A dataset uploaded as the Parquet file DuckDB writes for `select`."""
    path = str(tmp_path / f"{name}.parquet")
    connection = duckdb.connect()
    connection.execute(f"COPY ({select}) TO '{path}' (FORMAT parquet)")
    connection.close()
    with open(path, "rb") as upload:
        dataset, _ = dataset_create(owner=owner, name=name, upload=upload, filename=f"{name}.parquet")
    return dataset


@pytest.fixture
def typed(alice, tmp_path):
    return parquet_dataset(alice, tmp_path, "TYPED", ALL_TYPES)


def duckdb_answer(caller, text):
    """What the query gave before plain queries were read from the file: DuckDB's streamed answer."""
    query = queries.Query(caller=caller, text=text)
    with query.open():
        return query.fetch(query.relation())


def same(found, expected):
    """The same names, types and values in the same order (a NaN equal to a NaN)."""
    assert found.schema == expected.schema, (found.schema, expected.schema)
    pd.testing.assert_frame_equal(found.to_pandas(), expected.to_pandas())


def rows(caller, text):
    query = queries.Query(caller=caller, text=text)
    with query.open():
        return query.rows()


@pytest.mark.parametrize(
    ("text", "columns"),
    [
        ("select * from IRIS", None),
        ("SELECT * FROM IRIS;", None),
        ("from IRIS", None),
        ("select * from IRIS i", None),
        ("select * from alice.IRIS", None),
        ('select "SPECIES", sepal_length from "IRIS"', ("SPECIES", "sepal_length")),
    ],
)
def test_what_reads_as_plain(db, text, columns):
    """`SELECT *` or whole columns of one table, and nothing more, is plain."""
    checked = queries._checked(text)
    assert (checked.plain, checked.columns) == (True, columns)


@pytest.mark.parametrize(
    "text",
    [
        "select * from IRIS where SEPAL_LENGTH > 5",
        "select * from IRIS limit 3",
        "select * from IRIS offset 3",
        "select * from IRIS order by 1",
        "select distinct SPECIES from IRIS",
        "select * from IRIS using sample 10%",
        "select * from IRIS tablesample 10%",
        "select * from IRIS using sample 3 rows (reservoir, 42)",
        "select * exclude (SPECIES) from IRIS",
        "select * replace (1 as SPECIES) from IRIS",
        "select columns('S.*') from IRIS",
        "select SPECIES as S from IRIS",
        "select i.SPECIES from IRIS i",
        "select SPECIES, species from IRIS",
        "select SEPAL_LENGTH + 1 from IRIS",
        "select *, SPECIES from IRIS",
        "select * from IRIS, IRIS2",
        "select * from IRIS join IRIS2 using (SPECIES)",
        "with t as (select * from IRIS where false) select * from t",
        "select * from (select * from IRIS limit 1)",
        "select * from IRIS union all select * from IRIS",
        "select * from IRIS group by all",
        "select * from IRIS qualify row_number() over () < 3",
        "select 1",
        "select * from range(3)",
        "select * from IRIS at (version => 1)",
        "values (1)",
    ],
)
def test_anything_more_is_not_plain(db, text):
    """A filter, a limit, a sample, an expression, an alias, a second table...: DuckDB runs it, as before."""
    try:
        checked = queries._checked(text)
    except Exception:
        return  # refused outright: not run at all
    assert not checked.plain


def test_a_plain_read_gives_what_duckdb_gives_for_every_type(alice, typed):
    """Each column, and all of them, read plain equals DuckDB's answer: names, types, values, order;
    the columns whose type DuckDB gives otherwise are left to DuckDB."""
    names = list(duckdb_answer(alice, "select * from TYPED where true").column_names)
    assert "a.b" in names
    assert len(names) == 25
    for name in names:
        quoted = '"' + name + '"'
        for text in (f"select {quoted} from TYPED", f"select {quoted.upper()} from typed"):
            expected = duckdb_answer(alice, text)
            found = rows(alice, text)
            assert found.schema == expected.schema, (name, found.schema, expected.schema)
            same(found, expected)
            assert found.schema.metadata is None
    whole = rows(alice, "select * from TYPED")
    same(whole, duckdb_answer(alice, "select * from TYPED where true"))
    assert whole.num_rows == 40000
    subset = rows(alice, 'select h, "a.b", "J", D from TYPED')
    assert subset.column_names == ["h", "a.b", "j", "d"]
    same(subset, duckdb_answer(alice, 'select h, "a.b", "J", D from TYPED where true'))


def test_a_plain_read_takes_the_file_and_no_duckdb_database(alice, typed, monkeypatch):
    """A plain query of simple types makes no DuckDB database; one that needs DuckDB still gets one."""
    taken, closed = [], []
    real_take = queries._spare.take
    monkeypatch.setattr(queries._spare, "take", lambda: taken.append(1) or real_take())
    monkeypatch.setattr(queries._spare, "close", closed.append)
    assert rows(alice, "select a, B, h, j from TYPED").num_rows == 40000
    assert taken == []
    rows(alice, "select o from TYPED")  # a UUID: DuckDB's text, not pyarrow's
    assert taken == [1]
    query = queries.Query(caller=alice, text="select * from TYPED")
    with query.open():
        assert query.connection is None
        assert query.relation().aggregate("count(*)").fetchall() == [(40000,)]
        assert query.connection is not None
        connection = query.connection
    assert query.connection is None
    assert closed[-1] is connection  # closed with the query, as any query's
    assert len(closed) == len(taken) == 2
    connection.close()


def test_a_plain_read_is_outside_its_with_block_refused(alice, typed):
    """Rows are read only while the query's files are held open."""
    query = queries.Query(caller=alice, text="select * from TYPED")
    with pytest.raises(RuntimeError, match="outside"):
        query.rows()
    with query.open():
        pass
    with pytest.raises(RuntimeError, match="outside"):
        query.rows()


def test_a_plain_query_reads_only_its_own_dataset(alice, bob, bob_api, alice_api, iris):
    """Another user's private dataset of the same name is not read; a plain query of an unknown
    column is DuckDB's error naming it; a column named like a file is a column, not a file."""
    make_dataset(alice, "IRIS", iris)
    make_dataset(bob, "IRIS", iris.head(4))
    make_script(bob, "count", COUNT)
    make_script(alice, "count", COUNT)
    assert apply(bob_api, "table-apply", "count", {"input": "select * from IRIS"}).json() == {"result": 4}
    hidden = apply(bob_api, "table-apply", "count", {"input": "select * from alice.IRIS"})
    assert hidden.status_code == 400
    assert "no dataset" in hidden.json()["errorMessage"]
    missing = apply(alice_api, "table-apply", "count", {"input": "select NOPE from IRIS"})
    assert missing.status_code == 400
    assert "NOPE" in missing.json()["errorMessage"]
    path = apply(alice_api, "table-apply", "count", {"input": 'select "/etc/passwd" from IRIS'})
    assert path.status_code == 400
    assert "/etc/passwd" in path.json()["errorMessage"]


def test_plain_and_filtered_queries_give_the_function_the_same_frame(alice, alice_api, alice_iris, iris):
    """Through the API, a plain query and the same rows through DuckDB (`where true`) give the
    function the same DataFrame, columns named as the dataset names them."""
    make_script(alice, "echo", ECHO)
    parameters = '{"oml_input_type":"pandas.DataFrame"}'
    for columns in ("*", "species, SEPAL_LENGTH", "PETAL_WIDTH"):
        plain = apply(
            alice_api, "table-apply", "echo", {"input": f"select {columns} from IRIS", "parameters": parameters}
        )
        duck = apply(
            alice_api,
            "table-apply",
            "echo",
            {"input": f"select {columns} from IRIS where true", "parameters": parameters},
        )
        assert plain.status_code == 200, plain.json()
        assert plain.json() == duck.json()
    records = plain.json()["result"]
    assert len(records) == len(iris)
    assert list(records[0]) == ["PETAL_WIDTH"]


def test_a_plain_read_keeps_the_row_limit(alice, alice_api, alice_iris, settings):
    """More rows than OMLWEB_QUERY_MAX_ROWS is the same 400 on the plain path, and the run fails."""
    settings.OMLWEB_QUERY_MAX_ROWS = 5
    make_script(alice, "count", COUNT)
    response = apply(alice_api, "row-apply", "count", {"input": "select * from IRIS", "rows": 2})
    assert response.status_code == 400
    assert response.json()["errorMessage"] == "input: the query gives more than 5 rows, the most an apply run takes."
    assert Run.objects.get().status == Run.Status.FAILED


def test_a_plain_read_keeps_the_time_limit(alice, typed, settings):
    """A plain read past OMLWEB_QUERY_TIMEOUT_SECONDS is the same 400 as DuckDB's interrupted one."""
    settings.OMLWEB_QUERY_TIMEOUT_SECONDS = 0
    with pytest.raises(queries.BadRequest, match="longer than its limit of 0 seconds"):
        rows(alice, "select a from TYPED")


def test_a_plain_read_stops_a_huge_result_as_it_streams(alice, settings, tmp_path):
    """A dataset whose small Parquet file holds 300 MB of text (one value, repeated) is stopped at the
    byte limit a batch at a time: the web process never holds it all."""
    parquet_dataset(alice, tmp_path, "HUGE", "select repeat('x', 1000) as s, i from range(300000) t(i)")
    settings.OMLWEB_QUERY_MAX_RESULT_MB = 1
    assert queries._checked("select * from HUGE").plain
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with pytest.raises(queries.BadRequest, match="the query's rows take more than 1 MB"):
        rows(alice, "select * from HUGE")
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert peak_after - peak_before < 150 * 1024**2
    settings.OMLWEB_QUERY_MAX_RESULT_MB = 1000
    assert rows(alice, "select i from HUGE").num_rows == 300000


GROUP_KEYS = """
SELECT i AS "ID", CASE WHEN i % 11 = 0 THEN NULL ELSE (i % 7) - 3 END AS "N",
       CASE WHEN i % 13 = 0 THEN NULL WHEN i % 5 = 0 THEN '' ELSE ['Z', 'a', 'é', 'ab', 'A'][i % 5 + 1] END AS "S",
       i % 3 = 0 AS "B", DATE '2020-01-01' + (i % 4)::INTEGER AS "D",
       TIMESTAMP '2020-01-01' + INTERVAL (i % 2) SECOND AS "T", (i % 3) / 2 AS "F", (i % 9)::UBIGINT AS "U"
FROM range(3000) t(i)
"""


@pytest.fixture
def keyed(alice, tmp_path):
    return parquet_dataset(alice, tmp_path, "KEYED", GROUP_KEYS)


def groups(alice, text, group_by, monkeypatch=None):
    from scripts_app.services import apply as apply_service

    query = queries.Query(caller=alice, text=text)
    with query.open():
        pieces = apply_service._group_pieces(query, {"groupBy": group_by})
    return [(piece.key, piece.label, piece.rows, piece.data) for piece in pieces]


@pytest.mark.parametrize(
    "group_by", [["N"], ["s"], ["B"], ["D"], ["T"], ["U"], ["S", "N"], ["N", "B", "D"], ["ID"], ["F"], ["F", "S"]]
)
def test_a_plain_group_split_gives_what_duckdb_gives(alice, keyed, group_by):
    """Split with Arrow, a plain query's groups are DuckDB's: the same keys in the same order (NULL last,
    strings by their bytes), each with exactly its rows, in the dataset's order."""
    plain = groups(alice, "select * from KEYED", group_by)
    duck = groups(alice, "select * from KEYED where true", group_by)
    assert [piece[:3] for piece in plain] == [piece[:3] for piece in duck]
    assert len(plain) > 1
    for (_, label, _, found), (_, _, _, expected) in zip(plain, duck, strict=True):
        assert found.schema == expected.schema
        ids = found.column("ID").to_pylist()
        assert sorted(ids) == sorted(expected.column("ID").to_pylist()), label
        if group_by[0] != "F":
            assert ids == sorted(ids), label  # the dataset's order within a group


def test_a_plain_group_split_is_arrows_only_for_exact_keys(alice, keyed, monkeypatch):
    """Float keys (NaN, -0.0) and an orderBy are split by DuckDB; integer keys with Arrow, with no
    DuckDB database."""
    from scripts_app.services import apply as apply_service

    calls = []
    real = apply_service._plain_group_pieces
    monkeypatch.setattr(apply_service, "_plain_group_pieces", lambda *a: calls.append(real(*a)) or calls[-1])
    taken = []
    real_take = queries._spare.take
    monkeypatch.setattr(queries._spare, "take", lambda: taken.append(1) or real_take())
    assert len(groups(alice, "select * from KEYED", ["N"])) == 8
    assert calls[-1] is not None
    assert taken == []
    groups(alice, "select * from KEYED", ["F"])
    assert calls[-1] is None
    assert taken == [1]
    query = queries.Query(caller=alice, text="select * from KEYED")
    with query.open():
        ordered = apply_service._group_pieces(query, {"groupBy": ["N"], "orderBy": ["ID DESC"]})
    assert len(calls) == 2
    assert ordered[0].data.column("ID").to_pylist()[:2] == [2996, 2989]  # descending, by DuckDB


def test_a_plain_group_apply_through_the_api(alice, alice_api, iris):
    """group-apply over a plain query, keyed per group as with any other query; a missing groupBy
    column is the same 400."""
    make_dataset(alice, "IRIS", iris)
    make_script(alice, "count", COUNT)
    plain = apply(alice_api, "group-apply", "count", {"input": "select * from IRIS", "groupBy": "species"})
    duck = apply(alice_api, "group-apply", "count", {"input": "select * from IRIS where true", "groupBy": "species"})
    assert plain.status_code == 200, plain.json()
    assert plain.json() == duck.json() == {"result": {"setosa": 7, "versicolor": 7, "virginica": 7}}
    missing = apply(alice_api, "group-apply", "count", {"input": "select * from IRIS", "groupBy": "NOPE"})
    assert missing.status_code == 400
    assert "no column 'NOPE'" in missing.json()["errorMessage"]
