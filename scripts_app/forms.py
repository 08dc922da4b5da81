"""The forms of the pages. They validate input; the services decide and change things."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from django import forms
from django.contrib.auth import get_user_model

from scripts_app import roles
from scripts_app.errors import ErrorCode, OmlError
from scripts_app.models import (
    SCRIPT_NAME_PATTERN,
    VERSION_MESSAGE_MAX,
    NotificationRule,
    Run,
    Schedule,
    Script,
    ServiceLevel,
)
from scripts_app.runner.validation import loads_strict
from scripts_app.services.environments import DEFAULT_ENVIRONMENT
from scripts_app.services.pipeline import ApplyInput, RunRequest
from scripts_app.signature import Parameter, Signature

T = TypeVar("T")


class ServiceForm(forms.Form):
    """A page form whose submission a service carries out. The pages' one mapping of a service's refusal
    (an OmlError) onto a form: `submit` puts it next to the field it is about."""

    def submit(self, action: Callable[[], T]) -> T | None:
        """`action()`; or None when the service refuses it, its message then this form's error."""
        try:
            return action()
        except OmlError as error:
            self.add_error(self.refusal_field(error), error.message)
            return None

    def refusal_field(self, error: OmlError) -> str | None:
        """The field a refusal is about; None: the form as a whole."""
        return None


# Scripts


# What a new script starts from: the conventions a first script needs, in a script that runs as it is.
NEW_SCRIPT_TEMPLATE = '''import matplotlib.pyplot as plt
import pandas as pd


def main(rows: int = 5):
    """A run calls the function named like the script, else the first one, with the run's parameters.

    Figures still open at the end come back as PNG images (graphics on); a DataFrame comes back as a
    table; print() goes to the run's output, never into the result.
    """
    frame = pd.DataFrame({"x": range(rows), "square": [i * i for i in range(rows)]})
    frame.plot(x="x", y="square", title="Squares")
    return frame
'''


def choice_field(form: forms.BaseForm, name: str) -> forms.ChoiceField:
    """The form's field `name`, a ChoiceField (`form.fields` holds them as plain Fields)."""
    field = form.fields[name]
    if not isinstance(field, forms.ChoiceField):
        raise TypeError(f"{type(form).__name__}.{name} is not a ChoiceField")
    return field


class ScriptForm(ServiceForm):
    name = forms.RegexField(
        regex=SCRIPT_NAME_PATTERN,
        max_length=128,
        help_text="Letters, digits, '_', '.' or '-'. The run calls the function of this name, else the first one.",
        error_messages={"invalid": "Use 1 to 128 letters, digits, '_', '.' or '-'."},
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    source = forms.CharField(
        strip=False,
        widget=forms.Textarea(attrs={"rows": 18, "class": "code", "spellcheck": "false", "data-editor": "python"}),
        label="Source",
    )
    message = forms.CharField(
        required=False,
        max_length=VERSION_MESSAGE_MAX,
        label="Version message",
        help_text="What changed (optional); shown in the versions list.",
    )
    is_global = forms.BooleanField(required=False, label="Global: every user may read and run it")
    env_name = forms.ChoiceField(
        required=False,
        label="Environment",
        help_text="Where its runs go when they name none (the run form and the API's envName may still choose).",
    )

    def __init__(
        self,
        *args,
        may_make_global: bool = False,
        renaming: bool = True,
        environments: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        choice_field(self, "env_name").choices = [("", "default")] + [(name, name) for name in environments or []]
        if not may_make_global:
            del self.fields["is_global"]
        if not renaming:
            # A script is found by name through the API: renaming it would break its callers.
            self.fields["name"].disabled = True
        self.error_line: int | None = None

    def refusal_field(self, error: OmlError) -> str | None:
        """A source error goes next to the source, with its line; a taken name next to the name."""
        if error.code == ErrorCode.INVALID_SCRIPT:
            self.error_line = getattr(error, "line", None)
            return "source"
        if error.code == ErrorCode.SCRIPT_EXISTS:
            return "name"
        return None


class GrantForm(forms.Form):
    username = forms.CharField(max_length=150, label="User name")

    def clean_username(self) -> Any:
        username = self.cleaned_data["username"]
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise forms.ValidationError(f"There is no active user {username!r}.")
        return user


class DatasetUploadForm(ServiceForm):
    name = forms.RegexField(
        regex=SCRIPT_NAME_PATTERN,
        max_length=128,
        help_text="Letters, digits, '_', '.', '-'. Queries name it like this (ignoring case).",
        error_messages={"invalid": "Use 1 to 128 letters, digits, '_', '.' or '-'."},
    )
    file = forms.FileField(help_text="CSV with a header row, or Parquet.")
    description = forms.CharField(required=False, max_length=4000, widget=forms.Textarea(attrs={"rows": 2}))
    is_global = forms.BooleanField(required=False, label="Global: every user may query it")
    overwrite = forms.BooleanField(required=False, label="Replace my dataset of that name if there is one")

    def __init__(self, *args, may_make_global: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not may_make_global:
            del self.fields["is_global"]


class DatasetReplaceForm(forms.Form):
    file = forms.FileField(help_text="CSV with a header row, or Parquet. Name, sharing and grants stay.")


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. 'nightly report'.")


# Runs


class RunForm(ServiceForm):
    """Parameters from the entry function's signature, or raw JSON; and how to run."""

    PARAMETER_PREFIX = "p_"

    params_mode = forms.ChoiceField(
        choices=[("fields", "Fields"), ("json", "Raw JSON")],
        initial="fields",
        widget=forms.RadioSelect,
        label="Parameters as",
    )
    raw_json = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 5, "class": "code", "spellcheck": "false"}),
        label="Parameters (a JSON object of keyword arguments)",
    )
    env_name = forms.ChoiceField(label="Environment", help_text="Only environments that are built (READY) are offered.")
    service = forms.ChoiceField(choices=ServiceLevel.choices, initial=ServiceLevel.LOW, label="Service level")
    graphics = forms.BooleanField(required=False, initial=True, label="Capture graphics (matplotlib figures)")
    execution = forms.ChoiceField(
        choices=[("sync", "Run now and wait"), ("async", "Run as a job")],
        initial="sync",
        widget=forms.RadioSelect,
        label="Execution",
    )
    # Oracle's bounds for an async job's timeout; the API uses the same.
    job_timeout = forms.IntegerField(
        required=False,
        min_value=1800,
        max_value=43200,
        label="Job time limit (seconds)",
        help_text="Jobs only: 1800 to 43200. Empty: the service's default.",
    )
    comments = forms.CharField(
        required=False, max_length=4000, label="Job comments", help_text="Jobs only: a note kept with the run."
    )
    # OML's four data endpoints (docs/datasets.md).
    kind = forms.ChoiceField(
        choices=[
            (Run.Kind.DO_EVAL, "Once, without data (do-eval)"),
            (Run.Kind.TABLE_APPLY, "On the whole input (table-apply)"),
            (Run.Kind.ROW_APPLY, "On chunks of rows (row-apply)"),
            (Run.Kind.GROUP_APPLY, "Once per group (group-apply)"),
            (Run.Kind.INDEX_APPLY, "With the indexes 1..times (index-apply)"),
        ],
        initial=Run.Kind.DO_EVAL,
        required=False,
        widget=forms.RadioSelect,
        label="Mode",
    )
    dataset = forms.ChoiceField(
        required=False,
        label="Dataset",
        help_text="Reads all of it (select * from NAME) when the query below is empty.",
    )
    input_query = forms.CharField(
        required=False,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 3, "class": "code", "spellcheck": "false"}),
        label="Input query",
        help_text="One SELECT over your datasets (NAME) and those shared with you (owner.NAME).",
    )
    rows = forms.IntegerField(required=False, min_value=1, label="Rows per chunk")
    group_by = forms.CharField(
        required=False, max_length=4000, label="Group by", help_text="Column(s), comma-separated."
    )
    order_by = forms.CharField(
        required=False, max_length=4000, label="Order by", help_text="Within each group: COLUMN [ASC|DESC], ..."
    )
    times = forms.IntegerField(required=False, min_value=1, label="Times")
    parallel = forms.BooleanField(
        required=False, initial=True, label="Run pieces in parallel (up to the service level's degree)"
    )
    input_type = forms.ChoiceField(
        choices=[
            ("default", "default (numeric: ndarray, else DataFrame)"),
            ("pandas.DataFrame", "pandas.DataFrame"),
            ("numpy.recarray", "numpy.recarray"),
        ],
        initial="default",
        required=False,
        label="Input type (oml_input_type)",
    )
    na_omit = forms.BooleanField(required=False, label="Drop rows with missing values (oml_na_omit)")

    REQUIRED_BY_KIND = {
        Run.Kind.ROW_APPLY: ("rows",),
        Run.Kind.GROUP_APPLY: ("group_by",),
        Run.Kind.INDEX_APPLY: ("times",),
    }

    def __init__(
        self,
        *args,
        signature: Signature | None,
        environments: list[str] | None = None,
        datasets: list[tuple[str, str]] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        choice_field(self, "dataset").choices = [("", "—")] + list(datasets or [])
        self.signature = signature
        environments = environments or [DEFAULT_ENVIRONMENT]
        choice_field(self, "env_name").choices = [(name, name) for name in environments]
        self.fields["env_name"].initial = environments[0]
        self.parameter_fields: list[str] = []
        for parameter in signature.parameters if signature else []:
            name = self.PARAMETER_PREFIX + parameter.name
            self.fields[name] = _parameter_field(parameter)
            self.parameter_fields.append(name)
        if signature is None or signature.takes_more and not signature.parameters:
            self.fields["params_mode"].initial = "json"

    def parameter_bound_fields(self) -> list:
        return [self[name] for name in self.parameter_fields]

    def set_from_run(self, run: Run) -> None:
        """Fill the (unbound) form with what an earlier run was given: run again."""
        parameters = dict(run.parameters)
        self.initial.update({"env_name": run.env_name, "service": run.service, "graphics": run.graphics})
        if run.kind != Run.Kind.DO_EVAL:
            # The form adds these OML control arguments itself from its input-type fields.
            self.initial["input_type"] = parameters.pop("oml_input_type", "default")
            self.initial["na_omit"] = bool(parameters.pop("oml_na_omit", False))
            options = run.apply_options or {}
            self.initial.update(
                {
                    "kind": run.kind,
                    "input_query": run.input_query,
                    "rows": options.get("rows"),
                    "group_by": ", ".join(options.get("groupBy") or []),
                    "order_by": ", ".join(options.get("orderBy") or []),
                    "times": options.get("times"),
                    "parallel": bool(options.get("parallelFlag")),
                }
            )
        self.set_parameters(parameters)

    def set_parameters(self, parameters: dict) -> None:
        """Fill the form (unbound) with an earlier run's parameters: run again."""
        known = {field.removeprefix(self.PARAMETER_PREFIX) for field in self.parameter_fields}
        if set(parameters) <= known:
            for key, value in parameters.items():
                field = self.PARAMETER_PREFIX + key
                self.initial[field] = value if isinstance(value, bool | str) else json.dumps(value)
                if isinstance(value, str) and self.fields[field].widget.attrs.get("data-kind") in ("json", "list"):
                    self.initial[field] = json.dumps(value)
        else:
            self.initial["params_mode"] = "json"
        self.initial["raw_json"] = json.dumps(parameters, indent=2)

    def clean_raw_json(self) -> Any:
        raw = self.cleaned_data["raw_json"]
        if self.data.get(self.add_prefix("params_mode")) != "json":
            return None
        if not raw.strip():
            return {}
        try:
            value = loads_strict(raw)
        except json.JSONDecodeError as error:
            raise forms.ValidationError(f"Not valid JSON: {error.msg} (line {error.lineno}).") from None
        except ValueError as error:
            # NaN, Infinity, 1e999, \u0000, a lone surrogate, or nested too deeply.
            raise forms.ValidationError(f"Not a value a run can take: {error}.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Give a JSON object: its keys are the function's keyword arguments.")
        return value

    def clean(self) -> dict:
        data = super().clean()
        assert data is not None  # Form.clean gives cleaned_data
        kind = data["kind"] = data.get("kind") or Run.Kind.DO_EVAL
        if kind in (Run.Kind.TABLE_APPLY, Run.Kind.ROW_APPLY, Run.Kind.GROUP_APPLY):
            if not data.get("input_query") and data.get("dataset"):
                data["input_query"] = f"select * from {data['dataset']}"
            if not data.get("input_query"):
                self.add_error("input_query", "Choose a dataset or write a query.")
        for required in self.REQUIRED_BY_KIND.get(kind, ()):
            if data.get(required) in (None, ""):
                self.add_error(required, "Required in this mode.")
        if kind != Run.Kind.DO_EVAL and self.parameter_fields:
            # The data (or the index) is the first argument: its field is not a keyword argument.
            first = self.parameter_fields[0]
            self.errors.pop(first, None)
            data.pop(first, None)
        if data.get("params_mode") == "json":
            # The fields are not what runs: their errors must not block the raw JSON.
            for name in self.parameter_fields:
                self.errors.pop(name, None)
        elif data.get("params_mode") == "fields":
            for name in self.parameter_fields:
                field = self.fields[name]
                if name in self.errors:
                    continue
                raw = self.data.get(self.add_prefix(name), "")
                if field.required is False and not isinstance(field, forms.BooleanField) and raw.strip() == "":
                    data.pop(name, None)
        return data

    def parameters(self) -> dict:
        """The keyword arguments, after is_valid(); OML's control arguments for the data modes."""
        parameters = self._function_parameters()
        if self.cleaned_data.get("kind") in (Run.Kind.TABLE_APPLY, Run.Kind.ROW_APPLY, Run.Kind.GROUP_APPLY):
            parameters.setdefault("oml_input_type", self.cleaned_data.get("input_type") or "default")
            if self.cleaned_data.get("na_omit"):
                parameters.setdefault("oml_na_omit", True)
        return parameters

    def run_request(self, *, script, user, version, client_address: str | None, live_id=None) -> RunRequest:
        """What the form asks to run, after is_valid(): the request services.pipeline starts."""
        data = self.cleaned_data
        kind = data["kind"]
        asynchronous = data["execution"] == "async"
        apply_input = ApplyInput()
        if kind != Run.Kind.DO_EVAL:
            apply_input = ApplyInput(
                input_query=data["input_query"] if kind != Run.Kind.INDEX_APPLY else "",
                rows=data["rows"] if kind == Run.Kind.ROW_APPLY else None,
                group_by=data["group_by"] if kind == Run.Kind.GROUP_APPLY else None,
                order_by=(data.get("order_by") or None) if kind == Run.Kind.GROUP_APPLY else None,
                times=data["times"] if kind == Run.Kind.INDEX_APPLY else None,
                parallel_flag=data.get("parallel", False),
            )
        return RunRequest(
            script=script,
            user=user,
            parameters=self.parameters(),
            kind=kind,
            apply_input=apply_input,
            version=version,
            graphics=data["graphics"],
            env_name=data["env_name"],
            service=data["service"],
            asynchronous=asynchronous,
            # A job's own fields: a run made now has the settings' time limit and no comments.
            timeout_seconds=data["job_timeout"] if asynchronous else None,
            comments=data["comments"] if asynchronous else "",
            client_address=client_address,
            live_id=None if asynchronous else live_id,
        )

    def _function_parameters(self) -> dict:
        if self.cleaned_data["params_mode"] == "json":
            return dict(self.cleaned_data["raw_json"] or {})
        return {
            name.removeprefix(self.PARAMETER_PREFIX): self.cleaned_data[name]
            for name in self.parameter_fields
            if name in self.cleaned_data
        }


class JSONValueField(forms.CharField):
    """Any JSON value; text that is not JSON is taken as a string."""

    def to_python(self, value: Any) -> Any:
        value = super().to_python(value)
        if value in self.empty_values:
            return value
        try:
            return loads_strict(value)
        except ValueError:
            # Not JSON, or JSON no run can take (NaN, \u0000): the text itself.
            return value


class ListField(forms.CharField):
    """A JSON list (`[1, 2]`) or comma-separated items (`1, 2`), each converted to the item kind."""

    def __init__(self, *args, item_kind: str = "json", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.item_kind = item_kind

    def to_python(self, value: Any) -> Any:
        value = super().to_python(value)
        if value in self.empty_values:
            return value
        text = value.strip()
        if "\x00" in text:
            # CharField's own check sees the list's repr, where a NUL is written as an escape.
            raise forms.ValidationError("Null characters are not allowed.")
        if text.startswith("["):
            try:
                items = loads_strict(text)
            except json.JSONDecodeError as error:
                raise forms.ValidationError(f"Not a valid JSON list: {error.msg}.") from None
            except ValueError as error:
                raise forms.ValidationError(f"Not a list a run can take: {error}.") from None
            if not isinstance(items, list):
                raise forms.ValidationError("Not a valid JSON list.")
        else:
            items = [item.strip() for item in text.split(",")]
        return [self._item(item) for item in items]

    def _item(self, item: Any) -> Any:
        if not isinstance(item, str) or self.item_kind == "str":
            return item
        try:
            if self.item_kind == "int":
                return int(item)
            if self.item_kind == "float":
                number = float(item)
                if not math.isfinite(number):
                    raise ValueError(item)
                return number
            if self.item_kind == "bool":
                return item.lower() in ("true", "1", "yes")
        except ValueError:
            raise forms.ValidationError(f"{item!r} is not a valid {self.item_kind}.") from None
        try:
            return loads_strict(item)
        except ValueError:
            return item


def _parameter_field(parameter: Parameter) -> forms.Field:
    required = parameter.required
    label = parameter.name
    hint = f"{parameter.annotation}" if parameter.annotation else ""
    default = parameter.default if parameter.has_default else None
    if parameter.has_default:
        hint = f"{hint}, default {default!r}" if hint else f"default {default!r}"
    common: dict[str, Any] = {"label": label, "help_text": hint, "required": required}
    kind = parameter.kind
    if kind == "bool":
        field: forms.Field = forms.BooleanField(label=label, help_text=hint, required=False, initial=bool(default))
    elif kind == "int":
        field = forms.IntegerField(**common, initial=default)
    elif kind == "float":
        field = forms.FloatField(**common, initial=default, widget=forms.NumberInput(attrs={"step": "any"}))
    elif kind == "str":
        field = forms.CharField(**common, strip=False, initial=default)
    elif kind == "list":
        initial = json.dumps(default) if isinstance(default, list | tuple) else None
        field = ListField(**common, item_kind=parameter.item_kind, initial=initial)
        field.help_text = (hint + "; " if hint else "") + "a JSON list, or items separated by commas"
    else:
        initial = json.dumps(default) if parameter.has_default and default is not None else None
        field = JSONValueField(**common, initial=initial)
        field.help_text = (hint + "; " if hint else "") + "any JSON value; other text is a string"
    field.widget.attrs["data-kind"] = kind
    return field


# Users (admins)

ROLE_CHOICES: list[tuple[str, str]] = [("analysts", "Analyst"), ("admins", "Admin"), ("auditors", "Auditor")]


class UserCreateForm(ServiceForm):
    username = forms.RegexField(
        regex=r"^[\w.@+-]{1,150}$",
        max_length=150,
        label="User name",
        error_messages={"invalid": "Letters, digits and @/./+/-/_ only."},
    )
    password = forms.CharField(widget=forms.PasswordInput(render_value=False), min_length=8)
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial="analysts")

    def clean_password(self) -> str:
        from django.contrib.auth.password_validation import validate_password

        password = self.cleaned_data["password"]
        validate_password(password)
        return password

    def refusal_field(self, error: OmlError) -> str | None:
        return "username"


class UserRoleForm(forms.Form):
    role = forms.ChoiceField(choices=ROLE_CHOICES)
    is_active = forms.BooleanField(required=False, label="Active")


# Notifications


class ScriptChoiceField(forms.ModelChoiceField):
    """Scripts shown as owner/name."""

    def label_from_instance(self, obj: Script) -> str:
        return f"{obj.owner.get_username()}/{obj.name}"


class NotificationRuleForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the rule is for, e.g. 'nightly report failed'.")
    script = ScriptChoiceField(
        queryset=Script.objects.none(),
        required=False,
        empty_label="All my runs",
        label="Runs of",
        help_text="All your runs, or only your runs of one script.",
    )
    schedule = forms.ModelChoiceField(
        queryset=Schedule.objects.none(),
        required=False,
        empty_label="Any run",
        label="Started by",
        help_text="Any run, or only the runs one of your schedules starts.",
    )
    on_failure = forms.BooleanField(required=False, initial=True, label="When a run fails or times out")
    on_success = forms.BooleanField(required=False, label="When a run succeeds")
    longer_than_seconds = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=7 * 24 * 3600,
        label="When a run takes longer than (seconds)",
        help_text="Empty: never. Checked on every reaper pass while it runs, and when it ends.",
    )
    channel = forms.ChoiceField(choices=NotificationRule.Channel.choices, widget=forms.RadioSelect, initial="EMAIL")
    url = forms.CharField(
        required=False,
        max_length=2000,
        label="Webhook URL",
        help_text="Webhooks only: an http(s) address that receives the run's summary as signed JSON.",
        widget=forms.URLInput(attrs={"placeholder": "https://example.org/hooks/omlweb", "spellcheck": "false"}),
    )
    enabled = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        script = self.fields["script"]
        assert isinstance(script, forms.ModelChoiceField)  # declared above
        script.queryset = roles.scripts_visible_to(user, Script.objects.select_related("owner"))
        schedule = self.fields["schedule"]
        assert isinstance(schedule, forms.ModelChoiceField)  # declared above
        schedule.queryset = Schedule.objects.filter(owner=user)
