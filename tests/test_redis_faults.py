"""Faults of Redis itself under nbqueue (issue 8 row 4 and the fault tests): Redis SIGKILLed and
restarted from its append-only file under running workers and under clients blocked in
``result()``; the first enqueue after a restart; a Sentinel failover while jobs run.
Real servers (``servers.PrivateRedis``, ``sentinels.SentinelSetup``) and real workers."""
from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path

import pytest
import redis

import chaos_tasks
import nbq_tasks
from conftest import InThread, wait_for
from nbqueue import Group, Job, Queue, keys, wire
from nbqueue.connection import client_for, connect
from nbqueue.job import TERMINAL
from sentinels import SentinelSetup
from servers import PrivateRedis, tolerant


def _executions(path: Path) -> collections.Counter:
    if not path.exists():
        return collections.Counter()
    return collections.Counter(int(line.split()[0]) for line in path.read_text().splitlines() if line.strip())


def _statuses(client: redis.Redis, ids: list) -> list:
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(keys.job(job_id), "status")
        return [(s or b"").decode() or "missing" for s in pipe.execute()]


def _kill_and_restart(server: PrivateRedis, while_down) -> float:
    """SIGKILL Redis (no shutdown, no AOF rewrite), run ``while_down``, start it again on its data."""
    began = time.monotonic()
    server.kill()
    while_down()
    server.start()
    return time.monotonic() - began


# --- row 4: the first enqueue after a restart -----------------------------------------------------
@pytest.mark.parametrize("how", ["sigkill", "graceful"])
def test_the_first_enqueue_of_each_thread_after_a_restart_succeeds(private_redis, how):
    client = connect(private_redis.url)  # nbqueue's own client, as Queue(name, url) gets it
    q = Queue("first", client)
    barrier = threading.Barrier(4)
    errors: list = []

    def enqueue_twice() -> None:
        try:
            q.enqueue(nbq_tasks.add, 1, 1)  # this thread's hot-path connection is open now
            barrier.wait(timeout=30)  # restart happens
            barrier.wait(timeout=30)
            q.enqueue(nbq_tasks.add, 2, 2)  # the first enqueue after the restart
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=enqueue_twice) for _ in range(3)]
    for t in threads:
        t.start()
    barrier.wait(timeout=30)
    if how == "sigkill":
        _kill_and_restart(private_redis, lambda: None)
    else:
        private_redis.restart()
    barrier.wait(timeout=30)
    for t in threads:
        t.join(timeout=30)
    q.enqueue(nbq_tasks.add, 3, 3)  # and this thread's
    assert errors == []
    assert len(q) == 7


def test_a_connection_the_server_closed_is_reopened_and_the_command_runs_once(private_redis):
    client = redis.Redis.from_url(private_redis.url)
    wire.send(client, ("CLIENT", "SETNAME", "hot-path"))
    with private_redis.client() as admin:
        hot = [c for c in admin.client_list() if c["name"] == "hot-path"]
        assert len(hot) == 1
        admin.client_kill_filter(_id=hot[0]["id"])  # the server closes it while it is idle
        assert wire.send(client, ("INCR", "once"), ("INCR", "once")) == [1, 2]
        assert admin.get("once") == b"2"
        assert not [c for c in admin.client_list() if c["name"] == "hot-path"]  # a new connection


# --- Redis SIGKILLed under workers and under blocked clients ---------------------------------------
def test_redis_killed_under_workers_and_blocked_clients_loses_nothing(private_redis, spawn_worker, tmp_path, caplog):
    executions = tmp_path / "executions.log"
    client = redis.Redis(unix_socket_path=private_redis.unix_socket)  # redis-py's default retries (about 3 s of them)
    q = Queue("killed", client)
    n = 200
    slow = q.enqueue(nbq_tasks.sleep_then, 3.0, "slow", str(tmp_path / "slow-started"))  # first: runs at once
    jobs = q.enqueue_many([(chaos_tasks.counted, (i, 0.05, str(executions))) for i in range(n)])
    fork = spawn_worker("killed", "--url", private_redis.url, "-c", "2").wait_ready()
    inline = spawn_worker("killed", "--inline", "--url", private_redis.url).wait_ready()
    with caplog.at_level(logging.WARNING, logger="nbqueue"):
        one = InThread(lambda: jobs[-1].result(timeout=120))
        blocked = InThread(lambda: slow.result(timeout=120))
        group = InThread(lambda: Group(jobs).results(timeout=120))
        wait_for(lambda: (tmp_path / "slow-started").exists(), 60, message="the slow job to start")
        wait_for(lambda: sum(_executions(executions).values()) >= 20, 60, message="some jobs to run")
        assert one.is_alive() and group.is_alive(), "the jobs ran out before Redis was killed"

        def down() -> None:  # keep Redis away well past redis-py's own retries (the old 3 s)
            wait_for(lambda: "lost Redis" in fork.log() and "lost Redis" in inline.log(), 30,
                     message="both workers to notice")
            wait_for(lambda: caplog.text.count("lost Redis while waiting") >= 3, 30,
                     message="the three blocked clients to notice")
            assert one.is_alive() and blocked.is_alive() and group.is_alive(), "a client gave up while Redis was away"

        away = _kill_and_restart(private_redis, down)
        for waiting in (one, blocked, group):
            waiting.join(timeout=120)
    assert (one.error, blocked.error, group.error) == (None, None, None)
    assert blocked.value == "slow"
    assert one.value == 2 * (n - 1)
    assert group.value == [2 * i for i in range(n)]
    counts = _executions(executions)
    statuses = _statuses(client, [j.id for j in jobs])
    print(f"\n[redis SIGKILL] away {away:.2f} s; executions {sum(counts.values())} for {n} jobs "
          f"(re-runs {sum(c - 1 for c in counts.values())}); statuses {dict(collections.Counter(statuses))}")
    assert set(counts) == set(range(n))
    assert statuses == ["finished"] * n
    assert "Redis is back" in caplog.text
    assert fork.proc.poll() is None and inline.proc.poll() is None


def test_a_blocked_result_times_out_in_time_while_redis_is_away(private_redis, caplog):
    client = redis.Redis.from_url(private_redis.url)
    job = Queue("away", client).enqueue(nbq_tasks.add, 1, 2)  # no worker: it stays queued
    with caplog.at_level(logging.WARNING, logger="nbqueue"):
        waiting = InThread(lambda: job.result(timeout=6))
        wait_for(lambda: client.pubsub_numsub(keys.events(job.id))[0][1] == 1, 30, message="the client to subscribe")
        private_redis.kill()
        began = time.monotonic()
        waiting.join(timeout=60)
    assert not waiting.is_alive()
    assert type(waiting.error).__name__ == "ResultTimeout", waiting.error
    assert "no answer from Redis" in str(waiting.error)
    assert time.monotonic() - began < 20  # its timeout, plus at most one redis-py reconnect cycle
    assert "lost Redis while waiting" in caplog.text


# --- Sentinel failover ------------------------------------------------------------------------------
FAILOVER_JOBS_BEFORE = 150  # acknowledged enqueues before the master is killed
FAILOVER_JOBS_AFTER = 100  # and after the failover


def test_sentinel_failover_while_jobs_run(tmp_path, spawn_worker):
    executions = tmp_path / "executions.log"
    with SentinelSetup(tmp_path) as setup:
        fork = spawn_worker("fo", "--url", setup.url, "-c", "2").wait_ready()
        inline = spawn_worker("fo", "--inline", "--url", setup.url).wait_ready()
        client = client_for(setup.url, socket_timeout=5)
        q = Queue("fo", client)
        acked: dict = {}  # index -> job id, for every enqueue that returned
        refused = collections.Counter()
        stop = threading.Event()

        def enqueue() -> None:  # a client enqueueing one by one, retrying what raised
            i = 0
            while not stop.is_set():
                try:
                    acked[i] = q.enqueue(chaos_tasks.counted, i, 0.01, str(executions)).id
                    i += 1
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                    refused[type(exc).__name__] += 1
                    time.sleep(0.05)
                time.sleep(0.005)

        gate = tmp_path / "gate"
        gated = q.enqueue(chaos_tasks.gated, str(gate), "gated")  # runs through the failover, ends after it
        producer = threading.Thread(target=enqueue, daemon=True)
        producer.start()
        try:
            wait_for(lambda: len(acked) >= FAILOVER_JOBS_BEFORE, 60, message="jobs enqueued before the kill")
            first = dict(list(acked.items())[:FAILOVER_JOBS_BEFORE])
            group = InThread(lambda: Group([Job(i, client) for i in first.values()] + [gated]).results(timeout=120))
            wait_for(lambda: sum(_executions(executions).values()) >= 50, 60, message="jobs running")
            at_kill = len(acked)
            began = time.monotonic()
            setup.kill_master()
            setup.wait_failover()
            failover = time.monotonic() - began
            assert group.is_alive(), f"Group.results() gave up during the failover: {group.error!r}"
            gate.touch()
            wait_for(lambda: len(acked) >= at_kill + FAILOVER_JOBS_AFTER, 90, message="enqueues after the failover")
        finally:
            stop.set()
            producer.join(timeout=30)
        ids = dict(acked)
        new_master = setup.replica.client(timeout=5)
        deadline = time.monotonic() + 90  # lapsed leases (5 s) of jobs the old master had finished are re-run

        def settled() -> list:
            statuses = tolerant(lambda: _statuses(new_master, list(ids.values())), deadline)
            return statuses if all(s in TERMINAL or s == "missing" for s in statuses) else []

        statuses = wait_for(settled, 90, interval=0.2, message="every surviving job to end")
        counts = _executions(executions)
        missing = [i for i, s in zip(ids, statuses) if s == "missing"]
        lost = [i for i in ids if counts[i] == 0]
        duplicated = [i for i in ids if counts[i] > 1]
        print(f"\n[sentinel failover] {len(ids)} acknowledged enqueues ({at_kill} before the kill), failover took "
              f"{failover:.1f} s, enqueues that raised (retried): {dict(refused)}; statuses "
              f"{dict(collections.Counter(statuses))}; acknowledged jobs lost (never ran): {len(lost)} {lost[:10]}, "
              f"missing on the new master: {len(missing)}, duplicated (ran twice or more): {len(duplicated)} "
              f"{duplicated[:10]}")
        assert not [s for s in statuses if s not in ("finished", "missing")], collections.Counter(statuses)
        assert len(missing) <= 10, missing  # async replication: at most the last few writes before the kill
        assert fork.proc.poll() is None and inline.proc.poll() is None
        group.join(timeout=120)  # a client blocked in Group.results() through the failover
        if not missing:
            assert group.error is None and group.value == [2 * i for i in first] + ["gated"], group.error
        more = q.enqueue(nbq_tasks.add, 2, 3)  # the deployment goes on
        assert more.result(timeout=60) == 5
