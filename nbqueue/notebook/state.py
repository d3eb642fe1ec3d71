"""What the widgets show, as plain data read from Redis and events, rendered as HTML or text.

No widgets here: the same state gives the live widget its values and the notebook its
``text/html`` and ``text/plain`` fallbacks.
"""
from __future__ import annotations

import html
import json
import time
from collections import Counter, deque
from typing import Any, Optional

from .. import keys
from ..job import CANCELED, FAILED, FINISHED, QUEUED, SCHEDULED, STARTED, Job

COLORS = {QUEUED: "#1f77b4", SCHEDULED: "#8c564b", STARTED: "#e67e00", FINISHED: "#2ca02c", FAILED: "#d62728",
          CANCELED: "#7f7f7f", "expired": "#7f7f7f", "?": "#7f7f7f"}
TAIL = 30  # output lines a widget shows (job.logs() has them all)
REPR_LIMIT = 2000
_FIELDS = ("status", "queue", "worker", "attempt", "enqueued_at", "started_at", "ended_at", "progress", "exc", "error")
_PRE = "margin:2px 0;padding:4px 6px;font-size:12px;white-space:pre-wrap;max-height:14em;overflow:auto"


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def status_badge(status: str) -> str:
    return (f'<span class="nbq-status nbq-status-{esc(status)}" style="background:{COLORS.get(status, "#7f7f7f")};'
            f'color:#fff;border-radius:3px;padding:0 6px">{esc(status)}</span>')


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _float(value: Optional[str]) -> Optional[float]:
    return float(value) if value else None


class JobState:
    """One job as a widget shows it."""

    def __init__(self, job_id: str, call: str):
        self.id, self.call = job_id, call
        self.status, self.queue, self.worker, self.attempt = "?", None, None, 0
        self.enqueued: Optional[float] = None
        self.started: Optional[float] = None
        self.ended: Optional[float] = None
        self.progress: Optional[dict] = None
        self.lines: deque = deque(maxlen=TAIL)
        self.result: Optional[str] = None  # repr of the return value
        self.exc: Optional[str] = None
        self.error: Optional[str] = None  # the worker's traceback
        self.note: Optional[str] = None  # what a button could not do

    def load(self, job: Job) -> None:
        """Read the whole state (one round trip, plus the result of a finished job)."""
        with job.connection.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.job(self.id), *_FIELDS)
            pipe.lrange(keys.log(self.id), -TAIL, -1)
            values, lines = pipe.execute()
        f = dict(zip(_FIELDS, (v.decode(errors="replace") if v is not None else None for v in values)))
        if f["status"] is None:
            self.status = "expired"
            return
        self.status, self.queue, self.worker = f["status"], f["queue"], f["worker"]
        self.attempt = int(f["attempt"] or 0)
        self.enqueued, self.started, self.ended = (_float(f[k]) for k in ("enqueued_at", "started_at", "ended_at"))
        self.progress = json.loads(f["progress"]) if f["progress"] else None
        self.lines.clear()
        self.lines.extend(line.decode(errors="replace") for line in lines)
        self.exc = f["exc"]
        self.error = f["error"] if self.status == FAILED else None
        self.result = self._result(job) if self.status == FINISHED else None

    @staticmethod
    def _result(job: Job) -> str:
        try:
            return short(repr(job.result(timeout=0)), REPR_LIMIT)
        except Exception as exc:  # e.g. a class the kernel can't import
            return f"(the result can't be loaded here: {type(exc).__name__}: {exc})"

    def apply(self, event: dict) -> None:
        """A progress or log event, applied without a Redis read."""
        if event.get("status") == "progress":
            self.progress = {k: event.get(k) for k in ("done", "total", "message")}
        elif event.get("status") == "log":
            self.lines.extend(event.get("lines") or ())

    def elapsed(self, now: Optional[float] = None) -> str:
        now = time.time() if now is None else now
        if self.status == QUEUED and self.enqueued:
            return f"waiting {duration(now - self.enqueued)}"
        if self.started is None:
            return ""
        return duration((self.ended if self.status != STARTED and self.ended else now) - self.started)

    def progress_text(self) -> str:
        p = self.progress or {}
        done, total, message = p.get("done"), p.get("total"), p.get("message")
        text = f"{done:g}/{total:g} ({100 * done / total:.0f}%)" if total else f"{done:g}" if done is not None else ""
        return f"{text} {message}" if message else text

    def header_html(self) -> str:
        parts = [status_badge(self.status), f"<b style='white-space: pre-wrap'>{esc(short(self.call))}</b>"]
        parts += [f"queue <code>{esc(self.queue)}</code>"] if self.queue else []
        parts += [f"job <code>{esc(self.id)}</code>"]
        parts += [esc(self.elapsed())] if self.elapsed() else []
        parts += [f"worker {esc(self.worker)}"] if self.worker else []
        parts += [f"attempt {self.attempt}"] if self.attempt > 1 else []
        return '<div style="line-height:1.6">' + " · ".join(parts) + "</div>"

    def output_html(self) -> str:
        if not self.lines:
            return ""
        return f'<pre class="nbq-output" style="{_PRE};background:rgba(127,127,127,.08)">{esc(chr(10).join(self.lines))}</pre>'

    def outcome_html(self) -> str:
        if self.result is not None:
            return f'<pre class="nbq-result" style="{_PRE}">→ {esc(self.result)}</pre>'
        if self.error or (self.status == FAILED and self.exc):
            return (f'<pre class="nbq-traceback" style="{_PRE};color:{COLORS[FAILED]};'
                    f'background:rgba(214,39,40,.06)">{esc((self.error or self.exc).rstrip())}</pre>')
        return ""

    def html(self) -> str:
        """The whole state as one HTML block, with the widget's class names (the static report)."""
        body = f'<div class="nbq-job-header">{self.header_html()}</div>'
        if self.progress:
            body += f'<div class="nbq-job-progress">progress: {esc(self.progress_text())}</div>'
        if self.lines:
            body += f'<div class="nbq-job-output">{self.output_html()}</div>'
        outcome = self.outcome_html()
        if outcome:
            body += f'<div class="nbq-job-outcome">{outcome}</div>'
        return f'<div class="nbq-job">{body}</div>'

    def text(self) -> str:
        line = f"Job {self.id} {short(self.call)}" + (f" on {self.queue}" if self.queue else "") + f": {self.status}"
        elapsed = self.elapsed()
        line += f" ({elapsed})" if elapsed else ""
        if self.progress and self.status == STARTED:
            line += f", progress {self.progress_text()}"
        if self.result is not None:
            line += f" → {short(self.result, 200)}"
        elif self.status == FAILED:
            line += f": {self.exc or 'failed'}"
        return line


class GroupState:
    """Many jobs as one: statuses, times, the first failure (in the group's order)."""

    def __init__(self, ids: list, call: str):
        self.ids, self.call = ids, call
        self.index = {job_id: i for i, job_id in enumerate(ids)}
        self.status = {job_id: "?" for job_id in ids}
        self.pending: set = set()  # ids to re-read (subscribed or re-subscribed)
        self.first_start: Optional[float] = None
        self.last_end: Optional[float] = None
        self.shown_at = time.time()
        self.first_failure_id: Optional[str] = None
        self.first_failure: Optional[str] = None  # its traceback, read once
        self.note: Optional[str] = None

    def load(self, conn: Any, ids: Optional[list] = None) -> bool:
        """Re-read the status and times of ``ids`` (default: all); whether anything changed."""
        ids = self.ids if ids is None else ids
        with conn.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keys.job(job_id), "status", "started_at", "ended_at")
            replies = pipe.execute()
        changed = False
        for job_id, (status, started, ended) in zip(ids, replies):
            new = status.decode() if status else "expired"
            changed = changed or new != self.status[job_id]
            self._set(job_id, new, _float(started.decode()) if started else None,
                      _float(ended.decode()) if ended else None)
        return changed

    def reload(self, conn: Any) -> bool:
        ids, self.pending = list(self.pending), set()
        return self.load(conn, ids) if ids else False

    def apply(self, event: dict) -> None:
        job_id, status = event.get("id"), event.get("status")
        if job_id not in self.index:
            return
        if status == "sync":
            self.pending.add(job_id)
        elif status == "retrying":  # failed, a retry is scheduled
            self._set(job_id, SCHEDULED, None, None)
        elif status in COLORS:
            t = _float(event.get("t"))
            self._set(job_id, status, t if status == STARTED else None,
                      t if status in (FINISHED, FAILED, CANCELED) else None)

    def _set(self, job_id: str, status: str, started: Optional[float], ended: Optional[float]) -> None:
        self.status[job_id] = status
        if started and (self.first_start is None or started < self.first_start):
            self.first_start = started
        if ended and (self.last_end is None or ended > self.last_end):
            self.last_end = ended
        first = self.first_failure_id
        if status == FAILED and (first is None or self.index[job_id] < self.index[first]):
            self.first_failure_id, self.first_failure = job_id, None
        elif first == job_id and status != FAILED:  # requeued
            self.first_failure_id = self.first_failure = None

    def counts(self) -> Counter:
        return Counter(self.status.values())

    def done_count(self) -> int:
        c = self.counts()
        return c[FINISHED] + c[FAILED] + c[CANCELED] + c["expired"]

    def all_done(self) -> bool:
        return self.done_count() == len(self.ids)

    def throughput(self) -> Optional[float]:
        finished = self.counts()[FINISHED]
        if not finished or self.first_start is None:
            return None
        end = self.last_end if self.all_done() and self.last_end else time.time()
        return finished / max(end - self.first_start, 1e-3)

    def header_html(self) -> str:
        c = self.counts()
        order = [QUEUED, SCHEDULED, STARTED, FINISHED, FAILED, CANCELED, "expired", "?"]
        counts = " ".join(f"{status_badge(s)} {c[s]}" for s in order if c[s])
        rate = self.throughput()
        parts = [f"<b style='white-space: pre-wrap'>{esc(short(self.call))}</b>", f"{self.done_count()}/{len(self.ids)} done", counts]
        parts += [f"{rate:.1f} jobs/s"] if rate else []
        return '<div style="line-height:1.8">' + " · ".join(parts) + "</div>"

    def failure_html(self) -> str:
        if not self.first_failure:
            return ""
        return (f"<div>first failure: job <code>{esc(self.first_failure_id)}</code> "
                f"(#{self.index[self.first_failure_id]})</div><pre class='nbq-traceback' style='{_PRE};"
                f"color:{COLORS[FAILED]}'>{esc(self.first_failure.rstrip())}</pre>")

    def html(self) -> str:
        failure = f'<div class="nbq-group-failure">{self.failure_html()}</div>' if self.first_failure else ""
        return f'<div class="nbq-group"><div class="nbq-group-header">{self.header_html()}</div>{failure}</div>'

    def text(self) -> str:
        c = self.counts()
        counts = ", ".join(f"{n} {s}" for s, n in sorted(c.items()))
        return f"Group {short(self.call)}: {self.done_count()}/{len(self.ids)} done ({counts})"
