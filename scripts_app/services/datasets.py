"""Datasets: named tables users upload (CSV or Parquet), stored as Parquet in Django's storage.

Any web or worker process reads them through the storage, so a query runs wherever the run does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import IO

import duckdb
import pyarrow.parquet as pq
from django.core.files import File
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet

from scripts_app.errors import BadRequest, ErrorCode, NotFound, OmlError, PermissionDenied
from scripts_app.models import SCRIPT_NAME_PATTERN, Dataset, DatasetGrant
from scripts_app.roles import is_admin, is_read_only, sees_everything
from scripts_app.runner.validation import storable_text
from scripts_app.services import audit, shares

FORMATS = ("csv", "parquet")
READ_ONLY = "Auditors have read-only access: they do not upload, change, share or delete datasets."
PARQUET_MAGIC = b"PAR1"


class DatasetExists(OmlError):
    code = ErrorCode.SCRIPT_EXISTS
    status = 409


def validate_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(SCRIPT_NAME_PATTERN, name):
        raise BadRequest(f"Invalid dataset name {name!r}: use 1 to 128 letters, digits, '_', '.' or '-'.")


def guess_format(filename: str, head: bytes) -> str:
    if head.startswith(PARQUET_MAGIC) or filename.lower().endswith((".parquet", ".pq")):
        return "parquet"
    return "csv"


def _to_parquet(upload: IO[bytes], *, filename: str, file_format: str | None, workdir: str) -> tuple[str, str]:
    """Write the upload to disk and convert it to a normalised Parquet file; returns (path, format)."""
    source = os.path.join(workdir, "upload")
    with open(source, "wb") as target:
        shutil.copyfileobj(upload, target)
    with open(source, "rb") as check:
        head = check.read(4)
    file_format = file_format or guess_format(filename, head)
    if file_format not in FORMATS:
        raise BadRequest(f"format must be one of {', '.join(FORMATS)}.")
    output = os.path.join(workdir, "data.parquet")
    reader = "read_parquet(?)" if file_format == "parquet" else "read_csv(?, header = true)"
    connection = duckdb.connect(
        ":memory:",
        config={"autoload_known_extensions": False, "python_enable_replacements": False, "threads": 2},
    )
    try:
        # Only this upload and its output are readable or writable while the file is converted.
        connection.execute("SET allowed_paths = ?", [[source, output]])
        connection.execute("SET enable_external_access = false")
        relation = connection.sql(f"SELECT * FROM {reader}", params=[source])
        relation.to_parquet(output, compression="zstd")
    except duckdb.Error as error:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BadRequest(f"The file cannot be read as {file_format.upper()}: {text}") from None
    finally:
        connection.close()
    return output, file_format


def _describe(path: str) -> dict:
    connection = duckdb.connect(":memory:")
    try:
        relation = connection.read_parquet(path)
        schema = [
            {"name": name, "type": str(kind)} for name, kind in zip(relation.columns, relation.types, strict=True)
        ]
    finally:
        connection.close()
    for position, column in enumerate(schema, start=1):
        if storable_text(column["name"]) != column["name"]:
            # The schema is stored as JSON: PostgreSQL's jsonb holds no NUL, no driver a lone surrogate.
            raise OmlError(
                f"Column {position}'s name holds a NUL character or a lone surrogate: rename it.",
                code=ErrorCode.UNSUPPORTED_VALUE,
            )
    return {
        "schema": schema,
        "column_count": len(schema),
        "row_count": pq.ParquetFile(path).metadata.num_rows,
        "size_bytes": os.path.getsize(path),
    }


def _store(dataset: Dataset, upload: IO[bytes], *, filename: str, file_format: str | None) -> None:
    workdir = tempfile.mkdtemp(prefix="omlweb-upload-")
    try:
        path, dataset.source_format = _to_parquet(upload, filename=filename, file_format=file_format, workdir=workdir)
        described = _describe(path)
        # Datasets count against the owner's storage quota, with their runs' results and figures.
        shares.dataset_size_change(dataset=dataset, size=described["size_bytes"])
        for field, value in described.items():
            setattr(dataset, field, value)
        old = dataset.file.name if dataset.file else None
        with open(path, "rb") as parquet:
            dataset.file.save("data.parquet", File(parquet), save=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if old:
        # After the new file is in place; a query already reading the old one has it open.
        transaction.on_commit(lambda: dataset.file.storage.delete(old))


def dataset_create(
    *,
    owner,
    name: str,
    upload: IO[bytes],
    filename: str = "",
    file_format: str | None = None,
    description: str = "",
    is_global: bool = False,
    overwrite: bool = False,
) -> tuple[Dataset, bool]:
    """A new dataset from a CSV or Parquet upload; with overwrite, an existing one's data is replaced.

    Returns the dataset and whether it was created.
    """
    if is_read_only(owner):
        raise PermissionDenied(READ_ONLY)
    validate_name(name)
    if is_global and not is_admin(owner):
        raise PermissionDenied("Only admins may make a dataset global.")
    with transaction.atomic():
        # The owner's lock before the dataset's row, in the order a deletion takes them.
        shares.lock_user(owner.pk)
        existing = Dataset.objects.select_for_update().filter(owner=owner, name__iexact=name).first()
        if existing is not None:
            if not overwrite:
                raise DatasetExists(f"Dataset {existing.name!r} already exists; send overwrite=true to replace it.")
            before = audit.dataset_state(existing)
            _store(existing, upload, filename=filename, file_format=file_format)
            if description:
                existing.description = description
            existing.is_global = is_global
            existing.save()
            audit.record(
                "dataset.replace", obj=existing, actor=owner, before=before, after=audit.dataset_state(existing)
            )
            return existing, False
        dataset = Dataset(owner=owner, name=name, description=description, is_global=is_global)
        _store(dataset, upload, filename=filename, file_format=file_format)
        try:
            with transaction.atomic():
                dataset.save()
        except IntegrityError:
            dataset.file.delete(save=False)
            raise DatasetExists(f"Dataset {name!r} already exists.") from None
        audit.record("dataset.create", obj=dataset, actor=owner, after=audit.dataset_state(dataset))
    return dataset, True


def dataset_replace(*, dataset: Dataset, upload: IO[bytes], filename: str = "", file_format: str | None = None):
    """Replace a dataset's data; its name, sharing and grants stay."""
    before = audit.dataset_state(dataset)
    with transaction.atomic():
        _store(dataset, upload, filename=filename, file_format=file_format)
        dataset.save()
        audit.record("dataset.replace", obj=dataset, before=before, after=audit.dataset_state(dataset))
    return dataset


def dataset_update(*, dataset: Dataset, by, description: str | None = None, is_global: bool | None = None) -> Dataset:
    if is_global is not None and is_global != dataset.is_global and not is_admin(by):
        raise PermissionDenied("Only admins may make a dataset global or private.")
    before = audit.dataset_state(dataset)
    if description is not None:
        dataset.description = description
    if is_global is not None:
        dataset.is_global = is_global
    with transaction.atomic():
        dataset.save()
        after = audit.dataset_state(dataset)
        if after != before:
            action = "dataset.update"
            if before["is_global"] != after["is_global"] and before["description"] == after["description"]:
                action = "dataset.make_global" if dataset.is_global else "dataset.make_private"
            audit.record(action, obj=dataset, actor=by, before=before, after=after)
    return dataset


@transaction.atomic
def dataset_delete(*, dataset: Dataset) -> None:
    name = dataset.file.name
    storage = dataset.file.storage
    # The owner's lock before the audit chain's, in the order a run's recording takes them.
    shares.dataset_deleted(dataset=dataset)
    audit.record("dataset.delete", obj=dataset, before=audit.dataset_state(dataset))
    dataset.delete()
    if name:
        transaction.on_commit(lambda: storage.delete(name))


@transaction.atomic
def dataset_grant(*, dataset: Dataset, grantee) -> None:
    _, created = DatasetGrant.objects.get_or_create(dataset=dataset, grantee=grantee)
    if created:
        audit.record("dataset.grant", obj=dataset, after={"grantee": grantee.get_username(), "grantee_id": grantee.pk})


@transaction.atomic
def dataset_revoke(*, dataset: Dataset, grantee) -> None:
    deleted, _ = DatasetGrant.objects.filter(dataset=dataset, grantee=grantee).delete()
    if deleted:
        audit.record(
            "dataset.revoke", obj=dataset, before={"grantee": grantee.get_username(), "grantee_id": grantee.pk}
        )


def datasets_readable_by(user) -> QuerySet[Dataset]:
    """The caller's own datasets, the global ones, and those granted to the caller."""
    datasets = Dataset.objects.select_related("owner")
    if sees_everything(user):
        return datasets
    return datasets.filter(Q(owner=user) | Q(is_global=True) | Q(grants__grantee=user)).distinct()


def dataset_resolve(*, caller, name: str, owner_name: str | None = None) -> Dataset:
    """A dataset the caller may read: their own by name, or owner_name's when shared with them."""
    datasets = datasets_readable_by(caller).filter(name__iexact=name)
    if owner_name is None:
        dataset = datasets.filter(owner=caller).first() or datasets.filter(is_global=True).first()
    else:
        dataset = datasets.filter(owner__username=owner_name).first()
    if dataset is None:
        # The same answer for "missing" and "private": a private dataset's name is not disclosed.
        raise NotFound(f"Dataset {name!r} not found.")
    return dataset


def own_dataset(*, owner, name: str) -> Dataset:
    """The caller's own dataset, to change, share or delete: never for an auditor, even one who owns datasets."""
    if is_read_only(owner):
        raise PermissionDenied(READ_ONLY)
    dataset = Dataset.objects.select_related("owner").filter(owner=owner, name__iexact=name).first()
    if dataset is None:
        raise NotFound(f"Dataset {name!r} not found.")
    return dataset


def dataset_preview(*, dataset: Dataset, rows: int = 20) -> list[dict]:
    """The first rows, as JSON records."""
    with dataset.file.open("rb") as file:
        parquet = pq.ParquetFile(file)
        batches = parquet.iter_batches(batch_size=max(1, rows))
        batch = next(batches, None)
        if batch is None:
            return []
        frame = batch.slice(0, rows).to_pandas()
    return _records(frame)


def _records(frame) -> list[dict]:
    return json.loads(frame.to_json(orient="records", date_format="iso", double_precision=15))
