"""What a run gives back: values as JSON, output apart from the result, errors, figures."""

import base64
import json

from scripts_app.runner import Failure, Limits, Outcome

from .helpers import TEST_LIMITS


def test_print_does_not_corrupt_the_result(mode, run):
    """Whatever the function prints, the result is its return value and the print is in stdout."""
    source = """
def f():
    print('{"not": "the result"}')
    print("second line")
    return {"answer": 42}
"""
    result = run(source)
    assert result.outcome is Outcome.SUCCEEDED
    assert result.value == {"answer": 42}
    assert result.stdout == '{"not": "the result"}\nsecond line\n'


def test_stderr_is_captured_apart_from_stdout(mode, run):
    """Output to stderr lands in stderr, not in stdout."""
    source = """
import sys
def f():
    print("to out")
    print("to err", file=sys.stderr)
"""
    result = run(source)
    assert result.stdout == "to out\n"
    assert result.stderr == "to err\n"


def test_an_exception_gives_its_traceback_with_the_script_line(mode, run):
    """A raised exception fails the run with `Type: message` and the user's own frames and lines."""
    source = """def helper(x):
    return 1 / x

def f():
    y = 0
    return helper(y)
"""
    result = run(source)
    assert result.outcome is Outcome.FAILED
    assert result.failure is Failure.SCRIPT_ERROR
    assert result.error_message == "ZeroDivisionError: division by zero"
    assert 'File "<script>", line 6, in f' in result.traceback
    assert 'File "<script>", line 2, in helper' in result.traceback
    assert "return 1 / x" in result.traceback
    assert "harness" not in result.traceback


def test_a_syntax_error_is_a_script_error(mode, run):
    """A script that does not compile fails with a SyntaxError naming the line."""
    result = run("def f():\n    return (1,\n")
    assert result.failure is Failure.SCRIPT_ERROR
    assert result.error_message.startswith("SyntaxError:")
    assert "line 2" in result.error_message


def test_a_missing_function_is_a_script_error(run):
    """Asking for a function the script does not define fails with a NameError."""
    result = run("def g():\n    return 1\n", function="f")
    assert result.failure is Failure.SCRIPT_ERROR
    assert "NameError" in result.error_message


def test_arguments_reach_the_function(run):
    """Positional and keyword arguments are passed to the function."""
    result = run("def f(a, b=0, *, c):\n    return [a, b, c]\n", args=(1, 2), kwargs={"c": "x"})
    assert result.value == [1, 2, "x"]


def test_a_dataframe_becomes_a_list_of_records(mode, run):
    """A DataFrame comes back as records, dates as ISO strings and NaN as null."""
    source = """
import numpy as np
import pandas as pd
def f():
    return pd.DataFrame({
        "n": [1, 2],
        "x": [0.5, np.nan],
        "s": ["a", None],
        "d": pd.to_datetime(["2024-01-02", "2024-03-04"]),
    })
"""
    result = run(source)
    assert result.value == [
        {"n": 1, "x": 0.5, "s": "a", "d": "2024-01-02T00:00:00.000"},
        {"n": 2, "x": None, "s": None, "d": "2024-03-04T00:00:00.000"},
    ]
    assert json.loads(result.value_json) == result.value


def test_numpy_values_become_plain_json(run):
    """numpy scalars and arrays become numbers and lists."""
    source = """
import numpy as np
def f():
    return {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "a": np.arange(4).reshape(2, 2),
            "nan": np.array([1.0, np.nan])}
"""
    result = run(source)
    assert result.value == {"i": 3, "f": 0.5, "b": True, "a": [[0, 1], [2, 3]], "nan": [1.0, None]}


def test_a_series_becomes_a_list_of_values(run):
    """A Series comes back as the list of its values; the index is dropped."""
    result = run("import pandas as pd\ndef f():\n    return pd.Series([1, 2], index=['a', 'b'])\n")
    assert result.value == [1, 2]


def test_a_tuple_becomes_a_list_and_keys_become_strings(run):
    """Tuples become lists and dict keys become strings."""
    result = run("def f():\n    return {1: (1, 2), 'k': None}\n")
    assert result.value == {"1": [1, 2], "k": None}


def test_nan_and_infinity_become_null(mode, run):
    """NaN and infinities are not valid JSON: they come back as None."""
    result = run("def f():\n    return [float('nan'), float('inf'), -float('inf'), 1.5]\n")
    assert result.value == [None, None, None, 1.5]


def test_an_unserializable_value_is_named_in_the_error(mode, run):
    """Returning a type with no JSON form fails with NOT_SERIALIZABLE naming the type."""
    result = run("class Thing:\n    pass\n\ndef f():\n    return {'a': Thing()}\n")
    assert result.outcome is Outcome.FAILED
    assert result.failure is Failure.NOT_SERIALIZABLE
    assert "Thing" in result.error_message


def test_a_set_is_not_serializable(run):
    """A set has no order and no JSON form: it is refused, not silently turned into a list."""
    result = run("def f():\n    return {1, 2}\n")
    assert result.failure is Failure.NOT_SERIALIZABLE
    assert "set" in result.error_message


def _png_ok(figure) -> bool:
    return figure.png.startswith(b"\x89PNG\r\n\x1a\n")


def test_no_figure_gives_no_image(run):
    """With graphics on, a function that draws nothing returns no figures."""
    result = run("def f():\n    return 1\n", graphics=True)
    assert result.succeeded
    assert result.figures == []


def test_one_figure_comes_back_as_png_with_its_title(mode, run):
    """An open figure is returned as PNG with its axes title."""
    source = """
import matplotlib.pyplot as plt
def f():
    plt.plot([1, 2, 3])
    plt.title("Sales")
    return "drawn"
"""
    result = run(source, graphics=True)
    assert result.value == "drawn"
    assert len(result.figures) == 1
    assert _png_ok(result.figures[0])
    assert result.figures[0].title == "Sales"


def test_three_figures_come_back_in_order(run):
    """Figures come back in figure-number order; suptitle beats axes title; no title is None."""
    source = """
import matplotlib.pyplot as plt
def f():
    a = plt.figure(3)
    a.add_subplot().set_title("third")
    b = plt.figure(1)
    b.suptitle("first")
    b.add_subplot().set_title("ignored")
    c = plt.figure(2)
    c.add_subplot().plot([1, 2])
"""
    result = run(source, graphics=True)
    assert [figure.title for figure in result.figures] == ["first", None, "third"]
    assert all(_png_ok(figure) for figure in result.figures)


def _decoded(png: bytes):
    """What a PNG shows and says: its pixels, size, dpi and text, whatever its filters and compression."""
    import io

    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.load()
    return image.mode, image.size, image.info, np.asarray(image)


def _same_image(png: bytes, other: bytes) -> bool:
    import numpy as np

    mode, size, info, pixels = _decoded(png)
    other_mode, other_size, other_info, other_pixels = _decoded(other)
    return (mode, size, info) == (other_mode, other_size, other_info) and np.array_equal(pixels, other_pixels)


def _savefig_here(draw: str, **savefig) -> bytes:
    """The PNG matplotlib's Agg savefig writes for `draw`'s figure, drawn in the test's process."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    namespace: dict = {}
    with matplotlib.rc_context():
        exec(draw, namespace)
        namespace["f"]()
        here = plt.gcf()
        buffer = io.BytesIO()
        here.savefig(buffer, format="png", **savefig)
        plt.close(here)
    return buffer.getvalue()


def test_a_figure_is_the_image_agg_savefig_writes(mode, run):
    """The PNG that comes back shows what matplotlib's Agg savefig writes for the same figure here:
    the same pixels, size, dpi and Software text, whatever the title holds. (Its rows are written
    unfiltered at zlib level 1, so its bytes are not Pillow's: docs/runner.md, branch value.)"""
    title = 'sine "quoted" \\ caf\u00e9 \u2603'
    draw = f"""
import numpy as np
import matplotlib.pyplot as plt
def f():
    x = np.linspace(0, 10, 100)
    plt.figure()
    plt.plot(x, np.sin(x))
    plt.title({title!r})
    return 1
"""
    result = run(draw, graphics=True)
    assert result.succeeded, result.error_message + result.stderr
    [figure] = result.figures
    assert figure.title == title
    here = _savefig_here(draw, pil_kwargs={"compress_level": 1})
    assert _same_image(figure.png, here)
    assert figure.png != here  # the harness's own encoder wrote it, not Pillow's
    assert figure.png.startswith(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR")


def test_a_figure_keeps_the_scripts_savefig_settings(mode, run):
    """What a script sets for savefig (dpi, a tight box, a transparent or coloured background) shapes the
    figure that comes back exactly as it shapes savefig's own, pixel for pixel."""
    draw = """
import numpy as np
import matplotlib.pyplot as plt
def f():
    plt.rcParams["savefig.dpi"] = 37
    plt.rcParams["savefig.bbox"] = "tight"
    plt.rcParams["savefig.transparent"] = True
    plt.rcParams["savefig.facecolor"] = "red"
    figure, axes = plt.subplots(figsize=(3, 2))
    axes.imshow(np.arange(100.0).reshape(10, 10))
    axes.set_title("heat")
    return 1
"""
    result = run(draw, graphics=True)
    assert result.succeeded, result.error_message + result.stderr
    [figure] = result.figures
    here = _savefig_here(draw)
    assert _same_image(figure.png, here)
    mode_, size, info, _ = _decoded(figure.png)
    assert size != (640, 480)
    assert round(info["dpi"][0]) == 37


def test_a_figure_on_a_canvas_of_another_backend_is_saved_as_matplotlib_saves_it(mode, run):
    """A figure the script put on a canvas of its own (here SVG's, which has no print_png) goes through
    savefig untouched: still a PNG of that figure."""
    draw = """
import matplotlib.pyplot as plt
from matplotlib.backends.backend_svg import FigureCanvasSVG
def f():
    figure = plt.figure()
    FigureCanvasSVG(figure)
    figure.gca().plot([1, 3, 2])
    return type(figure.canvas).__name__
"""
    result = run(draw, graphics=True)
    assert result.succeeded, result.error_message + result.stderr
    assert result.value == "FigureCanvasSVG"
    [figure] = result.figures
    _, size, _, _ = _decoded(figure.png)
    assert size == (640, 480)


def test_a_print_png_the_script_gave_its_canvas_is_the_one_savefig_uses(mode, run):
    """A script that gave its canvas a print_png of its own (here Pillow at zlib level 9) gets what that
    method writes, byte for byte: the harness's writer stands aside."""
    draw = """
import matplotlib.pyplot as plt
def f():
    figure = plt.figure()
    plt.plot([1, 3, 2])
    canvas = figure.canvas
    def own(target, **print_figure_kwargs):
        type(canvas).print_png(canvas, target, pil_kwargs={"compress_level": 9})
    canvas.print_png = own
    return 1
"""
    result = run(draw, graphics=True)
    assert result.succeeded, result.error_message + result.stderr
    [figure] = result.figures
    assert figure.png == _savefig_here(draw.replace("canvas.print_png = own", "pass"), pil_kwargs={"compress_level": 9})


def test_a_figure_that_fails_to_draw_leaves_its_canvas_as_matplotlib_made_it():
    """When drawing raises inside the harness's print_png, the error reaches the caller and the
    canvas keeps no print_png of the harness's: savefig of the fixed figure is matplotlib's own."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pytest

    from scripts_app.runner import harness

    figure = plt.figure()
    figure.gca().set_title("\ud800")
    with pytest.raises(TypeError):
        harness._save_png(figure, io.BytesIO())
    assert "print_png" not in vars(figure.canvas)
    figure.gca().set_title("fixed")
    buffer = io.BytesIO()
    harness._save_png(figure, buffer)
    plain = io.BytesIO()
    figure.savefig(plain, format="png")
    plt.close(figure)
    assert _same_image(buffer.getvalue(), plain.getvalue())


def test_png_bytes_holds_any_canvas_size_pixel_for_pixel():
    """The harness's PNG writer against Pillow's reading, for odd sizes, one pixel, and random pixels
    (nothing compresses), with the dpi Pillow writes."""
    import numpy as np

    from scripts_app.runner import harness

    generator = np.random.default_rng(11)
    for height, width in [(1, 1), (3, 7), (480, 640), (17, 1)]:
        rgba = generator.integers(0, 256, size=(height, width, 4), dtype=np.uint8)
        png = harness.png_bytes(rgba, 72.0, "Matplotlib version0, https://matplotlib.org/")
        mode_, size, info, pixels = _decoded(png)
        assert (mode_, size) == ("RGBA", (width, height))
        assert info["Software"] == "Matplotlib version0, https://matplotlib.org/"
        assert abs(info["dpi"][0] - 72.0) < 0.02  # stored as whole pixels a metre
        assert np.array_equal(pixels, rgba)


def test_the_figures_line_is_what_json_dumps_writes():
    """The harness writes the figures line itself (base64 needs no escaping): the same bytes as
    json.dumps, for any title."""
    from scripts_app.runner import harness

    titles = [None, "", "plain", 'a "quote" and \\', "caf\u00e9 \u2603", "line\nbreak", "\ud800 lone", "\x00nul"]
    figures = [(title, base64.b64encode(bytes([i]) * (i + 3))) for i, title in enumerate(titles)]
    expected = json.dumps([{"title": title, "png": png.decode()} for title, png in figures]).encode()
    assert harness.figures_line(figures) == expected
    assert harness.figures_line([]) == b"[]" == json.dumps([]).encode()


def test_figures_are_not_returned_without_graphics(run):
    """With graphics off, open figures are not rendered."""
    result = run("import matplotlib.pyplot as plt\ndef f():\n    plt.plot([1])\n", graphics=False)
    assert result.succeeded
    assert result.figures == []


def test_output_longer_than_the_limit_fails_with_the_oml_message(mode, run):
    """A returned list, dict or DataFrame longer than max_output_items fails with OML's message."""
    limits = Limits(wall_seconds=5, max_output_items=1024)
    for value in ("list(range(1025))", "{i: i for i in range(1025)}", "pd.DataFrame({'a': range(1025)})"):
        result = run(f"import pandas as pd\ndef f():\n    return {value}\n", limits=limits)
        assert result.outcome is Outcome.FAILED
        assert result.failure is Failure.OUTPUT_TOO_LONG
        assert result.error_message == "Output exceeds maximum length 1024"
    assert run("def f():\n    return list(range(1024))\n", limits=limits).succeeded


def test_a_result_over_the_size_limit_fails(run):
    """A result whose JSON is over max_result_bytes fails with RESULT_TOO_LARGE, not a cut result."""
    limits = Limits(wall_seconds=5, max_result_bytes=1000)
    result = run("def f():\n    return 'x' * 2000\n", limits=limits)
    assert result.failure is Failure.RESULT_TOO_LARGE
    assert result.value is None
    assert "1000" in result.error_message


def test_an_image_over_the_size_limit_fails(run):
    """A figure whose PNG is over max_image_bytes fails with IMAGE_TOO_LARGE."""
    limits = Limits(wall_seconds=5, max_image_bytes=1000)
    result = run("import matplotlib.pyplot as plt\ndef f():\n    plt.plot([1, 2])\n", graphics=True, limits=limits)
    assert result.failure is Failure.IMAGE_TOO_LARGE
    assert result.figures == []


def test_stdout_over_the_limit_is_cut_with_a_marker_and_the_run_succeeds(mode, run):
    """Output past max_stream_bytes is cut with a visible marker; the result is intact."""
    limits = Limits(wall_seconds=5, max_stream_bytes=1000)
    result = run("def f():\n    print('y' * 5000)\n    return 'done'\n", limits=limits)
    assert result.succeeded
    assert result.value == "done"
    assert result.stdout == "y" * 1000 + "\n[... output cut at 1000 bytes ...]"


def test_duration_is_filled_in(run):
    """A run reports how long it took."""
    result = run("import time\ndef f():\n    time.sleep(0.2)\n")
    assert 0.2 <= result.duration_seconds < TEST_LIMITS.wall_seconds


def test_figure_png_is_decodable(run):
    """The PNG bytes are raw bytes, not base64 text."""
    result = run("import matplotlib.pyplot as plt\ndef f():\n    plt.plot([1])\n", graphics=True)
    assert not result.figures[0].png.startswith(base64.b64encode(b"\x89PNG")[:4])
