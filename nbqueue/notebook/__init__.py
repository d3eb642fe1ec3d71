"""The notebook layer: magics, live widgets for jobs and groups, the dashboard.

Imports the core; the core never imports this. ``%load_ext nbqueue`` calls
:func:`load_ipython_extension`, which registers the magics and makes every ``Job`` and
``Group`` a cell shows display as a live widget (IPython display formatters, so ``Job``
itself knows nothing of widgets). In a kernel each is displayed with a display id, so that
its output can become a static report when it ends (see ``widgets.LiveView``); a job that
``%enqueue`` already showed is not shown again as the cell's value.
"""
from __future__ import annotations

from typing import Any, Optional

from ..group import Group
from ..job import Job

_shown_here: set = set()  # (execution count, key) of what a magic showed in the running cell


def _in_kernel() -> bool:
    """Whether widgets can show here (a Jupyter kernel, not terminal IPython)."""
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def _key(obj: Any) -> tuple:
    return ("job", obj.ref) if isinstance(obj, Job) else ("group", tuple(obj.refs))


def _execution() -> Optional[int]:
    from IPython import get_ipython

    shell = get_ipython()
    return getattr(shell, "execution_count", None)


def show(obj: Any) -> None:
    """Display a live view of a Job or Group in the current cell (called by the magics), and
    remember it, so the cell's value (the same object) is not shown a second time."""
    from .widgets import GroupWidget, JobWidget

    (JobWidget(obj) if isinstance(obj, Job) else GroupWidget(obj)).show()
    if len(_shown_here) > 1000:
        _shown_here.clear()
    _shown_here.add((_execution(), _key(obj)))


def _display(obj: Any) -> None:
    """The kernel's display of a Job or Group: a live view, unless this is the cell's value and a
    magic of this same cell showed it already."""
    from .widgets import _as_cell_value

    mark = (_execution(), _key(obj))
    if _as_cell_value() and mark in _shown_here:
        _shown_here.discard(mark)
        return
    show(obj)
    _shown_here.discard(mark)


def job_bundle(job: Job) -> Any:
    """Outside a kernel (terminal IPython): the job as text."""
    from .state import JobState
    from .widgets import call_texts

    state = JobState(job.ref, call_texts.get(job.id) or job.description)
    state.load(job)
    return {"text/plain": state.text()}


def group_bundle(group: Group) -> Any:
    from .state import GroupState
    from .widgets import GroupWidget

    state = GroupState(group.ids, GroupWidget._call(group.jobs))
    if group.jobs:
        state.load(group.jobs[0].connection)
    return {"text/plain": state.text()}


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics and the display of jobs and groups."""
    from .magics import NbqueueMagics

    ipython.register_magics(NbqueueMagics)
    formatter = ipython.display_formatter.mimebundle_formatter
    formatter.for_type(Job, job_bundle)
    formatter.for_type(Group, group_bundle)
    if _in_kernel():
        from . import kernel
        from .widgets import detach_all

        shows = ipython.display_formatter.ipython_display_formatter
        shows.for_type(Job, _display)
        shows.for_type(Group, _display)
        kernel.before_shutdown(detach_all)
        kernel.button_subshell()  # started now, so the first click needs no wait
    for name, hook in (("pre_run_cell", _cell_starts), ("post_run_cell", _catch_up)):
        if hook not in ipython.events.callbacks[name]:
            ipython.events.register(name, hook)


def _cell_starts(info: Any = None) -> None:
    from .widgets import cell

    cell["running"] = True


def _catch_up(result: Any = None) -> None:
    """At the end of each cell, let the widgets show what happened during it (e.g. the job that
    ``result()`` just waited for), and send again what changed while no cell ran, so a headless
    run (nbclient saves only what arrives while a cell runs) keeps the last state. Costs one
    round trip, only while widgets are live."""
    from ..watcher import catch_up
    from .widgets import cell, resend_stopped

    catch_up(2.0)  # returns as soon as the watcher caught up; longer only on a loaded machine
    resend_stopped()
    cell["running"] = False


def unload_ipython_extension(ipython: Any) -> None:
    for formatter in (ipython.display_formatter.mimebundle_formatter,
                      ipython.display_formatter.ipython_display_formatter):
        for kind in (Job, Group):
            formatter.pop(kind, None)
    for name, hook in (("pre_run_cell", _cell_starts), ("post_run_cell", _catch_up)):
        if hook in ipython.events.callbacks[name]:
            ipython.events.unregister(name, hook)
