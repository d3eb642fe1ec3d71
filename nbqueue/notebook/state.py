"""What the widgets show, as plain data read from Redis and events, rendered as HTML or text.

No widgets here: the same state gives the live widget its values and the notebook its
``text/html`` and ``text/plain`` fallbacks.
"""
from __future__ import annotations

import html
import json
import math
import threading
import time
from collections import Counter, deque
from typing import Any, Optional

import redis

from .. import keys
from ..info import served_queues
from ..job import Job
from ..schema import (
    CANCELED,
    DEFERRED,
    EXPIRED,
    FAILED,
    FINISHED,
    LOG,
    ORDER,
    PROGRESS,
    QUEUED,
    RETRYING,
    SCHEDULED,
    STARTED,
    SUMMARY,
    SUMMARY_SIG,
    SYNC,
    TERMINAL,
    VIEW_FIELDS,
)
from . import results

COLORS = {DEFERRED: "#9467bd", QUEUED: "#1f77b4", SCHEDULED: "#8c564b", STARTED: "#e67e00", FINISHED: "#2ca02c",
          FAILED: "#d62728", CANCELED: "#7f7f7f", EXPIRED: "#7f7f7f", "?": "#7f7f7f"}
TAIL = 30  # output lines a widget shows (job.logs() has them all)
LINE_MAX = 4000  # characters of one output line a widget shows
FETCH_MAX = 64 * 1024  # bytes: a result without a usable summary is fetched to be shown only up to this size
_PRE = "margin:2px 0;padding:4px 6px;font-size:12px;white-space:pre-wrap;max-height:14em;overflow:auto"
# the output tail: a box that scrolls, showing its bottom (the newest line) with no script
_TAIL_BOX = "max-height:14em;overflow:auto;display:flex;flex-direction:column-reverse;margin:2px 0"
_TAIL_PRE = ("flex:none;overflow:visible;max-height:none;margin:0;padding:4px 6px;font-size:12px;white-space:pre-wrap;"
             "background:rgba(127,127,127,.08)")
WORKER_CHECK = 2.0  # seconds between two looks at the worker registry (shared by every view)
MESSAGE_LIMIT = 200  # characters of a progress message shown


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def status_badge(status: str) -> str:
    return (f'<span class="nbq-status nbq-status-{esc(status)}" style="background:{COLORS.get(status, "#7f7f7f")};'
            f'color:#fff;border-radius:3px;padding:0 6px">{esc(status)}</span>')


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds) if math.isfinite(seconds) else 0.0
    if seconds > 1e8:
        return "> 3 years"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _float(value: Any) -> Optional[float]:
    """A finite number, or None for anything else (absent, junk, NaN, inf, a bool): never raises."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError, UnicodeDecodeError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def number(value: float) -> str:
    """A count as a person reads it: 16, 0.5, 1.2e+20."""
    return f"{int(value)}" if value.is_integer() and abs(value) < 1e12 else f"{value:.4g}"


def rate_text(rate: float, unit: str = "/s") -> str:
    return f"{rate:.3g}{unit}" if rate < 1000 else f"{rate:.0f}{unit}"


def clean_progress(raw: Any) -> Optional[dict]:
    """A progress record (from the job hash or an event, so from any job) made safe to show:
    ``done`` a finite number or None, ``total`` a finite positive number or None, ``message`` text."""
    if not isinstance(raw, dict):
        return None
    done, total, message = _float(raw.get("done")), _float(raw.get("total")), raw.get("message")
    return {"done": done, "total": total if total is not None and total > 0 else None,
            "message": None if message is None else short(str(message), MESSAGE_LIMIT)}


_served: dict = {}  # id of a client -> (monotonic time read, set of queues served), shared by views
_served_lock = threading.Lock()


def live_queues(conn: Any) -> Optional[set]:
    """The queues a live worker serves, read at most every ``WORKER_CHECK`` s for all views of a
    connection (None: Redis did not answer)."""
    now = time.monotonic()
    with _served_lock:
        seen = _served.get(id(conn))
        if seen is not None and now - seen[0] < WORKER_CHECK:
            return seen[1]
    try:
        queues = served_queues(conn)
    except redis.RedisError:
        return None
    with _served_lock:
        _served[id(conn)] = (now, queues)
    return queues


def no_worker_text(queues: list) -> str:
    if len(queues) == 1:
        return f"no live worker serves queue '{queues[0]}' — start one: nbqueue worker {queues[0]}"
    names = ", ".join(f"'{q}'" for q in queues)
    return f"no live worker serves queues {names} — start one: nbqueue worker {' '.join(queues)}"


def _notice(text: str) -> str:
    return f'<div class="nbq-no-worker" style="color:{COLORS[FAILED]}">⚠ {esc(text)}</div>'


class JobState:
    """One job as a widget shows it."""

    def __init__(self, job_id: str, call: str):
        self.id, self.call = job_id, call  # id: the job's ref (keys.py)
        self.shown = job_id.split(":", 1)[-1]  # its id
        self.status, self.queue, self.worker, self.attempt = "?", None, None, 0
        self.enqueued: Optional[float] = None
        self.started: Optional[float] = None
        self.ended: Optional[float] = None
        self.progress: Optional[dict] = None
        self.lines: deque = deque(maxlen=TAIL)
        self.result: Optional[str] = None  # one line on the return value (its short repr, or what it is)
        self.result_html: Optional[str] = None  # the same with a table head or a bounded repr
        self.exc: Optional[str] = None
        self.error: Optional[str] = None  # the worker's traceback
        self.note: Optional[str] = None  # what a button could not do
        self.due: Optional[float] = None  # when a scheduled job is due on its queue
        self.no_worker: Optional[str] = None  # "no live worker serves queue ..." while that is so
        self._first: Optional[tuple] = None  # (time, done) of the first progress seen, for the rate
        self._latest: Optional[tuple] = None  # (time, done) of the latest

    def load(self, job: Job) -> None:
        """Read the whole state (one round trip, plus the result of a finished job)."""
        with job.connection.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.job(self.id), *VIEW_FIELDS)
            pipe.lrange(keys.log(self.id), -TAIL, -1)
            values, lines = pipe.execute()
        raw = dict(zip(VIEW_FIELDS, values))
        f = {k: v.decode(errors="replace") if v is not None else None for k, v in raw.items()}
        if f["status"] is None:
            self.status = EXPIRED
            return
        self.status, self.queue, self.worker = f["status"], f["queue"], f["worker"]
        attempt = int(_float(f["attempt"]) or 0)
        if attempt != self.attempt:  # a new attempt: its progress starts again
            self._first = self._latest = None
        self.attempt = attempt
        self.enqueued, self.started, self.ended = (_float(f[k]) for k in ("enqueued_at", "started_at", "ended_at"))
        self.due = self._due(job.connection) if self.status == SCHEDULED else None
        try:
            self._set_progress(clean_progress(json.loads(f["progress"])) if f["progress"] else None)
        except ValueError:  # junk written by hand
            self._set_progress(None)
        if self.status != QUEUED and self.status != SCHEDULED:
            self.no_worker = None
        self.lines.clear()
        self.lines.extend(line.decode(errors="replace") for line in lines)
        self.exc = f["exc"]
        self.error = f["error"] if self.status == FAILED else None
        self.result, self.result_html = self._result(job, raw) if self.status == FINISHED else (None, None)

    def _result(self, job: Job, raw: dict) -> tuple:
        """The result's line and HTML, from its signed summary; without one, from its size, and
        from the value itself (fetched, signature checked) only when it is small."""
        try:
            summary = job.checked_summary(raw["status"], raw["attempt"], raw[SUMMARY], raw[SUMMARY_SIG])
            if summary is not None:
                return results.of_summary(summary)
            size = job.connection.hstrlen(keys.job(self.id), "result")
            if size > FETCH_MAX:
                return results.of_line(results.pickled(size, unsigned=bool(raw[SUMMARY])))
            return results.of_value(job.result(timeout=0), size)  # its signature checked before unpickling
        except Exception as exc:  # e.g. a class the kernel can't import
            return results.of_line(f"(the result can't be loaded here: {type(exc).__name__}: {exc})")

    def apply(self, event: dict) -> None:
        """A progress or log event (from any job: checked), applied without a Redis read."""
        if not isinstance(event, dict):
            return
        if event.get("status") == PROGRESS:
            self._set_progress(clean_progress(event))
        elif event.get("status") == LOG:
            lines = event.get("lines")
            if isinstance(lines, list):
                self.lines.extend(short(str(line), LINE_MAX) for line in lines[-TAIL:])

    def _set_progress(self, progress: Optional[dict]) -> None:
        """Keep the first and the latest (time, done) seen, for the rate and the ETA."""
        self.progress = progress
        done = progress and progress["done"]
        if done is None:
            return
        now = time.time()
        if self._latest is not None and done == self._latest[1]:
            return  # the same report again (a re-read): the rate is measured between changes
        if self._first is None or done < self._first[1]:  # the first, or the job started over
            self._first = (now, done)
        self._latest = (now, done)

    def rate(self) -> Optional[float]:
        """Units of progress per second: between the first and latest reports seen, or since the
        job started when only one was seen."""
        if self._latest is None:
            return None
        (t0, d0), (t1, d1) = self._first or self._latest, self._latest
        rate = None
        if t1 - t0 >= 0.2 and d1 > d0:
            rate = (d1 - d0) / (t1 - t0)
        elif self.started and d1 > 0 and t1 - self.started > 0.05:
            rate = d1 / (t1 - self.started)
        return rate if rate is not None and math.isfinite(rate) else None  # huge counts overflow

    def elapsed(self, now: Optional[float] = None) -> str:
        now = time.time() if now is None else now
        if self.status in (QUEUED, DEFERRED) and self.enqueued:
            return f"waiting {duration(now - self.enqueued)}"
        if self.status == SCHEDULED and self.due:
            when = time.strftime("%H:%M:%S", time.localtime(self.due))
            return f"due in {duration(self.due - now)} (at {when})" if self.due > now else f"due since {when}"
        if self.started is None:
            return ""
        return duration((self.ended if self.status != STARTED and self.ended else now) - self.started)

    def progress_text(self, now: Optional[float] = None) -> str:
        """E.g. "16/40 (40%) resizing · 3.2/s · ETA 7.5 s · 5.0 s"; with no total, done and rate."""
        p = self.progress or {}
        done, total, message = p.get("done"), p.get("total"), p.get("message")
        if done is None:
            return message or ""
        parts = [f"{number(done)}/{number(total)} ({min(max(100 * done / total, 0), 999):.0f}%)" if total
                 else number(done)]
        if message:
            parts[0] += f" {message}"
        rate = self.rate()
        if rate:
            parts.append(rate_text(rate))
            if total and self.status == STARTED and done < total:
                parts.append(f"ETA {duration((total - done) / rate)}")
        if self.started is not None:
            parts.append(self.elapsed(now))
        return " · ".join(parts)

    def fraction(self) -> Optional[float]:
        """How far the job is, 0 to 1 (None: no total)."""
        p = self.progress or {}
        if p.get("total") is None or p.get("done") is None:
            return None
        return min(max(p["done"] / p["total"], 0.0), 1.0)

    def check_workers(self, conn: Any) -> bool:
        """While queued or scheduled, note when no live worker serves the queue (a cheap read,
        shared by every view, at most every ``WORKER_CHECK`` s); whether that changed."""
        before = self.no_worker
        if self.status not in (QUEUED, SCHEDULED) or not self.queue:
            self.no_worker = None
        else:
            served = live_queues(conn)
            if served is not None:
                self.no_worker = None if self.queue in served else no_worker_text([self.queue])
        return self.no_worker != before

    def _due(self, conn: Any) -> Optional[float]:
        """When a scheduled job is due (a second round trip, for scheduled jobs only; None if a
        restricted user may not run ZSCORE)."""
        try:
            due = _float(conn.zscore(keys.scheduled(self.queue), keys.split(self.id)[0])) if self.queue else None
        except redis.ResponseError:
            return None
        return due / 1000 if due is not None else None

    def header_html(self) -> str:
        parts = [status_badge(self.status), f"<b style='white-space: pre-wrap'>{esc(short(self.call))}</b>"]
        parts += [f"queue <code>{esc(self.queue)}</code>"] if self.queue else []
        parts += [f"job <code>{esc(self.shown)}</code>"]
        parts += [esc(self.elapsed())] if self.elapsed() else []
        parts += [f"worker {esc(self.worker)}"] if self.worker else []
        parts += [f"attempt {self.attempt}"] if self.attempt > 1 else []
        notice = _notice(self.no_worker) if self.no_worker else ""
        return '<div style="line-height:1.6">' + " · ".join(parts) + "</div>" + notice

    def output_html(self) -> str:
        if not self.lines:
            return ""
        return (f'<div class="nbq-output-scroll" style="{_TAIL_BOX}"><pre class="nbq-output" style="{_TAIL_PRE}">'
                f'{esc(chr(10).join(self.lines))}</pre></div>')

    def outcome_html(self) -> str:
        if self.result is not None:
            return self.result_html or f'<pre class="nbq-result" style="{_PRE}">→ {esc(self.result)}</pre>'
        if self.error or (self.status == FAILED and self.exc):
            return (f'<pre class="nbq-traceback" style="{_PRE};color:{COLORS[FAILED]};'
                    f'background:rgba(214,39,40,.06)">{esc((self.error or self.exc or "").rstrip())}</pre>')
        return ""

    def progress_html(self) -> str:
        """The bar and its text, as static HTML (the widget has its own bar)."""
        if not self.progress:
            return ""
        fraction = self.fraction()
        color = COLORS[self.status] if self.status in (FAILED, FINISHED) else COLORS[QUEUED]
        bar = (f'<span style="display:inline-block;width:30%;height:.8em;background:rgba(127,127,127,.2);'
               f'vertical-align:middle;margin-right:6px"><span style="display:block;height:100%;'
               f'width:{100 * fraction:.1f}%;background:{color}"></span></span>') if fraction is not None else ""
        return f'<div>{bar}<span class="nbq-job-progress">{esc(self.progress_text())}</span></div>'

    def html(self) -> str:
        """The whole state, readable alone (the saved report of a cell), with the widget's class
        names: header, progress, output tail, result or traceback, and a note a button left."""
        note = f"<div style='color:{COLORS[FAILED]}'>{esc(self.note)}</div>" if self.note else ""
        output = f'<div class="nbq-job-output">{self.output_html()}</div>' if self.lines else ""
        outcome = self.outcome_html()
        outcome = f'<div class="nbq-job-outcome">{outcome}</div>' if outcome else ""
        return (f'<div class="nbq-job"><div class="nbq-job-header">{self.header_html()}</div>{self.progress_html()}'
                f'{output}{outcome}{note}</div>')

    def text(self) -> str:
        line = f"Job {self.shown} {short(self.call)}" + (f" on {self.queue}" if self.queue else "") + f": {self.status}"
        elapsed = self.elapsed()
        extra = ([elapsed] if elapsed else []) + ([f"worker {self.worker}"] if self.worker else [])
        line += f" ({', '.join(extra)})" if extra else ""
        if self.progress and self.progress.get("done") is not None and self.status != FINISHED:
            line += f", progress {self.progress_text()}"
        if self.result is not None:
            line += f" → {short(self.result, 200)}"
        elif self.status == FAILED:
            line += f": {self.exc or 'failed'}"
        if self.no_worker:
            line += f"\n  {self.no_worker}"
        if self.lines and self.status in (FAILED, STARTED):
            line += "\n  | " + "\n  | ".join(short(x, 200) for x in list(self.lines)[-3:])
        return line


class GroupState:
    """Many jobs as one: statuses, times, the first failure (in the group's order)."""

    ORDER = (*ORDER, EXPIRED, "?")

    def __init__(self, ids: list, call: str):
        self.ids, self.call = ids, call
        self.index = {job_id: i for i, job_id in enumerate(ids)}
        self.status = dict.fromkeys(ids, "?")
        self._counts = Counter({"?": len(self.status)})  # kept with each change: no count per render
        self.pending: set = set()  # ids to re-read (subscribed or re-subscribed)
        self.first_start: Optional[float] = None
        self.last_end: Optional[float] = None
        self.first_enqueued: Optional[float] = None
        self.queues: set = set()
        self.shown_at = time.time()
        self.first_failure_id: Optional[str] = None
        self.first_failure: Optional[str] = None  # its traceback, read once
        self.first_failure_exc: Optional[str] = None  # its "ExcType: message"
        self.no_worker: Optional[str] = None
        self.note: Optional[str] = None

    def load(self, conn: Any, ids: Optional[list] = None) -> bool:
        """Re-read the status and times of ``ids`` (default: all); whether anything changed."""
        ids = self.ids if ids is None else ids
        with conn.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keys.job(job_id), "status", "started_at", "ended_at", "enqueued_at", "queue")
            replies = pipe.execute()
        changed = False
        for job_id, (status, started, ended, enqueued, queue) in zip(ids, replies):
            new = status.decode(errors="replace") if status else EXPIRED
            changed = changed or new != self.status[job_id]
            self._set(job_id, new, _float(started), _float(ended))
            enqueued = _float(enqueued)
            if enqueued and (self.first_enqueued is None or enqueued < self.first_enqueued):
                self.first_enqueued = enqueued
            if queue:
                self.queues.add(queue.decode(errors="replace"))
        return changed

    def reload(self, conn: Any) -> bool:
        ids, self.pending = list(self.pending), set()
        return self.load(conn, ids) if ids else False

    def apply(self, event: dict) -> None:
        if not isinstance(event, dict):  # any JSON may come on a job's channel
            return
        job_id, status = event.get("id"), event.get("status")
        if not isinstance(job_id, str) or job_id not in self.index:
            return
        if status == SYNC:
            self.pending.add(job_id)
        elif status == RETRYING:  # failed, a retry is scheduled
            self._set(job_id, SCHEDULED, None, None)
        elif isinstance(status, str) and status in COLORS:
            t = _float(event.get("t"))
            self._set(job_id, status, t if status == STARTED else None,
                      t if status in TERMINAL else None)

    def _set(self, job_id: str, status: str, started: Optional[float], ended: Optional[float]) -> None:
        old = self.status[job_id]
        if old != status:
            self._counts[old] -= 1
            self._counts[status] += 1
        self.status[job_id] = status
        if status == STARTED:  # a worker serves it after all (the next check tells of other queues)
            self.no_worker = None
        if started and (self.first_start is None or started < self.first_start):
            self.first_start = started
        if ended and (self.last_end is None or ended > self.last_end):
            self.last_end = ended
        first = self.first_failure_id
        if status == FAILED and (first is None or self.index[job_id] < self.index[first]):
            self.first_failure_id, self.first_failure, self.first_failure_exc = job_id, None, None
        elif first == job_id and status != FAILED:  # requeued
            self.first_failure_id = self.first_failure = self.first_failure_exc = None

    def read_failure(self, conn: Any) -> None:
        """Read the first failure's traceback, once (after it changed)."""
        if self.first_failure_id and self.first_failure is None:
            error, exc = conn.hmget(keys.job(self.first_failure_id), "error", "exc")
            self.first_failure = (error or b"").decode(errors="replace")
            self.first_failure_exc = (exc or b"").decode(errors="replace") or None

    def check_workers(self, conn: Any) -> bool:
        """Note the group's queues with waiting jobs that no live worker serves (a cheap shared
        read); whether that changed."""
        before = self.no_worker
        if not self.waiting():
            self.no_worker = None
        else:
            served = live_queues(conn)
            if served is not None:
                missing = sorted(self.queues - served)
                self.no_worker = no_worker_text(missing) if missing else None
        return self.no_worker != before

    def counts(self) -> Counter:
        return +self._counts  # the statuses some job has

    def done_count(self) -> int:
        c = self.counts()
        return sum(c[s] for s in TERMINAL) + c[EXPIRED]

    def all_done(self) -> bool:
        return self.done_count() == len(self.ids)

    def _end(self, now: float) -> float:
        return self.last_end if self.all_done() and self.last_end else now

    def throughput(self, now: Optional[float] = None) -> Optional[float]:
        """Jobs ended per second since the first one started."""
        now = time.time() if now is None else now
        done = self.done_count()
        if not done or self.first_start is None:
            return None
        return done / max(self._end(now) - self.first_start, 1e-3)

    def progress_text(self, now: Optional[float] = None) -> str:
        """E.g. "120/200 done (60%) · 35.2 jobs/s · ETA 2.3 s · 3.4 s"."""
        now = time.time() if now is None else now
        done, total = self.done_count(), len(self.ids)
        parts = [f"{done}/{total} done ({100 * done / total if total else 100:.0f}%)"]
        rate = self.throughput(now)
        if rate:
            parts.append(rate_text(rate, " jobs/s"))
            if done < total:
                parts.append(f"ETA {duration((total - done) / rate)}")
        if self.first_start is not None:
            parts.append(duration(self._end(now) - self.first_start))
        elif self.first_enqueued is not None and not self.all_done():
            parts.append(f"waiting {duration(now - self.first_enqueued)}")
        return " · ".join(parts)

    def fraction(self) -> float:
        return self.done_count() / len(self.ids) if self.ids else 1.0

    def badges_html(self) -> str:
        c = self.counts()
        return " ".join(f"{status_badge(s)} {c[s]}" for s in self.ORDER if c[s])

    def header_html(self) -> str:
        parts = [f"<b style='white-space: pre-wrap'>{esc(short(self.call))}</b>", f"{len(self.ids)} jobs"]
        parts += [f"queue <code>{esc(', '.join(sorted(self.queues)))}</code>"] if self.queues else []
        parts += [self.badges_html()] if self.ids else []
        notice = _notice(self.no_worker) if self.no_worker and self.waiting() else ""
        return '<div style="line-height:1.8">' + " · ".join(parts) + "</div>" + notice

    def failure_html(self) -> str:
        if not self.first_failure_id or self.first_failure is None:
            return ""
        exc = f" {esc(short(self.first_failure_exc, 200))}" if self.first_failure_exc else ""
        trace = self.first_failure.rstrip() or "(no traceback kept)"
        return (f'<details class="nbq-first-failure"><summary style="cursor:pointer">first failure: job '
                f'<code>{esc(self.first_failure_id)}</code> (#{self.index[self.first_failure_id]}){exc}</summary>'
                f"<pre class='nbq-traceback' style='{_PRE};color:{COLORS[FAILED]}'>{esc(trace)}</pre></details>")

    def progress_html(self) -> str:
        """A static bar, one segment per ended status, and the progress text."""
        c, total = self.counts(), max(len(self.ids), 1)
        segments = "".join(f'<span style="display:inline-block;height:100%;width:{100 * c[st] / total:.2f}%;'
                           f'background:{COLORS[st]}"></span>' for st in (FINISHED, FAILED, CANCELED, EXPIRED) if c[st])
        bar = (f'<span style="display:inline-flex;width:40%;height:.8em;background:rgba(127,127,127,.2);'
               f'vertical-align:middle;margin-right:6px">{segments}</span>')
        return f'<div>{bar}<span class="nbq-group-progress">{esc(self.progress_text())}</span></div>'

    def html(self) -> str:
        """The whole state, readable alone (the saved report of a cell), with the widget's class names."""
        note = f"<div>{esc(self.note)}</div>" if self.note else ""
        failure = self.failure_html()
        failure = f'<div class="nbq-group-failure">{failure}</div>' if failure else ""
        return (f'<div class="nbq-group"><div class="nbq-group-header">{self.header_html()}</div>'
                f'{self.progress_html()}{failure}{note}</div>')

    def text(self) -> str:
        c = self.counts()
        counts = ", ".join(f"{n} {s}" for s, n in sorted(c.items()))
        line = f"Group {short(self.call)}: {self.done_count()}/{len(self.ids)} done ({counts})"
        rest = self.progress_text().split(" · ", 1)[1:]
        line += f" · {rest[0]}" if rest else ""
        if self.first_failure_id:
            line += f"\n  first failure: job {self.first_failure_id} (#{self.index[self.first_failure_id]})"
            line += f" {self.first_failure_exc}" if self.first_failure_exc else ""
        if self.no_worker and self.waiting():
            line += f"\n  {self.no_worker}"
        return line

    def waiting(self) -> int:
        c = self.counts()
        return c[QUEUED] + c[SCHEDULED]
