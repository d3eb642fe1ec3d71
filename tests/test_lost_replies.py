"""A take whose reply a lost connection cut off (``dequeue.lua``'s take token): the jobs it took
are handed over by the same take sent again, not left leased to a worker that does not know it
holds them until their leases lapse (then run again with attempt 2 and ``lost`` 1). Real workers
behind a real proxy (``cutter.ReplyCutter``) that cuts the connection after the server ran the take,
or before it reached the server."""
from __future__ import annotations

import collections
from pathlib import Path

import pytest

import chaos_tasks
from conftest import wait_for
from cutter import ReplyCutter
from nbqueue import Queue, Worker, keys, wire

pytestmark = pytest.mark.standalone("the proxy fronts one server (a cluster's clients follow MOVED to each node)")
TAKE = keys.script("dequeue").sha.encode()  # what every take's packet holds


def _executions(path: Path) -> collections.Counter:
    lines = path.read_text().splitlines() if path.exists() else []
    return collections.Counter(int(line.split()[0]) for line in lines)


def _attempts(client, jobs: list) -> list:
    with client.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.hmget(keys.job(job.id), "status", "attempt", "lost", "workers")
        return [tuple(v.decode() if v else None for v in row) for row in pipe.execute()]


@pytest.mark.parametrize("after", [True, False], ids=["cut-after-it-ran", "cut-before-it-ran"])
def test_a_take_cut_off_hands_its_job_over_when_sent_again(redis_url, redis_client, spawn_worker,
                                                                      tmp_path, after):
    log = tmp_path / "runs"
    q = Queue("cutfirst", redis_client)
    jobs = [q.enqueue(chaos_tasks.counted, i, 0, str(log)) for i in range(3)]
    with ReplyCutter(redis_url) as proxy:
        # a new worker's first take knows no ids (it gets the queue's first, 'retry'); its second takes one
        proxy.arm(TAKE, after=after, skip=1)
        worker = spawn_worker("cutfirst", "--inline", "--name", "cutter-w", "--url", proxy.url).wait_ready()
        assert [job.result(timeout=20) for job in jobs] == [0, 2, 4]  # well within one lease (5 s)
        assert proxy.cuts == 1
    # each ran once, at its first attempt, by that worker: none was lost and recovered
    assert _attempts(redis_client, jobs) == [("finished", "1", None, "cutter-w")] * 3, worker.log()
    assert _executions(log) == {0: 1, 1: 1, 2: 1}
    assert "lost Redis" in worker.log()


@pytest.mark.parametrize("mode", [["--inline"], [], ["--inline", "-c", "3"]], ids=["inline", "fork", "3-slots"])
def test_takes_cut_off_under_a_drain_lose_no_attempt(redis_url, redis_client, spawn_worker, tmp_path, mode):
    """Cuts in mid-drain. Inline, one slot, the worker takes several short jobs per take (``ahead.py``)
    and writes their outcomes ahead: the cuts lose replies of both. With several slots each has its
    own connection and its own take in flight. Every job still runs once, at attempt 1."""
    log = tmp_path / "runs"
    q = Queue("cutdrain", redis_client)
    jobs = q.enqueue_many([(chaos_tasks.counted, (i, 0, str(log))) for i in range(300)])
    with ReplyCutter(redis_url) as proxy:
        worker = spawn_worker("cutdrain", *mode, "--url", proxy.url).wait_ready()
        for cut in range(1, 4):
            wait_for(lambda cut=cut: len(_executions(log)) >= 40 * cut, 30, message="jobs ran")
            proxy.arm(TAKE)
            wait_for(lambda cut=cut: proxy.cuts == cut, 30, message="a take cut off")
        wait_for(lambda: len(_executions(log)) == 300, 60, message="every job ran")
        for job in jobs:
            job.result(timeout=30)
    assert set(_executions(log).values()) == {1}, "a job ran twice"
    rows = _attempts(redis_client, jobs)
    assert {(status, attempt, lost) for status, attempt, lost, _ in rows} == {("finished", "1", None)}, worker.log()
    assert worker.log().count("lost Redis") >= 1


@pytest.mark.parametrize("junk", ["hash", "words"])
def test_a_take_sent_again_over_a_junk_record_takes_as_usual(redis_client, junk):
    """The record a take sent again reads may be junk (another type, or words of no take of ours):
    the take goes on as usual, no script error (which would wedge the slot resending it)."""
    q = Queue("cutjunk", redis_client)
    job = q.enqueue(chaos_tasks.counted, 0, 0, "/dev/null")
    worker = Worker(["cutjunk"], redis_client, inline=True, name="junk-w")
    record = keys.taken("junk-w", "cutjunk", 0)
    if junk == "hash":
        redis_client.hset(record, "a", "b")
    else:
        redis_client.set(record, "x 9 y z")
    worker._take_command()  # sent: its reply never read
    again = worker._take_command()
    assert again[3 + again[2] + 1].startswith("=")  # the same take, marked as sent again
    reply = worker._settled(wire.send(redis_client, again)[0])
    assert reply[0] == b"job" and reply[3] == job.id.encode(), reply
