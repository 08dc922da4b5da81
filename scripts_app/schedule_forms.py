"""The schedule form of the pages (docs/schedules.md); the service checks what the form cannot."""

from __future__ import annotations

import json

from django import forms
from django.urls import reverse

from scripts_app.forms import ScriptChoiceField
from scripts_app.models import Schedule, Script, ServiceLevel
from scripts_app.services import retries, schedules


class ScheduleForm(forms.Form):
    name = forms.CharField(max_length=128, required=False, help_text="Empty: the script's name.")
    script = ScriptChoiceField(queryset=Script.objects.none(), empty_label=None)
    version = forms.IntegerField(
        required=False, min_value=1, label="Pinned version", help_text="A version number; empty: the current one."
    )
    parameters = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "code", "spellcheck": "false"}),
        help_text='Keyword arguments as a JSON object, e.g. {"day": "monday"}.',
    )
    cron = forms.CharField(
        required=False,
        max_length=200,
        label="Cron expression",
        help_text="minute hour day month weekday, e.g. 0 7 * * 1-5 (07:00 on weekdays). Or an interval below.",
        widget=forms.TextInput(attrs={"spellcheck": "false", "autocomplete": "off"}),
    )
    interval_seconds = forms.IntegerField(
        required=False, min_value=1, label="Or every (seconds)", help_text="A fixed interval, counted from saving."
    )
    time_zone = forms.CharField(
        max_length=64, initial="UTC", help_text="The cron expression's clock: an IANA name such as Europe/Paris."
    )
    env_name = forms.CharField(required=False, max_length=64, label="Environment", help_text="Empty: the script's.")
    service = forms.ChoiceField(choices=ServiceLevel.choices, initial=ServiceLevel.LOW, label="Service level")
    timeout_seconds = forms.IntegerField(
        required=False, min_value=1, max_value=43200, label="Time limit (seconds)", help_text="Empty: the default."
    )
    missed_policy = forms.ChoiceField(
        choices=Schedule.Missed.choices,
        initial=Schedule.Missed.SKIP,
        widget=forms.RadioSelect,
        label="Runs missed while the service was down",
    )
    overlap_policy = forms.ChoiceField(
        choices=Schedule.Overlap.choices,
        initial=Schedule.Overlap.SKIP,
        widget=forms.RadioSelect,
        label="When the previous run has not finished",
    )
    max_retries = forms.IntegerField(
        min_value=0,
        max_value=retries.MAX_RETRIES,
        initial=0,
        label="Retries",
        help_text="0: a failed run is not retried.",
    )
    retry_backoff_seconds = forms.IntegerField(
        min_value=0, max_value=retries.MAX_BACKOFF_SECONDS, initial=60, label="First retry after (seconds)"
    )
    retry_backoff_factor = forms.FloatField(
        min_value=1.0, max_value=10.0, initial=2.0, label="Each later retry waits this many times longer"
    )
    retry_user_errors = forms.BooleanField(
        required=False, label="Also retry when the script itself fails (a lost worker is always retried)"
    )
    enabled = forms.BooleanField(required=False, initial=True, label="Enabled (unchecked: paused)")

    def __init__(self, *args, scripts=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        script = self.fields["script"]
        assert isinstance(script, ScriptChoiceField)
        script.queryset = scripts
        self.fields["time_zone"].widget.attrs["list"] = "time-zones"
        for name in ("cron", "interval_seconds", "time_zone"):
            self.fields[name].widget.attrs.update(
                {
                    "hx-get": reverse("web:schedule_preview"),
                    "hx-trigger": "input changed delay:400ms",
                    "hx-target": "#schedule-preview",
                    "hx-include": "#id_cron, #id_interval_seconds, #id_time_zone",
                    "aria-controls": "schedule-preview",
                }
            )

    def clean_parameters(self) -> dict:
        text = self.cleaned_data["parameters"].strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError as error:
            raise forms.ValidationError(f"Not valid JSON: {error}.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Must be a JSON object of keyword arguments.")
        return value

    @staticmethod
    def initial_from(schedule: Schedule) -> dict:
        return {
            "name": schedule.name,
            "script": schedule.script,
            "version": schedule.version.number if schedule.version else None,
            "parameters": json.dumps(schedule.parameters) if schedule.parameters else "",
            "cron": schedule.cron,
            "interval_seconds": schedule.interval_seconds,
            "time_zone": schedule.time_zone,
            "env_name": schedule.env_name,
            "service": schedule.service,
            "timeout_seconds": schedule.timeout_seconds,
            "missed_policy": schedule.missed_policy,
            "overlap_policy": schedule.overlap_policy,
            "max_retries": schedule.max_retries,
            "retry_backoff_seconds": schedule.retry_backoff_seconds,
            "retry_backoff_factor": schedule.retry_backoff_factor,
            "retry_user_errors": schedule.retry_user_errors,
            "enabled": schedule.enabled,
        }


def time_zone_names() -> list[str]:
    return sorted(schedules.zone_names())
