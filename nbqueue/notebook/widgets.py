"""Live widgets for a job and a group of jobs, driven by the process's one ``Watcher`` thread.

Created and displayed on the kernel's main thread; after that only the watcher thread writes to
them, a few times a second at most. Without a widget frontend they show as HTML or text.
"""
from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from typing import Any, Callable, Optional

import ipywidgets as w

from ..errors import InvalidTransition, NbqueueError
from ..group import Group
from ..job import Job
from ..schema import CANCELED, DEFERRED, EXPIRED, FAILED, FINISHED, LOG, PROGRESS, QUEUED, SCHEDULED, STARTED, TERMINAL
from ..watcher import Subscription, get_watcher
from . import kernel
from .state import COLORS, GroupState, JobState, esc

CLOCK_STARTED = 0.5  # seconds between re-renders of a running job's clock (with no event)
CLOCK_WAITING = 1.0  # of a waiting job's (queued, scheduled) or a group's

call_texts: dict = {}  # job id -> the call as the user wrote it (set by %enqueue), for display
cell = {"running": False}  # set by the extension's pre/post_run_cell hooks
# rendered while no cell ran, to send again within the next cell; held strongly (a view that ended is
# referenced by nothing else, and must not be collected before its last state went out)
_unsent: set[LiveView] = set()
_shown: weakref.WeakSet[LiveView] = weakref.WeakSet()  # displayed views, to detach at shutdown


def remember_call(job_id: str, text: str) -> None:
    if len(call_texts) > 10_000:
        call_texts.pop(next(iter(call_texts)))
    call_texts[job_id] = text


def remember_group(group: Group, text: str) -> None:
    if group.jobs:
        remember_call(group.jobs[0].id + "#group", text)


class LiveView:
    """A widget box fed by watcher events, re-rendered at most every ``MIN_GAP`` s (coalesced).

    Subclasses define ``box``, ``apply(event)`` (true: render now, e.g. a change of status),
    ``render()``, ``html()``, ``text()``,
    ``ticking()`` (re-render on each tick, e.g. to advance a clock) and ``done()`` (stop watching).

    ``show()`` displays it with a display id. While it is live the output is the widget (with
    HTML and text fallbacks); when it is done the output is replaced by a static report (what a
    saved notebook shows without a kernel or widget manager), and when the kernel shuts down
    first, by a report that says the view is detached and what it last knew.
    """

    MIN_GAP = 0.2
    # what a subclass defines
    box: w.Box
    apply: Callable[[dict], bool]
    render: Callable[[], None]
    html: Callable[[], str]
    text: Callable[[], str]
    ticking: Callable[[], bool]
    done: Callable[[], bool]

    def __init__(self, connection: Any):
        self._watcher = get_watcher(connection)
        self._sub: Optional[Subscription] = None
        self._dirty = False
        self._last = 0.0
        self._lock = threading.Lock()  # button handlers (a subshell thread) vs the watcher thread
        self.display_ids: list = []  # one per place this view is shown
        self.reported = False  # the output is the static report of the final state

    def watch(self, job_ids: Iterable[str] = (), all_jobs: bool = False) -> None:
        if self._sub is None or self._sub.closed:
            self._sub = self._watcher.watch(job_ids, self._on_event, self._on_tick, all_jobs)

    def stop(self) -> None:
        """Stop following events (the widget keeps its last state)."""
        if self._sub is not None:
            self._sub.close()

    @property
    def live(self) -> bool:
        return self._sub is not None and not self._sub.closed

    def _on_event(self, event: dict) -> None:
        with self._lock:
            urgent = self.apply(event)
        if urgent or time.monotonic() - self._last >= self.MIN_GAP:
            self._render()
        else:
            self._dirty = True

    def _on_tick(self) -> None:
        if self._dirty or self.ticking():
            self._render()
        elif self in _unsent and cell["running"]:
            self.resend()

    def _render(self) -> None:
        self._dirty, self._last = False, time.monotonic()
        with self._lock:
            self.render()
            self._update_detached()
        if self.done():
            if self.settled():
                self.stop()
            self._report()
        elif self.reported:  # it ended, then came back (a requeue): the live widget again
            self._unreport()
        if cell["running"]:
            _unsent.discard(self)
        else:  # a headless run (nbclient) saves only what is sent while a cell runs
            _unsent.add(self)

    def show(self) -> LiveView:
        """Display this view in the current cell (the widget while live, else the report)."""
        from IPython.display import display

        with self._lock:  # the watcher thread must not report before the display exists
            self.display_ids.append(uuid.uuid4().hex)
            _shown.add(self)
            self.reported = self.reported or self.done()
            display(self.report() if self.reported else self._repr_mimebundle_(), raw=True,
                    display_id=self.display_ids[-1])
        return self

    def _ipython_display_(self) -> None:
        """``display(view)`` or a cell's value: shown, unless it is the value of the cell whose
        magic showed it already (``d = %nbqueue`` and a bare ``%nbqueue`` both show it once)."""
        if self.display_ids and _as_cell_value():
            return
        self.show()

    def report(self, detached: bool = False) -> dict:
        """The static output: the current state as HTML and text, no widget."""
        head = ""
        if detached:
            head = ('<div class="nbq-detached-note" style="color:#7f7f7f">detached: the kernel stopped, so this '
                    f"view no longer updates; last known state below. {self.follow_hint()}</div>")
        classes = "nbq-report nbq-detached" if detached else "nbq-report"
        text = self.text() + (" [detached: the kernel stopped]" if detached else "")
        return {"text/html": f'<div class="{classes}">{head}{self.html()}</div>', "text/plain": text}

    def follow_hint(self) -> str:
        """How to follow this again from a new kernel (HTML)."""
        return ""

    def detached_note(self) -> w.HTML:
        """A note the page shows only once ipywidgets marks the view disconnected (after a kernel
        restart JupyterLab drops the old kernel's last messages, so the 'detached' report of
        ``detach`` may never arrive): it says so, and the buttons are hidden. ``render`` keeps its
        last known state current (``last_known``)."""
        self._detached = _html("nbq-detached")
        return self._detached

    def last_known(self) -> str:
        """The state the detached note names, e.g. "started 16/40" (plain text)."""
        return ""

    def _update_detached(self) -> None:
        note = getattr(self, "_detached", None)
        if note is not None:
            _set(note, value=f"{DETACHED_CSS}<div style='color:#7f7f7f'>detached: the kernel restarted or stopped, so "
                             f"this view no longer updates; last known state: <b>{esc(self.last_known())}</b>. "
                             f"{self.follow_hint()}</div>")

    def _report(self) -> None:
        """Replace the widget by the static report (once; again by ``resend``)."""
        if not self.display_ids:
            return
        from IPython.display import update_display

        with self._lock:
            self.reported = True
            for display_id in self.display_ids:
                update_display(self.report(), raw=True, display_id=display_id)

    def settled(self) -> bool:
        """Whether nothing can change any more once ``done()`` (default: yes). A failed or canceled
        job can be requeued: its view keeps listening, and shows the widget again if it is."""
        return True

    def _unreport(self) -> None:
        from IPython.display import update_display

        with self._lock:
            self.reported = False
            for display_id in self.display_ids:
                update_display(self._repr_mimebundle_(), raw=True, display_id=display_id)

    def detach(self) -> None:
        """The kernel is going away: stop, and leave the last known state as a static report."""
        self.stop()
        if not self.reported:
            from IPython.display import update_display

            for display_id in self.display_ids:
                update_display(self.report(detached=True), raw=True, display_id=display_id)

    def resend(self) -> None:
        """Send the whole state again (within a cell, so a headless run saves the last state).
        Called by the watcher thread, or on the main thread once the view stopped watching."""
        _unsent.discard(self)
        if self.reported:
            self._report()
            return
        todo, seen = [self.box], set()
        while todo:
            widget = todo.pop()
            if id(widget) in seen:
                continue
            seen.add(id(widget))
            widget.send_state()
            todo += [getattr(widget, name) for name in ("layout", "style")
                     if isinstance(getattr(widget, name, None), w.Widget)]
            todo += list(getattr(widget, "children", ()))

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        data = self.box._repr_mimebundle_(**kwargs) or {}
        data["text/html"] = self.html()
        data["text/plain"] = self.text()
        return data

    def __repr__(self) -> str:
        return self.text()


DETACHED_CSS = ("<style>.nbq-view > .nbq-detached {display: none}"
                ".jupyter-widgets-disconnected.nbq-view > .nbq-detached {display: block}"
                ".jupyter-widgets-disconnected.nbq-view .widget-button {display: none}</style>")


def _as_cell_value() -> bool:
    """Whether the kernel's displayhook is writing the cell's value (``Out[n]``) right now."""
    from IPython import get_ipython

    return getattr(getattr(get_ipython(), "displayhook", None), "msg", None) is not None


def _html(cls: str) -> w.HTML:
    widget = w.HTML()
    widget.add_class(cls)
    return widget


def _show(widget: w.Widget, visible: bool) -> None:
    display = None if visible else "none"
    if widget.layout.display != display:
        widget.layout.display = display


def _set(widget: w.Widget, **values: Any) -> None:
    """Set only the traits that change (each change is a message to the browser)."""
    changed = {k: v for k, v in values.items() if getattr(widget, k) != v}
    if changed:
        with widget.hold_sync():
            for name, value in changed.items():
                setattr(widget, name, value)


IDLE_ONLY = " (when idle)"  # added to a button's label where clicks wait for the running cell


def answer_clicks_at_once(*buttons: w.Button) -> None:
    """Have the buttons' clicks handled at once, even while a cell runs (a kernel subshell); where
    the kernel can't, their labels say the click waits until the kernel is idle."""
    for button in buttons:
        if not kernel.route_clicks(button):
            button.description += IDLE_ONLY
            button.tooltip = ("this kernel handles clicks between cells only (ipykernel 7 or newer handles "
                              "them at once)")


class JobWidget(LiveView):
    """One job: status, times, worker, progress, output tail, result or traceback, cancel/requeue."""

    def __init__(self, job: Job, call: Optional[str] = None):
        super().__init__(job.connection)
        self.job = job
        self.state = JobState(job.ref, call or call_texts.get(job.id) or job.description)
        self.state.load(job)
        self.header = _html("nbq-job-header")
        self.bar = w.FloatProgress(min=0.0, max=1.0, layout=w.Layout(width="40%"))
        self.bar_text = _html("nbq-job-progress")
        self.output = _html("nbq-job-output")
        self.outcome = _html("nbq-job-outcome")
        self.cancel_button = w.Button(description="Cancel", icon="stop", layout=w.Layout(width="auto"))
        self.requeue_button = w.Button(description="Requeue", icon="redo", layout=w.Layout(width="auto"))
        self.note = _html("nbq-job-note")
        self.cancel_button.on_click(lambda _: self._act(lambda: self.job.cancel(wait=0), "cancel"))
        self.requeue_button.on_click(lambda _: self._act(self.job.requeue, "requeue"))
        answer_clicks_at_once(self.cancel_button, self.requeue_button)
        self.progress_row = w.HBox([self.bar, self.bar_text])
        self.box = w.VBox([self.detached_note(), self.header, self.progress_row, self.output, self.outcome,
                           w.HBox([self.cancel_button, self.requeue_button, self.note])])
        self.box.add_class("nbq-job")
        self.box.add_class("nbq-view")
        self.state.check_workers(self._watcher.connection)
        self.render()
        self._update_detached()
        if not (self.done() and self.settled()):
            self.watch([job.ref])

    def _act(self, action: Any, verb: str) -> None:
        """A button click (on nbqueue's subshell thread, or the main one): act, note a refusal; the
        watcher thread renders."""
        try:
            action()
            note = None
        except (InvalidTransition, NbqueueError) as exc:
            note = f"can't {verb}: {exc}"
        with self._lock:
            self.state.note = note
            self.state.load(self.job)  # the state after the action (no widget is written here)
        self._dirty = True
        if not self.live:  # an ended job being requeued: follow it again
            self.watch([self.job.ref])

    def apply(self, event: dict) -> bool:
        if not isinstance(event, dict):  # any JSON may come on a job's channel
            return False
        if event.get("status") in (PROGRESS, LOG):
            self.state.apply(event)
            return False
        self.state.load(self.job)  # a change of state, or a sync: one round trip reads it all
        return True

    def ticking(self) -> bool:
        """The clock advances (about once a second while waiting); a waiting job's queue is
        checked for a live worker (a read shared by every view, at most every 2 s)."""
        status = self.state.status
        if status in (QUEUED, SCHEDULED):
            with self._lock:
                changed = self.state.check_workers(self._watcher.connection)
            return changed or time.monotonic() - self._last >= CLOCK_WAITING
        return status == STARTED and time.monotonic() - self._last >= CLOCK_STARTED

    def done(self) -> bool:
        return self.state.status in TERMINAL or self.state.status == EXPIRED

    def settled(self) -> bool:
        return self.state.status in (FINISHED, EXPIRED)  # a failed or canceled one may be requeued

    def render(self) -> None:
        s = self.state
        _set(self.header, value=s.header_html())
        fraction = s.fraction()
        if s.progress:  # every number was checked (clean_progress): junk from a job can't raise here
            _set(self.bar, max=1.0, value=fraction or 0.0,
                 bar_style="success" if s.status == FINISHED else "danger" if s.status == FAILED else "")
            _set(self.bar_text, value=esc(s.progress_text()))
        _show(self.bar, fraction is not None)
        _show(self.progress_row, bool(s.progress))
        _set(self.output, value=s.output_html())
        _show(self.output, bool(s.lines))
        _set(self.outcome, value=s.outcome_html())
        _show(self.outcome, bool(s.result is not None or s.error))
        _show(self.cancel_button, s.status in (DEFERRED, QUEUED, SCHEDULED, STARTED))
        _show(self.requeue_button, s.status in (FAILED, CANCELED))
        _set(self.note, value=f"<span style='color:{COLORS[FAILED]}'>{esc(s.note)}</span>" if s.note else "")

    def html(self) -> str:
        return self.state.html()

    def text(self) -> str:
        return self.state.text()

    def last_known(self) -> str:
        progress = self.state.progress_text() if self.state.progress else ""
        return f"{self.state.status} {progress}".strip()

    def follow_hint(self) -> str:
        return (f"The job goes on on its worker; follow it from a new kernel with "
                f"<code>nbqueue.Job.fetch({self.job.id!r})</code>.")


class GroupWidget(LiveView):
    """Many jobs as one: a bar, counts per status, throughput, the first failure, cancel all."""

    def __init__(self, group: Group, call: Optional[str] = None):
        jobs = list(group)
        super().__init__(jobs[0].connection if jobs else None)
        self.group = group
        self.state = GroupState([j.ref for j in jobs], call or self._call(jobs))
        self.state.load(self._conn())
        self.header = _html("nbq-group-header")
        self.bar = w.IntProgress(min=0, max=max(1, len(jobs)), layout=w.Layout(width="40%"))
        self.bar_text = _html("nbq-group-progress")
        self.failure = _html("nbq-group-failure")
        self.cancel_button = w.Button(description="Cancel all", icon="stop", layout=w.Layout(width="auto"))
        self.note = _html("nbq-group-note")
        self.cancel_button.on_click(lambda _: self._cancel_all())
        answer_clicks_at_once(self.cancel_button)
        self.box = w.VBox([self.detached_note(), self.header, w.HBox([self.bar, self.bar_text]), self.failure,
                           w.HBox([self.cancel_button, self.note])])
        self.box.add_class("nbq-group")
        self.box.add_class("nbq-view")
        self.state.check_workers(self._conn())
        self.render()
        self._update_detached()
        if not (self.done() and self.settled()):
            self.watch(self.state.ids)

    @staticmethod
    def _call(jobs: list) -> str:
        if not jobs:
            return "empty group"
        return "map " + call_texts.get(jobs[0].id + "#group", jobs[0]._func())

    def _conn(self) -> Any:
        return self._watcher.connection

    def _cancel_all(self) -> None:
        canceled = self.group.cancel()
        with self._lock:
            self.state.note = f"canceled {canceled} job(s) (running ones stop shortly)"
        self._dirty = True

    def apply(self, event: dict) -> bool:
        self.state.apply(event)
        return False  # many jobs: coalesce

    def ticking(self) -> bool:
        """The clock, rate and ETA advance (about once a second); waiting jobs' queues are checked
        for a live worker (shared, at most every 2 s)."""
        with self._lock:
            changed = self.state.check_workers(self._conn())
        return changed or time.monotonic() - self._last >= CLOCK_WAITING

    def _on_tick(self) -> None:
        with self._lock:
            changed = self.state.reload(self._conn())
        self._dirty = self._dirty or changed
        super()._on_tick()

    def done(self) -> bool:
        return self.state.all_done()

    def settled(self) -> bool:
        counts = self.state.counts()
        return not (counts[FAILED] or counts[CANCELED])  # one of those may be requeued

    def render(self) -> None:
        s = self.state
        _set(self.header, value=s.header_html())
        failed = s.counts().get(FAILED, 0)
        _set(self.bar, value=s.done_count(),
             bar_style="danger" if failed else "success" if s.all_done() else "")
        _set(self.bar_text, value=esc(s.progress_text()))
        s.read_failure(self._conn())  # once per new first failure
        _set(self.failure, value=s.failure_html())
        _show(self.failure, bool(s.first_failure_id))
        _show(self.cancel_button, not s.all_done())
        _set(self.note, value=esc(s.note or ""))

    def html(self) -> str:
        return self.state.html()

    def text(self) -> str:
        return self.state.text()


    def last_known(self) -> str:
        return self.state.progress_text()

    def follow_hint(self) -> str:
        return ("Its jobs go on on the workers; <code>nbqueue.Job.fetch(id)</code> follows one from a new kernel "
                "(the ids are in <code>group.ids</code>).")


def resend_stopped() -> None:
    """Main thread, at the end of a cell: resend views that ended while no cell ran."""
    for view in list(_unsent):
        if not view.live:
            view.resend()


def detach_all() -> None:
    """The kernel shuts down: every displayed view that is still live becomes a 'detached' report."""
    for view in list(_shown):
        try:
            view.detach()
        except Exception:  # one broken view must not keep the others attached
            pass
