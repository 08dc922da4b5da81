"""The parent trusts nothing a run writes back: a forged or malformed result document is the run's own
failure (INVALID_RESULT, or the limit it breaks), never an exception in the parent or a dead template."""

import base64
import json
import struct
import threading
import zlib

import pytest

from scripts_app import runner
from scripts_app.runner import Failure, Limits, Outcome
from scripts_app.runner.templates import registry

from .helpers import TEST_LIMITS, assert_runner_still_works, make_job

META_OK = {"outcome": "SUCCEEDED", "failure": None, "error_message": "", "traceback": ""}


def png(width: int = 2, height: int = 2) -> bytes:
    """A real (tiny) PNG of the given size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def document(meta=None, value: bytes = b"null", figures=None) -> bytes:
    meta_line = json.dumps(META_OK if meta is None else meta).encode()
    return meta_line + b"\n" + value + b"\n" + json.dumps([] if figures is None else figures).encode()


def figure(data: bytes = None, title="t") -> dict:
    return {"title": title, "png": base64.b64encode(png() if data is None else data).decode()}


def forging(raw: bytes, *, exit_code: int = 0) -> str:
    """A script that writes `raw` on its result pipe itself, then exits before the harness can write."""
    return (
        "import os, sys\n"
        "def f():\n"
        "    fd = sys._getframe(2).f_locals['result_fd']  # the harness's execute()\n"
        f"    os.write(fd, {raw!r})\n"
        f"    os._exit({exit_code})\n"
    )


def template_pids() -> dict:
    return {key: template.process.pid for key, template in registry.templates.items() if template.process}


FORGED = {
    "unknown-outcome": document({**META_OK, "outcome": "WON"}),
    "outcome-the-parent-gives": document({**META_OK, "outcome": "CANCELLED"}),
    "unknown-failure": document({**META_OK, "outcome": "FAILED", "failure": "boom"}),
    "failure-the-parent-gives": document({**META_OK, "outcome": "FAILED", "failure": "timeout"}),
    "succeeded-with-a-failure": document({**META_OK, "failure": "script_error"}),
    "meta-not-an-object": b'["SUCCEEDED"]\nnull\n[]',
    "meta-unknown-key": document({**META_OK, "admin": True}),
    "meta-missing-key": document({"outcome": "SUCCEEDED"}),
    "message-not-a-string": document({**META_OK, "outcome": "FAILED", "failure": "script_error", "traceback": 7}),
    "failed-with-a-value": document({**META_OK, "outcome": "FAILED", "failure": "script_error"}, b"1"),
    "value-nan": document(value=b"NaN"),
    "value-infinity": document(value=b'{"x": -Infinity}'),
    "value-1e999": document(value=b"[1e999]"),
    "value-not-json": document(value=b"{'x': 1}"),
    "value-not-utf8": document(value=b'"\xff\xfe"'),
    "figures-not-a-list": document(figures={"png": ""}),
    "figure-not-base64": document(figures=[{"title": None, "png": "!!not base64!!"}]),
    "figure-not-a-png": document(figures=[figure(b"GIF89a" + b"\x00" * 40)]),
    "figure-huge-ihdr": document(figures=[figure(png()[:16] + struct.pack(">II", 10**9, 10**9) + png()[24:])]),
    "figure-unknown-key": document(figures=[{**figure(), "path": "/etc/passwd"}]),
    "figure-title-not-a-string": document(figures=[figure(title=["x"])]),
}


@pytest.mark.parametrize("raw", FORGED.values(), ids=FORGED.keys())
def test_a_forged_document_is_an_invalid_result(mode, raw):
    """Whatever malformed document a script writes on the result pipe, the run is FAILED / INVALID_RESULT."""
    result = runner.run(make_job(forging(raw)))
    assert result.outcome is Outcome.FAILED
    assert result.failure is Failure.INVALID_RESULT, (result.failure, result.error_message)
    assert result.error_message.startswith("The run gave a result the service cannot accept: ")
    assert result.value is None
    assert result.figures == []
    assert_runner_still_works()


def test_a_forged_document_then_a_nonzero_exit_is_still_an_invalid_result(mode):
    """The exit code does not hide a forged document."""
    result = runner.run(make_job(forging(document({**META_OK, "outcome": "WON"}), exit_code=3)))
    assert result.failure is Failure.INVALID_RESULT


def test_a_document_cut_short_is_a_crash(mode):
    """os._exit after half a document: the run crashed without a result."""
    result = runner.run(make_job(forging(b'{"outcome": "SUCCEE')))
    assert result.failure is Failure.CRASHED
    assert "exited with code 0" in result.error_message


def test_a_valid_forged_document_is_taken_as_the_run_wrote_it(mode):
    """A document the harness could have written is accepted: the script only fooled itself."""
    raw = document(value=b'{"answer": 42}', figures=[figure(title="mine")])
    result = runner.run(make_job(forging(raw)))
    assert result.outcome is Outcome.SUCCEEDED, result.error_message
    assert result.value == {"answer": 42}
    assert [(f.title, f.png) for f in result.figures] == [("mine", png())]


LIMITS = Limits(
    wall_seconds=5, cpu_seconds=3, max_output_items=10, max_result_bytes=1000, max_figures=2, max_image_bytes=2000
)
OVER_LIMITS = {
    "more-items-than-allowed": (document(value=json.dumps(list(range(11))).encode()), Failure.OUTPUT_TOO_LONG),
    "a-larger-value-than-allowed": (document(value=json.dumps("x" * 2000).encode()), Failure.RESULT_TOO_LARGE),
    "more-figures-than-allowed": (document(figures=[figure()] * 3), Failure.IMAGE_TOO_LARGE),
    "a-larger-figure-than-allowed": (document(figures=[figure(png() + b"\x00" * 3000)]), Failure.IMAGE_TOO_LARGE),
    "a-value-nested-too-deeply": (document(value=b"[" * 500 + b"]" * 500), Failure.NOT_SERIALIZABLE),
}


@pytest.mark.parametrize(("raw", "failure"), OVER_LIMITS.values(), ids=OVER_LIMITS.keys())
def test_a_forged_document_over_a_limit_fails_that_limit(mode, raw, failure):
    """The parent recounts items, sizes, figures and depth itself: the harness's checks can be skipped."""
    result = runner.run(make_job(forging(raw), limits=LIMITS))
    assert result.outcome is Outcome.FAILED
    assert result.failure is failure, result.error_message


def test_a_list_whose_len_lies_is_counted_as_it_is(mode):
    """A list subclass whose __len__ claims 0 fools len(), not the count of what is returned."""
    source = "class Liar(list):\n    def __len__(self):\n        return 0\n\ndef f():\n    return Liar(range(50))\n"
    result = runner.run(make_job(source, limits=LIMITS))
    assert result.failure is Failure.OUTPUT_TOO_LONG
    assert result.error_message == "Output exceeds maximum length 10"


def test_a_lying_list_past_a_patched_harness_is_counted_by_the_parent(mode):
    """Even with the harness's own count patched away, the parent counts the JSON."""
    source = (
        "import sys\n"
        "def f():\n"
        "    harness = sys._getframe(1).f_globals\n"
        "    harness['_length'] = lambda value: 0\n"
        "    harness['to_plain'] = lambda value, depth=0: {'k%d' % i: i for i in range(50)}\n"
        "    return 1\n"
    )
    result = runner.run(make_job(source, limits=LIMITS))
    assert result.failure is Failure.OUTPUT_TOO_LONG


def test_a_harness_patched_to_encode_nan_is_an_invalid_result(mode):
    """A script that replaces the harness's encoder cannot pass NaN to the service."""
    source = "import sys\ndef f():\n    sys._getframe(1).f_globals['encode_value'] = lambda *a, **k: 'NaN'\n"
    result = runner.run(make_job(source))
    assert result.failure is Failure.INVALID_RESULT
    assert "NaN" in result.error_message


def test_a_patched_json_module_is_an_invalid_result(mode):
    """json.dumps replaced in the child (the harness encodes with it) gives an invalid document."""
    forged = json.dumps({**META_OK, "extra": 1})
    source = f"import json\ndef f():\n    json.dumps = lambda *a, **k: {forged!r}\n    return 1\n"
    result = runner.run(make_job(source))
    assert result.failure is Failure.INVALID_RESULT


def test_fd_3_written_directly_by_a_warm_run_is_an_invalid_result():
    """In a template's child the result pipe is fd 3: writing there directly is caught the same way."""
    runner.configure(mode="zygote")
    source = f"import os\ndef f():\n    os.write(3, {document(value=b'NaN')!r})\n    os._exit(0)\n"
    result = runner.run(make_job(source))
    assert result.failure is Failure.INVALID_RESULT


def test_nul_and_lone_surrogates_in_what_a_run_gives_become_replacement_characters(mode):
    """NUL and lone surrogates in the value, its keys, stdout, stderr and the error: U+FFFD, storable anywhere."""
    source = (
        "import sys\n"
        "def f(fail=False):\n"
        "    print('out\\x00put')\n"
        "    sys.stderr.write('err\\x00\\n')\n"
        "    if fail:\n"
        "        raise ValueError('bad\\x00\\ud800')\n"
        "    return {'k\\x00': ['a\\x00b', '\\ud800', '\\udc00x', '\\U0001f600']}\n"
    )
    result = runner.run(make_job(source))
    assert result.outcome is Outcome.SUCCEEDED, result.error_message
    assert result.value == {"k\ufffd": ["a\ufffdb", "\ufffd", "\ufffdx", "\U0001f600"]}
    assert json.loads(result.value_json) == result.value
    assert result.stdout == "out\ufffdput\n"
    assert result.stderr == "err\ufffd\n"
    failed = runner.run(make_job(source, kwargs={"fail": True}))
    assert failed.failure is Failure.SCRIPT_ERROR
    assert failed.error_message == "ValueError: bad\ufffd\ufffd"
    for text in (failed.error_message, failed.traceback, failed.stdout):
        text.encode("utf-8")
        assert "\x00" not in text


def test_a_dataframe_with_a_lone_surrogate_is_not_serializable(mode):
    """pandas cannot write a lone surrogate: the run says so instead of crashing."""
    source = "import pandas as pd\ndef f():\n    return pd.DataFrame({'s': pd.Series(['\\ud800'], dtype=object)})\n"
    result = runner.run(make_job(source))
    assert result.failure is Failure.NOT_SERIALIZABLE, result.error_message


def test_a_huge_error_message_is_cut(mode):
    """An exception with a 20 MB message fails the run with the message cut, not a lost result."""
    limits = Limits(wall_seconds=10, cpu_seconds=5, max_stream_bytes=1000)
    result = runner.run(make_job("def f():\n    raise ValueError('x' * 20_000_000)\n", limits=limits))
    assert result.failure is Failure.SCRIPT_ERROR
    assert len(result.error_message) < 1100
    assert "cut at 1000 characters" in result.error_message


@pytest.mark.parametrize(
    "source",
    [
        "def f():\n    return " + "-" * 100_000 + "1\n",
        "def f():\n    return " + "+".join(["1"] * 100_000) + "\n",
        "def f():\n    return a" + ".b" * 5000 + "\n",
    ],
    ids=["unary-100k", "sum-100k", "attributes-5k"],
)
def test_a_source_too_deep_to_compile_is_a_script_error(mode, source):
    """The compiler's RecursionError or MemoryError on a deep expression is a script error, not a memory limit."""
    result = runner.run(make_job(source))
    assert result.failure is Failure.SCRIPT_ERROR, result.error_message
    assert "too deeply nested" in result.error_message


def test_forged_documents_leave_the_template_and_other_runs_alone():
    """While forged documents are being judged, another user's concurrent runs all succeed, on the same template."""
    runner.configure(mode="zygote")
    assert_runner_still_works()
    before = template_pids()
    outcomes, errors = [], []

    def normal_runs() -> None:
        try:
            for number in range(8):
                result = runner.run(make_job(f"def f():\n    return {number}\n"))
                outcomes.append((result.outcome, result.value))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=normal_runs) for _ in range(2)]
    for thread in threads:
        thread.start()
    forged = list(FORGED.values())[:10]
    failures = [runner.run(make_job(forging(raw), limits=TEST_LIMITS)).failure for raw in forged]
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert failures == [Failure.INVALID_RESULT] * len(forged)
    assert sorted(value for _, value in outcomes) == sorted(list(range(8)) * 2)
    assert {outcome for outcome, _ in outcomes} == {Outcome.SUCCEEDED}
    assert template_pids() == before


def test_a_figure_title_with_nul_is_kept_made_safe_and_cut(mode):
    """matplotlib titles are the user's text too: NUL becomes U+FFFD and a long one is cut to what is stored."""
    source = (
        "import matplotlib.pyplot as plt\n"
        "def f():\n"
        "    plt.figure()\n"
        "    plt.plot([0, 1])\n"
        "    plt.title('t\\x00' + 'x' * 1000)\n"
    )
    result = runner.run(make_job(source, graphics=True))
    assert result.outcome is Outcome.SUCCEEDED, result.error_message + result.stderr
    [figure] = result.figures
    assert figure.title.startswith("t\ufffdxxx")
    assert len(figure.title) <= 500
    assert figure.png.startswith(b"\x89PNG")


def test_a_figure_matplotlib_cannot_draw_is_a_script_error(mode):
    """A title with a lone surrogate makes savefig raise: the run's own error, not a crashed harness."""
    source = "import matplotlib.pyplot as plt\ndef f():\n    plt.figure()\n    plt.title('\\ud800')\n"
    result = runner.run(make_job(source, graphics=True))
    assert result.failure is Failure.SCRIPT_ERROR
    assert result.error_message.startswith("Figure 1 could not be saved as PNG: ")


def test_a_forged_outcome_nested_deeply_is_an_invalid_result(mode):
    """An outcome that is a list nested 900 deep: named in the message without recursing, an invalid result."""
    rest = b', "failure": null, "error_message": "", "traceback": ""}\nnull\n[]'
    raw = b'{"outcome": ' + b"[" * 900 + b"]" * 900 + rest
    result = runner.run(make_job(forging(raw)))
    assert result.failure is Failure.INVALID_RESULT, result.error_message
    assert "unknown outcome" in result.error_message
