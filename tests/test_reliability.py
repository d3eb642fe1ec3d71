"""Timeouts, retries, delayed jobs, cancel, concurrency and shutdown, with real worker processes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

import nbq_tasks
from conftest import MODES, numsub, wait_for
from nbqueue import Job, JobCanceled, JobFailed, Queue, keys
from nbqueue.heartbeat import LEASE


@pytest.fixture
def q(redis_client):
    return Queue("low", redis_client)


def test_inline_timeout_stops_the_job(start_worker, q):
    start_worker("low", "--inline")
    job = q.enqueue_call(nbq_tasks.busy, (30,), timeout=0.5)
    with pytest.raises(JobFailed, match="JobTimeout: the job ran longer than its timeout of 0.5 s"):
        job.result(timeout=15)
    assert q.enqueue(nbq_tasks.add, 1, 1).result(timeout=10) == 2


def test_no_timeout(start_worker, q, redis_client):
    start_worker("low")
    job = q.enqueue_call(nbq_tasks.add, (1, 2), timeout=None)
    assert redis_client.hget(keys.job(job.id), "timeout") == b"none"
    assert job.result(timeout=10) == 3


def test_retries_with_growing_delays(start_worker, q, tmp_path, events):
    start_worker("low")
    counter = tmp_path / "calls"
    job = q.enqueue_call(nbq_tasks.flaky, (str(counter), 2), retries=2, retry_delay=0.2)
    assert job.result(timeout=30) == 3
    job.refresh()
    assert (job.attempt, job.failures) == (3, 2)
    seen = events.wait_for(job.id, lambda es: [e["status"] for e in es].count("retrying") == 2 and
                           es[-1]["status"] == "finished", message="two retrying events, then finished")
    delays = [e["delay"] for e in seen if e["status"] == "retrying"]
    assert 0.1 <= delays[0] <= 0.3 and 0.2 <= delays[1] <= 0.6  # 0.2 s, then 0.4 s, with jitter ±50%


def test_retries_used_up_fail_the_job(start_worker, q, tmp_path):
    start_worker("low")
    job = q.enqueue_call(nbq_tasks.flaky, (str(tmp_path / "calls"), 5), retries=1, retry_delay=0.1)
    with pytest.raises(JobFailed, match="flaky failure 2"):
        job.result(timeout=30)
    assert job.id in q.failed_job_ids
    assert [j.id for j in q.failed_jobs] == [job.id]


def test_delayed_jobs(start_worker, q):
    start_worker("low")
    job = q.enqueue_in(1.5, nbq_tasks.add, 2, 3)
    assert job.status == "scheduled" and len(q) == 0
    assert job.result(timeout=15) == 5
    job.refresh()
    assert (job.started_at - job.enqueued_at).total_seconds() >= 1.5
    canceled = q.enqueue_in(60, nbq_tasks.add, 1, 1)
    assert canceled.cancel() == "canceled"


@pytest.mark.parametrize("mode", MODES)
def test_cancel_a_running_job(start_worker, q, tmp_path, mode, events):
    worker = start_worker("low", *mode)
    flag = tmp_path / "started"
    job = q.enqueue(nbq_tasks.busy, 30, str(flag))
    wait_for(flag.exists, message="job start")
    assert job.cancel(wait=5) == "canceled"
    with pytest.raises(JobCanceled):
        job.result(timeout=1)
    events.wait_for(job.id, lambda es: es and es[-1]["status"] == "canceled", message="the canceled event")
    assert q.enqueue(nbq_tasks.add, 1, 1).result(timeout=10) == 2
    line = wait_for(lambda: next((x for x in worker.log().splitlines() if f"{job.id} nbq_tasks:busy low" in x), None),
                    message="the worker's line for the job")
    assert worker.proc.poll() is None and line.endswith(" canceled"), line


@pytest.mark.parametrize("mode", MODES)
def test_concurrency_runs_jobs_at_once(start_worker, q, tmp_path, mode):
    worker = start_worker("low", "--concurrency", "3", *mode)
    jobs = q.enqueue_many([(nbq_tasks.barrier, (str(tmp_path), 3, i)) for i in range(3)])
    assert [j.result(timeout=30) for j in jobs] == [0, 1, 2]
    assert "3 at once" in worker.log()


@pytest.mark.parametrize("mode", MODES)
def test_warm_shutdown_waits_for_every_slot(start_worker, q, tmp_path, mode):
    worker = start_worker("low", "-c", "2", *mode)
    flags = [tmp_path / f"f{i}" for i in range(2)]
    jobs = [q.enqueue(nbq_tasks.busy, 1.0, str(f)) for f in flags]
    wait_for(lambda: all(f.exists() for f in flags), message="both jobs start")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert [j.result(timeout=1) for j in jobs] == ["done", "done"]


@pytest.mark.parametrize("mode", MODES)
def test_cold_shutdown_fails_every_running_job(start_worker, q, tmp_path, mode):
    worker = start_worker("low", "-c", "2", *mode)
    flags = [tmp_path / f"f{i}" for i in range(2)]
    jobs = [q.enqueue(nbq_tasks.sleep_then, 60, None, str(f)) for f in flags]
    wait_for(lambda: all(f.exists() for f in flags), message="both jobs start")
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "warm shutdown" in worker.log(), message="first signal handled")
    worker.signal(signal.SIGTERM)
    worker.wait()
    for job in jobs:
        with pytest.raises(JobFailed, match="told to stop now"):
            job.result(timeout=1)


def test_requeue_cli(start_worker, q, tmp_path, redis_url):
    start_worker("low")
    counter = tmp_path / "calls"
    failed = [q.enqueue(nbq_tasks.flaky, str(counter), 2) for _ in range(2)]
    for job in failed:
        with pytest.raises(JobFailed):
            job.result(timeout=10)
    run = subprocess.run([sys.executable, "-m", "nbqueue.cli", "requeue", "low", "--all", "--url", redis_url],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and "requeued 2 job(s)" in run.stdout, run.stderr
    assert sorted(j.result(timeout=10) for j in failed) == [3, 4]
    assert q.failed_job_ids == []
    usage = subprocess.run([sys.executable, "-m", "nbqueue.cli", "requeue", "low", "--url", redis_url],
                           capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "either JOB_IDS or --all" in usage.stderr


def test_info_watch_prints_events(start_worker, q, redis_url):
    watcher = subprocess.Popen([sys.executable, "-m", "nbqueue.cli", "info", "--watch", "--url", redis_url],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines: list = []
        reader = threading.Thread(target=lambda: lines.extend(iter(watcher.stdout.readline, "")), daemon=True)
        reader.start()
        wait_for(lambda: "events:" in "".join(lines), message="watch start")
        start_worker("low")
        job = q.enqueue(nbq_tasks.add, 1, 2)
        job.result(timeout=10)
        wait_for(lambda: f"{job.id} finished" in "".join(lines), message="finished event")
        text = "".join(lines)
        assert text.index(f"{job.id} queued") < text.index(f"{job.id} started") < text.index(f"{job.id} finished")
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)


def test_job_records_attempts_and_workers(start_worker, q, tmp_path):
    worker = start_worker("low")
    job = q.enqueue_call(nbq_tasks.flaky, (str(tmp_path / "c"), 1), retries=1, retry_delay=0.1)
    assert job.result(timeout=30) == 2
    job = Job.fetch(job.id, q.connection)
    assert job.attempt == 2 and len(job.workers) == 2 and all(str(worker.pid) in w for w in job.workers)


def test_a_job_blocked_in_c_keeps_its_lease(start_worker, q, tmp_path):
    """An inline job in one long C call (time.sleep releases the GIL) is renewed from the heartbeat
    thread: another idle worker must not take it over once the lease (5 s) would have lapsed."""
    holder = start_worker("low", "--inline")
    flag = tmp_path / "started"
    job = q.enqueue(nbq_tasks.sleep_then, 7, "kept", str(flag))
    wait_for(flag.exists, message="job start")
    start_worker("low")  # would re-run the job if its lease lapsed
    assert job.result(timeout=20) == "kept"
    job.refresh()
    assert job.attempt == 1 and job.lost == 0 and len(job.workers) == 1 and str(holder.pid) in job.worker


# --- the heartbeat can't die silently (issue 8, row 3) ----------------------------------------
JUNK = [
    b'["cancel"]', b'{"cancel": 5}', b'{"cancel": "x", "attempt": "NaN"}', b'{"cancel": "x", "attempt": NaN}',
    b'{"cancel": "x", "attempt": Infinity}', b'{"cancel": "x", "attempt": -1}', b'{"cancel": "x", "attempt": 1e308}',
    b'{"cancel": "x", "attempt": [1]}', b'{"cancel": null}', b'{"cancel": {"id": "x"}}', b'{"cancel": ""}',
    b'{"cancel": "../../etc"}', b'{}', b"not json {", b"", b"\xff\xfe\x00junk" * 10, bytes(range(256)),
    b"[1, 2, 3]", b"5", b"null", b"true", b'"cancel"', b"[" * 100_000, b'{"cancel": "' + b"y" * 5000 + b'"}',
    b"x" * 1_000_000,
]


def _running_job(q, tmp_path, name, *args):
    flag = tmp_path / name
    job = q.enqueue(nbq_tasks.sleep_then, *args, str(flag)) if args else q.enqueue(nbq_tasks.busy, 60, str(flag))
    wait_for(flag.exists, timeout=20, message=f"{name} job start")
    return job


@pytest.mark.parametrize("mode", MODES)
def test_junk_on_the_control_channel_leaves_the_heartbeat_alive(start_worker, redis_client, tmp_path, mode):
    """Row 3: one `["cancel"]` killed the heartbeat thread; the job's lease lapsed and another
    worker ran it again. Now each bad message is logged (rate-limited) and ignored."""
    channel = "nbq:ctl:junk-target"
    worker = start_worker("low", "solo", "--name", "junk-target", *mode)
    wait_for(lambda: numsub(redis_client, channel) == 1, message="the worker listens")
    job = _running_job(Queue("low", redis_client), tmp_path, "long", 8, "kept")
    start_worker("low")  # would run the job again if its lease lapsed
    valid_but_wrong = [{"cancel": job.id, "attempt": "NaN"}, {"cancel": job.id, "attempt": True},
                       {"cancel": job.id, "attempt": 2}, {"cancel": job.id, "attempt": "2"}]
    for junk in JUNK + [json.dumps(m).encode() for m in valid_but_wrong]:
        redis_client.publish(channel, junk)
    redis_client.zadd(keys.active("low"), {b"\xff\xfe not utf-8": 0})  # a lapsed lease of junk: the beat logs it
    redis_client.set(keys.job("clobbered", "low"), "not a hash")  # recover.lua fails on it once: logged, and on we go
    redis_client.zadd(keys.active("low"), {"clobbered": 0})
    for _ in range(300):  # a flood must not flood the log
        redis_client.publish(channel, b'["cancel"]')
    _wait_for_renewals(redis_client, job.id, "the lease renewed by beats after the junk")

    assert job.result(timeout=30) == "kept"
    job.refresh()
    assert (job.attempt, job.lost, len(job.workers)) == (1, 0, 1), worker.log()
    log = worker.log()
    assert "ignored a malformed control message" in log
    assert log.count("ignored a malformed control message") <= 3, log  # one line per 10 s at most
    assert worker.proc.poll() is None, log
    errors = [line for line in log.splitlines() if "error in the heartbeat; going on" in line]
    assert len(errors) <= 1 and log.count("Traceback") == len(errors), log  # the one error, logged once

    # and a valid request still cancels at once (straight on the channel: no cancel flag for the beat to see)
    running = _running_job(Queue("solo", redis_client), tmp_path, "solo")
    assert redis_client.publish(channel, json.dumps({"cancel": running.id, "attempt": 1})) == 1
    wait_for(lambda: running.status == "canceled", timeout=10, message="the canceled job")


@pytest.mark.parametrize("mode", MODES)
def test_a_worker_whose_heartbeat_ends_stops_and_exits_1(start_worker, redis_client, tmp_path, mode):
    """The heartbeat ends when another worker registers under its name (here: written by hand);
    the worker must then give back its running job, take no other, and exit 1 — not run on
    with leases that nobody renews."""
    worker = start_worker("low", "--name", "twin", "-c", "2", *mode)
    q = Queue("low", redis_client)
    job = _running_job(q, tmp_path, "held")
    wait_for(lambda: redis_client.hget("nbq:worker:twin", "token"), message="the worker's token")
    redis_client.hset("nbq:worker:twin", "token", "another-process")
    assert worker.wait(timeout=30) == 1
    log = worker.log()
    assert "another worker registered as twin" in log and "its heartbeat ended" in log, log
    assert f"{job.id} nbq_tasks:busy low" in log and "discarded" in log, log  # its copy was stopped
    left = q.enqueue(nbq_tasks.add, 1, 1)
    start_worker("low")  # recovers the job whose lease lapsed, and runs the rest
    assert left.result(timeout=20) == 2
    wait_for(lambda: Job.fetch(job.id, redis_client).attempt == 2, timeout=20, message="the job re-run elsewhere")
    assert Job.fetch(job.id, redis_client).lost == 1


# --- every terminal path has its TTL (row 10) ---------------------------------------------------
def test_a_job_canceled_while_its_worker_is_lost_gets_its_ttl(start_worker, redis_client, tmp_path, events):
    """Row 10: canceled by the recovery of a lost worker, the job was kept for ever."""
    lost = start_worker("low", "--name", "doomed", "-c", "2")
    q = Queue("low", redis_client)
    flags = [tmp_path / "a", tmp_path / "b"]
    own = q.enqueue_call(nbq_tasks.busy, (60, str(flags[0])), result_ttl=600)
    default = q.enqueue_call(nbq_tasks.busy, (60, str(flags[1])))
    wait_for(lambda: all(f.exists() for f in flags), message="both jobs start")
    lost.signal(signal.SIGKILL)
    lost.wait()
    assert own.cancel(wait=0) == "started" and default.cancel(wait=0) == "started"  # pending: nobody to stop them
    start_worker("low")  # its heartbeat recovers the lapsed leases
    for job, ttl in ((own, 600), (default, 24 * 3600)):
        wait_for(lambda job=job: job.status == "canceled", timeout=30, message="canceled by the recovery")
        assert ttl - 60 < redis_client.ttl(keys.job(job.id)) <= ttl
        seen = events.wait_for(job.id, lambda es: es and es[-1]["status"] == "canceled", message="canceled event")
        assert {k: seen[-1][k] for k in ("id", "worker", "attempt")} == {"id": job.id, "worker": "doomed", "attempt": 1}
        with pytest.raises(JobCanceled):
            job.result(timeout=1)


def test_a_canceled_job_is_kept_for_its_result_ttl(redis_client):
    q = Queue("low", redis_client)
    for options, expected in (({"result_ttl": 600}, (540, 600)), ({"result_ttl": None}, (-1, -1)),
                              ({}, (24 * 3600 - 60, 24 * 3600))):
        job = q.enqueue_call(nbq_tasks.add, (1, 1), delay=60, **options)
        assert job.cancel() == "canceled"
        low, high = expected
        assert low <= redis_client.ttl(keys.job(job.id)) <= high, options


@pytest.mark.parametrize("mode", MODES)
def test_a_job_key_overwritten_by_hand_does_not_stop_other_renewals(start_worker, redis_client, tmp_path, mode):
    """One held job's hash replaced by a string made the renew script fail for every job after it."""
    worker = start_worker("low", "-c", "2", *mode)
    q = Queue("low", redis_client)
    broken = _running_job(q, tmp_path, "broken")  # renewed first: the attempts go in the order they started
    kept = _running_job(q, tmp_path, "kept", 8, "kept")
    start_worker("low")  # would run the kept job again if its lease lapsed
    redis_client.delete(keys.job(broken.id))
    redis_client.set(keys.job(broken.id), "not a hash")
    _wait_for_renewals(redis_client, kept.id, "the kept job's lease renewed after the other job's key broke")
    assert kept.result(timeout=30) == "kept"
    kept.refresh()
    assert (kept.attempt, kept.lost, len(kept.workers)) == (1, 0, 1), worker.log()
    wait_for(lambda: f"{broken.id} nbq_tasks:busy low" in worker.log(), message="the broken job stopped as lost")
    assert worker.proc.poll() is None


def _wait_for_renewals(client, job_id: str, message: str) -> None:
    """Wait until the job's lease runs more than two seconds past now: beats renewed it since."""
    sent, _ = client.time()
    wait_for(lambda: (client.zscore(keys.active("low"), job_id) or 0) > (sent + 2 + LEASE) * 1000, timeout=15,
             message=message)
