"""A short description of a job's return value, made by the worker where it pickles the value.

A notebook shows a finished job from this (a few KB of JSON in the job hash field ``summary``,
signed with the outcome, see ``signing.Signer.sign_summary``) instead of fetching and unpickling
a result that may be 50 MB. The JSON object::

    {"type": "DataFrame", "text": "DataFrame 8×3", "size": 1234,
     "repr": "...", "table": {"columns": [...], "index": [...], "rows": [[...], ...]}}

``type`` the value's type name; ``text`` one line (the repr itself when it is short); ``size`` the
pickled result's bytes; ``repr`` a bounded repr (absent when ``text`` is the whole repr); ``table``
the first ``ROWS`` rows and ``COLUMNS`` columns of a DataFrame- or Series-like value (duck-typed:
pandas is never imported), every cell a string. All values are strings or integers.

Best effort: summarising never fails or slows a job for long. A value's own code (``__repr__``,
``head``) may raise: the summary then says so; huge ``bytes``/``str``/containers are never repr'd
whole (``reprlib`` with limits, insertion order, no sorting).
"""
from __future__ import annotations

import json
import reprlib
import sys
from itertools import islice
from typing import Any, Optional

MAX_BYTES = 6000  # the JSON at most (ASCII); a reader refuses a longer one as junk
REPR_MAX = 2000  # characters of ``repr``
TEXT_MAX = 100  # characters of ``text``
ROWS, COLUMNS = 5, 20  # of a table
CELL_MAX = 40  # characters of a table cell
PREFIX = 60  # characters of a long bytes or str shown
_SCALARS = frozenset({int, float, bool, complex, type(None)})
_CONTAINERS = (list, tuple, dict, set, frozenset)


def human(size: float) -> str:
    """A byte count in SI units: ``512 B``, ``1.5 kB``, ``50.0 MB``."""
    if size < 1000:
        return f"{int(size)} B"
    for unit in ("kB", "MB", "GB", "TB"):  # noqa: B007 - the unit it stops at is read after the loop
        size /= 1000
        if size < 999.95:
            break
    return f"{size:.1f} {unit}"


class _Repr(reprlib.Repr):
    """``reprlib.Repr`` that never builds the whole repr of bytes, a huge int, or a large dict or set."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 3, 80, 80, 60
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = self.maxdeque = 10

    def repr1(self, x: Any, level: int) -> str:
        kind = type(x)
        if kind in _SCALARS and (kind is not int or -10**30 < x < 10**30):  # short: no lookup by type name
            return repr(x)
        return super().repr1(x, level)

    def repr_bytes(self, x: bytes, level: int) -> str:
        return _prefix(x, self.maxstring)

    repr_bytearray = repr_bytes

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 3 * self.maxlong:  # repr of a huge int is slow (and refused past 4300 digits)
            return f"<int of {x.bit_length():,} bits>"
        return super().repr_int(x, level)

    def repr_dict(self, x: dict, level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in islice(x.items(), self.maxdict)]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxdict else "") + "}"

    def repr_set(self, x: Any, level: int) -> str:
        if not x:
            return f"{type(x).__name__}()"
        if level <= 0:
            return "{...}"
        items = [self.repr1(v, level - 1) for v in islice(x, self.maxset)]
        body = "{" + ", ".join(items) + (", ..." if len(x) > self.maxset else "") + "}"
        return body if type(x) is set else f"{type(x).__name__}({body})"

    repr_frozenset = repr_set


_REPR = _Repr()


def _prefix(x: Any, limit: int) -> str:
    """The repr of the start of a str or bytes, with ``...`` if there is more."""
    return repr(x[:limit]) + ("..." if len(x) > limit else "")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _one_line(text: str) -> bool:
    return len(text) <= TEXT_MAX and "\n" not in text


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return _cut(value, CELL_MAX)
    if type(value) in _SCALARS or isinstance(value, (bytes, bytearray) + _CONTAINERS):
        return _cut(_REPR.repr(value), CELL_MAX)
    return _cut(str(value), CELL_MAX)  # numpy scalars, timestamps: as pandas shows them


def _shape(value: Any) -> Optional[tuple]:
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    shape = tuple(shape)
    return shape if all(isinstance(n, int) for n in shape) else None


def _table(value: Any, shape: tuple) -> dict:
    """The head of a DataFrame-like (``head``, ``columns``, ``itertuples``) or Series-like value."""
    head = value.head(ROWS)
    index = [_cell(i) for i in islice(head.index, ROWS)]
    if len(shape) == 1:  # a Series: one column, named by the series
        name = getattr(value, "name", None)
        return {"columns": ["" if name is None else _cell(name)], "index": index,
                "rows": [[_cell(v)] for v in islice(head, ROWS)]}
    columns = [_cell(c) for c in islice(head.columns, COLUMNS)]
    if hasattr(head, "iloc"):
        head = head.iloc[:, :COLUMNS]
    rows = [[_cell(v) for v in islice(row, COLUMNS)] for row in islice(head.itertuples(index=False, name=None), ROWS)]
    return {"columns": columns, "index": index, "rows": rows}


def _array_repr(value: Any) -> str:
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):  # summarised, without touching print options
        return numpy.array2string(value, max_line_width=100, threshold=60, edgeitems=3)
    return repr(value)


def _describe(value: Any) -> dict:
    kind = type(value)
    name = kind.__name__
    if kind in _SCALARS:
        return {"type": name, "text": _REPR.repr(value)}
    if isinstance(value, (bytes, bytearray, str)):
        r = _prefix(value, PREFIX)
        if len(value) <= PREFIX:
            return {"type": name, "text": r}
        length = f"{human(len(value))}" if not isinstance(value, str) else f"{len(value):,} characters"
        return {"type": name, "text": f"{name}, {length}", "repr": r}
    if isinstance(value, _CONTAINERS):
        r = _REPR.repr(value)
        if len(value) <= 10 and _one_line(r):
            return {"type": name, "text": r}
        return {"type": name, "text": f"{name} of {len(value):,}", "repr": _cut(r, REPR_MAX)}
    shape = _shape(value)
    if shape is not None and callable(getattr(value, "head", None)) and (hasattr(value, "columns") or len(shape) == 1):
        dims = "×".join(str(n) for n in shape) if len(shape) > 1 else f"of {shape[0]:,}" if shape else "()"
        dtype = getattr(value, "dtype", None) if len(shape) == 1 else None
        out: dict = {"type": name, "text": f"{name} {dims}" + (f" {dtype}" if dtype is not None else "")}
        try:
            out["table"] = _table(value, shape)
        except Exception as exc:
            out["repr"] = f"(no table: {type(exc).__name__})"
        return out
    if shape is not None and hasattr(value, "dtype") and shape != ():
        out = {"type": name, "text": f"{name} {value.dtype} {shape}"}
        try:
            out["repr"] = _cut(_array_repr(value), REPR_MAX)
        except Exception as exc:
            out["repr"] = f"(repr failed: {type(exc).__name__})"
        return out
    try:
        r = repr(value)
    except Exception as exc:
        failed = _cut(f"{type(exc).__name__}: {exc}", 200)
        return {"type": name, "text": f"{name} object", "repr": f"(repr failed: {failed})"}
    if not isinstance(r, str):
        return {"type": name, "text": f"{name} object"}
    if _one_line(r):
        return {"type": name, "text": r}
    return {"type": name, "text": f"{name} object", "repr": _cut(r, REPR_MAX)}


def needed(value: Any) -> bool:
    """Whether a worker records a summary of this return value: not for a number, None, or a short
    str or bytes, whose pickle is as small as the summary (a notebook fetches and checks it instead);
    so the common small result costs its job nothing more (a type check, about 0.1 µs)."""
    kind = type(value)
    if kind in _SCALARS:
        return kind is int and not -10**30 < value < 10**30
    return not (kind in (str, bytes) and len(value) <= PREFIX)


def _clean(value: Any) -> Any:
    """Strings that encode as UTF-8 (a lone surrogate, from a str cell or a ``__str__``, becomes ``?``)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return str(value).encode("utf-8", "replace").decode("utf-8")


def summarise(value: Any, size: int) -> Optional[str]:
    """The summary JSON of a return value whose pickle is ``size`` bytes; None only if all failed."""
    kind = type(value)
    if kind in _SCALARS and (kind is not int or -10**30 < value < 10**30):  # the usual case: 1 µs
        return f'{{"type":"{kind.__name__}","text":"{value!r}","size":{int(size)}}}'  # nothing in it to escape
    try:
        try:
            summary = _describe(value)
        except BaseException as exc:  # the value's own code: anything, even an interrupt (the caller decides)
            summary = {"type": type(value).__name__, "text": f"{type(value).__name__} object",
                       "repr": f"(no summary: {type(exc).__name__})"}
        summary = _clean(summary)
        summary["text"] = _cut(summary["text"], TEXT_MAX)
        summary["size"] = size
        text = json.dumps(summary, separators=(",", ":"))  # ASCII: \u escapes, lone surrogates too
        if len(text) > MAX_BYTES:
            summary.pop("table", None)
            summary["repr"] = _cut(summary.get("repr", ""), 500)
            text = json.dumps(summary, separators=(",", ":"))
        return text if len(text) <= MAX_BYTES else None
    except BaseException:
        return None


def _strings(value: Any, limit: int) -> bool:
    return isinstance(value, list) and len(value) <= limit and all(isinstance(s, str) for s in value)


def parse(raw: Optional[bytes]) -> Optional[dict]:
    """A stored summary, checked to be what ``summarise`` writes; None for junk (or none)."""
    if not raw or len(raw) > MAX_BYTES:
        return None
    try:
        summary = json.loads(raw)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None
    try:
        json.dumps(summary, ensure_ascii=False).encode("utf-8")  # no lone surrogates (written by hand)
    except (UnicodeEncodeError, ValueError, RecursionError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("text"), str) or not isinstance(
            summary.get("type"), str) or len(summary["text"]) > TEXT_MAX:
        return None
    size = summary.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**63:
        return None
    if not isinstance(summary.get("repr", ""), str) or len(summary.get("repr", "")) > REPR_MAX:
        return None
    table = summary.get("table")
    if table is not None:
        if not isinstance(table, dict) or not _strings(table.get("columns"), COLUMNS) or not _strings(
                table.get("index"), ROWS):
            return None
        rows = table.get("rows")
        if not isinstance(rows, list) or len(rows) > ROWS or not all(_strings(r, COLUMNS) for r in rows):
            return None
    return summary
