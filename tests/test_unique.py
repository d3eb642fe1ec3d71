"""Unique jobs: while a job enqueued with a ``unique_key`` is queued or running, enqueuing with
that key returns it; many enqueuers at once make one job."""
from __future__ import annotations

import threading

import pytest

import nbq_tasks
from nbqueue import EnqueueError, Queue, keys
from nbqueue.errors import JobExists


def test_twenty_concurrent_enqueuers_make_one_job(redis_client, redis_url):
    ids, errors = [], []
    start = threading.Barrier(20)

    def enqueue() -> None:
        try:
            q = Queue("uniq", redis_url)
            start.wait()
            ids.append(q.enqueue_call(nbq_tasks.add, (1, 2), unique_key="report-2024-w48").id)
        except Exception as exc:  # collected: asserted below
            errors.append(exc)

    threads = [threading.Thread(target=enqueue) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(ids) == 20
    assert len(set(ids)) == 1, set(ids)
    assert redis_client.llen(keys.queue("uniq")) == 1
    assert redis_client.hget(keys.job(ids[0]), "unique_key") == b"report-2024-w48"


def test_a_new_job_once_the_holder_ended(redis_client, start_worker):
    q = Queue("uniq2", redis_client)
    first = q.enqueue_call(nbq_tasks.sleep_then, (0.3, "a"), unique_key="k")
    assert q.enqueue_call(nbq_tasks.add, (1, 1), unique_key="k") == first
    assert q.enqueue_call(nbq_tasks.add, (1, 1), unique_key="other") != first
    start_worker("uniq2", "--inline")
    assert first.result(timeout=20) == "a"
    again = q.enqueue_call(nbq_tasks.add, (2, 2), unique_key="k")
    assert again != first and again.result(timeout=20) == 4
    ttl = redis_client.ttl(keys.unique("uniq2", "k"))
    assert ttl > 24 * 3600, ttl


def test_a_canceled_or_expired_holder_frees_the_key(redis_client):
    q = Queue("uniq3", redis_client)
    first = q.enqueue_call(nbq_tasks.add, (1, 1), unique_key="c")
    first.cancel()
    second = q.enqueue_call(nbq_tasks.add, (1, 1), unique_key="c")
    assert second != first
    redis_client.delete(keys.job(second.id))  # expired
    third = q.enqueue_call(nbq_tasks.add, (1, 1), unique_key="c")
    assert third not in (first, second)
    redis_client.set(keys.unique("uniq3", "c"), b"junk id \xff")  # junk in Redis: no job holds it
    assert q.enqueue_call(nbq_tasks.add, (1, 1), unique_key="c") not in (first, second, third)


@pytest.mark.parametrize("key", ["", "x" * 201, 42, None.__class__])
def test_bad_unique_keys_are_refused(redis_client, key):
    with pytest.raises(EnqueueError, match="unique_key"):
        Queue("uniq4", redis_client).enqueue_call(nbq_tasks.add, (1, 1), unique_key=key)
    assert not redis_client.keys("nbq:{*}:job:*")


def test_unique_is_for_one_job_and_keeps_job_id_checks(redis_client):
    q = Queue("uniq5", redis_client)
    with pytest.raises(EnqueueError, match="one job"):
        q.enqueue_many([(nbq_tasks.add, (1, 1)), (nbq_tasks.add, (2, 2))], unique_key="m")
    q.enqueue_call(nbq_tasks.add, (1, 1), job_id="mine")
    with pytest.raises(JobExists):
        q.enqueue_call(nbq_tasks.add, (1, 1), job_id="mine", unique_key="fresh")
