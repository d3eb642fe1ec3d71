"""on_success / on_failure: importable functions a worker enqueues as ``f(job)`` when the job
ends for good; signed like the job, checked by the guard at enqueue."""
from __future__ import annotations

import signal

import pytest

import nbq_tasks
from conftest import wait_for
from nbqueue import EnqueueError, Job, JobFailed, Queue, keys


def callback_jobs(redis_client, job_id: str) -> list:
    """The callback jobs enqueued for ``job_id`` (their args name it)."""
    found = []
    for key in redis_client.scan_iter("nbq:{*}:job:*"):
        func = redis_client.hget(key, "func")
        if func == b"nbqueue.callbacks:call_back":
            job = Job.fetch(key.decode().split(":", 3)[3], redis_client)
            if job.args[1] == job_id:
                found.append(job)
    return found


@pytest.mark.parametrize("mode", [[], ["--inline"]], ids=["fork", "inline"])
def test_success_and_final_failure_enqueue_their_callbacks(redis_client, start_worker, tmp_path, mode):
    start_worker("cb", *mode)
    q = Queue("cb", redis_client)
    ok = q.enqueue_call(nbq_tasks.add, (20, 22), on_success=nbq_tasks.on_ok, on_failure=nbq_tasks.on_bad)
    assert ok.result(timeout=20) == 42
    [callback] = wait_for(lambda: callback_jobs(redis_client, ok.id), timeout=20)
    assert callback.result(timeout=20) == f"ok {ok.id} 42"
    bad = q.enqueue_call(nbq_tasks.flaky, (str(tmp_path / "n"), 5), retries=1, retry_delay=0,
                         on_success=nbq_tasks.on_ok, on_failure=nbq_tasks.on_bad)
    with pytest.raises(JobFailed):
        bad.result(timeout=20)
    [callback] = wait_for(lambda: callback_jobs(redis_client, bad.id), timeout=20)
    assert callback.result(timeout=20) == f"bad {bad.id} RuntimeError: flaky failure 2 after 2 failure(s)"
    assert len(callback_jobs(redis_client, bad.id)) == 1, "one callback: not one per failed attempt"


@pytest.mark.parametrize("tampered", [False, True], ids=["signed", "callback-added-by-hand"])
def test_a_job_the_recovery_fails_enqueues_its_on_failure_callback(redis_client, start_worker, tmp_path, tampered):
    """Its worker SIGKILLed mid-job, lost_retries=0: the recovery (another worker's duty) fails it
    with WorkerLost, and that worker enqueues its on_failure, once; on_success never. An on_failure
    written into the job's hash by hand breaks its signature: no callback."""
    doomed = start_worker("cblost", "--name", "cb-doomed")
    q = Queue("cblost", redis_client)
    flag = tmp_path / "started"
    callbacks = {} if tampered else {"on_success": nbq_tasks.on_ok, "on_failure": nbq_tasks.on_bad}
    job = q.enqueue_call(nbq_tasks.busy, (60, str(flag)), lost_retries=0, **callbacks)
    wait_for(flag.exists, 20, message="the job started")
    doomed.signal(signal.SIGKILL)
    doomed.wait()
    if tampered:
        redis_client.hset(keys.job(job.id), "on_failure", "nbq_tasks:on_bad")
    rescuer = start_worker("cblost")  # takes the duty, recovers the lapsed lease, runs the callback
    with pytest.raises(JobFailed) as failed:
        job.result(timeout=30)
    assert "WorkerLost" in str(failed.value)
    if tampered:
        wait_for(lambda: "no on_failure callback: SignatureError" in rescuer.log(), 20, message="the refusal")
        assert not callback_jobs(redis_client, job.id)
        return
    [callback] = wait_for(lambda: callback_jobs(redis_client, job.id), timeout=20, message="the callback")
    assert callback.result(timeout=20).startswith(f"bad {job.id} WorkerLost: the worker cb-doomed")
    assert len(callback_jobs(redis_client, job.id)) == 1


def test_no_callback_for_a_canceled_job_and_none_without_callbacks(redis_client, start_worker):
    q = Queue("cb2", redis_client)
    canceled = q.enqueue_call(nbq_tasks.add, (1, 1), on_success=nbq_tasks.on_ok, on_failure=nbq_tasks.on_bad)
    canceled.cancel()
    start_worker("cb2", "--inline")
    plain = q.enqueue(nbq_tasks.add, 1, 1)
    assert plain.result(timeout=20) == 2
    assert not callback_jobs(redis_client, canceled.id) and not callback_jobs(redis_client, plain.id)


def test_callbacks_are_checked_by_the_guard(redis_client):
    q = Queue("cb3", redis_client)
    for bad in (lambda job: 1, nbq_tasks.Greeter("hi").greet, "nbq_tasks.on_ok"):
        with pytest.raises(EnqueueError):
            q.enqueue_call(nbq_tasks.add, (1, 1), on_success=bad)
    assert not redis_client.keys("nbq:{*}:job:*")


def test_a_callback_added_or_changed_in_redis_is_refused(redis_client, start_worker):
    q = Queue("cb4", redis_client)
    plain = q.enqueue(nbq_tasks.add, 1, 1)
    redis_client.hset(keys.job(plain.id), "on_success", "os:system")  # tampered: no signature covers it
    with_cb = q.enqueue_call(nbq_tasks.add, (1, 1), on_success=nbq_tasks.on_ok)
    redis_client.hset(keys.job(with_cb.id), "on_success", "nbq_tasks:on_bad")
    start_worker("cb4", "--inline")
    for job in (plain, with_cb):
        with pytest.raises(JobFailed, match="SignatureError"):
            job.result(timeout=20)
        assert not callback_jobs(redis_client, job.id)


def test_testing_mode_runs_callbacks_at_once(redis_client):
    job = Queue("cb5", redis_client, is_async=False).enqueue_call(nbq_tasks.add, (2, 3), on_success=nbq_tasks.on_ok)
    [callback] = callback_jobs(redis_client, job.id)
    assert callback.status == "finished" and callback.result(timeout=0) == f"ok {job.id} 5"
