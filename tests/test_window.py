"""The window of a take (``dequeue.lua``): the first ids of each queue a worker passes the job keys
of. It doubles while other takers empty it first, and shrinks back by one id per take it served, so
a worker that once competed hard does not go on sending hundreds of keys with every take."""
from __future__ import annotations

import threading

import nbq_tasks
from nbqueue import Queue, Worker
from nbqueue.worker import MAX_WINDOW, WINDOW


def _calls(client) -> int:
    return client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def test_a_grown_window_shrinks_back_once_takes_fit(redis_client):
    q = Queue("win", redis_client)
    jobs = q.enqueue_many([(nbq_tasks.add, (i, 1)) for i in range(80)])
    worker = Worker(["win"], redis_client, inline=True, burst=True)
    worker._window = MAX_WINDOW  # as after a burst of contention
    assert worker.work() == 80
    assert [j.result(timeout=5) for j in jobs] == [i + 1 for i in range(80)]
    assert worker._window < MAX_WINDOW - 8, "a window that held the head never shrank"
    assert worker._window >= WINDOW


def test_a_stale_window_grows_and_the_take_still_gets_the_head(redis_client):
    q = Queue("win", redis_client)
    first, *rest = q.enqueue_many([(nbq_tasks.add, (i, 1)) for i in range(3)])
    worker = Worker(["win"], redis_client, inline=True, burst=True)
    worker._look_ahead = 0  # the window alone decides how many ids a take knows
    worker._windows = {"win": [b"taken-by-another-worker"]}  # the head is not in it
    calls = _calls(redis_client)
    taken = worker._take()
    assert taken is not None and taken.id == first.id  # the head, after one take that came back 'retry'
    assert _calls(redis_client) - calls == 2
    assert worker._window == 2 * WINDOW - 1  # doubled for the stale window, then one less as it fitted
    assert worker._run(taken, then_take=False) is None  # recorded; then the worker runs the rest
    assert worker.work() == 3  # jobs run in all
    assert [j.result(timeout=5) for j in (first, *rest)] == [1, 2, 3]


def test_slots_and_workers_that_compete_take_every_job_once(redis_client):
    q = Queue("win", redis_client)
    jobs = q.enqueue_many([(nbq_tasks.whoami, ())] * 300)
    workers = [Worker(["win"], redis_client, inline=True, burst=True, concurrency=4) for _ in range(2)]
    threads = [threading.Thread(target=w.work, daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    assert sum(w.jobs_run for w in workers) == 300
    assert [j.result(timeout=5) for j in jobs] == [j.id for j in jobs]
    assert all(j.refresh().attempt == 1 for j in jobs)
    assert all(w._window <= MAX_WINDOW for w in workers)
