"""The key layout (``nbqueue/keys.py``): per-queue slot tags, ids that carry them, every script key
declared, the queue registry and schema version, and the refusal of the previous layout."""
from __future__ import annotations

import re
import subprocess
import sys
from importlib import resources

import pytest
import redis

import nbq_tasks
from nbqueue import Job, LayoutError, Queue, Worker, as_completed, keys, wait, wire
from nbqueue.info import snapshot


@pytest.fixture(autouse=True)
def _flushed_after(redis_client):
    """Leave no foreign layout behind: later tests that use no ``redis_client`` would meet it."""
    yield
    redis_client.flushdb()


GLOBAL = re.compile(r"nbq:(schema|queues|workers|worker:.*|wake-worker:.*|schedule-queues|group:.*|suspended)")


def test_no_script_builds_a_key():
    """Every key a script touches comes in KEYS (made in keys.py): none is named inside Lua."""
    folder = resources.files("nbqueue").joinpath("scripts")
    for script in folder.iterdir():
        text = script.read_text()
        code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
        assert "prefix" not in code and "nbq:" not in code, script.name
        for kind in ("job", "queue", "wake", "failed", "log", "dependents", "active", "scheduled", "unique"):
            assert f"'{kind}:" not in code and f'"{kind}:' not in code, (script.name, kind)


def test_a_queue_and_its_jobs_live_under_one_slot_tag(redis_client):
    q, other = Queue("tagged", redis_client), Queue("elsewhere", redis_client)
    a = q.enqueue(nbq_tasks.add, 1, 2)
    b = q.enqueue_call(nbq_tasks.add, (a, 1), job_id="mine")  # a dependency, under a chosen id
    late = q.enqueue_in(60, nbq_tasks.add, 0, 0)
    failing = q.enqueue(nbq_tasks.fail, "no")
    other.enqueue(nbq_tasks.add, 5, 5)
    q.schedule(nbq_tasks.add, 1, 1, every=60, name="tick")
    worker = Worker(["tagged", "elsewhere"], connection=redis_client, inline=True, burst=True)
    assert worker.work() == 4  # the delayed one waits
    assert b.result(timeout=5) == 4 and late.status == "scheduled" and failing.status == "failed"
    tags = {}
    for key in redis_client.scan_iter("nbq:*"):
        name = key.decode()
        if GLOBAL.fullmatch(name):
            continue
        found = re.fullmatch(r"nbq:\{([0-9a-f]{4})\}:([a-z-]+):(.+)", name)
        assert found, name
        tags.setdefault(found.group(1), set()).add(found.group(2))
    assert set(tags) == {keys.tag("tagged"), keys.tag("elsewhere")}
    assert {"job", "ended", "stats", "scheduled", "failed", "schedules", "schedule"} <= tags[keys.tag("tagged")]
    assert a.id[:4] == keys.tag("tagged") and b.ref == f"{keys.tag('tagged')}:mine"
    assert redis_client.hget(b._key, "deps") == a.id.encode()  # refs in Redis: a made id is its own ref
    assert redis_client.smembers(keys.QUEUES) == {b"tagged", b"elsewhere"}
    assert redis_client.get(keys.SCHEMA) == keys.SCHEMA_VERSION.encode()


def test_a_chosen_id_is_per_queue_and_dependencies_cross_queues(redis_client):
    a, b = Queue("qa", redis_client), Queue("qb", redis_client)
    first = a.enqueue_call(nbq_tasks.add, (1, 2), job_id="same")
    second = b.enqueue_call(nbq_tasks.add, (first, 10), job_id="same")  # another queue: another job
    assert first != second and first.ref != second.ref
    assert Job.fetch("same", redis_client, queue="qa").func_name == "nbq_tasks:add"
    assert Job.fetch("same", redis_client, queue="qb").status == "deferred"
    assert Worker(["qa", "qb"], connection=redis_client, inline=True, burst=True).work() == 2
    assert second.result(timeout=5) == 13  # its dependency on the other queue passed its result
    assert Job.fetch(second.ref, redis_client).dependencies == (first.ref,)
    assert wait([first, second], timeout=5).done == {first, second}  # waited for by ref, as results are
    assert list(as_completed([second], timeout=5)) == [second]


def test_the_registry_is_written_once_per_process_not_by_the_enqueue_script(redis_client, redis_url):
    q = Queue("reg", redis_client)
    q.enqueue(nbq_tasks.add, 1, 1)
    assert redis_client.smembers(keys.QUEUES) == {b"reg"}
    redis_client.delete(keys.QUEUES)
    q.enqueue(nbq_tasks.add, 1, 1)  # this process registered it already: one SADD, not one per job
    assert not redis_client.exists(keys.QUEUES)
    fresh = redis.Redis.from_url(redis_url)  # another client (as another process): registers it again
    Queue("reg", fresh).enqueue(nbq_tasks.add, 1, 1)
    assert redis_client.smembers(keys.QUEUES) == {b"reg"}


def test_a_job_put_in_front_between_two_takes_is_taken_first(redis_client):
    """The take knows the next ids from its last reply; a job put in front of them is not skipped."""
    q = Queue("front", redis_client)
    jobs = [q.enqueue(nbq_tasks.add, i, 0) for i in range(4)]
    worker = Worker(["front"], connection=redis_client, inline=True)
    try:
        assert worker.run_one() == jobs[0].id
        first = q.enqueue_call(nbq_tasks.add, (9, 9), at_front=True)
        redis_client.lrem(q.key, 1, jobs[1].id)  # and one the take expects is gone (canceled by hand)
        assert [worker.run_one() for _ in range(3)] == [first.id, jobs[2].id, jobs[3].id]
        assert worker.run_one() is None
    finally:
        worker._unregister()


OLD = {  # what the previous layout wrote (a queued job, a lease, a schedule)
    "nbq:queues": ("sadd", ["old"]), "nbq:queue:old": ("rpush", ["j1"]), "nbq:job:j1": ("hset", {"status": "queued"}),
    "nbq:active": ("zadd", {"j0": 1}),
}


@pytest.mark.parametrize("marker", ["nbq:active", "nbq:scheduled", "nbq:beat", "nbq:schedules", None])
def test_the_previous_layout_is_refused_and_nothing_is_read_or_written(redis_client, redis_url, marker):
    for key, (command, value) in OLD.items():
        if key != "nbq:active":
            getattr(redis_client, command)(key, *value) if command != "hset" else redis_client.hset(key, mapping=value)
    if marker in ("nbq:active", "nbq:scheduled", "nbq:schedules"):
        redis_client.zadd(marker, {"j0": 1})
    elif marker:
        redis_client.set(marker, "1")  # None: only enqueued, never a worker: the queue's old list tells
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    client = redis.Redis.from_url(redis_url)  # a process that never saw this Redis
    with pytest.raises(LayoutError, match="key layout of an older nbqueue"):
        Queue("old", client).enqueue(nbq_tasks.add, 1, 2)
    with pytest.raises(LayoutError, match="older nbqueue"):
        snapshot(client)
    with pytest.raises(LayoutError, match="older nbqueue"):
        Worker(["old"], connection=client, burst=True).work()
    run = subprocess.run([sys.executable, "-m", "nbqueue.cli", "info", "--url", redis_url],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "older nbqueue" in run.stderr and "Traceback" not in run.stderr
    assert {k: redis_client.dump(k) for k in redis_client.keys("*")} == before  # not a key written


def test_a_registry_of_junk_or_of_new_queues_is_no_old_layout(redis_client, redis_url):
    redis_client.set(keys.QUEUES, "not a set")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):  # refused by Redis, not as another layout
        Queue("junk", redis.Redis.from_url(redis_url)).enqueue(nbq_tasks.add, 1, 2)
    redis_client.flushdb()
    redis_client.sadd(keys.QUEUES, "fresh")  # a registry whose schema key was lost: its queues are tagged
    redis_client.rpush(keys.queue("fresh"), "x")
    assert Queue("fresh", redis.Redis.from_url(redis_url)).enqueue(nbq_tasks.add, 1, 2)
    assert redis_client.get(keys.SCHEMA) == b"2"


def test_another_schema_version_is_refused(redis_client, redis_url):
    redis_client.set(keys.SCHEMA, "3")
    with pytest.raises(LayoutError, match="layout '3'"):
        Queue("v3", redis.Redis.from_url(redis_url)).enqueue(nbq_tasks.add, 1, 2)
    assert not redis_client.exists(keys.queue("v3"), keys.QUEUES)


def test_send_takes_every_value_redis_py_takes(redis_client):
    """wire.send packs with hiredis; a value it refuses (a bytearray) goes redis-py's way: taken
    where this redis-py takes it (8.x), refused alike where it does not (7.0 packs with hiredis too)."""
    commands = (("SET", "nbq:t:a", 7), ("SET", "nbq:t:b", bytearray(b"xy")), ("MGET", "nbq:t:a", "nbq:t:b"))
    try:
        redis_client.set("nbq:t:b", bytearray(b"xy"))
    except redis.DataError:
        with pytest.raises(redis.DataError):
            wire.send(redis_client, *commands)
        return
    redis_client.delete("nbq:t:b")
    assert wire.send(redis_client, *commands) == [b"OK", b"OK", [b"7", b"xy"]]
