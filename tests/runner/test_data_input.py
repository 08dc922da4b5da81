"""Data handed to a run as its first argument (OML's table/row/group apply), and DataFrame orientation."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scripts_app import runner
from scripts_app.runner import DataInput, Failure, Outcome

from .helpers import make_job


def parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


MIXED = parquet(pa.table({"x": [1.5, None, 3.0], "name": ["a", "b", None]}))
NUMERIC = parquet(pa.table({"x": [1, 2], "y": [0.5, 1.5]}))

DESCRIBE = """
def f(data, extra=None):
    return {"type": type(data).__module__ + "." + type(data).__name__, "len": len(data), "extra": extra}
"""


@pytest.mark.parametrize(
    ("data", "input_type", "expected"),
    [
        (MIXED, "default", "pandas.DataFrame"),
        (NUMERIC, "default", "numpy.ndarray"),
        (NUMERIC, "pandas.DataFrame", "pandas.DataFrame"),
        (NUMERIC, "numpy.recarray", "numpy.recarray"),
    ],
)
def test_the_data_comes_first_converted_per_input_type(mode, data, input_type, expected):
    """The rows are the first positional argument, typed as oml_input_type says; args follow them."""
    job = make_job(DESCRIBE, data=DataInput(parquet=data, input_type=input_type), args=("more",))
    result = runner.run(job)
    assert result.succeeded, result.error_message + result.stderr
    assert result.value["type"].endswith(expected.split(".")[-1])
    assert result.value["type"].split(".")[0] == expected.split(".")[0]
    assert result.value["len"] == (3 if data is MIXED else 2)
    assert result.value["extra"] == "more"


def test_default_numeric_input_is_a_float_matrix():
    """With 'default' an all-numeric input is a 2-D float64 ndarray, as OML does."""
    source = (
        "def f(data):\n    return {'shape': list(data.shape), 'dtype': str(data.dtype), 'sum': float(data.sum())}\n"
    )
    result = runner.run(make_job(source, data=DataInput(parquet=NUMERIC)))
    assert result.value == {"shape": [2, 2], "dtype": "float64", "sum": 5.0}


def test_na_omit_drops_rows_with_a_missing_value():
    """oml_na_omit drops every row with a missing value before the function sees the data."""
    source = "def f(df):\n    return df\n"
    kept = runner.run(make_job(source, data=DataInput(parquet=MIXED, input_type="pandas.DataFrame", na_omit=True)))
    assert kept.value == [{"x": 1.5, "name": "a"}]
    whole = runner.run(make_job(source, data=DataInput(parquet=MIXED, input_type="pandas.DataFrame")))
    assert whole.value == [{"x": 1.5, "name": "a"}, {"x": None, "name": "b"}, {"x": 3.0, "name": None}]


def test_a_dataframe_can_come_back_in_columns_orientation():
    """frame_orient='columns' gives OML group-apply's {column: {index: value}}."""
    source = "import pandas as pd\ndef f():\n    return pd.DataFrame({'a': [1, 2]}, index=[5, 7])\n"
    result = runner.run(make_job(source, frame_orient="columns"))
    assert result.value == {"a": {"5": 1, "7": 2}}


def test_broken_input_fails_the_run_with_a_clear_message():
    """Bytes that are not Parquet fail the run, saying the input could not be loaded."""
    result = runner.run(make_job("def f(df):\n    return 1\n", data=DataInput(parquet=b"not parquet")))
    assert result.outcome is Outcome.FAILED
    assert result.failure is Failure.SCRIPT_ERROR
    assert result.error_message.startswith("The input data could not be loaded")


def test_unknown_input_type_is_refused():
    """A Job with an input type OML does not know is a programming error."""
    with pytest.raises(ValueError, match="input_type"):
        make_job("def f(d):\n    pass\n", data=DataInput(parquet=NUMERIC, input_type="list"))
