"""Progress and output of real jobs in real workers reach a Watcher and ``job.logs()``."""
from __future__ import annotations

import importlib
import json
import sys
import time
import warnings

import pytest

from conftest import MODES, Events, every_node, wait_for
from nbqueue import Group, Job, JobFailed, Queue, keys, progress
from nbqueue.events import LOG_MAX_LINE, LOG_MAX_LINES
from nbqueue.keys import log as log_key
from nbqueue.watcher import SYNC, Watcher

TASKS = '''\
import logging, sys, threading, time
from nbqueue import progress

def chatty(n, pause=0.0):
    print("starting", n)
    logging.getLogger("ev").warning("warned %d", n)
    for i in range(n):
        progress(i + 1, n, "step %d" % (i + 1))
    helper = threading.Thread(target=print, args=("from a thread the job started",))
    helper.start()
    helper.join()
    print("partial line without newline", end="", file=sys.stderr)
    time.sleep(pause)  # the job's work
    return n

def flood(lines, width):
    for i in range(lines):
        print(i)
    print("x" * width)
    return lines

def interleaved(tag, n, pause):
    for i in range(n):
        print(tag, i)
        logging.getLogger("ev").warning("%s logged %d", tag, i)
        time.sleep(pause)
    return tag

def failing():
    print("about to fail")
    raise ValueError("nope")
'''


@pytest.fixture
def ev_tasks(tmp_path, monkeypatch):
    (tmp_path / "ev_tasks.py").write_text(TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("ev_tasks", None)
    return importlib.import_module("ev_tasks")


@pytest.mark.parametrize("mode", MODES)
def test_progress_and_output_reach_watcher_and_logs(start_worker, redis_client, ev_tasks, tmp_path, mode):
    worker = start_worker("ev", *mode, cwd=tmp_path)
    watcher, seen = Watcher(redis_client), Events()
    sub = watcher.watch([keys.ref("j1", keys.tag("ev"))], seen)
    wait_for(lambda: seen.of(SYNC), 5, message="the subscription is live")
    job = Queue("ev", redis_client).enqueue_call(ev_tasks.chatty, (500, 0.3), job_id="j1")
    assert job.result(timeout=20) == 500
    wait_for(lambda: seen.of("finished"), 5, message="the finished event")
    sub.close()

    progress_events = seen.of("progress")
    assert progress_events[-1]["done"] == 500 and progress_events[-1]["total"] == 500
    assert progress_events[-1]["message"] == "step 500"
    assert len(progress_events) <= 5, "500 reports in a fast loop are coalesced"
    assert job.progress == {"done": 500, "total": 500, "message": "step 500"}

    lines = [line for e in seen.of("log") for line in e["lines"]]
    assert lines == job.logs()
    assert lines[0] == "starting 500"
    assert lines[1:3] == ["WARNING ev: warned 500", "from a thread the job started"]
    assert lines[-1] == "partial line without newline"  # flushed at the end of the job
    assert job.logs(tail=1) == ["partial line without newline"]
    statuses = [e["status"] for e in seen.events if e["status"] != "progress"]
    assert statuses.index("started") < statuses.index("log") < statuses.index("finished")
    assert 0 < redis_client.ttl(log_key("j1", "ev")) <= 24 * 3600  # the job's result TTL
    wait_for(lambda: "starting 500" in worker.log(), 5, message="the worker terminal shows the output")


@pytest.mark.parametrize("mode", MODES)
def test_output_is_bounded(start_worker, redis_client, ev_tasks, tmp_path, mode):
    start_worker("ev", *mode, cwd=tmp_path)
    job = Queue("ev", redis_client).enqueue(ev_tasks.flood, 5000, 100_000)
    assert job.result(timeout=30) == 5000
    lines = job.logs()
    assert len(lines) == LOG_MAX_LINES
    assert lines[-2] == "4999" and lines[-1].startswith("x" * LOG_MAX_LINE)
    assert len(lines[-1]) < LOG_MAX_LINE + 100


def test_concurrent_inline_jobs_each_keep_their_own_output(start_worker, redis_client, ev_tasks, tmp_path):
    worker = start_worker("ev", "--inline", "--concurrency", "2", cwd=tmp_path)
    q = Queue("ev", redis_client)
    a, b = q.enqueue(ev_tasks.interleaved, "A", 20, 0.01), q.enqueue(ev_tasks.interleaved, "B", 20, 0.01)
    assert (a.result(timeout=20), b.result(timeout=20)) == ("A", "B")
    for job, tag in ((a, "A"), (b, "B")):
        lines = job.logs()
        strays = [line for line in lines if not (line.startswith(tag) or f" {tag} logged" in line)]
        assert not strays, strays
        assert len(lines) == 40 and lines[:2] == [f"{tag} 0", f"WARNING ev: {tag} logged 0"]
    wait_for(lambda: "A logged 19" in worker.log() and "B logged 19" in worker.log(), 5,
             message="the worker's terminal (stderr) to show both jobs' records too")


def test_failed_job_keeps_its_output_and_traceback(start_worker, redis_client, ev_tasks, tmp_path):
    start_worker("ev", cwd=tmp_path)
    job = Queue("ev", redis_client).enqueue(ev_tasks.failing)
    with pytest.raises(JobFailed) as info:
        job.result(timeout=20)
    assert job.logs() == ["about to fail"]
    trace = info.value.traceback
    assert trace.startswith("Traceback") and "ev_tasks.py" in trace and "events.py" not in trace
    assert redis_client.ttl(log_key(job.id)) > 24 * 3600  # kept like the failed job (a week)


def test_progress_outside_a_job_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        progress(1, 2)
    assert "outside a job" in str(caught[0].message)
    with pytest.raises(TypeError):
        progress("1")


def test_watcher_thread_stops_when_nothing_is_watched_and_sees_all_jobs(redis_client, ev_tasks):
    watcher, every, one = Watcher(redis_client), Events(), Events()
    all_sub = watcher.watch(on_event=every, all_jobs=True)
    a, b = (keys.ref(i, keys.tag("ev")) for i in "ab")  # chosen ids: their refs are what watchers see
    one_sub = watcher.watch([a], one)
    wait_for(lambda: one.of(SYNC) and every.of(SYNC), 5, message="both subscriptions live")
    q = Queue("ev", redis_client)
    q.enqueue_call(ev_tasks.chatty, (1,), job_id="a")
    q.enqueue_call(ev_tasks.chatty, (1,), job_id="b")
    wait_for(lambda: {e["id"] for e in every.of("queued")} == {a, b}, 5, message="pattern events")
    wait_for(lambda: one.of("queued"), 5, message="channel event")
    assert {e["id"] for e in one.events} == {a}
    one_sub.close()
    assert watcher.running
    all_sub.close()
    wait_for(lambda: not watcher.running, 5, message="the watcher thread to end")
    again = Events()
    sub = watcher.watch([b], again)  # starts a new thread on demand
    wait_for(lambda: again.of(SYNC), 5, message="a new thread")
    sub.close()


def test_watcher_survives_a_reconnect_and_resyncs(redis_client, ev_tasks):
    watcher, seen, ticks = Watcher(redis_client), Events(), []
    sub = watcher.watch([keys.ref("r", keys.tag("ev"))], seen, on_tick=lambda: ticks.append(time.monotonic()))
    wait_for(lambda: seen.of(SYNC), 5, message="subscribed")
    killed = sum(node.client_kill_filter(_type="pubsub") for node in every_node(redis_client))
    assert killed >= 1
    wait_for(lambda: len(seen.of(SYNC)) >= 2, 10, message="a re-sync after the reconnect")
    Queue("ev", redis_client).enqueue_call(ev_tasks.chatty, (1,), job_id="r")
    wait_for(lambda: seen.of("queued"), 5, message="events after the reconnect")
    wait_for(lambda: len(ticks) >= 2, 5, message="ticks go on")
    sub.close()


def test_group_results_statuses_and_cancel(start_worker, redis_client, ev_tasks, tmp_path):
    q = Queue("ev", redis_client)
    group = q.map(ev_tasks.chatty, range(3, 8), result_ttl=60)
    assert isinstance(group, Group) and len(group) == 5 and all(isinstance(j, Job) for j in group)
    assert group.statuses() == {"queued": 5}
    assert group.cancel() == 5 and group.statuses() == {"canceled": 5}
    start_worker("ev", cwd=tmp_path)
    group = q.map(ev_tasks.chatty, range(3, 8))
    assert group.results(timeout=30) == [3, 4, 5, 6, 7]
    assert group.statuses() == {"finished": 5}
    assert json.loads(redis_client.hget(keys.job(group[0].id), "progress"))["done"] == 3


def test_writes_of_an_attempt_that_no_longer_holds_the_job_are_refused(redis_client):
    from nbqueue.events import _publish

    f = keys.ref("f", keys.tag("q"))  # a job id chosen on queue q
    redis_client.hset(keys.job(f), mapping={"status": "started", "attempt": 2})
    record = {"done": 1, "total": 2, "message": None}
    assert not _publish(redis_client, f, 1, ["stale line"], record)  # attempt 1 lost the job
    assert redis_client.llen(log_key(f)) == 0 and redis_client.hget(keys.job(f), "progress") is None
    assert _publish(redis_client, f, 2, ["fresh line"], record, ttl=60)
    assert Job("f", redis_client, queue="q").logs() == ["fresh line"] and Job(f, redis_client).progress == record
    assert 0 < redis_client.ttl(log_key(f)) <= 60
    redis_client.hset(keys.job(f), "status", "finished")
    assert not _publish(redis_client, f, 2, ["after the end"], None)


def test_catch_up_returns_once_earlier_events_are_handled(redis_client):
    watcher, seen, ticks = Watcher(redis_client), Events(), []
    assert watcher.catch_up(0.1)  # nothing watched: nothing to wait for
    c = keys.new_id("q")
    sub = watcher.watch([c], seen, on_tick=lambda: ticks.append(1))
    assert watcher.catch_up(5)  # right after the thread starts: the barrier is not lost
    assert seen.of(SYNC)  # the subscription was confirmed before the barrier came back
    for i in range(50):
        redis_client.publish(keys.events(c), json.dumps({"id": c, "status": "progress", "done": i}))
    assert watcher.catch_up(5)
    assert [e["done"] for e in seen.of("progress")] == list(range(50)) and ticks
    sub.close()


def test_a_new_watcher_of_an_already_subscribed_job_gets_its_sync(redis_client):
    watcher, first, second = Watcher(redis_client), Events(), Events()
    s = keys.new_id("ev")
    sub1 = watcher.watch([s], first)
    wait_for(lambda: first.of(SYNC), 5, message="the first subscription")
    sub2 = watcher.watch([s], second)  # the channel is subscribed already: no confirmation comes
    wait_for(lambda: second.of(SYNC), 5, message="a sync for the second watcher all the same")
    sub1.close()
    sub2.close()
