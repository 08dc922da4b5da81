"""A run's figures: stored (file and row) before the run is reported finished, answered as stored, and
a figure that cannot be stored fails the run with nothing of it kept (issue #11, the figure's path)."""

from __future__ import annotations

import base64
import json

from django.core.files.storage import FileSystemStorage
from django.db import connection
from django.test.utils import CaptureQueriesContext

from scripts_app.errors import ErrorCode
from scripts_app.models import Run, RunImage, StorageUsage
from tests.api.test_jobs import job_id_of, published, run_job, submit  # noqa: F401 - fixtures
from tests.factories import make_script

FIGURES = """
import matplotlib.pyplot as plt

def figures(n=3):
    for i in range(n):
        plt.figure()
        plt.plot([1, 2, 3], [i, 2, 1])
        plt.title('figure %d' % i)
    print('drawn')
    return {'n': n}
"""


def do_eval(api, body=None):
    return api.post("/oml/api/py-scripts/v1/do-eval/figures", {"graphicsFlag": True, **(body or {})}, format="json")


def stored_files(settings, run_id) -> list[str]:
    folder = settings.MEDIA_ROOT / "runs" / str(run_id)
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_the_answer_is_the_stored_files_byte_for_byte(alice, alice_api):
    """Each IMAGE decodes to its stored file's bytes, in the rows' order and with their titles."""
    make_script(alice, "figures", FIGURES)
    response = do_eval(alice_api)
    assert response.status_code == 200
    result = response.json()["result"]
    run = Run.objects.get()
    images = list(RunImage.objects.filter(run=run).order_by("position"))
    assert [element["ID"] for element in result] == [image.position for image in images] == [1, 2, 3]
    assert [element["TITLE"] for element in result] == [image.title for image in images]
    for element, image in zip(result, images, strict=True):
        with image.image.open("rb") as file:
            assert base64.b64decode(element["IMAGE"], validate=True) == file.read()
        assert json.loads(element["DATA"]) == {"n": 3}


def test_the_answer_reads_no_figure_back(alice, alice_api, monkeypatch):
    """The sync answer encodes the bytes the run brought back, which were just stored: it neither
    selects the rows nor opens the files again (it did both before)."""
    make_script(alice, "figures", FIGURES)

    def no_reading(*args, **kwargs):
        raise AssertionError("a stored figure was read back")

    monkeypatch.setattr(FileSystemStorage, "_open", no_reading)
    with CaptureQueriesContext(connection) as queries:
        response = do_eval(alice_api)
    assert response.status_code == 200
    assert len(response.json()["result"]) == 3
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT") and "runimage" in q["sql"]]
    assert reads == []
    inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT") and "runimage" in q["sql"]]
    assert len(inserts) == 1, "the three rows go in one INSERT"


def test_a_job_result_reads_the_stored_files(alice, alice_api, published, run_job, settings):  # noqa: F811
    """A job's result is answered by another request: from the rows and files, the same bytes."""
    make_script(alice, "figures", FIGURES)
    job_id = job_id_of(submit(alice_api, "figures", {"graphicsFlag": True}))
    assert run_job(job_id).status == Run.Status.SUCCEEDED
    result = alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}/result").json()["result"]
    assert stored_files(settings, job_id) == ["1.png", "2.png", "3.png"]
    for element in result:
        stored = (settings.MEDIA_ROOT / "runs" / job_id / f"{element['ID']}.png").read_bytes()
        assert base64.b64decode(element["IMAGE"], validate=True) == stored
    assert [element["TITLE"] for element in result] == ["figure 0", "figure 1", "figure 2"]


def failing_second_figure(monkeypatch):
    """The storage refuses the second file written (a full disk, say)."""
    original = FileSystemStorage._save
    written = []

    def save(self, name, content):
        if len(written) == 1:
            raise OSError(28, "No space left on device")
        written.append(name)
        return original(self, name, content)

    monkeypatch.setattr(FileSystemStorage, "_save", save)
    return written


def test_a_figure_that_cannot_be_stored_fails_the_run(alice, alice_api, monkeypatch, settings):
    """The second of three files cannot be written: the answer is a 500, the run FAILED (not left
    RUNNING, which held the user's share until the reaper came), and nothing of it is kept: no row, no
    file (the first one written is removed), no value, nothing counted against the quota."""
    make_script(alice, "figures", FIGURES)
    written = failing_second_figure(monkeypatch)
    response = do_eval(alice_api)
    assert response.status_code == 500
    assert response.json()["errorCode"] == ErrorCode.INTERNAL
    assert "could not store figure 2" in response.json()["errorMessage"]
    assert "No space" not in response.json()["errorMessage"], "the server's error is logged, not answered"
    run = Run.objects.get()
    assert run.status == Run.Status.FAILED
    assert run.error_code == ErrorCode.INTERNAL
    assert run.result_json is None
    assert run.stored_bytes == 0
    assert len(written) == 1
    assert not RunImage.objects.exists()
    assert stored_files(settings, run.pk) == []
    assert StorageUsage.objects.filter(user=alice, used_bytes__gt=0).count() == 0
    # The user's share is free again: the next run (with the disk back) succeeds.
    monkeypatch.undo()
    again = do_eval(alice_api)
    assert again.status_code == 200
    assert len(again.json()["result"]) == 3


def test_a_job_whose_figure_cannot_be_stored_fails(alice, alice_api, published, run_job, monkeypatch, settings):  # noqa: F811
    """The same in a worker: the job ends FAILED with nothing kept, and its result is the error."""
    make_script(alice, "figures", FIGURES)
    job_id = job_id_of(submit(alice_api, "figures", {"graphicsFlag": True}))
    failing_second_figure(monkeypatch)
    run = run_job(job_id)
    assert run.status == Run.Status.FAILED
    assert "could not store figure 2" in run.error_message
    assert not RunImage.objects.exists()
    assert stored_files(settings, job_id) == []
    answer = alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}/result")
    assert answer.status_code >= 400
    assert "IMAGE" not in answer.content.decode()


def test_an_outcome_that_does_not_commit_leaves_no_file(alice, alice_api, monkeypatch, settings):
    """The figures' files are written inside the outcome's transaction: when that does not commit (here
    the rows' INSERT fails), the files written for it are removed and the run is not reported finished."""
    make_script(alice, "figures", FIGURES)

    def broken_insert(*args, **kwargs):
        raise RuntimeError("the database refused the rows")

    monkeypatch.setattr(RunImage.objects, "bulk_create", broken_insert)
    assert do_eval(alice_api).status_code == 500
    run = Run.objects.get()
    assert run.status != Run.Status.SUCCEEDED
    assert not RunImage.objects.exists()
    assert stored_files(settings, run.pk) == []


def test_the_records_text_is_what_dumps_writes():
    """The answer's records are written with each IMAGE put in as it is: the same text as `dumps`,
    for hostile titles and values and a record without an image."""
    from scripts_app.api.wire import ImageRecord, dump_image_records, dumps

    data = json.dumps({"caf\u00e9": '\u2603 "quoted" \\ \n', "n": [1, 2.5, None]}, ensure_ascii=False)
    titles = [None, "", 'a "quote" \\ and \u2603', "line\nbreak", "\u2028"]
    records = [
        ImageRecord(IMAGE=base64.b64encode(bytes([i]) * (i + 4)).decode(), DATA=data, TITLE=title, ID=i + 1)
        for i, title in enumerate(titles)
    ]
    records.append(ImageRecord(IMAGE=None, DATA="null", TITLE=None, ID=7))
    assert dump_image_records(records) == dumps(records)
    assert json.loads(dump_image_records(records)) == records
    assert dump_image_records([]) == dumps([])
