"""runner.serve_pieces against a hostile child: what a piece writes on the result pipe itself is
checked as any run's result, a forged frame fails only its own piece, and the parent stays bounded."""

from __future__ import annotations

import json
import resource
import struct

import pyarrow as pa
import pytest

from scripts_app import runner
from scripts_app.runner import Failure, Outcome

from .helpers import make_job

FRAME = struct.Struct(">QQ")


def _serve(source: str, count: int, *, arrow=None, data_options=None):
    """Serve `count` index pieces (args (i,)); returns the results in the order they were given."""
    runner.configure(mode="zygote")
    pending = list(range(1, count + 1))
    taken: list[int] = []
    given: list[tuple[int, runner.Result]] = []

    def take():
        if not pending:
            return None
        seq = pending.pop(0)
        taken.append(seq)
        return runner.PieceJob(seq=seq, args=(seq,), arrow=arrow)

    def give(piece, result):
        given.append((piece.seq, result))

    with runner.slot():
        served = runner.serve_pieces(make_job(source), take, give, data_options=data_options)
    assert served
    return taken, given


def _forge(seq_expr: str, document: str) -> str:
    return (
        "import os, struct\n\n"
        "def f(i):\n"
        f"    doc = {document!r}.encode()\n"
        f"    os.write(3, struct.pack('>QQ', {seq_expr}, len(doc)) + doc)\n"
        "    return i\n"
    )


def test_pieces_run_in_order_with_their_own_output():
    taken, given = _serve("def f(i):\n    print('piece', i)\n    return i * 10\n", 5)
    assert taken == [1, 2, 3, 4, 5]
    assert [(seq, r.outcome, r.value, r.stdout) for seq, r in given] == [
        (i, Outcome.SUCCEEDED, i * 10, f"piece {i}\n") for i in range(1, 6)
    ]


def test_rows_arrive_as_arrow_ipc():
    table = pa.table({"A": [1.0, 2.0, 3.0], "B": ["x", "y", None]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    source = "def f(df, i):\n    return {'rows': len(df), 'sum': float(df['A'].sum()), 'i': i}\n"
    _, given = _serve(
        source, 2, arrow=sink.getvalue(), data_options={"input_type": "pandas.DataFrame", "na_omit": True}
    )
    assert [r.value for _, r in given] == [{"rows": 2, "sum": 3.0, "i": 1}, {"rows": 2, "sum": 3.0, "i": 2}]


def test_a_frame_for_another_piece_is_an_invalid_result_and_ends_the_child():
    meta = json.dumps({"outcome": "SUCCEEDED", "failure": None, "error_message": "", "traceback": ""})
    taken, given = _serve(_forge("i + 98", meta + "\n42\n[]"), 4)
    [(seq, result)] = given
    assert seq == 1
    assert result.failure is Failure.INVALID_RESULT
    assert "answers piece 99 while piece 1 was running" in result.error_message
    assert taken == [1]  # the child is ended: it takes no other piece


def test_a_forged_verdict_is_refused_as_for_a_one_job_run():
    """A child may not claim a parent's verdict (TIMED_OUT) for its piece."""
    meta = json.dumps({"outcome": "TIMED_OUT", "failure": "timeout", "error_message": "x", "traceback": ""})
    _, given = _serve(_forge("i", meta + "\nnull\n[]"), 3)
    [(seq, result)] = given
    assert seq == 1
    assert result.failure is Failure.INVALID_RESULT


def test_a_forged_huge_frame_length_costs_the_parent_nothing():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    source = (
        "import os, struct\n\ndef f(i):\n    os.write(3, struct.pack('>QQ', i, 1 << 60) + b'x' * 65536)\n    return i\n"
    )
    _, given = _serve(source, 3)
    [(seq, result)] = given
    assert (seq, result.failure) == (1, Failure.RESULT_TOO_LARGE)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KB: under 100 MB


@pytest.mark.parametrize(
    ("garbage", "failure"),
    [(b"\x00" * 40, Failure.INVALID_RESULT), (b"\xff" * 16, Failure.RESULT_TOO_LARGE)],
)
def test_garbage_on_the_result_pipe_fails_the_piece(garbage, failure):
    """Zeros read as a frame for piece 0; all-ones as a frame longer than any result may be."""
    source = f"import os\n\ndef f(i):\n    os.write(3, {garbage!r})\n    return i\n"
    _, given = _serve(source, 2)
    [(seq, result)] = given
    assert (seq, result.outcome, result.failure) == (1, Outcome.FAILED, failure)


def test_the_child_ending_between_pieces_fails_the_next_piece():
    """A thread of the script ends the child after its piece answered: the next piece is named."""
    source = (
        "import os, threading, time\n\n"
        "def f(i):\n"
        "    if i == 2:\n"
        "        threading.Thread(target=lambda: (time.sleep(0.2), os._exit(5))).start()\n"
        "    else:\n"
        "        time.sleep(0.5)\n"
        "    return i\n"
    )
    taken, given = _serve(source, 4)
    outcomes = dict(given)
    assert outcomes[1].succeeded
    assert outcomes[2].succeeded
    assert outcomes[3].failure is Failure.CRASHED
    assert "exited with code 5" in outcomes[3].error_message
    assert taken == [1, 2, 3]


def test_serve_pieces_refuses_in_cold_mode():
    """No warm template: serve_pieces takes no piece and says so (the caller runs one job per piece)."""
    runner.configure(mode="cold")
    try:
        taken: list = []
        with runner.slot():
            served = runner.serve_pieces(make_job("def f(i):\n    return i\n"), lambda: taken.append(1), print)
        assert served is False
        assert taken == []
    finally:
        runner.configure(mode="zygote")
