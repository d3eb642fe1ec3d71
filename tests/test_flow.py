"""Jobs that feed jobs (issue 10, part 1): a Job or Group argument is a dependency whose result is
passed in; ``depends_on``; the ``deferred`` status, released by the script that records the end of
the dependency; failures and cancels down the chain; real Redis, real ``nbqueue worker`` processes."""
from __future__ import annotations

import os
import pickle
import re
import signal

import pytest

import flow_tasks as t
from conftest import MODES, wait_for
from nbqueue import EnqueueError, Group, Job, JobFailed, Queue, keys
from nbqueue.job import DEFERRED


def deferred_left(client) -> list:
    """Ids of every job still deferred in this database."""
    found = list(client.scan_iter(match="nbq:{*}:job:*", count=1000))
    return [k.decode().split(":", 3)[3] for k in found if client.hget(k, "status") == DEFERRED.encode()]


@pytest.mark.parametrize("mode", MODES)
def test_a_three_step_chain_runs_in_order_each_step_taking_the_last_result(redis_client, start_worker, mode):
    q = Queue("fl", redis_client)
    a = q.enqueue(t.load, 5)
    b = q.enqueue(t.clean, a)
    c = q.enqueue_call(t.fit, (b,), {"alpha": 0.5})
    assert (a.status, b.status, c.status) == ("queued", "deferred", "deferred")  # no worker yet
    assert Job.fetch(c.id, redis_client).dependencies == (b.id,) and c.dependencies == (b.id,)
    assert q.job_ids == [a.id]  # a deferred job is in no queue list: no worker polls for it
    start_worker("fl", *mode)
    assert c.result(timeout=30) == 10.0  # sum(0, 2, 4, 6, 8) * 0.5
    assert b.result(timeout=5) == [0, 2, 4, 6, 8]
    for first, then in ((a, b), (b, c)):
        first.refresh(), then.refresh()
        assert first.ended_at <= then.started_at
    assert deferred_left(redis_client) == []


@pytest.mark.parametrize("mode", MODES)
def test_a_group_argument_passes_the_list_of_results_and_nesting_works(redis_client, start_worker, mode):
    start_worker("fl", *mode)
    q = Queue("fl", redis_client)
    squares = q.map(t.square, range(10))
    assert q.enqueue(t.total, squares).result(timeout=30) == 285
    a = q.enqueue(t.load, 3)
    nested = q.enqueue(t.echo, {"rows": [a, (a, 1)], "n": 2}, [squares[:2]], key={"g": Group(squares[3:5])})
    args, kwargs = nested.result(timeout=30)
    assert args == ({"rows": [[0, 1, 2], ([0, 1, 2], 1)], "n": 2}, [[0, 1]])  # a list of jobs: each passed in
    assert kwargs == {"key": {"g": [9, 16]}}
    assert set(nested.dependencies) == {a.id, *squares.ids[:2], *squares.ids[3:5]}


def test_a_job_too_deep_in_the_arguments_is_refused_clearly(redis_client):
    q = Queue("fl", redis_client)
    a = q.enqueue(t.load, 3)
    with pytest.raises(EnqueueError, match="a Job handle can't be pickled.*up to 4 deep"):
        q.enqueue(t.echo, [[[[[a]]]]])
    with pytest.raises(EnqueueError, match="a Job handle can't be pickled"):
        q.enqueue(t.echo, {a})  # sets are not looked into
    assert q.job_ids == [a.id]


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_dependency_fails_its_dependents_down_the_chain_unless_they_allow_failure(
        redis_client, start_worker, mode):
    q = Queue("fl", redis_client)
    x = q.enqueue(t.boom, "bad input")
    y = q.enqueue(t.echo, x)
    z = q.enqueue(t.echo, y)
    w = q.enqueue_call(t.describe, (x,), allow_failure=True)
    v = q.enqueue_call(t.echo, (1,), depends_on=y, allow_failure=True)  # runs though y fails
    start_worker("fl", *mode)
    with pytest.raises(JobFailed, match="ValueError: bad input"):
        x.result(timeout=30)
    with pytest.raises(JobFailed, match=f"DependencyFailed: dependency {x.id} failed"):
        y.result(timeout=30)
    with pytest.raises(JobFailed, match=f"DependencyFailed: dependency {y.id} failed"):
        z.result(timeout=30)
    kind, text = w.result(timeout=30)
    assert kind == "JobFailed" and "ValueError: bad input" in text
    assert v.result(timeout=30) == ((1,), {})
    assert set(q.failed_job_ids) == {x.id, y.id, z.id}
    # a dependency that failed already: the new job fails at once (or runs, allowing failure)
    late = q.enqueue(t.echo, x)
    assert late.status == "failed" and f"dependency {x.id} failed" in Job.fetch(late.id, redis_client).exc_info
    assert q.enqueue_call(t.describe, (x,), allow_failure=True).result(timeout=30)[0] == "JobFailed"
    assert deferred_left(redis_client) == []


def test_a_canceled_dependency_fails_its_dependents(redis_client, start_worker):
    q = Queue("fl", redis_client)
    a = q.enqueue(t.load, 3)
    b = q.enqueue(t.clean, a)
    c = q.enqueue(t.fit, b)
    d = q.enqueue_call(t.describe, (a,), allow_failure=True)
    assert a.cancel() == "canceled"  # queued: at once, and its dependents in the same step
    assert (b.status, c.status) == ("failed", "failed")
    assert Job.fetch(b.id, redis_client).exc_info == f"DependencyFailed: dependency {a.id} failed (it was canceled)"
    assert Job.fetch(c.id, redis_client).exc_info == f"DependencyFailed: dependency {b.id} failed"
    assert d.status == "queued"
    # a deferred job canceled: its own dependents fail; a running one canceled: the same, by its worker
    slow = q.enqueue(t.sleep, 30)
    e = q.enqueue(t.echo, slow)
    f = q.enqueue(t.echo, e)
    g = q.enqueue(t.echo, slow)
    assert e.cancel() == "canceled" and f.status == "failed"
    start_worker("fl")
    assert d.result(timeout=30)[0] == "JobCanceled"
    wait_for(lambda: slow.status == "started", timeout=30)
    assert slow.cancel(wait=20) == "canceled"
    with pytest.raises(JobFailed, match=f"dependency {slow.id} failed"):
        g.result(timeout=30)
    assert deferred_left(redis_client) == []


def test_depends_on_orders_without_passing_a_result(redis_client, start_worker):
    q = Queue("fl", redis_client)
    first = q.enqueue(t.sleep, 0.5)
    other = q.enqueue(t.scale, 2)
    second = q.enqueue_call(t.scale, (3,), depends_on=[first, other.id])
    third = q.enqueue_call(t.echo, ("x",), depends_on=Group([second]))
    assert second.status == "deferred" and second.dependencies == (first.id, other.id)
    start_worker("fl", "--inline", "--concurrency", "2")
    assert third.result(timeout=30) == (("x",), {})
    assert second.result(timeout=5) == 3
    for dep in (first, other):
        dep.refresh()
        second.refresh()
        assert dep.ended_at <= second.started_at
    with pytest.raises(EnqueueError, match="depends_on=.* is not valid"):
        q.enqueue_call(t.echo, depends_on=42)


def test_a_dependency_that_finished_already_queues_the_job_at_once(redis_client, start_worker):
    start_worker("fl", "--inline")
    q = Queue("fl", redis_client)
    a = q.enqueue(t.load, 4)
    assert a.result(timeout=30) == [0, 1, 2, 3]
    b = q.enqueue(t.clean, a)
    assert b.status in ("queued", "started", "finished") and b.dependencies == (a.id,)
    assert b.result(timeout=30) == [0, 2, 4, 6]
    assert not redis_client.exists(keys.dependents(a.id))


def test_a_missing_dependency_or_a_cycle_is_refused_at_enqueue(redis_client):
    q = Queue("fl", redis_client)
    gone = Job("never-enqueued", redis_client, queue="fl")
    with pytest.raises(EnqueueError, match="depends on job 'never-enqueued', which does not exist"):
        q.enqueue(t.echo, gone)
    with pytest.raises(EnqueueError, match="which does not exist"):
        q.enqueue_many([(t.echo, (1,)), (t.echo, (2,))], depends_on="never-enqueued")
    with pytest.raises(EnqueueError, match="would wait for itself"):
        q.enqueue_call(t.echo, job_id="self-loop", depends_on="self-loop")
    # a loop through a job still waiting for an old job of the same id (expired, deleted)
    q.enqueue_call(t.load, (1,), job_id="old-a")
    d = q.enqueue_call(t.echo, depends_on="old-a", job_id="waits-for-a")
    redis_client.delete(keys.job("old-a", "fl"))
    with pytest.raises(EnqueueError, match="'old-a' would wait for itself"):
        q.enqueue_call(t.echo, job_id="old-a", depends_on=d)
    with pytest.raises(EnqueueError, match="delay= and dependencies"):
        q.enqueue_call(t.echo, depends_on=d, delay=5)
    assert q.job_ids == ["old-a"]  # the deleted one's id, dropped when taken
    assert not redis_client.exists(keys.job("old-a", "fl"), keys.job("self-loop", "fl"))
    assert d.status == "deferred"


def test_junk_in_a_dependents_set_is_passed_over(redis_client, start_worker):
    q = Queue("fl", redis_client)
    a = q.enqueue(t.load, 3)
    b = q.enqueue(t.clean, a)
    done = q.enqueue(t.load, 1)
    redis_client.zadd(keys.dependents(a.id), {"no-such-job": 100, b"\xff\xfe junk": 101, done.id: 102,
                                              a.id: 103, "x" * 300: 104})
    lone = q.enqueue(t.load, 2)
    redis_client.set(keys.dependents(lone.id), "not a set")  # junk of another type
    start_worker("fl")
    assert b.result(timeout=30) == [0, 2, 4]
    assert lone.result(timeout=30) == [0, 1]
    assert done.result(timeout=30) == [0]
    assert not redis_client.exists(keys.dependents(a.id), keys.dependents(lone.id))
    x = q.enqueue(t.boom)
    y = q.enqueue(t.echo, x)
    redis_client.zadd(keys.dependents(x.id), {"ghost": 50, b.id: 51})  # b finished: passed over, not failed
    with pytest.raises(JobFailed, match=f"dependency {x.id} failed"):
        y.result(timeout=30)
    assert b.status == "finished"


def test_dependents_are_released_in_the_order_they_were_enqueued(redis_client, start_worker):
    q = Queue("fl", redis_client)
    a = q.enqueue(t.load, 1)
    jobs = [q.enqueue(t.echo, a, i) for i in range(8)]
    start_worker("fl", "--inline")
    for job in jobs:
        job.result(timeout=30)
        job.refresh()
    starts = [job.started_at for job in jobs]
    assert starts == sorted(starts)


def test_fan_out_and_fan_in_of_100_across_3_workers_with_one_killed(redis_client, start_worker, tmp_path):
    q = Queue("fan", redis_client)
    (tmp_path / "runs").mkdir()
    folder = str(tmp_path / "runs")
    root = q.enqueue(t.load, 3)
    steps = Group(q.enqueue_many([(t.step, (folder, f"s{i}", i, 0.05)) for i in range(100)], depends_on=root))
    total = q.enqueue(t.reduce, folder, steps)
    final = q.enqueue(t.scale, total, factor=2)
    assert total.status == "deferred" and len(total.dependencies) == 100
    workers = [start_worker("fan") for _ in range(3)]
    name = re.search(r"worker (\S+) serving", workers[0].log()).group(1)
    wait_for(lambda: len(os.listdir(folder)) >= 20, timeout=60)

    def held_by_victim() -> list:
        return [i for i in redis_client.zrange(keys.active("fan"), 0, -1)
                if redis_client.hget(keys.job(i.decode(), "fan"), "worker") == name.encode()]

    victim = wait_for(held_by_victim, timeout=60)[0].decode()  # mid-job, mid-chain
    os.kill(workers[0].proc.pid, signal.SIGKILL)
    assert final.result(timeout=120) == 2 * sum(i * i for i in range(100))
    assert steps.results(timeout=5) == [i * i for i in range(100)]
    names = [n.split(".")[0] for n in os.listdir(folder)]
    assert set(names) == {f"s{i}" for i in range(100)} | {"reduce"}
    assert len(names) <= 101 + 2  # the killed worker's job may have run twice (its lease lapsed)
    assert deferred_left(redis_client) == []
    assert all(redis_client.hget(keys.job(i), "status") == b"finished" for i in [*steps.ids, total.id, final.id])
    held = Job.fetch(victim, redis_client)
    if held.worker != name:  # it did not end before the kill: re-run elsewhere after its lease lapsed
        assert held.lost == 1


def test_a_dependency_failed_by_the_recovery_fails_its_dependents(redis_client, start_worker):
    q = Queue("lost", redis_client)
    a = q.enqueue_call(t.sleep, (8,), lost_retries=0)
    b = q.enqueue(t.echo, a)
    c = q.enqueue(t.echo, b)
    first = start_worker("lost")
    wait_for(lambda: a.status == "started", timeout=30)
    os.kill(first.proc.pid, signal.SIGKILL)
    start_worker("other-queue")  # its heartbeat recovers the lost job: failed, no re-runs left
    with pytest.raises(JobFailed, match="WorkerLost"):
        a.result(timeout=60)
    with pytest.raises(JobFailed, match=f"DependencyFailed: dependency {b.id} failed"):
        c.result(timeout=30)
    assert Job.fetch(b.id, redis_client).exc_info == f"DependencyFailed: dependency {a.id} failed"


def test_a_dependency_result_changed_in_redis_is_not_unpickled(redis_client, start_worker):
    start_worker("fl", "--inline")
    q = Queue("fl", redis_client)
    a = q.enqueue(t.load, 2)
    assert a.result(timeout=30) == [0, 1]
    redis_client.hset(keys.job(a.id), "result", pickle.dumps("forged"))
    b = q.enqueue(t.echo, a)
    with pytest.raises(JobFailed, match=f"DependencyFailed: job {a.id} .*signature does not match.*not unpickled"):
        b.result(timeout=30)


def test_unsigned_workers_pass_results_too(redis_client, start_worker, monkeypatch):
    monkeypatch.delenv("NBQUEUE_SECRET")
    start_worker("fl", "--inline")
    q = Queue("fl", redis_client)
    assert q.enqueue(t.clean, q.enqueue(t.load, 3)).result(timeout=30) == [0, 2, 4]


def test_widget_states_show_deferred_jobs(redis_client):
    from nbqueue.notebook.state import GroupState, JobState

    q = Queue("fl", redis_client)
    a = q.enqueue(t.load, 1)
    b = q.enqueue(t.clean, a)
    state = JobState(b.id, "flow_tasks.clean(a)")
    state.load(b)
    assert state.status == "deferred" and "nbq-status-deferred" in state.header_html()
    group = GroupState([a.id, b.id], "two")
    group.load(redis_client)
    assert group.counts() == {"queued": 1, "deferred": 1}
    assert "nbq-status-deferred" in group.header_html()


@pytest.mark.standalone("a dependency on another queue's job: refused on a cluster (CrossSlotDependency)")
def test_released_jobs_follow_their_queues_order_and_priority(redis_client, start_worker):
    lo, hi = Queue("lo", redis_client), Queue("hi", redis_client)
    a = lo.enqueue(t.load, 1)
    plain = [lo.enqueue(t.scale, i) for i in range(3)]
    front = lo.enqueue_call(t.echo, (a,), at_front=True)  # released to the front of lo
    urgent = hi.enqueue(t.echo, a)  # released onto hi, which the worker serves first
    start_worker("hi", "lo", "--inline")
    for job in (front, urgent, *plain):
        job.result(timeout=30)
        job.refresh()
    # the order they ran in (an inline worker running short jobs takes a few at a time: those
    # taken together share their started_at, the time of the take)
    assert urgent.ended_at < front.ended_at < plain[0].ended_at
    assert urgent.started_at <= front.started_at <= plain[0].started_at


def test_many_dependents_in_several_script_calls_and_queue_empty(redis_client):
    q = Queue("many", redis_client)
    a = q.enqueue(t.load, 1)
    jobs = q.enqueue_many([(t.scale, (i,)) for i in range(1500)], depends_on=a)  # two calls of defer.lua
    assert redis_client.zcard(keys.dependents(a.id)) == 1500 and q.job_ids == [a.id]
    chained = q.enqueue(t.total, Group(jobs[:10]))
    assert q.empty() == 1  # cancels a: its 1500 dependents fail, and the job after them
    statuses = Group([*jobs, chained]).statuses()
    assert statuses == {"failed": 1501}
    assert Job.fetch(chained.id, redis_client).exc_info == f"DependencyFailed: dependency {jobs[0].id} failed"
    assert deferred_left(redis_client) == []


@pytest.mark.parametrize("mode", MODES)
def test_dependents_enqueued_while_the_dependency_runs_are_released(redis_client, start_worker, mode):
    """The worker took the job with no dependents: its first finish call is told they changed
    (nothing written), reads them and records the end again, releasing them in the same step."""
    start_worker("fl", *mode)
    q = Queue("fl", redis_client)
    a = q.enqueue(t.sleep, 1.0)
    x = q.enqueue(t.slow_boom, 1.0)
    wait_for(lambda: a.status == "started", timeout=30)
    b = q.enqueue(t.scale, a, factor=3)
    c = q.enqueue(t.echo, b)
    y = q.enqueue(t.echo, x)
    assert b.status == "deferred"
    assert c.result(timeout=30) == ((3.0,), {})
    with pytest.raises(JobFailed, match=f"dependency {x.id} failed"):
        y.result(timeout=30)
    assert Job.fetch(a.id, redis_client).status == "finished" and deferred_left(redis_client) == []
