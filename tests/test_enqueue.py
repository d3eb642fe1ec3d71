"""Enqueue side: what is written to Redis, the guard's refusals, bad input that writes nothing."""
from __future__ import annotations

import functools
import math
import subprocess
import sys
import threading

import pytest

import nbq_tasks
from nbqueue import Call, EnqueueError, InvalidQueueName, InvalidTransition, Job, JobExists, NoSuchJob, Queue, keys
from nbqueue.errors import JobQueueUnknown
from nbqueue.schema import OPTION_FIELDS
from nbqueue.serialization import function_ref


@pytest.fixture
def q(redis_client):
    return Queue("low", redis_client)


def test_enqueue_writes_one_job_and_queues_it(q, redis_client):
    job = q.enqueue(nbq_tasks.add, 20, 40)
    assert len(q) == 1 and q.job_ids == [job.id]
    fetched = Job.fetch(job.id, redis_client)
    assert fetched.status == "queued"
    assert fetched.func_name == "nbq_tasks:add"
    assert fetched.queue == "low"
    assert fetched.enqueued_at is not None and fetched.started_at is None
    assert [q.name for q in Queue.all(redis_client)] == ["low"]


def test_every_keyword_goes_to_the_function(q, redis_client):
    job = q.enqueue(nbq_tasks.takes_timeout, 1, timeout=5, result_ttl=7, job_id="mine")
    assert job.id != "mine"  # job_id went to the function, not to the job
    data = redis_client.hget(keys.job(job.id), "data")
    assert b"mine" in data
    assert redis_client.hget(keys.job(job.id), "timeout") is None  # default, not stored


def test_enqueue_call_options_are_stored(q, redis_client):
    job = q.enqueue_call(nbq_tasks.add, (1, 2), timeout=30, result_ttl=None, job_id="my-job.1")
    assert job.id == "my-job.1"
    assert redis_client.hmget(keys.job("my-job.1", "low"), "timeout", "result_ttl") == [b"30", b"none"]


def test_at_front_runs_first(q):
    first = q.enqueue(nbq_tasks.add, 1, 1)
    urgent = q.enqueue_call(nbq_tasks.add, (2, 2), at_front=True)
    assert q.job_ids == [urgent.id, first.id]


def test_enqueue_many_is_one_script_call_and_keeps_order(q, redis_client):
    before = _evalsha_calls(redis_client)
    jobs = q.enqueue_many([(nbq_tasks.add, (i, i)) for i in range(300)] + [Call(nbq_tasks.echo, (1,), {"k": 2})])
    assert _evalsha_calls(redis_client) - before == 1
    assert q.job_ids == [j.id for j in jobs]
    assert len(q) == 301


def test_enqueue_many_large_batches_keep_order(q):
    jobs = q.enqueue_many([(nbq_tasks.add, (i, 0)) for i in range(1234)])
    assert q.job_ids == [j.id for j in jobs]
    front = q.enqueue_many([(nbq_tasks.add, (i, 1)) for i in range(700)], at_front=True)
    assert q.job_ids[:700] == [j.id for j in front]


def _evalsha_calls(client) -> int:
    stats = client.info("commandstats")
    return stats.get("cmdstat_evalsha", {}).get("calls", 0)


@pytest.mark.parametrize("name", ["", "a b", "low:prio", "*", "-x", "x" * 101, None, 3])
def test_invalid_queue_names_are_refused(name, redis_client):
    with pytest.raises(InvalidQueueName, match="Invalid queue name"):
        Queue(name, redis_client)
    assert redis_client.dbsize() == 0


def test_existing_job_id_is_refused_and_nothing_is_overwritten(q, redis_client):
    q.enqueue_call(nbq_tasks.add, (1, 2), job_id="report")
    with pytest.raises(JobExists, match="'report' already exists"):
        q.enqueue_call(nbq_tasks.echo, (3,), job_id="report")
    assert Job.fetch("report", redis_client, queue="low").func_name == "nbq_tasks:add"
    assert len(q) == 1
    with pytest.raises(JobQueueUnknown, match="give the queue too"):  # a chosen id lives under its queue's tag
        Job.fetch("report", redis_client)
    assert Job.fetch(keys.ref("report", keys.tag("low")), redis_client).func_name == "nbq_tasks:add"  # or its ref


def test_enqueue_many_is_all_or_none(q):
    q.enqueue_call(nbq_tasks.add, (1, 2), job_id="taken")
    with pytest.raises(JobExists):
        q.enqueue_many([Call(nbq_tasks.add, (1, 1), job_id="new"), Call(nbq_tasks.add, (2, 2), job_id="taken")])
    with pytest.raises(JobExists):  # over several script calls
        q.enqueue_many([(nbq_tasks.add, (i, i)) for i in range(2100)] + [Call(nbq_tasks.add, (0, 0), job_id="taken")])
    with pytest.raises(JobExists):  # twice in one batch
        q.enqueue_many([Call(nbq_tasks.add, (1, 1), job_id="dup"), Call(nbq_tasks.add, (2, 2), job_id="dup")])
    assert q.job_ids == ["taken"]


# --- the guard ---------------------------------------------------------------------------------
def _main_function():
    namespace = {"__name__": "__main__"}
    exec("def send_mail(msg):\n    return msg\n", namespace)
    return namespace["send_mail"]


def _nested():
    def inner():
        return 1
    return inner


@pytest.mark.parametrize("func, message", [
    (_main_function(), r"send_mail: it is defined in __main__ .*tasks\.py.*%%nbqueue\.module"),
    (lambda: 1, r"the lambda .*Define it with def in a module such as tasks\.py"),
    (_nested(), r"_nested\.inner: it is defined inside another function.*top level"),
    (functools.partial(nbq_tasks.add, 1), r"no module path .*partials"),
])
@pytest.mark.parametrize("path", ["enqueue", "enqueue_call", "enqueue_many"])
def test_guard_refuses_what_a_worker_cannot_import(q, redis_client, func, message, path):
    with pytest.raises(EnqueueError, match=message):
        if path == "enqueue":
            q.enqueue(func)
        elif path == "enqueue_call":
            q.enqueue_call(func)
        else:
            q.enqueue_many([(nbq_tasks.add, (1, 2)), (func, ())])
    assert redis_client.dbsize() == 0


def test_guard_refuses_a_function_shadowed_in_its_module(q, monkeypatch):
    original = nbq_tasks.add
    monkeypatch.setattr(nbq_tasks, "add", nbq_tasks.echo)
    with pytest.raises(EnqueueError, match="gives a different object"):
        q.enqueue(original, 1, 2)


def test_guard_in_a_real_main_script(redis_url):
    script = (
        "from nbqueue import Queue\n"
        "def send_mail(msg):\n    return msg\n"
        "Queue('low').enqueue(send_mail, 'hi')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "Can't enqueue send_mail: it is defined in __main__" in run.stderr


def test_guard_allows_methods_of_importable_classes(q):
    q.enqueue(nbq_tasks.Greeter("hi").greet, "ann")
    q.enqueue(nbq_tasks.Greeter.make, "yo")
    q.enqueue(nbq_tasks.Greeter.shout, "hey")
    q.enqueue(math.sqrt, 4.0)
    assert len(q) == 4
    assert function_ref(nbq_tasks.Greeter("hi").greet).path == "nbq_tasks:Greeter.greet"


def test_guard_refuses_methods_of_main_classes(q):
    namespace = {"__name__": "__main__"}
    exec("class Mailer:\n    def send(self):\n        return 1\n", namespace)
    with pytest.raises(EnqueueError, match="__main__"):
        q.enqueue(namespace["Mailer"]().send)


def test_unpicklable_argument_is_named_and_nothing_written(q, redis_client):
    with pytest.raises(EnqueueError, match=r"keyword argument 'lock' \(lock\) can't be pickled.*Nothing was enqueued"):
        q.enqueue(nbq_tasks.echo, 1, lock=threading.Lock())
    with pytest.raises(EnqueueError, match=r"argument 2 \(generator\)"):
        q.enqueue(nbq_tasks.echo, 1, (i for i in range(3)))
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize("option", [{"timeout": -1}, {"timeout": "soon"}, {"result_ttl": 0}])
def test_bad_options_are_refused(q, redis_client, option):
    with pytest.raises(EnqueueError, match="is not valid"):
        q.enqueue_call(nbq_tasks.add, (1, 2), **option)
    with pytest.raises(EnqueueError, match="job_id"):
        q.enqueue_call(nbq_tasks.add, (1, 2), job_id="a b")
    assert redis_client.dbsize() == 0


# --- handles ---------------------------------------------------------------------------------
def test_cancel_a_queued_job(q, redis_client):
    keep = q.enqueue(nbq_tasks.add, 1, 1)
    job = q.enqueue(nbq_tasks.add, 2, 2)
    job.cancel()
    assert job.status == "canceled"
    assert q.job_ids == [keep.id]
    assert 0 < redis_client.ttl(keys.job(job.id)) <= 24 * 3600
    with pytest.raises(InvalidTransition, match="only a queued, scheduled or running job"):
        job.cancel()


def test_fetch_unknown_job(redis_client):
    with pytest.raises(NoSuchJob, match="never enqueued here, or it expired"):
        Job.fetch(keys.new_id("low"), redis_client)
    with pytest.raises(NoSuchJob, match="'nope' on queue 'low': it was never enqueued here"):
        Job.fetch("nope", redis_client, queue="low")


def test_made_ids_carry_their_queues_tag(q, redis_client):
    job = q.enqueue(nbq_tasks.add, 1, 2)
    assert len(job.id) == 32 and job.id[:4] == keys.tag("low") == keys.id_tag(job.id) and job.ref == job.id
    assert redis_client.exists(f"nbq:{{{keys.tag('low')}}}:job:{job.id}")  # under the queue's slot tag
    assert keys.tag("low") != keys.tag("high") and len({keys.new_id("low") for _ in range(100)}) == 100


def test_empty_cancels_waiting_jobs(q):
    jobs = q.enqueue_many([(nbq_tasks.add, (i, i)) for i in range(5)])
    assert q.empty() == 5
    assert len(q) == 0 and q.is_empty()
    assert {j.status for j in jobs} == {"canceled"}


def test_result_of_a_queued_job_times_out(q):
    job = q.enqueue(nbq_tasks.add, 1, 2)
    with pytest.raises(TimeoutError, match="still queued after 0.2 s"):
        job.result(timeout=0.2)


def test_a_notebook_lambda_is_told_to_become_a_def(q):
    """A lambda from a notebook cell (``__main__``) was told to "enqueue tasks.<lambda>"."""
    func = lambda x: x  # noqa: E731
    func.__module__ = "__main__"
    with pytest.raises(EnqueueError, match=r"the lambda __main__\..*<lambda>: .*Define it with def") as info:
        q.enqueue(func, 1)
    assert "tasks.<lambda>" not in str(info.value)


def test_the_call_text_keeps_its_spaces_in_html():
    from nbqueue.notebook.state import JobState

    html = JobState("j1", "tasks.f('a  b',   c)").header_html()
    assert "white-space: pre-wrap" in html and "&#x27;a  b&#x27;,   c" in html


def test_enqueue_one_by_one_writes_what_enqueue_call_writes(q, redis_client):
    """``enqueue``'s fast path (one job, default options) and the general path write the same job."""
    fast, general = q.enqueue(nbq_tasks.add, 1, 2), q.enqueue_call(nbq_tasks.add, (1, 2))
    assert nbq_tasks.add in q._plans  # the fast path was taken
    stored = [redis_client.hgetall(keys.job(job.id)) for job in (fast, general)]
    for job, fields in zip((fast, general), stored):
        assert fields.pop(b"enqueued_at")
        sig = fields.pop(b"sig", None)  # over the job id, so each its own
        if q.signer is not None:
            options = [fields.get(name.encode()) for name in OPTION_FIELDS]
            assert q.signer.job_refusal(job.id.encode(), fields[b"func"], fields[b"code"], options, fields[b"data"],
                                        sig) == ""
    assert stored[0] == stored[1]
    assert (fast.ref, fast.func_name, fast.queue, fast.dependencies) == (fast.id, "nbq_tasks:add", "low", ())
    assert repr(fast).replace(fast.id, general.id) == repr(general)
    assert q.job_ids == [fast.id, general.id]


def test_enqueue_checks_each_time_that_the_function_is_what_its_path_imports(q, redis_client, monkeypatch):
    q.enqueue(nbq_tasks.add, 1, 2)
    original = nbq_tasks.add
    monkeypatch.setattr(nbq_tasks, "add", lambda a, b: a - b)  # redefined after its first enqueue
    with pytest.raises(EnqueueError, match="gives a different object"):
        q.enqueue(original, 1, 2)
    assert len(q) == 1
