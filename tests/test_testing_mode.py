"""Testing mode: ``Queue(is_async=False)`` and ``nbqueue.testing.sync()`` run jobs at enqueue, in
this process, through Redis as a worker would — no worker started anywhere in this file."""
from __future__ import annotations

import os

import pytest

import async_tasks
import nbq_tasks
import nbqueue
from conftest import cell_values
from nbqueue import EnqueueError, JobFailed, Queue, keys


@pytest.fixture
def q(redis_client):
    return Queue("testing", redis_client, is_async=False)


def test_a_job_runs_at_enqueue_and_its_outcome_is_in_redis(q, redis_client):
    job = q.enqueue(nbq_tasks.add, 20, 22)
    assert job.status == "finished" and job.result(timeout=0) == 42
    stored = redis_client.hgetall(keys.job(job.id))
    assert stored[b"worker"].startswith(b"sync.") and stored[b"rsig"], "recorded and signed like a worker's"
    assert redis_client.zcard("nbq:workers") == 0, "the runner unregistered"
    assert redis_client.llen(keys.queue("testing")) == 0 and redis_client.zcard(keys.active("testing")) == 0


def test_the_job_context_output_progress_and_async_jobs(q):
    job = q.enqueue(nbq_tasks.whoami)
    assert job.result(timeout=0) == job.id
    job = q.enqueue(nbq_tasks.chatty, 3)
    assert job.logs() == ["line 0", "line 1", "line 2"] and job.progress["done"] == 3
    assert q.enqueue(async_tasks.add, 1, 2).result(timeout=0) == 3
    assert q.map(nbq_tasks.add, []).results() == []
    group = Queue("testing", q.connection, is_async=False).map(nbq_tasks.echo, [1, 2])
    assert group.results(timeout=0) == [((1,), {}), ((2,), {})]


def test_a_failure_is_recorded_not_raised(q):
    job = q.enqueue(nbq_tasks.fail, "in testing")
    assert job.status == "failed"
    with pytest.raises(JobFailed, match="in testing") as info:
        job.result(timeout=0)
    assert "nbq_tasks.py" in info.value.traceback and "ValueError" in info.value.traceback


def test_retries_and_delays_are_not_waited_for(q, tmp_path):
    job = q.enqueue_call(nbq_tasks.flaky, (str(tmp_path / "n"), 2), retries=2, retry_delay=3600)
    assert job.result(timeout=0) == 3
    assert q.enqueue_in(3600, nbq_tasks.add, 1, 1).result(timeout=0) == 2


def test_the_guard_still_refuses_what_a_worker_could_not_import(q, redis_client):
    with pytest.raises(EnqueueError, match="lambda"):
        q.enqueue(lambda: 1)
    assert not redis_client.keys("nbq:{*}:job:*")


def test_sync_context_makes_every_queue_run_at_enqueue(redis_client):
    with nbqueue.testing.sync():
        job = Queue("ctx", redis_client).enqueue(nbq_tasks.enqueue_inner, "ctx-inner", 2, 3)
        assert job.result(timeout=0) == 5  # the job's own enqueue ran at once too
    later = Queue("ctx", redis_client).enqueue(nbq_tasks.add, 1, 1)
    assert later.status == "queued", "outside the block, queues are asynchronous again"
    assert Queue("ctx", redis_client, is_async=True).is_async
    with pytest.raises(EnqueueError, match="is_async"):
        Queue("ctx", redis_client, is_async="no")


def test_a_job_queued_before_runs_first_and_nothing_is_left_behind(redis_client):
    first = Queue("mixed", redis_client).enqueue(nbq_tasks.add, 1, 1)  # waits for a worker
    job = Queue("mixed", redis_client, is_async=False).enqueue(nbq_tasks.add, 2, 2)
    assert job.result(timeout=0) == 4 and first.result(timeout=0) == 2  # ran first, in order
    assert os.getpid() == Queue("mixed", redis_client, is_async=False).enqueue(nbq_tasks.pid).result(timeout=0)


def test_testing_mode_in_a_notebook_cell_runs_async_jobs_too(redis_client, tmp_path):
    """A cell runs on the kernel's event loop: an async job's loop runs beside it, not inside."""
    cells = ["import async_tasks, nbq_tasks\nfrom nbqueue import Queue\nq = Queue('nbsync', is_async=False)",
             "job = q.enqueue(async_tasks.whoami)\njob.result(timeout=0)[0] == job.id, job.logs()",
             "q.enqueue(nbq_tasks.add, 1, 2).result(timeout=0)"]
    results = cell_values(cells)
    assert results[1:] == [["(True, ['async says hello'])"], ["3"]], results


def test_with_a_worker_on_the_same_queue_enqueue_still_returns_once_the_job_ended(redis_client, start_worker):
    start_worker("race", "--inline", "-c", "4")
    q = Queue("race", redis_client, is_async=False)
    for i in range(10):
        job = q.enqueue(nbq_tasks.sleep_then, 0.05, i)
        assert job.status == "finished" and job.result(timeout=0) == i
