"""Dataset pages: upload CSV or Parquet, list, preview with column types, replace, share, delete."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from scripts_app import roles
from scripts_app.forms import DatasetReplaceForm, DatasetUploadForm, GrantForm
from scripts_app.models import Dataset
from scripts_app.services import datasets as dataset_services
from scripts_app.services.queries import sql_name
from scripts_app.views.base import HtmxHttpRequest, refusals_as_messages, require_writer

PREVIEW_ROWS = 20


def visible_dataset_or_404(request: HttpRequest, pk: UUID) -> Dataset:
    """The dataset, if the user may read it; else 404, so a private dataset's existence stays private."""
    dataset = dataset_services.datasets_readable_by(request.user).filter(pk=pk).first()
    if dataset is None:
        raise Http404("No such dataset.")
    return dataset


def own_dataset_or_403(request: HttpRequest, pk: UUID) -> Dataset:
    dataset = visible_dataset_or_404(request, pk)
    # An auditor changes nothing, not even a dataset they uploaded before they became one.
    require_writer(request)
    if dataset.owner_id != request.user.pk:
        raise PermissionDenied("Only the owner may change a dataset.")
    return dataset


@require_http_methods(["GET", "POST"])
@login_required
def dataset_list(request: HtmxHttpRequest) -> HttpResponse:
    may_make_global = roles.can_make_global(request.user)
    form = DatasetUploadForm(request.POST or None, request.FILES or None, may_make_global=may_make_global)
    if request.method == "POST":
        require_writer(request)
        if form.is_valid():
            upload = form.cleaned_data["file"]
            outcome = form.submit(
                lambda: dataset_services.dataset_create(
                    owner=request.user,
                    name=form.cleaned_data["name"],
                    upload=upload,
                    filename=upload.name,
                    description=form.cleaned_data["description"],
                    is_global=form.cleaned_data.get("is_global", False),
                    overwrite=form.cleaned_data["overwrite"],
                )
            )
            if outcome is not None:
                dataset, created = outcome
                verb = "Uploaded" if created else "Replaced"
                messages.success(request, f"{verb} {dataset.name}: {dataset.row_count} rows.")
                return redirect("web:dataset_detail", dataset.pk)
    datasets = dataset_services.datasets_readable_by(request.user).order_by("name", "owner__username")
    rows = [(dataset, sql_name(dataset, caller=request.user)) for dataset in datasets]
    return render(
        request,
        "datasets/list.html",
        {"rows": rows, "form": form, "may_upload": not roles.is_read_only(request.user)},
        status=422 if form.errors else 200,
    )


@require_GET
@login_required
def dataset_detail(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    dataset = visible_dataset_or_404(request, pk)
    preview = dataset_services.dataset_preview(dataset=dataset, rows=PREVIEW_ROWS)
    columns = [column["name"] for column in dataset.schema]
    is_owner = dataset.owner_id == request.user.pk
    return render(
        request,
        "datasets/detail.html",
        {
            "dataset": dataset,
            "sql_name": sql_name(dataset, caller=request.user),
            "columns": dataset.schema,
            "preview": [[row.get(name) for name in columns] for row in preview],
            "is_owner": is_owner,
            "grants": dataset.grants.select_related("grantee").order_by("grantee__username") if is_owner else [],
            "replace_form": DatasetReplaceForm(),
            "grant_form": GrantForm(),
        },
    )


@require_POST
@login_required
@refusals_as_messages(back_to=lambda pk: reverse("web:dataset_detail", args=[pk]))
def dataset_replace(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    dataset = own_dataset_or_403(request, pk)
    form = DatasetReplaceForm(request.POST, request.FILES)
    if not form.is_valid():
        messages.error(request, "Choose a CSV or Parquet file.")
        return redirect("web:dataset_detail", dataset.pk)
    upload = form.cleaned_data["file"]
    dataset_services.dataset_replace(dataset=dataset, upload=upload, filename=upload.name)
    messages.success(request, f"Replaced the data of {dataset.name}: {dataset.row_count} rows.")
    return redirect("web:dataset_detail", dataset.pk)


@require_POST
@login_required
def dataset_grant(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    dataset = own_dataset_or_403(request, pk)
    form = GrantForm(request.POST)
    if form.is_valid():
        grantee = form.cleaned_data["username"]
        if grantee.pk == dataset.owner_id:
            messages.error(request, "The owner may already query the dataset.")
        else:
            dataset_services.dataset_grant(dataset=dataset, grantee=grantee)
            messages.success(request, f"{grantee.username} may now query {dataset.name}.")
    else:
        messages.error(request, " ".join(str(message) for message in form.errors["username"]))
    return redirect("web:dataset_detail", dataset.pk)


@require_POST
@login_required
def dataset_revoke(request: HtmxHttpRequest, pk: UUID, user_id: int) -> HttpResponse:
    dataset = own_dataset_or_403(request, pk)
    grantee = get_object_or_404(get_user_model(), pk=user_id)
    dataset_services.dataset_revoke(dataset=dataset, grantee=grantee)
    messages.success(request, f"{grantee.username} may no longer query {dataset.name}.")
    return redirect("web:dataset_detail", dataset.pk)


@require_http_methods(["GET", "POST"])
@login_required
def dataset_delete(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    """Ask first (GET), delete on the confirmation's POST: one stray click must not lose a dataset."""
    dataset = own_dataset_or_403(request, pk)
    if request.method == "POST":
        name = dataset.name
        dataset_services.dataset_delete(dataset=dataset)
        messages.success(request, f"Deleted the dataset {name}.")
        return redirect("web:dataset_list")
    return render(request, "datasets/confirm_delete.html", {"dataset": dataset})
