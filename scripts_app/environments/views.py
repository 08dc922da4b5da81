"""Environment pages, for admins: the list, a form to define one, and its page with the live build log."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import select_template
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from scripts_app import roles
from scripts_app.environments.builder import human_size
from scripts_app.environments.interpreters import service_python
from scripts_app.forms import ServiceForm, choice_field
from scripts_app.models import Environment, Run
from scripts_app.services import environments
from scripts_app.views.base import refusals_as_messages


def base_template() -> str:
    # The site's base.html when the pages of issue 5 are there; a minimal one of our own before.
    return select_template(["base.html", "environments/_base.html"]).template.name


def _require_admin(request: HttpRequest) -> None:
    if not roles.is_admin(request.user):
        raise PermissionDenied("Only admins manage environments.")


class EnvironmentForm(ServiceForm):
    name = forms.CharField(max_length=64, help_text="Letters, digits, '_', '.' and '-'. Runs give it as envName.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    packages = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false", "placeholder": "seaborn\nscikit-learn==1.7.2"}),
        help_text="One requirement per line, pins allowed (requirements.txt syntax, no options). "
        "numpy, pandas, matplotlib and pyarrow are always installed, at the service's versions.",
    )
    python = forms.ChoiceField(label="Python")

    def __init__(self, *args, editing: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        choices = []
        for interpreter in environments.available_interpreters():
            label = interpreter.label
            if not interpreter.world_readable:
                label += " (not readable by other users: bubblewrap isolation only)"
            choices.append((interpreter.path, label))
        choice_field(self, "python").choices = choices
        if editing:
            self.fields["name"].disabled = True


def _rows() -> list[dict]:
    default = environments.default_summary()
    rows = [{**default, "status": "READY", "python": environments.default_info()["python"], "is_default": True}]
    for environment in Environment.objects.all():
        rows.append(
            {
                "name": environment.name,
                "description": environment.description,
                "status": environment.status,
                "python": f"{environment.python} ({environment.python_version})",
                "size": human_size(environment.size_bytes) if environment.size_bytes is not None else "",
                "number_of_installed_packages": environment.package_count,
                "is_default": False,
            }
        )
    return rows


@require_http_methods(["GET", "POST"])
@login_required
def environment_list(request: HttpRequest) -> HttpResponse:
    _require_admin(request)
    form = EnvironmentForm(request.POST or None, initial={"python": service_python()})
    if request.method == "POST" and form.is_valid():
        environment = form.submit(lambda: environments.environment_create(by=request.user, **form.cleaned_data))
        if environment is not None:
            messages.success(request, f"Build of environment {environment.name} queued.")
            return redirect("environments:detail", name=environment.name)
    return render(
        request,
        "environments/list.html",
        {"base_template": base_template(), "rows": _rows(), "form": form},
        status=422 if form.errors else 200,
    )


def _environment_or_404(name: str) -> Environment:
    environment = Environment.objects.select_related("lock", "created_by").filter(name=name).first()
    if environment is None:
        raise Http404("No such environment.")
    return environment


@require_http_methods(["GET", "POST"])
@login_required
def environment_detail(request: HttpRequest, name: str) -> HttpResponse:
    _require_admin(request)
    environment = _environment_or_404(name)
    if getattr(request, "htmx", False) and request.GET.get("part") == "build":
        # The live log: polled while the build runs, then one last answer that stops the polling.
        context = {"environment": environment, "build_lost": environments.build_seems_lost(environment)}
        response = render(request, "environments/detail.html#build", context)
        if environment.status != Environment.Status.BUILDING or context["build_lost"]:
            return HttpResponseStopPolling(response.content)
        return response
    initial = {
        "name": environment.name,
        "description": environment.description,
        "packages": environment.packages,
        "python": environment.python,
    }
    form = EnvironmentForm(request.POST or None, initial=initial, editing=True)
    if request.method == "POST" and form.is_valid():
        updated = form.submit(
            lambda: environments.environment_update(
                environment=environment,
                description=form.cleaned_data["description"],
                packages=form.cleaned_data["packages"],
                python=form.cleaned_data["python"],
            )
        )
        if updated is not None:
            environment = updated
            messages.success(request, f"Environment {environment.name} saved.")
            return redirect("environments:detail", name=environment.name)
    in_use = Run.objects.filter(environment=environment, status__in=(Run.Status.QUEUED, Run.Status.RUNNING)).count()
    context = {
        "base_template": base_template(),
        "environment": environment,
        "build_lost": environments.build_seems_lost(environment),
        "form": form,
        "in_use": in_use,
        "size": human_size(environment.size_bytes) if environment.size_bytes is not None else None,
        "recent_runs": Run.objects.filter(environment=environment).select_related("user")[:10],
    }
    return render(request, "environments/detail.html", context, status=422 if form.errors else 200)


@require_POST
@login_required
def environment_rebuild(request: HttpRequest, name: str) -> HttpResponse:
    _require_admin(request)
    environment = environments.environment_rebuild(environment=_environment_or_404(name))
    messages.success(request, f"Rebuild of environment {environment.name} queued.")
    return redirect("environments:detail", name=environment.name)


@require_POST
@login_required
@refusals_as_messages(back_to=lambda name: reverse("environments:detail", kwargs={"name": name}))
def environment_delete(request: HttpRequest, name: str) -> HttpResponse:
    _require_admin(request)
    environment = _environment_or_404(name)
    environments.environment_delete(environment=environment)
    messages.success(request, f"Environment {name} deleted.")
    return redirect("environments:list")
