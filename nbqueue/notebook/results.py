"""A finished job's result as a notebook shows it: from the worker's summary (see ``nbqueue.summary``),
rendered escaped (a job's repr or column names are text, never markup), as HTML and as text."""
from __future__ import annotations

import html
import json
from typing import Any

from ..summary import human, summarise

_PRE = "margin:2px 0;padding:4px 6px;font-size:12px;white-space:pre-wrap;max-height:14em;overflow:auto"
_CELL = "padding:1px 6px;text-align:right;border-bottom:1px solid rgba(127,127,127,.25);white-space:pre"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def text(summary: dict) -> str:
    """One line: the value's short repr, or what it is (``DataFrame 8×3``, ``bytes, 50.0 MB``)."""
    return summary["text"]


def pickled(size: int, unsigned: bool = False) -> str:
    """What a result without a usable summary is, before anything of it is fetched."""
    why = " (its summary is not signed with this kernel's secret, or is junk: not shown)" if unsigned else ""
    return f"pickled result, {human(size)} — job.result() loads it{why}"


def of_summary(summary: dict) -> tuple:
    """(text, html) of a checked summary."""
    return text(summary), to_html(summary)


def of_value(value: Any, size: int) -> tuple:
    """(text, html) of a small value fetched here (a result recorded without a summary)."""
    made = summarise(value, size)
    return of_summary(json.loads(made)) if made else of_line(f"{type(value).__name__} object")


def of_line(line: str) -> tuple:
    """(text, html) of one line about a result."""
    return line, f'<pre class="nbq-result" style="{_PRE}">→ {_esc(line)}</pre>'


def _table(table: dict) -> str:
    head = "".join(f'<th style="{_CELL}">{_esc(c)}</th>' for c in table["columns"])
    body = []
    index = table["index"]
    for i, row in enumerate(table["rows"]):
        label = index[i] if i < len(index) else ""
        cells = "".join(f'<td style="{_CELL}">{_esc(v)}</td>' for v in row)
        body.append(f'<tr><th style="{_CELL};opacity:.7">{_esc(label)}</th>{cells}</tr>')
    return (f'<table class="nbq-result-table" style="border-collapse:collapse;font-size:12px;margin:2px 0">'
            f'<thead><tr><th style="{_CELL}"></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def to_html(summary: dict) -> str:
    """The header line (``→ DataFrame 8×3 · pickled 1.2 kB``: sizes under 1 kB unsaid), then the table
    head or the bounded repr."""
    size = summary["size"]
    pickled = f'<span style="opacity:.6"> · pickled {_esc(human(size))}</span>' if size >= 1000 else ""
    out = (f'<div class="nbq-result"><pre class="nbq-result-head" style="{_PRE}">'
           f'→ {_esc(summary["text"])}{pickled}</pre>')

    if summary.get("table"):  # its first rows and columns: the header line says how many there are
        out += _table(summary["table"])
    elif summary.get("repr"):
        out += f'<pre class="nbq-result-repr" style="{_PRE};opacity:.85">{_esc(summary["repr"])}</pre>'
    return out + "</div>"
