"""Futures-style waiting: ``await job``/``await group``, ``as_completed``, ``wait``, ``done()``,
``Group.results(return_exceptions=True)``, ``Group.fetch`` — against real workers."""
from __future__ import annotations

import asyncio
import time

import pytest

import nbq_tasks
import nbqueue
from conftest import cell_values, wait_for
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
)


def test_await_a_job_and_a_group_without_blocking_the_loop(redis_client, start_worker):
    start_worker("wq", "--inline", "--concurrency", "4")
    q = Queue("wq", redis_client)

    async def main():
        ticks = []

        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        tick = asyncio.ensure_future(ticker())
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

    before = redis_client.pubsub_numsub(f"nbq:ev:{job.id}")[0][1]
    asyncio.run(main())  # asyncio.run waits for the executor's threads to end: it returns only if the wait gave up
    wait_for(lambda: redis_client.pubsub_numsub(f"nbq:ev:{job.id}")[0][1] == before, timeout=5)


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
