"""``%enqueue``, ``%map``, ``%nbqueue`` and ``%%nbqueue.module``.

The call is kept verbatim (no ``{}``/``$`` expansion) and parsed with ``ast``; the callee and
each argument are evaluated in the user's namespace, the call itself never runs in the kernel.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import io
import os
import re
import shlex
import sys
import tokenize
from typing import Any, Optional

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand

from .. import queue as queue_module
from ..errors import EnqueueError
from ..group import Group
from ..job import Job
from ..queue import Queue
from .widgets import remember_call, remember_group

_OPTION = re.compile(r"\s--(?=[A-Za-z])")
_QUEUE_WORD = re.compile(r"\s*(\S+)\s+(\S.*)\Z", re.S)
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
EXPRESSIONS = ("on_success", "on_failure", "depends_on")  # options naming objects of the user's namespace
ENQUEUE_USAGE = "%enqueue [QUEUE] func(args) [--timeout N] [--retries N] [--at-front] [--job-id ID] ..."
MAP_USAGE = "%map [QUEUE] func iterable [--timeout N] [--result-ttl N] ..."


def _options_of(method: Any) -> dict:
    """The job options ``method`` accepts, name -> default: its keyword-only parameters and,
    if it takes ``**options``, the fields of ``nbqueue.queue.Options`` (whatever this version has)."""
    params = inspect.signature(method).parameters.values()
    accepted = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    options = getattr(queue_module, "Options", None)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params) and dataclasses.is_dataclass(options):
        accepted.update({f.name: f.default for f in dataclasses.fields(options)})
    return accepted


def parse_options(text: str, accepted: dict, usage: str) -> dict:
    """``--timeout 600 --at-front`` -> ``{"timeout": 600, "at_front": True}``; unknown ones refused."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"can't read the options {text!r}: {exc}") from None
    options: dict = {}
    while words:
        word = words.pop(0)
        name = word[2:].replace("-", "_")
        if not word.startswith("--") or name not in accepted:
            known = " ".join("--" + n.replace("_", "-") for n in accepted)
            raise UsageError(f"unknown option {word!r}; options: {known}. Usage: {usage}")
        if isinstance(accepted[name], bool):
            options[name] = True
        elif not words:
            raise UsageError(f"option {word} needs a value. Usage: {usage}")
        else:
            word = words.pop(0)
            options[name] = word if name.endswith("_id") or name in EXPRESSIONS else _value(word)  # ids stay text
    return options


def _value(word: str) -> Any:
    if word.lower() == "none":
        return None
    for kind in (int, float):
        try:
            return kind(word)
        except ValueError:
            pass
    return word


def split_options(line: str, is_head: Any) -> tuple[str, str]:
    """Split ``line`` into the head and trailing ``--options``: the first `` --x`` after which
    the head is complete (``is_head``); a ``--`` inside the call (e.g. a string) is no option."""
    for match in _OPTION.finditer(line):
        if is_head(line[:match.start()]):
            return line[:match.start()].strip(), line[match.start():].strip()
    return line.strip(), ""


def _parse(text: str, mode: str = "eval") -> Any:
    """The expression (``mode="eval"``) or statements (``"exec"``) ``text`` holds; None if it is not Python."""
    try:
        tree: Any = ast.parse(text.strip(), mode=mode)  # an Expression or a Module
        return tree.body
    except SyntaxError:
        return None


def _parse_option(text: str, name: str) -> ast.expr:
    node = _parse(text)
    if node is None:
        raise UsageError(f"--{name.replace('_', '-')} {text!r} is not a Python expression")
    return node


def _is_call(text: str) -> bool:
    return isinstance(_parse(text), ast.Call)


def _gaps(text: str) -> list:
    """(start, end) of each run of spaces outside brackets and strings: ``f  range(3)`` -> [(1, 3)]."""
    gaps, depth, prev_end = [], 0, None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT):
                continue
            if depth == 0 and prev_end is not None and tok.start[1] > prev_end:
                gaps.append((prev_end, tok.start[1]))
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
            prev_end = tok.end[1]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return gaps


def map_parts(text: str, is_function: Any = lambda text: True) -> Optional[tuple[Optional[str], str, str]]:
    """``[QUEUE] func iterable`` -> (queue or None, func text, iterable text). ``func`` is one word
    (``tasks.square``); a first word that is no function (``is_function``) is the queue."""
    text = text.strip()
    gaps = _gaps(text)
    if gaps:
        func, items = text[:gaps[0][0]], text[gaps[0][1]:]
        if _parse(func) is not None and _parse(items) is not None and is_function(func):
            return None, func, items
    if len(gaps) > 1:
        queue, func, items = text[:gaps[0][0]], text[gaps[0][1]:gaps[1][0]], text[gaps[1][1]:]
        if _parse(func) is not None and _parse(items) is not None:
            return queue, func, items
    return None


class _Evaluator:
    """Evaluates expression nodes in the user's namespace with one short error message."""

    def __init__(self, namespace: dict):
        self.namespace = namespace

    def __call__(self, node: ast.expr, what: str) -> Any:
        expr = ast.fix_missing_locations(ast.Expression(node))
        try:
            return eval(compile(expr, "<nbqueue>", "eval"), self.namespace)
        except Exception as exc:
            raise UsageError(f"evaluating {what} {ast.unparse(node)!r} raised {type(exc).__name__}: {exc}") from None

    def quietly(self, text: str) -> Any:
        """The value of ``text``, or None if it does not evaluate (no side effects expected)."""
        try:
            return eval(text, self.namespace)
        except Exception:
            return None

    def call(self, node: ast.Call) -> tuple[Any, tuple, dict]:
        func = self(node.func, "the function")
        args: list = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                args.extend(self(arg.value, "the argument"))
            else:
                args.append(self(arg, "the argument"))
        kwargs: dict = {}
        for kw in node.keywords:
            given = self(kw.value, "the argument")
            items = given.items() if kw.arg is None else [(kw.arg, given)]
            for name, value in items:
                if name in kwargs:
                    raise UsageError(f"the call gives the keyword argument {name!r} twice")
                kwargs[name] = value
        return func, tuple(args), kwargs


@magics_class
class NbqueueMagics(Magics):
    """The nbqueue magics (``%load_ext nbqueue``)."""

    shell: InteractiveShell  # type: ignore[assignment]  # Magics declares it None until IPython registers the magics

    def _queue(self, word: Optional[str]) -> Queue:
        if word is None:
            return Queue()
        value = self.shell.user_ns.get(word)
        if isinstance(value, Queue):
            return value
        try:
            return Queue(word)
        except EnqueueError as exc:
            raise UsageError(str(exc)) from None

    def _head(self, line: str, parse_head: Any, usage: str) -> tuple[Optional[str], Any, str, str]:
        """(queue word or None, the parsed head, its text, the options text): the queue is optional."""
        head, options = split_options(line, lambda text: parse_head(text) is not None)
        parsed = parse_head(head)
        if parsed is not None:
            return None, parsed, head, options
        match = _QUEUE_WORD.match(line)
        if match:
            head, options = split_options(match.group(2), lambda text: parse_head(text) is not None)
            parsed = parse_head(head)
            if parsed is not None:
                return match.group(1), parsed, head, options
        raise UsageError(f"{line.strip()!r} is not a call nbqueue can enqueue. Usage: {usage}")

    @no_var_expand
    @line_magic
    def enqueue(self, line: str) -> Optional[Job]:
        """Enqueue a call: ``%enqueue [QUEUE] func(args) [options]``; returns the Job (shown live).

        Options: every job option of ``Queue.enqueue_call`` with dashes, e.g. ``--timeout N``,
        ``--result-ttl N``, ``--retries N``, ``--retry-delay S``, ``--delay S``, ``--at-front``,
        ``--job-id ID``; ``none`` means no limit.
        """
        queue_word, call, call_text, options_text = self._head(
            line, lambda text: _parse(text) if _is_call(text) else None, ENQUEUE_USAGE)
        queue = self._queue(queue_word)
        options = parse_options(options_text, _options_of(queue.enqueue_call), ENQUEUE_USAGE)
        evaluate = _Evaluator(self.shell.user_ns)
        for name in EXPRESSIONS:  # --on-success tasks.notify, --depends-on [a, b]: evaluated here
            if isinstance(options.get(name), str):
                options[name] = evaluate(_parse_option(options[name], name), f"--{name.replace('_', '-')}")
        func, args, kwargs = evaluate.call(call)
        try:
            job = queue.enqueue_call(func, args, kwargs, **options)
        except EnqueueError as exc:
            raise UsageError(str(exc)) from None
        remember_call(job.id, call_text)
        _show(job)
        return job

    @no_var_expand
    @line_magic("map")  # type: ignore[arg-type]  # IPython 9 types it as "_F | decorator"
    def map_(self, line: str) -> Optional[Group]:
        """One job per item: ``%map [QUEUE] func iterable [options]``; returns the Group (shown live).
        Each item is the one argument of ``func``, as with the builtin ``map``."""
        head, options_text = split_options(line, lambda text: map_parts(text) is not None)
        evaluate = _Evaluator(self.shell.user_ns)
        parts = map_parts(head, lambda text: callable(evaluate.quietly(text)))
        if parts is None:
            raise UsageError(f"{line.strip()!r} is not a function and an iterable. Usage: {MAP_USAGE}")
        queue_word, func_text, items_text = parts
        queue = self._queue(queue_word)
        options = parse_options(options_text, _options_of(queue.enqueue_many), MAP_USAGE)
        func = evaluate(_parse(func_text), "the function")
        items = evaluate(_parse(items_text), "the iterable")
        try:
            group = queue.map(func, items, **options)
        except (EnqueueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
        remember_group(group, f"{func_text} over {items_text}")
        _show(group)
        return group

    @line_magic
    def nbqueue(self, line: str) -> Any:
        """``%nbqueue``: the live dashboard of queues, workers and recent jobs."""
        from .dashboard import Dashboard

        if line.strip():
            raise UsageError("%nbqueue takes no arguments: it shows the dashboard")
        dashboard = Dashboard()
        if _kernel_here():
            dashboard.show()  # shown once: as the cell's value it is not shown again
        return dashboard

    @no_var_expand
    @cell_magic("nbqueue.module")  # type: ignore[arg-type]  # as line_magic
    def module(self, line: str, cell: str) -> None:
        """``%%nbqueue.module tasks``: save the cell as ``tasks.py`` in the kernel's folder (where
        workers are started) and import (or reload) it here as ``tasks``."""
        name = line.strip()
        if not _MODULE_NAME.match(name):
            raise UsageError(f"%%nbqueue.module needs a module name, e.g. %%nbqueue.module tasks (got {name!r})")
        try:
            ast.parse(cell)
        except SyntaxError as exc:
            raise UsageError(f"the cell is not valid Python, nothing was saved: {exc}") from None
        path = os.path.join(os.getcwd(), f"{name}.py")
        with open(path, "w", encoding="utf-8") as file:
            file.write(cell)
        _drop_bytecode(path)
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        importlib.invalidate_caches()
        try:
            module = sys.modules.get(name)
            if module is not None and os.path.abspath(getattr(module, "__file__", "") or "") == path:
                module = importlib.reload(module)
            else:
                sys.modules.pop(name, None)
                module = importlib.import_module(name)
        except Exception as exc:
            raise UsageError(f"{name}.py was saved but importing it raised {type(exc).__name__}: {exc}") from None
        self.shell.user_ns[name] = module
        print(f"saved {path}; imported as {name}; start workers in this folder to run its functions")


def _kernel_here() -> bool:
    from . import _in_kernel

    return _in_kernel()


def _show(obj: Any) -> None:
    """In a kernel, show the job's or group's live view now: ``job = %enqueue …`` shows it too."""
    from . import show

    if _kernel_here():
        show(obj)


def _drop_bytecode(path: str) -> None:
    """A rewrite within the same second keeps size and mtime: drop the cached bytecode."""
    try:
        os.remove(importlib.util.cache_from_source(path))
    except OSError:
        pass
