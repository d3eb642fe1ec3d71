"""The notebook layer: magics, live widgets for jobs and groups, the dashboard.

Imports the core; the core never imports this. ``%load_ext nbqueue`` calls
:func:`load_ipython_extension`, which registers the magics and makes every ``Job`` and
``Group`` a cell shows display as a live widget (an IPython display formatter, so ``Job``
itself knows nothing of widgets).
"""
from __future__ import annotations

from typing import Any

from ..group import Group
from ..job import Job


def _in_kernel() -> bool:
    """Whether widgets can show here (a Jupyter kernel, not terminal IPython)."""
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def job_bundle(job: Job) -> Any:
    from .state import JobState
    from .widgets import JobWidget, call_texts

    if _in_kernel():
        return JobWidget(job)._repr_mimebundle_()
    state = JobState(job.id, call_texts.get(job.id) or f"{job._func()}(…)")
    state.load(job)
    return {"text/plain": state.text()}


def group_bundle(group: Group) -> Any:
    from .state import GroupState
    from .widgets import GroupWidget

    if _in_kernel():
        return GroupWidget(group)._repr_mimebundle_()
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
    formatter = ipython.display_formatter.mimebundle_formatter
    for kind in (Job, Group):
        formatter.pop(kind, None)
    for name, hook in (("pre_run_cell", _cell_starts), ("post_run_cell", _catch_up)):
        if hook in ipython.events.callbacks[name]:
            ipython.events.unregister(name, hook)
