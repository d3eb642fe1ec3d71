"""What the job widget, the group widget and the dashboard show: tqdm-grade progress, the truth
about waiting jobs (a ticking clock, no live worker, due times), the output tail, the dashboard's
figures (also for jobs that ended before it was shown) and complete static reports.

Real Redis (the session's private server), real ``nbqueue worker`` processes; the widgets are
built in-process (they need no kernel) and driven by the real watcher thread."""
from __future__ import annotations

import html
import json
import logging
import math
import re
import time

import pytest

import view_tasks
from conftest import wait_for
from nbqueue import Queue, keys
from nbqueue.info import render, snapshot
from nbqueue.notebook.state import TAIL, GroupState, JobState, clean_progress

pytest.importorskip("ipywidgets")
from nbqueue.notebook.dashboard import Dashboard
from nbqueue.notebook.widgets import GroupWidget, JobWidget

NO_WORKER = "no live worker serves queue '{q}' — start one: nbqueue worker {q}"


def no_worker(queue: str) -> str:
    """The notice, as the widget's HTML has it."""
    return html.escape(NO_WORKER.format(q=queue))


@pytest.fixture
def watcher_errors(caplog):
    """Errors the watcher thread logged (a callback that raised)."""
    caplog.set_level(logging.ERROR, logger="nbqueue.watcher")
    return lambda: [r for r in caplog.records if r.name == "nbqueue.watcher"]


def test_job_bar_shows_done_total_percent_rate_eta_and_elapsed(redis_client, start_worker):
    job = Queue("v-bar", redis_client).enqueue(view_tasks.steps, 40, 0.05)
    widget = JobWidget(job)
    start_worker("v-bar")
    text = wait_for(lambda: "ETA" in widget.bar_text.value and widget.bar_text.value, 20, message="an ETA")
    m = re.match(r"(\d+)/40 \((\d+)%\) step \d+ · ([\d.]+)/s · ETA ([\d.]+) s · ([\d.]+) s$", text)
    assert m, text
    done, pct, rate = int(m[1]), int(m[2]), float(m[3])
    assert pct == round(100 * done / 40) and 5 < rate < 40, text  # ~20/s, on a loaded machine less
    assert 0 < widget.bar.value < 1 and widget.bar.layout.display is None
    job.result(timeout=20)
    wait_for(lambda: "nbq-status-finished" in widget.header.value, 10, message="finished")
    final = widget.bar_text.value
    assert final.startswith("40/40 (100%) step 40 · ") and "/s" in final and "ETA" not in final, final
    assert widget.bar.value == 1.0 and widget.bar.bar_style == "success"


def test_unknown_total_shows_done_and_rate_only(redis_client, start_worker):
    job = Queue("v-nototal", redis_client).enqueue(view_tasks.steps, 30, 0.05, total=False)
    widget = JobWidget(job)
    start_worker("v-nototal")
    text = wait_for(lambda: "/s" in widget.bar_text.value and widget.bar_text.value, 20, message="a rate")
    assert re.match(r"\d+ step \d+ · [\d.]+/s · [\d.]+ s$", text), text
    assert "%" not in text and "ETA" not in text and widget.bar.layout.display == "none"
    job.result(timeout=20)


def test_hostile_progress_never_breaks_the_widget(redis_client, start_worker, watcher_errors, tmp_path):
    flag = tmp_path / "junk-written"
    job = Queue("v-hostile", redis_client).enqueue(view_tasks.hostile_progress, str(flag))
    widget = JobWidget(job)
    start_worker("v-hostile")
    wait_for(flag.exists, 20, message="the junk to be written")
    assert job.result(timeout=20) == "survived"
    wait_for(lambda: "nbq-status-finished" in widget.header.value, 10, message="finished after the junk")
    assert widget.bar_text.value.startswith("3/4 (75%) sane again"), widget.bar_text.value
    assert watcher_errors() == [], [r.getMessage() for r in watcher_errors()]
    for raw in view_tasks.HOSTILE:  # each record alone, through the state's own checks
        for total in view_tasks.HOSTILE:
            record = json.loads(f'{{"done": {raw}, "total": {total}}}')
            state = JobState("x", "f()")
            state.status, state.started = "started", time.time() - 1
            state.apply({"status": "progress", **record})
            text = state.progress_text()
            assert "nan" not in text.lower() and "inf" not in text.lower(), (raw, total, text)
            assert state.fraction() is None or 0 <= state.fraction() <= 1
            state.html(), state.text()
    assert clean_progress({"done": 5, "total": -3}) == {"done": 5.0, "total": None, "message": None}
    state = JobState("x", "f()")  # two reports 0.2 s apart whose difference overflows a float
    state.status, state.progress = "started", None
    state._first, state._latest = (time.time() - 0.2, -1e308), (time.time(), 1e308)
    state.progress = {"done": 1e308, "total": None, "message": None}
    assert state.rate() is None and state.progress_text() == "1e+308"


def test_junk_in_the_job_hash_renders(redis_client):
    redis_client.hset(keys.job("junky", "q"), mapping={
        "status": "started", "queue": "q", "attempt": "many", "started_at": "yesterday", "enqueued_at": "nan",
        "progress": '{"done": "half", "total": 1e999}', "func": "x:y"})
    from nbqueue import Job
    state = JobState(keys.ref("junky", keys.tag("q")), "x.y()")
    state.load(Job("junky", redis_client, queue="q"))
    assert state.status == "started" and state.attempt == 0 and state.started is None
    assert "nbq-status-started" in state.html() and state.text().startswith("Job junky x.y() on q: started")


def test_a_waiting_job_ticks_and_says_no_worker_serves_its_queue(redis_client, start_worker):
    job = Queue("v-lonely", redis_client).enqueue(view_tasks.steps, 2, 0.01)
    widget = JobWidget(job)
    assert no_worker("v-lonely") in widget.header.value  # at once, not after a tick
    assert no_worker("v-lonely") in widget.html() and NO_WORKER.format(q="v-lonely") in widget.text()
    assert widget.ticking() or widget._last > 0
    first = re.search(r"waiting ([\d.]+) s", widget.header.value)
    assert first, widget.header.value

    def ticked() -> bool:
        m = re.search(r"waiting ([\d.]+) s", widget.header.value)
        return bool(m) and float(m[1]) >= float(first[1]) + 1

    wait_for(ticked, 10, message="the waiting time to tick")
    start_worker("v-lonely")
    job.result(timeout=20)
    wait_for(lambda: "nbq-status-finished" in widget.header.value, 10, message="finished")
    assert "no live worker" not in widget.header.value


def test_no_worker_notice_goes_when_a_worker_for_the_queue_starts(redis_client, start_worker):
    start_worker("v-other")  # a live worker, but not for this queue
    job = Queue("v-later", redis_client).enqueue_in(3600, view_tasks.steps, 1, 0.01)
    widget = JobWidget(job)
    assert "nbq-status-scheduled" in widget.header.value and "due in 59m" in widget.header.value
    assert no_worker("v-later") in widget.header.value
    start_worker("v-later")
    wait_for(lambda: "no live worker" not in widget.header.value, 10, message="the notice to go (checked every 2 s)")
    job.cancel(wait=0)


def test_output_tail_follows_the_newest_line_and_stays_capped(redis_client, start_worker):
    job = Queue("v-flood", redis_client).enqueue(view_tasks.flood, 20000)
    widget = JobWidget(job)
    start_worker("v-flood")
    job.result(timeout=30)
    wait_for(lambda: "line 19999" in widget.output.value, 10, message="the last line")
    out = widget.output.value
    assert "flex-direction:column-reverse" in out and "overflow:auto" in out  # shows its bottom, no JS
    pre = re.search(r'<pre class="nbq-output"[^>]*>(.*)</pre>', out, re.S)[1]
    assert pre.count("\n") == TAIL - 1 and pre.endswith("line 19999")
    assert len(out) < 5000


def test_job_report_is_complete_alone(redis_client, start_worker):
    job = Queue("v-report", redis_client).enqueue(view_tasks.steps, 5, 0.01)
    worker = start_worker("v-report")
    job.result(timeout=20)
    state = JobState(job.id, "view_tasks.steps(5, 0.01)")
    state.load(job)
    page = state.html()
    for part in ("nbq-status-finished", "view_tasks.steps(5, 0.01)", "v-report", job.id, "nbq-job-progress",
                 "5/5 (100%)", " s"):
        assert part in page, part
    assert re.search(r"worker [\w.-]+", page)
    text = state.text()
    assert text.startswith(f"Job {job.id} view_tasks.steps(5, 0.01) on v-report: finished (") and "worker" in text
    assert len(text.splitlines()) <= 3
    worker.stop()


def test_group_shows_percent_rate_eta_badges_and_first_failure(redis_client, start_worker):
    group = Queue("v-group", redis_client).map(view_tasks.fail_some, range(60))
    widget = GroupWidget(group)
    assert no_worker("v-group") in widget.header.value
    start_worker("v-group")
    text = wait_for(lambda: "ETA" in widget.bar_text.value and widget.bar_text.value, 30, message="a group ETA")
    assert re.match(r"\d+/60 done \(\d+%\) · [\d.]+ jobs/s · ETA [\d.]+ s · [\d.]+ s$", text), text
    wait_for(lambda: widget.state.all_done() and "60/60" in widget.bar_text.value, 30, message="all done")
    failures = [i for i in range(60) if i % 7 == 3]
    assert re.search(rf'nbq-status-failed"[^>]*>failed</span> {len(failures)}\b', widget.header.value)
    assert re.search(rf'nbq-status-finished"[^>]*>finished</span> {60 - len(failures)}\b', widget.header.value)
    failure = wait_for(lambda: widget.failure.value, 10, message="the first failure")
    assert failure.startswith('<details class="nbq-first-failure">')
    assert f"first failure: job <code>{group[3].id}</code> (#3) ValueError: bad item 3</summary>" in failure
    assert "<pre class='nbq-traceback'" in failure and "Traceback" in failure
    assert "no live worker" not in widget.header.value
    page = widget.html()
    assert "nbq-group-progress" in page and "60/60 done (100%)" in page and "<details" in page
    assert widget.text().startswith("Group ") and "60/60 done" in widget.text() and "first failure" in widget.text()


def test_dashboard_shows_jobs_that_ended_before_it_and_the_figures(redis_client, start_worker):
    worker = start_worker("v-dash", "--inline")
    group = Queue("v-dash", redis_client).map(view_tasks.fail_some, range(200))
    try:
        group.results(timeout=60)
    except Exception:
        pass
    wait_for(lambda: all(s in ("finished", "failed") for s in group.statuses().elements()), 30, message="200 ended")
    failed = sum(1 for i in range(200) if i % 7 == 3)
    snap = wait_for(lambda: (s := snapshot(redis_client, 5)) and s.workers and s.workers[0].done == 200 and s,
                    10, message="the worker's count")  # written with its heartbeats
    queue = next(q for q in snap.queues if q.name == "v-dash")
    assert (queue.finished_recent, queue.failed_recent, queue.canceled_recent) == (200 - failed, failed, 0)
    assert queue.rate > 0 and len(snap.recent) == 5 and snap.recent[0][1] == "v-dash"
    assert snap.recent[0][0] == group[199].id or snap.recent[0][2] >= snap.recent[-1][2]
    dash = Dashboard(redis_client)
    try:
        page = dash.html()
        assert "(none since this view was shown)" not in page and "no job has run lately" not in page
        assert page.count("view_tasks.fail_some") == Dashboard.RECENT
        assert f">{200 - failed}</span>" in page and f">{failed}</span>" in page and "/s" in page
        assert ">200<" in page  # jobs done by the worker
        text = render(snap)
        assert re.search(rf"v-dash\s+0\s+0\s+{200 - failed}\s+{failed}\s+0\s+[\d.]+/s", text), text
        assert "200 done" in text
    finally:
        dash.stop()
        worker.stop()


def test_ended_registry_stays_capped_and_junk_counters_are_skipped(redis_client, start_worker):
    redis_client.zadd(keys.ended("v-cap"), {f"old-{i}": i for i in range(keys.ENDED_KEEP + 99)})
    redis_client.hset(keys.stats("v-cap"), mapping={"finished:1": "junk", "bogus": "1 2", "failed:2": "-5 x"})
    job = Queue("v-cap", redis_client).enqueue(view_tasks.steps, 1, 0.0)
    start_worker("v-cap", "--inline")
    job.result(timeout=20)
    wait_for(lambda: redis_client.zscore(keys.ended("v-cap"), job.id), 5, message="the end recorded")
    assert redis_client.zcard(keys.ended("v-cap")) == keys.ENDED_KEEP
    assert redis_client.zscore(keys.ended("v-cap"), "old-99") is None  # the oldest 100 went at once
    assert redis_client.zscore(keys.ended("v-cap"), "old-100") is not None
    queue = next(q for q in snapshot(redis_client).queues if q.name == "v-cap")
    assert queue.finished_recent == 1 and queue.failed_recent == 0


def test_group_state_survives_junk_events():
    state = GroupState(["a", "b"], "map f")
    for event in ({"id": ["a"], "status": "finished"}, {"id": "a", "status": ["x"]},
                  {"id": "a", "status": "finished", "t": "nan"},
                  {"id": "b", "status": "started", "t": 1e308}, {"id": "zzz", "status": "failed"}):
        state.apply(event)
    assert state.done_count() == 1 and "1/2 done (50%)" in state.progress_text()
    assert not math.isnan(state.fraction()) and state.html() and state.text()


def test_dashboard_shows_schedules_with_next_run_and_last_job(redis_client, start_worker):
    q = Queue("v-sched", redis_client)
    q.schedule(view_tasks.steps, 1, 0.0, every=3600, name="hourly")
    dash = Dashboard(redis_client)
    try:
        page = dash.html()
        assert "Schedules (1)" in page and "hourly" in page and "every" in page and "in 59m" in page
    finally:
        dash.stop()
    assert q.unschedule("hourly")
    empty = Dashboard(redis_client)
    try:
        assert "Schedules" not in empty.html()
    finally:
        empty.stop()
