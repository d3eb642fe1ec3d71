"""``%nbqueue`` / ``nbqueue.dashboard()``: queues, live workers and recent jobs, live.

Recent jobs come from every job's events (the watcher's ``all_jobs`` subscription); queue
counts and workers from ``nbqueue.info.snapshot()``, re-read at most twice a second while events
arrive and every few seconds otherwise (workers change only with their heartbeats).
"""
from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from typing import Any, Optional

import ipywidgets as w

from .. import keys
from ..info import render as render_text
from ..info import snapshot
from .state import duration, esc, short, status_badge
from .widgets import LiveView, _html, _set

_open: "weakref.WeakSet[Dashboard]" = weakref.WeakSet()
_TABLE = 'style="border-collapse:collapse;font-size:12px;margin:2px 0 8px 0"'
_STATES = ("deferred", "queued", "scheduled", "retrying", "started", "finished", "failed", "canceled")


def _table(head: list, rows: list) -> str:
    cell = 'style="padding:1px 10px 1px 0;text-align:left"'
    out = "".join(f"<th {cell}>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td {cell}>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table {_TABLE}><tr>{out}</tr>{body}</table>"


class Dashboard(LiveView):
    """A live view of queues (counts), workers (host, current job, last heartbeat) and recent jobs.
    Showing a new dashboard stops the previous ones; ``stop()`` stops this one."""

    REFRESH = 3.0  # seconds between snapshots when nothing happens
    BUSY_REFRESH = 0.5  # at most this often while events arrive
    RECENT = 15

    def __init__(self, connection: Any = None):
        super().__init__(connection)
        self.conn = self._watcher.connection
        self.snap = snapshot(self.conn)
        self._snap_at, self._stale = time.monotonic(), False
        self.recent: "OrderedDict[str, dict]" = OrderedDict()
        self._funcs: dict = {}
        self.body = _html("nbq-dashboard")
        self.box = w.VBox([self.body])
        self.render()
        for old in list(_open):
            old.stop()
        _open.add(self)
        self.watch(all_jobs=True)

    def apply(self, event: dict) -> bool:
        job_id, status = event.get("id"), event.get("status")
        if status == "sync" or not job_id:
            self._stale = True
        elif status in _STATES:
            entry = self.recent.pop(job_id, {"id": job_id})
            entry.update(status=status, t=float(event.get("t") or time.time()))
            for name in ("worker", "queue"):
                entry[name] = event.get(name) or entry.get(name)
            self.recent[job_id] = entry
            while len(self.recent) > self.RECENT:
                self.recent.popitem(last=False)
            self._stale = True
        elif status == "progress" and job_id in self.recent:
            done, total = event.get("done"), event.get("total")
            self.recent[job_id]["progress"] = f"{done}/{total}" if total else f"{done}"
        return False

    def ticking(self) -> bool:
        return True  # "seen 2 s ago" and ages advance

    def done(self) -> bool:
        return False

    def _on_tick(self) -> None:
        age = time.monotonic() - self._snap_at
        if age >= self.REFRESH or (self._stale and age >= self.BUSY_REFRESH):
            self.snap, self._snap_at, self._stale = snapshot(self.conn), time.monotonic(), False
        super()._on_tick()

    def render(self) -> None:
        missing = [i for i in self.recent if i not in self._funcs]
        if missing:
            with self.conn.pipeline(transaction=False) as pipe:
                for job_id in missing:
                    pipe.hmget(keys.job(job_id), "func", "queue")
                for job_id, (func, queue) in zip(missing, pipe.execute()):
                    self._funcs[job_id] = (func or b"?").decode().replace(":", ".")
                    entry = self.recent[job_id]
                    entry["queue"] = entry.get("queue") or (queue or b"").decode() or None
        _set(self.body, value=self.html())

    def html(self, now: Optional[float] = None) -> str:
        now = time.time() if now is None else now
        queues = _table(["queue", "queued", "started", "failed"],
                        [[f"<code>{esc(q.name)}</code>", q.queued, q.started, q.failed] for q in self.snap.queues])
        workers = _table(["worker", "host", "mode", "queues", "running", "heartbeat"], [
            [esc(wk.name), esc(wk.host), esc(wk.mode), esc(",".join(wk.queues)),
             "<br>".join(f"<code>{esc(i)}</code> {esc(f.replace(':', '.'))}" + (f" ({duration(now - t)})" if t else "")
                         for i, f, t in wk.jobs) or "idle",
             f"{wk.seen_ago:.1f} s ago"] for wk in self.snap.workers])
        recent = _table(["job", "function", "queue", "status", "when", "worker"], [
            [f"<code>{esc(short(e['id'], 34))}</code>", esc(self._funcs.get(e["id"], "")), esc(e.get("queue") or ""),
             status_badge(e["status"]) + (f" {esc(e['progress'])}" if e.get("progress") and e["status"] == "started" else ""),
             f"{duration(now - e['t'])} ago", esc(e.get("worker") or "")]
            for e in reversed(self.recent.values())])
        return (f'<div class="nbq-dashboard-body"><b>Queues</b>{queues if self.snap.queues else "<div>(no queues yet)</div>"}'
                f'<b>Workers ({len(self.snap.workers)})</b>'
                f'{workers if self.snap.workers else "<div>(none: start one with <code>nbqueue worker</code>)</div>"}'
                f'<b>Recent jobs</b>{recent if self.recent else "<div>(none since this view was shown)</div>"}</div>')

    def text(self) -> str:
        return render_text(self.snap)
