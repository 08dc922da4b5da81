from __future__ import annotations

import json
from typing import Any

from django import template

from scripts_app.results import as_pretty_json, cell_text

register = template.Library()


@register.filter
def cell(value: Any) -> str:
    """A table cell's text: JSON for nested values, empty for null. Escaped by the template."""
    return cell_text(value)


@register.filter
def status_label(status: str) -> str:
    """A status constant as words: TIMED_OUT reads "Timed out"."""
    return str(status).replace("_", " ").lower().capitalize()


@register.filter
def pretty_json(value: Any) -> str:
    return as_pretty_json(value)


@register.filter
def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
