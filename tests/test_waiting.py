"""Futures-style waiting: ``await job``/``await group``, ``as_completed``, ``wait``, ``done()``,
``Group.results(return_exceptions=True)``, ``Group.fetch`` — against real workers."""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid

import pytest
import redis

import nbq_tasks
import nbqueue
from conftest import InThread, cell_values, wait_for
from nbqueue import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Group,
    JobCanceled,
    JobFailed,
    NoSuchGroup,
    Queue,
    ResultTimeout,
    as_completed,
    keys,
    wait,
)
from nbqueue.info import watch_events


async def ticker(ticks: list) -> None:
    """Note the time every 10 ms: the event loop runs while something is awaited."""
    while True:
        ticks.append(time.monotonic())
        await asyncio.sleep(0.01)


def test_await_a_job_and_a_group_without_blocking_the_loop(redis_client, start_worker):
    start_worker("wq", "--inline", "--concurrency", "4")
    q = Queue("wq", redis_client)

    async def main():
        ticks: list = []
        tick = asyncio.ensure_future(ticker(ticks))
        job = q.enqueue(nbq_tasks.sleep_then, 0.5, 42)
        value = await job
        group_values = await q.map(nbq_tasks.echo, [1, 2, 3])
        both = await asyncio.gather(q.enqueue(nbq_tasks.add, 1, 1), q.enqueue(nbq_tasks.add, 2, 2))
        tick.cancel()
        return value, group_values, both, ticks

    value, group_values, both, ticks = asyncio.run(main())
    assert value == 42 and group_values == [((1,), {}), ((2,), {}), ((3,), {})] and both == [2, 4]
    assert len(ticks) >= 20, "the loop kept running while the job ran"


def test_await_raises_the_jobs_error_and_a_timeout(redis_client, start_worker):
    start_worker("wfail", "--inline")
    q = Queue("wfail", redis_client)

    async def main():
        with pytest.raises(JobFailed, match="boom"):
            await q.enqueue(nbq_tasks.fail, "boom")
        with pytest.raises(ResultTimeout):
            await Queue("nobody-serves", redis_client).enqueue(nbq_tasks.add, 1, 2).aresult(timeout=0.3)

    asyncio.run(main())


def test_a_canceled_await_stops_its_waiting_thread(redis_client):
    job = Queue("nobody-serves-2", redis_client).enqueue(nbq_tasks.add, 1, 2)

    async def main():
        task = asyncio.ensure_future(job.aresult())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = redis_client.pubsub_numsub(keys.events(job.id))[0][1]
    asyncio.run(main())  # asyncio.run waits for the executor's threads to end: it returns only if the wait gave up
    wait_for(lambda: redis_client.pubsub_numsub(keys.events(job.id))[0][1] == before, timeout=5)


def test_as_completed_yields_jobs_in_the_order_they_end(redis_client, start_worker, tmp_path):
    start_worker("wac", "--inline", "--concurrency", "3")
    q = Queue("wac", redis_client)
    gate = tmp_path / "gate"
    slow = q.enqueue(nbq_tasks.until_file, str(gate), "slow")  # ends when the gate file exists
    fast = [q.enqueue(nbq_tasks.add, i, i) for i in range(2)]
    order = []
    for job in nbqueue.as_completed([slow, *fast], timeout=30):
        order.append(job)
        if len(order) == 2:
            assert set(order) == set(fast) and not slow.done()
            gate.touch()
    assert order[-1] == slow and slow.done()
    with pytest.raises(ResultTimeout, match="0 of 1 jobs are done"):
        list(nbqueue.as_completed([Queue("nobody-3", redis_client).enqueue(nbq_tasks.add, 1, 2)], timeout=0.2))
    assert list(nbqueue.as_completed([])) == []


def test_wait_returns_when_asked(redis_client, start_worker, tmp_path):
    start_worker("wwait", "--inline", "--concurrency", "3")
    q = Queue("wwait", redis_client)
    gate = tmp_path / "gate"
    slow = q.enqueue(nbq_tasks.until_file, str(gate), "slow")
    quick = q.enqueue(nbq_tasks.add, 1, 1)
    done, not_done = nbqueue.wait([slow, quick], timeout=20, return_when=FIRST_COMPLETED)
    assert done == {quick} and not_done == {slow}
    bad = q.enqueue(nbq_tasks.fail, "x")
    done, not_done = nbqueue.wait([slow, bad], timeout=20, return_when=FIRST_EXCEPTION)
    assert bad in done and slow in not_done
    done, not_done = nbqueue.wait([slow], timeout=0.2)
    assert not done and not_done == {slow}
    gate.touch()
    done, not_done = nbqueue.wait([slow, quick, bad], timeout=30, return_when=ALL_COMPLETED)
    assert done == {slow, quick, bad} and not not_done
    with pytest.raises(ValueError, match="return_when"):
        nbqueue.wait([slow], return_when="SOMETIMES")


def test_async_for_as_completed_and_async_wait_keep_the_loop_running(redis_client, start_worker, tmp_path):
    start_worker("wasync", "--inline", "--concurrency", "3")
    q = Queue("wasync", redis_client)
    gate = tmp_path / "gate"

    async def main():
        ticks: list = []
        tick = asyncio.ensure_future(ticker(ticks))
        slow = q.enqueue(nbq_tasks.until_file, str(gate), "slow")
        fast = [q.enqueue(nbq_tasks.sleep_then, 0.3, i) for i in range(2)]
        order = []
        async for job in nbqueue.as_completed([slow, *fast], timeout=30):
            order.append(job)
            if len(order) == 2:
                assert set(order) == set(fast) and not slow.done()
                before = len(ticks)
                done, not_done = await nbqueue.async_wait([slow], timeout=0.3)  # the loop ticks meanwhile
                assert not done and not_done == {slow} and len(ticks) > before
                gate.touch()
        assert order[-1] == slow and sorted(j.result() for j in fast) == [0, 1] and slow.result() == "slow"
        done, _ = await nbqueue.async_wait(order, timeout=5)
        assert done == set(order)
        with pytest.raises(ResultTimeout, match="0 of 1 jobs are done"):
            async for _ in nbqueue.as_completed([Queue("nobody-5", redis_client).enqueue(nbq_tasks.add, 1, 2)],
                                                timeout=0.2):
                pass
        assert [j async for j in nbqueue.as_completed([])] == []
        tick.cancel()
        return ticks

    ticks = asyncio.run(main())
    assert len(ticks) >= 20, "the loop kept running while as_completed waited"


def test_canceling_an_async_for_over_as_completed_stops_its_wait(redis_client):
    job = Queue("nobody-6", redis_client).enqueue(nbq_tasks.add, 1, 2)

    async def consume():
        async for _ in nbqueue.as_completed([job], timeout=60):
            pass

    async def main():
        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(main())  # ends by joining the executor's threads: the wait must have given up
    assert time.monotonic() - started < 10, "the executor's wait went on after the cancel"


def test_group_results_with_exceptions_in_place(redis_client, start_worker):
    start_worker("wgroup", "--inline")
    q = Queue("wgroup", redis_client)
    jobs = [q.enqueue(nbq_tasks.add, 1, 1), q.enqueue(nbq_tasks.fail, "second"), q.enqueue(nbq_tasks.add, 2, 2)]
    canceled = Queue("nobody-4", redis_client).enqueue(nbq_tasks.add, 0, 0)
    canceled.cancel()
    values = Group([*jobs, canceled]).results(timeout=20, return_exceptions=True)
    assert values[0] == 2 and values[2] == 4
    assert isinstance(values[1], JobFailed) and "second" in str(values[1])
    assert isinstance(values[3], JobCanceled)
    with pytest.raises(JobFailed):
        Group(jobs).results(timeout=20)
    assert Group(jobs).done()


def test_a_mapped_group_is_fetched_back_by_its_id(redis_client, start_worker):
    start_worker("wfetch", "--inline")
    group = Queue("wfetch", redis_client).map(nbq_tasks.echo, range(5))
    assert group.id.startswith("g-")
    again = Group.fetch(group.id, redis_client)
    assert again.ids == group.ids and again.id == group.id
    assert again.results(timeout=20) == [((i,), {}) for i in range(5)]
    ttl = redis_client.ttl(f"nbq:group:{group.id}")
    assert ttl > 7 * 24 * 3600, ttl  # outlives its jobs' TTL
    forever = Queue("wfetch", redis_client).map(nbq_tasks.echo, range(2), result_ttl=None)
    assert redis_client.ttl(f"nbq:group:{forever.id}") == -1
    for junk in ["g-missing", "", "../x", None, "x" * 500]:
        with pytest.raises(NoSuchGroup):
            Group.fetch(junk, redis_client)


def test_top_level_await_in_a_notebook_cell(redis_client, start_worker, tmp_path):
    start_worker("wnb", "--inline")
    cells = ["import nbq_tasks\nfrom nbqueue import Queue\nq = Queue('wnb')",
             "await q.enqueue(nbq_tasks.add, 20, 22)",
             "await q.map(nbq_tasks.add, [])  # an empty group",
             "import asyncio\nawait asyncio.gather(q.enqueue(nbq_tasks.add, 1, 1), q.map(nbq_tasks.echo, [7]))"]
    results = cell_values(cells)
    assert results[1:] == [["42"], ["[]"], ["[2, [((7,), {})]]"]], results


# --- one listening mechanism per process (issue 11, part 5) ---------------------------------------
def _subscribers(admin, name: str) -> list:
    """The pub/sub connections named ``name`` on the server (CLIENT LIST)."""
    return [c for c in admin.client_list() if c.get("name") == name and int(c["sub"]) + int(c["psub"]) > 0]


def _waits(client, jobs: list, seen_events: list, watch_too: bool = True) -> list:
    """Every kind of wait at once, each in its thread: result() per job, Group.results,
    as_completed, wait, and (``watch_too``) ``nbqueue info --watch``'s event lines."""
    n = len(jobs)

    def watch() -> int:
        for line in watch_events(client):
            seen_events.append(line)
            if sum(" finished" in x for x in seen_events) >= n:
                return n
        return 0

    return ([InThread(lambda j=j: j.result(timeout=90)) for j in jobs]
            + [InThread(lambda: Group(jobs).results(timeout=90)),
               InThread(lambda: [j.id for j in as_completed(jobs, timeout=90)]),
               InThread(lambda: len(wait(jobs, timeout=90).done))]
            + ([InThread(watch)] if watch_too else []))


def _check(waits: list, jobs: list) -> None:
    for waiting in waits:
        waiting.join(timeout=90)
        assert not waiting.is_alive() and waiting.error is None, waiting.error
    n = len(jobs)
    assert [w.value for w in waits[:n]] == [2 * i for i in range(n)]
    assert waits[n].value == [2 * i for i in range(n)]
    assert sorted(waits[n + 1].value) == sorted(j.id for j in jobs)
    assert waits[n + 2].value == n and all(w.value == n for w in waits[n + 3:])  # wait, info --watch


def test_concurrent_waits_of_one_process_share_one_pubsub_connection(private_redis, spawn_worker):
    name = "waits-" + uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(private_redis.url, client_name=name)
    admin = private_redis.client()
    q = Queue("shared", client)
    n = 20
    jobs = q.enqueue_many([(nbq_tasks.add, (i, i)) for i in range(n)])  # no worker yet: they all wait
    events: list = []
    waits = _waits(client, jobs, events)
    channels = [keys.events(j.id) for j in jobs]
    wait_for(lambda: all(c >= 1 for _, c in admin.pubsub_numsub(*channels)) and admin.pubsub_numpat() >= 1, 30,
             message="every wait to listen")
    assert [c for _, c in admin.pubsub_numsub(*channels)] == [1] * n and admin.pubsub_numpat() == 1
    listening = _subscribers(admin, name)
    assert len(listening) == 1, listening  # 20 result() waits, a group, as_completed, wait, info --watch
    assert int(listening[0]["sub"]) == n + 1  # the jobs' channels (each once) and the watcher's wake channel
    spawn_worker("shared", "--url", private_redis.url, "--inline", "-c", "4").wait_ready()
    _check(waits, jobs)
    assert len({line.split()[1] for line in events if " finished" in line}) == n
    wait_for(lambda: not _subscribers(admin, name), 10, message="the watcher to let its connection go")


def test_waits_end_when_redis_restarts_mid_wait(private_redis, spawn_worker, caplog):
    """(``info --watch`` is not among them: it ends in one line when Redis can't be reached, test_cli.)"""
    name = "restart-" + uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(private_redis.url, client_name=name)
    admin = private_redis.client()
    jobs = Queue("restart", client).enqueue_many([(nbq_tasks.add, (i, i)) for i in range(10)])
    events: list = []
    with caplog.at_level(logging.WARNING, logger="nbqueue"):
        waits = _waits(client, jobs, events, watch_too=False)
        wait_for(lambda: len(_subscribers(admin, name)) == 1, 30,
                 message="every wait to listen")

        def noticed() -> None:  # Redis away long enough for the waits to see it
            wait_for(lambda: "lost Redis while waiting" in caplog.text, 30, message="a wait to notice")

        private_redis.restart(while_down=noticed)  # the jobs come back from the append-only file
        admin = private_redis.client()
        wait_for(lambda: len(_subscribers(admin, name)) == 1, 30, message="the watcher to subscribe again")
        spawn_worker("restart", "--url", private_redis.url, "--inline").wait_ready()
        _check(waits, jobs)
    assert all(not w.is_alive() for w in waits)


def test_waits_see_jobs_that_ended_while_the_watcher_was_cut_off(redis_client, start_worker):
    """The watcher's connection is killed over and over while jobs end (their events are lost):
    every wait still ends, from the re-read each re-subscription brings."""
    q = Queue("cutoff", redis_client)
    jobs = q.enqueue_many([(nbq_tasks.sleep_then, (0.05 * (i % 5), 2 * i)) for i in range(15)])
    events: list = []
    waits = _waits(redis_client, jobs, events, watch_too=False)  # info --watch prints what it receives: lost is lost
    start_worker("cutoff", "--inline", "-c", "3")
    stop = threading.Event()

    def cut() -> None:
        while not stop.is_set():
            redis_client.client_kill_filter(_type="pubsub", skipme=True)
            time.sleep(0.05)

    cutter = InThread(cut)
    try:
        for waiting in waits:
            waiting.join(timeout=90)
            assert not waiting.is_alive() and waiting.error is None, waiting.error
    finally:
        stop.set()
        cutter.join(timeout=10)
    assert [w.value for w in waits[:15]] == [2 * i for i in range(15)]


def test_junk_and_lies_on_a_jobs_channel_do_not_end_its_wait(redis_client):
    job = Queue("junk", redis_client).enqueue(nbq_tasks.add, 1, 2)  # no worker: it stays queued
    waiting = InThread(lambda: job.result(timeout=3))
    channel = keys.events(job.id)
    wait_for(lambda: redis_client.pubsub_numsub(channel)[0][1] == 1, 10, message="the wait to listen")
    for junk in [b"5", b"not json {", b"[]", b'{"id": 5}', b'{"status": "finished"}',
                 json.dumps({"id": job.id, "status": "finished"}), json.dumps({"id": job.id, "status": ["x"]})]:
        redis_client.publish(channel, junk)
    waiting.join(timeout=30)
    assert isinstance(waiting.error, ResultTimeout) and "is still queued" in str(waiting.error), waiting.error
    redis_client.hset(keys.job(job.id), "status", "canceled")  # a real end is still seen at once
    began = time.monotonic()
    with pytest.raises(nbqueue.JobCanceled):
        job.result(timeout=10)
    assert time.monotonic() - began < 1
