"""``%nbqueue`` / ``nbqueue.dashboard()``: queues, live workers and recent jobs, live.

Recent jobs come from every job's events (the watcher's ``all_jobs`` subscription) and, for
the ones that ended before the view was shown or whose events were missed, from each queue's
``ended`` registry; queue counts (recent finished/failed/canceled, throughput) and workers
from ``nbqueue.info.snapshot()``, re-read at most twice a second while events arrive and every
few seconds otherwise (workers change only with their heartbeats).
"""
from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from typing import Any, Optional

import ipywidgets as w

from .. import keys
from ..heartbeat import HEARTBEAT
from ..info import WINDOW, rate_text, render as render_text, snapshot
from ..schedule import schedules
from ..schema import CHANGES, EXPIRED, FAILED, FINISHED, LOST, PROGRESS, STARTED, SYNC, TERMINAL
from .state import COLORS, _float, clean_progress, duration, esc, number, short, status_badge
from .widgets import LiveView, _html, _set

_open: weakref.WeakSet[Dashboard] = weakref.WeakSet()
_TABLE = 'style="border-collapse:collapse;font-size:12px;margin:2px 0 8px 0"'
_STATES = CHANGES - {LOST}  # the events that move a job in "recent jobs"


def _table(head: list, rows: list) -> str:
    cell = 'style="padding:1px 10px 1px 0;text-align:left"'
    out = "".join(f"<th {cell}>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td {cell}>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table {_TABLE}><tr>{out}</tr>{body}</table>"


def _count(n: int, status: str) -> str:
    return f'<span style="color:{COLORS[status]}">{n}</span>' if n else "0"


class Dashboard(LiveView):
    """A live view of queues (counts), workers (host, current job, last heartbeat) and recent jobs.
    Showing a new dashboard stops the previous ones; ``stop()`` stops this one."""

    REFRESH = 3.0  # seconds between snapshots when nothing happens
    BUSY_REFRESH = 0.5  # at most this often while events arrive
    RECENT = 15

    def __init__(self, connection: Any = None):
        super().__init__(connection)
        self.conn = self._watcher.connection
        self.recent: OrderedDict[str, dict] = OrderedDict()
        self._funcs: dict = {}
        self._take(snapshot(self.conn, self.RECENT))
        self.body = _html("nbq-dashboard")
        self.box = w.VBox([self.body])
        self.render()
        for old in list(_open):
            old.stop()
        _open.add(self)
        self.watch(all_jobs=True)

    def apply(self, event: dict) -> bool:
        if not isinstance(event, dict):  # any JSON may come on a job's channel
            return False
        job_id, status = event.get("id"), event.get("status")
        if status == SYNC or not job_id:
            self._stale = True
        elif status in _STATES:
            if not isinstance(job_id, str) or not keys.REF.fullmatch(job_id):
                return False  # junk on a job channel
            entry = self.recent.pop(job_id, {"id": job_id})
            t = _float(event.get("t"))
            entry.update(status=status, t=t if t is not None else time.time())
            for name in ("worker", "queue"):
                value = event.get(name)
                entry[name] = (str(value) if value else None) or entry.get(name)
            self.recent[job_id] = entry
            while len(self.recent) > self.RECENT:
                self.recent.popitem(last=False)
            self._stale = True
        elif status == PROGRESS and job_id in self.recent:
            progress = clean_progress(event)
            if progress and progress["done"] is not None:
                done, total = number(progress["done"]), progress["total"]
                self.recent[job_id]["progress"] = f"{done}/{number(total)}" if total else done
        return False

    def ticking(self) -> bool:
        return True  # "seen 2 s ago" and ages advance

    def done(self) -> bool:
        return False

    def _take(self, snap: Any) -> None:
        """A new snapshot (and the schedules); jobs that ended unseen (before this view, or events
        missed) join the recent ones, in order of time."""
        self.snap, self._snap_at, self._stale = snap, time.monotonic(), False
        self.schedules = schedules(self.conn)
        added = False
        for job_id, queue, t in snap.recent:
            entry = self.recent.get(job_id)
            if entry is None or (entry["t"] < t - 1 and entry["status"] not in TERMINAL):
                self.recent[job_id] = {"id": job_id, "status": "?", "t": t, "queue": queue, "worker": None}
                self._funcs.pop(job_id, None)  # re-read: its status, worker and function
                added = True
        if added:
            ordered = sorted(self.recent.values(), key=lambda e: e["t"])[-self.RECENT:]
            self.recent = OrderedDict((e["id"], e) for e in ordered)

    def _on_tick(self) -> None:
        age = time.monotonic() - self._snap_at
        if age >= self.REFRESH or (self._stale and age >= self.BUSY_REFRESH):
            with self._lock:
                self._take(snapshot(self.conn, self.RECENT))
        super()._on_tick()

    def render(self) -> None:
        missing = [i for i in self.recent if i not in self._funcs]
        if missing:  # once per job shown
            with self.conn.pipeline(transaction=False) as pipe:
                for job_id in missing:
                    pipe.hmget(keys.job(job_id), "func", "queue", "status", "worker")
                for job_id, (func, queue, status, worker) in zip(missing, pipe.execute()):
                    self._funcs[job_id] = (func or b"?").decode(errors="replace").replace(":", ".")
                    entry = self.recent[job_id]
                    entry["queue"] = entry.get("queue") or (queue or b"").decode(errors="replace") or None
                    entry["worker"] = entry.get("worker") or (worker or b"").decode(errors="replace") or None
                    if entry["status"] == "?":
                        entry["status"] = status.decode(errors="replace") if status else EXPIRED
            if len(self._funcs) > 10 * self.RECENT:  # a long-lived view: keep only what it shows
                self._funcs = {i: self._funcs[i] for i in self.recent if i in self._funcs}
        _set(self.body, value=self.html())

    def html(self, now: Optional[float] = None) -> str:
        now = time.time() if now is None else now
        snap = self.snap
        served = {q for wk in snap.workers for q in wk.queues}
        minutes = f"{WINDOW / 60:g} min"
        queues = _table(["queue", "queued", "started", f"finished ({minutes})", f"failed ({minutes})",
                         f"canceled ({minutes})", "jobs/s (1 min)", "failed kept"], [
            [f"<code>{esc(q.name)}</code>" + ("" if q.name in served or not q.queued else
                                              f' <span style="color:{COLORS[FAILED]}">no live worker</span>'),
             q.queued, q.started, _count(q.finished_recent, FINISHED), _count(q.failed_recent, FAILED),
             q.canceled_recent, rate_text(q.rate) if q.rate else "–", q.failed] for q in snap.queues])
        workers = _table(["worker", "host", "mode", "queues", "running", "jobs done", "up", "heartbeat"], [
            [esc(wk.name), esc(wk.host), esc(wk.mode), esc(",".join(wk.queues)),
             "<br>".join(f"<code>{esc(i)}</code> {esc(f.replace(':', '.'))}"
                         + (f" for {duration(now - t)}" if t else "") for i, f, t in wk.jobs) or "idle",
             wk.done, duration(now - wk.started_at) if wk.started_at else "",
             (f"{wk.seen_ago:.1f} s ago" if wk.seen_ago <= 2 * HEARTBEAT else
              f'<span style="color:{COLORS[STARTED]}">{wk.seen_ago:.1f} s ago</span>')] for wk in snap.workers])
        recent = _table(["job", "function", "queue", "status", "when", "worker"], [
            [f"<code>{esc(short(e['id'], 34))}</code>", esc(self._funcs.get(e["id"], "")), esc(e.get("queue") or ""),
             status_badge(e["status"])
             + (f" {esc(e['progress'])}" if e.get("progress") and e["status"] == STARTED else ""),
             f"{duration(now - e['t'])} ago", esc(e.get("worker") or "")]
            for e in reversed(self.recent.values())])
        return (f'<div class="nbq-dashboard-body"><b>Queues</b>'
                f'{queues if snap.queues else "<div>(no queues yet)</div>"}'
                f'<b>Workers ({len(snap.workers)})</b>'
                f'{workers if snap.workers else "<div>(none: start one with <code>nbqueue worker</code>)</div>"}'
                f'<b>Recent jobs</b>{recent if self.recent else "<div>(no job has run lately)</div>"}'
                f'{self._schedules_html(now)}</div>')

    def _schedules_html(self, now: float) -> str:
        """Each schedule: its rule, queue, next run and last job (nothing if there are none)."""
        if not self.schedules:
            return ""

        def when(moment: Any, ahead: bool) -> str:
            if moment is None:
                return "–"
            seconds = moment.timestamp() - now
            return f"in {duration(seconds)}" if ahead and seconds > 0 else f"{duration(abs(seconds))} ago"

        rows = [[esc(sc.name), f"<code>{esc(sc.func.replace(':', '.'))}</code>", esc(sc.rule),
                 f"<code>{esc(sc.queue)}</code>",
                 when(sc.next_run, True), when(sc.last_run, False),
                 (f"<code>{esc(short(sc.last_job_id, 34))}</code> " + status_badge(sc.last_status or EXPIRED)
                  if sc.last_job_id else "–")
                 + (f' <span style="color:{COLORS[FAILED]}">{esc(short(sc.error, 120))}</span>'
                    if sc.error else "")]
                for sc in self.schedules]
        table = _table(["schedule", "function", "rule", "queue", "next run", "last run", "last job"], rows)
        return f'<b>Schedules ({len(self.schedules)})</b><div class="nbq-schedules">{table}</div>'


    def text(self) -> str:
        return render_text(self.snap)
