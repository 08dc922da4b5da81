"""Oracle's wire shapes: the bodies the API answers for runs and jobs, and Oracle's way of writing times.

The services keep runs as rows; this module is where a run becomes what an OML4Py client reads.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from django.http import HttpResponse
from django.utils import timezone

from scripts_app.errors import ErrorCode, OmlError
from scripts_app.models import Run, RunImage

JOB_RUNNING = "job is still running"


class ImageRecord(TypedDict):
    """One figure (or the value alone, IMAGE None) of a run with graphicsFlag."""

    IMAGE: str | None
    DATA: str
    TITLE: str | None
    ID: int


class JobStatus(TypedDict):
    """GET jobs/{jobId} while the job is queued or running (202)."""

    createdDate: str
    status: str
    elapsedTime: str
    # Ours: the attempt running (or next to run) it.
    attempt: int


class JobRow(TypedDict):
    """One job in GET v2/jobs: Oracle's four keys, then ours."""

    job_id: str
    createdDate: str
    status: str
    elapsedTime: str
    state: str
    scriptName: str
    owner: str
    service: str
    comments: str
    attempt: int


def oracle_date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def hms(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def elapsed(run: Run, now: datetime | None = None) -> timedelta:
    end = run.finished_at or now or timezone.now()
    return max(end - run.created_at, timedelta(0))


def oml_result_response(run: Run, *, comments: str = "") -> HttpResponse:
    """The body OML answers for a finished run, {"result": ...}, or raises the run's error.

    The run's stored JSON text is spliced in as it is: the value the run's process checked is never
    decoded and encoded again on its way out (docs/runner.md). `comments`: v2's job result adds the
    job's comments."""
    if run.status != Run.Status.SUCCEEDED:
        raise run_error(run)
    if not run.graphics:
        result = run.result_json if run.result_json is not None else "null"
    elif run.kind != Run.Kind.DO_EVAL:
        records = apply_image_records(run)
        result = dump_image_records(records) if isinstance(records, list) else dumps(records)
    else:
        result = dump_image_records(do_eval_image_records(run))
    tail = f',"comments":{dumps(comments)}}}' if comments else "}"
    return HttpResponse(f'{{"result":{result}{tail}'.encode(), content_type="application/json")


def dumps(value: Any) -> str:
    """JSON as the API's renderer writes it (DRF's JSONRenderer: compact, UTF-8, strict)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dump_image_records(records: list[ImageRecord]) -> str:
    """`dumps(records)`, with each IMAGE put in as it is (base64 needs no escaping; a figure's 45 KB
    through the encoder cost about 0.1 ms) and a DATA text the records share encoded once."""
    parts, last_data, last_text = [], None, ""
    for record in records:
        image, data = record["IMAGE"], record["DATA"]
        if data is not last_data:
            last_data, last_text = data, dumps(data)
        image_text = "null" if image is None else f'"{image}"'
        parts.append(
            f'{{"IMAGE":{image_text},"DATA":{last_text},"TITLE":{dumps(record["TITLE"])},"ID":{int(record["ID"])}}}'
        )
    return "[" + ",".join(parts) + "]"


def do_eval_image_records(run: Run) -> list[ImageRecord]:
    """A do-eval run with graphicsFlag: one record per figure, each with the value's JSON text as DATA."""
    data = run.result_json if run.result_json is not None else "null"
    images = _images(run)
    if not images:
        return [ImageRecord(IMAGE=None, DATA=data, TITLE=None, ID=1)]
    return [ImageRecord(IMAGE=_base64(png), DATA=data, TITLE=title, ID=position) for position, title, png in images]


def apply_image_records(run: Run) -> list[ImageRecord] | dict[str, list[ImageRecord]]:
    """An apply run with graphicsFlag: image records per piece, keyed per group for group-apply."""
    images = {position: (title, png) for position, title, png in _images(run)}

    def records(entries: list[dict]) -> list[ImageRecord]:
        out: list[ImageRecord] = []
        for entry in entries:
            data = json.dumps(entry.get("value"))
            figures: list[tuple[str | None, bytes] | None] = [
                images[p] for p in entry.get("figures", []) if p in images
            ] or [None]
            for figure in figures:
                out.append(
                    ImageRecord(
                        IMAGE=_base64(figure[1]) if figure else None,
                        DATA=data,
                        TITLE=figure[0] if figure else None,
                        ID=len(out) + 1,
                    )
                )
        return out

    if run.kind == Run.Kind.GROUP_APPLY:
        return {entry["key"]: records([entry]) for entry in run.pieces}
    return records(run.pieces)


def _images(run: Run) -> list[tuple[int, str | None, bytes]]:
    """The run's figures in position order: (position, title, PNG bytes). A run this process has just
    recorded carries what it stored (`Run.kept_images`, written and committed before it is answered);
    any other is read from its rows and files."""
    if run.kept_images is not None:
        return [(image.position, image.title, image.png) for image in run.kept_images]
    # Ordered by position alone: the model's ordering starts with the run, which joins the run's table.
    return [(image.position, image.title, _read(image)) for image in run.images.order_by("position")]


def _read(image: RunImage) -> bytes:
    with image.image.open("rb") as file:
        return file.read()


def _base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def run_error(run: Run) -> OmlError:
    """The error a failed run answers with: Oracle's errorMessage carries the script's traceback too."""
    message = run.traceback or run.error_message or f"The run ended {run.status}."
    if run.traceback and run.error_message and run.error_message not in run.traceback:
        message = f"{run.error_message}\n{run.traceback}"
    return OmlError(message, code=ErrorCode(run.error_code or ErrorCode.INTERNAL), status=400)


def job_status(run: Run, *, attempt: int) -> JobStatus:
    """A job still queued or running, as GET jobs/{jobId} answers it (202)."""
    return {
        "createdDate": oracle_date(run.created_at),
        "status": JOB_RUNNING,
        "elapsedTime": hms(elapsed(run)),
        # Ours: above 1, its worker died and it started again from the beginning: delivery is at least
        # once (docs/architecture.md).
        "attempt": attempt,
    }


def job_row(run: Run, now: datetime, *, attempt: int) -> JobRow:
    """One job in GET v2/jobs: Oracle's four keys, then ours."""
    return {
        "job_id": str(run.pk),
        "createdDate": oracle_date(run.created_at),
        "status": "FINISH" if run.is_finished else JOB_RUNNING,
        "elapsedTime": hms(elapsed(run, now)),
        "state": run.status,
        "scriptName": run.script_name,
        "owner": run.user.get_username(),
        "service": run.service,
        "comments": run.comments,
        "attempt": attempt,
    }
