from __future__ import annotations

import json
from typing import Any

from django import template

from scripts_app.results import as_pretty_json, cell_text, number_text

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


@register.filter
def number_cell(value: Any) -> str:
    """A number at a readable precision (the exact value is in the downloads and the cell's title)."""
    return number_text(value)


@register.filter
def page_numbers(page) -> list:
    """The page numbers to link around the current one, with "…" for the gaps: 1 … 4 5 6 7 8 … 20."""
    return list(page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1))
