"""The report page and its building blocks: the page being built (:class:`Page`, its parts and notes), reading
its CSV and JSON inputs, table cells and tables, images embedded as PNG data URIs, and the final HTML text."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
img { image-rendering: pixelated; max-width: 100%; }
.note { background: #fff6d5; border-left: 4px solid #e0b000; padding: 4px 10px; margin: 4px 0; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.charts img { margin: 4px; border: 1px solid #ddd; }
"""
"""The page's stylesheet."""


class Page:
    """The page being built from the study under ``root``: its HTML ``parts`` in page order, and ``notes``
    naming inputs that were missing or unreadable (shown at the top)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.parts: list[str] = []
        self.notes: list[str] = []

    def path(self, name: str) -> Path | None:
        """``root / name`` if it exists, else None and a note that it is missing."""
        path = self.root / name
        if path.exists():
            return path
        self.notes.append(f"{name} not found: skipped")
        return None

    def render(self, title: str) -> str:
        """The whole page as HTML text: title, notes, then the parts."""
        notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in self.notes)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            f"{notes and '<section id=notes><h2>Notes</h2>' + notes + '</section>'}"
            + "".join(self.parts)
            + "</body></html>\n"
        )


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def load_json(page: Page, name: str) -> dict[str, Any] | None:
    """The JSON file ``name`` under the page's root, or None with a note when it is missing or not valid JSON."""
    path = page.path(name)
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        page.notes.append(f"{name} is not valid JSON ({error.msg}): skipped")
        return None


def as_float(value: Any) -> float:
    """``value`` as a float; NaN when it is not a number (an empty CSV cell, "all")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def is_number(text: str) -> bool:
    """Whether ``text`` parses as a float."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def cell(value: Any) -> str:
    """A table cell's text: "–" for nothing, yes/no for booleans, integers as such (also when written as text),
    other numbers with 3 significant digits, lists joined by commas."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) or (isinstance(value, str) and is_number(value)):
        number = float(value)
        if number.is_integer() and abs(number) < 1e6 and not isinstance(value, float):
            return str(int(number))
        return f"{number:.3g}"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str = "") -> str:
    """An HTML table (in a horizontally scrolling block) of ``rows``, each cell written by :func:`cell`."""
    attribute = f' id="{html.escape(table_id)}"' if table_id else ""
    head = "".join(f"<th>{html.escape(str(name))}</th>" for name in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(value))}</td>" for value in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str) -> str:
    """An ``<img>`` embedding PNG bytes as a data URI."""
    return f'<img src="{data_uri(png)}" alt="{html.escape(alt)}">'
