"""Timeouts, retries, delayed jobs, cancel, concurrency and shutdown, with real worker processes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

import nbq_tasks
from conftest import wait_for
from nbqueue import Job, JobCanceled, JobFailed, Queue

MODES = [pytest.param([], id="fork"), pytest.param(["--inline"], id="inline")]


@pytest.fixture
def q(redis_client):
    return Queue("low", redis_client)


class Events:
    """Collects the events of every job, from a listening thread."""

    def __init__(self, client):
        self.seen: list = []
        self._stop = threading.Event()
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe("nbq:ev:*")
        self._thread = threading.Thread(target=self._listen, args=(pubsub,), daemon=True)
        self._thread.start()

    def _listen(self, pubsub) -> None:
        with pubsub:
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.05)
                if message:
                    self.seen.append(json.loads(message["data"]))

    def of(self, job_id: str) -> list:
        return [e for e in self.seen if e["id"] == job_id]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def events(redis_client):
    collector = Events(redis_client)
    yield collector
    collector.close()


def test_inline_timeout_stops_the_job(start_worker, q):
    start_worker("low", "--inline")
    job = q.enqueue_call(nbq_tasks.busy, (30,), timeout=0.5)
    with pytest.raises(JobFailed, match="JobTimeout: the job ran longer than its timeout of 0.5 s"):
        job.result(timeout=15)
    assert q.enqueue(nbq_tasks.add, 1, 1).result(timeout=10) == 2


def test_no_timeout(start_worker, q, redis_client):
    start_worker("low")
    job = q.enqueue_call(nbq_tasks.add, (1, 2), timeout=None)
    assert redis_client.hget(f"nbq:job:{job.id}", "timeout") == b"none"
    assert job.result(timeout=10) == 3


def test_retries_with_growing_delays(start_worker, q, tmp_path, events):
    start_worker("low")
    counter = tmp_path / "calls"
    job = q.enqueue_call(nbq_tasks.flaky, (str(counter), 2), retries=2, retry_delay=0.2)
    assert job.result(timeout=30) == 3
    job.refresh()
    assert (job.attempt, job.failures) == (3, 2)
    delays = [e["delay"] for e in events.of(job.id) if e["status"] == "retrying"]
    assert len(delays) == 2
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
    statuses = [e["status"] for e in events.of(job.id)]
    assert statuses[-1] == "canceled"
    assert q.enqueue(nbq_tasks.add, 1, 1).result(timeout=10) == 2
    assert worker.proc.poll() is None and " canceled" in worker.log()


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
