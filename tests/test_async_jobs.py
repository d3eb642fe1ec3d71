"""``async def`` functions run as jobs: on an event loop of the job's own (fork: in the child;
inline: in the job's thread, many at once with ``--concurrency``), canceled with CancelledError."""
from __future__ import annotations

import os

import pytest

import async_tasks
from conftest import MODES, wait_for
from nbqueue import JobFailed, Queue


@pytest.mark.parametrize("mode", MODES)
def test_an_async_def_job_runs_with_its_job_context_output_and_progress(redis_client, start_worker, mode):
    start_worker("aq", *mode)
    q = Queue("aq", redis_client)
    assert q.enqueue(async_tasks.add, 20, 22).result(timeout=20) == 42
    job = q.enqueue(async_tasks.whoami)
    job_id, pid = job.result(timeout=20)
    assert job_id == job.id
    assert "async says hello" in job.logs()
    assert job.progress == {"done": 2, "total": 2, "message": "done"}
    with pytest.raises(JobFailed, match="ValueError: async boom"):
        q.enqueue(async_tasks.fails).result(timeout=20)
    with pytest.raises(JobFailed, match="ResultError.*coroutine"):
        q.enqueue(async_tasks.returns_coroutine).result(timeout=20)


def test_inline_async_jobs_run_at_once_up_to_the_concurrency(redis_client, start_worker, tmp_path):
    start_worker("aconc", "--inline", "--concurrency", "4")
    folder = tmp_path / "arrived"
    folder.mkdir()
    q = Queue("aconc", redis_client)
    jobs = [q.enqueue(async_tasks.barrier, str(folder), 4, i) for i in range(4)]
    assert [j.result(timeout=30) for j in jobs] == [0, 1, 2, 3]


@pytest.mark.parametrize("reason", ["cancel", "timeout"])
def test_inline_cancel_and_timeout_raise_cancelled_error_in_the_job(redis_client, start_worker, tmp_path, reason):
    start_worker("acancel", "--inline")
    flag = str(tmp_path / "flag")
    q = Queue("acancel", redis_client)
    if reason == "cancel":
        job = q.enqueue(async_tasks.sleep_noting_cancel, 60, flag)
        wait_for(lambda: os.path.exists(flag + ".started"), timeout=20)
        assert job.cancel(wait=10) == "canceled"
    else:
        job = q.enqueue_call(async_tasks.sleep_noting_cancel, (60, flag), timeout=0.5)
        with pytest.raises(JobFailed, match="JobTimeout"):
            job.result(timeout=20)
    assert open(flag).read() == "CancelledError"
    assert os.path.exists(flag + ".finally")
    # the worker goes on
    assert q.enqueue(async_tasks.add, 1, 2).result(timeout=20) == 3


def test_an_async_job_that_swallows_cancel_is_still_stopped(redis_client, start_worker, tmp_path):
    start_worker("aswallow", "--inline")
    flag = str(tmp_path / "flag")
    q = Queue("aswallow", redis_client)
    job = q.enqueue(async_tasks.refuses_cancel, 120, flag)
    wait_for(lambda: os.path.exists(flag + ".started"), timeout=20)
    job.cancel(wait=0)
    wait_for(lambda: job.status == "canceled", timeout=15)
    assert os.path.exists(flag), "it was told (CancelledError) first"
    assert q.enqueue(async_tasks.add, 1, 2).result(timeout=20) == 3


@pytest.mark.parametrize("mode", MODES)
def test_tasks_an_async_job_leaves_behind_are_canceled_when_it_ends(redis_client, start_worker, tmp_path, mode):
    start_worker("aleft", *mode)
    flag = str(tmp_path / "flag")
    assert Queue("aleft", redis_client).enqueue(async_tasks.leaves_tasks, flag).result(timeout=20) == "done"
    wait_for(lambda: os.path.exists(flag), timeout=10)


def test_fork_mode_cancel_stops_an_async_job(redis_client, start_worker, tmp_path):
    start_worker("afork")
    flag = str(tmp_path / "flag")
    q = Queue("afork", redis_client)
    job = q.enqueue(async_tasks.sleep_noting_cancel, 60, flag)
    wait_for(lambda: os.path.exists(flag + ".started"), timeout=20)
    assert job.cancel(wait=10) == "canceled"
    assert q.enqueue(async_tasks.add, 1, 2).result(timeout=20) == 3
