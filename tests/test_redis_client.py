"""How nbqueue talks to Redis: the client's own connections (Sentinel too), Sentinel URLs, one
connection for a group's wait, and a Redis that evicts keys or is full (issue 8 rows 5, 6, 11).
Real servers only: private ones from ``servers.PrivateRedis`` and ``sentinels.SentinelSetup``."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import redis
from redis.sentinel import Sentinel

import nbq_tasks
from conftest import TESTS_DIR, wait_for
from nbqueue import Queue, keys
from nbqueue.connection import InvalidURL, SentinelURL, client_for, connect, describe, mask_url
from nbqueue.errors import EvictingRedis, NbqueueError, RedisFull
from nbqueue.worker import Worker
from sentinels import HOST, SERVICE, SentinelSetup
from servers import free_port


# --- Sentinel URLs (no server needed) ----------------------------------------------------------
def test_sentinel_urls_parse():
    parsed = SentinelURL.parse("redis+sentinel://user:p%40ss@10.0.0.1:26380,[::1]:5000,sent3/mymaster/2"
                               "?sentinel_password=spw")
    assert parsed.sentinels == (("10.0.0.1", 26380), ("::1", 5000), ("sent3", 26379))
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == ("mymaster", 2, "user", "p@ss")
    assert parsed.sentinel_password == "spw"
    assert SentinelURL.parse("redis+sentinel://h:1/svc").db == 0


@pytest.mark.parametrize("bad", [
    "redis+sentinel://h:1", "redis+sentinel://h:1/", "redis+sentinel://h:1/s/x", "redis+sentinel://h:1/s/0/9",
    "redis+sentinel://h:99999/s", "redis+sentinel://h:-1/s", "redis+sentinel://,h:1/s", "redis+sentinel:///s",
    "redis+sentinel://h:1/s?ssl=1", "redis+sentinel://h:port/s",
])
def test_bad_sentinel_urls_are_clear_errors(bad, monkeypatch):
    with pytest.raises(InvalidURL, match="redis\\+sentinel://\\[user:password@\\]host:port"):
        SentinelURL.parse(bad)
    monkeypatch.setenv("NBQUEUE_URL", bad)
    with pytest.raises(InvalidURL):
        connect()


def test_sentinel_urls_are_described_and_masked():
    url = "redis+sentinel://bob:hunter2@10.0.0.1:26380,10.0.0.2/mymaster/3?sentinel_password=hunter3"
    assert "hunter" not in mask_url(url) and mask_url(url).startswith("redis+sentinel://bob:***@10.0.0.1:26380,")
    client = client_for(url)  # no connection is made yet
    assert describe(client) == "redis+sentinel://bob:***@10.0.0.1:26380,10.0.0.2:26379/mymaster/3"


# --- row 5: a Sentinel client's hot path goes to its master ------------------------------------
@pytest.fixture
def sentinel(tmp_path):
    with SentinelSetup(tmp_path) as setup:
        yield setup


def test_a_sentinel_client_passed_as_connection_enqueues_on_its_master(sentinel, spawn_worker):
    # the client's default host is a port where nothing listens: a hot path that dialled it
    # instead of asking the sentinel for the master (as before: localhost:6379) fails at once
    nowhere = free_port(HOST)
    client = Sentinel([(HOST, sentinel.sentinel_port)], socket_timeout=2).master_for(
        SERVICE, host=HOST, port=nowhere, socket_timeout=5)
    q = Queue("sentinel", client)
    jobs = [q.enqueue(nbq_tasks.add, i, 1) for i in range(5)]
    with sentinel.master.client() as master:
        assert master.llen(keys.queue("sentinel")) == 5  # on the master, not anywhere else
        assert all(master.exists(keys.job(j.id)) for j in jobs)
    spawn_worker("sentinel", "--inline", "--url", sentinel.url).wait_ready()
    assert [j.result(timeout=30) for j in jobs] == [i + 1 for i in range(5)]


def test_a_sentinel_url_works_everywhere(sentinel, spawn_worker, monkeypatch, caplog):
    monkeypatch.setenv("NBQUEUE_URL", sentinel.url)
    worker = spawn_worker("surl", "--url", sentinel.url).wait_ready()
    assert f"on {sentinel.url}/0" in worker.log()
    with caplog.at_level(logging.INFO, logger="nbqueue"):
        job = Queue("surl").enqueue(nbq_tasks.add, 20, 22)
    assert job.result(timeout=30) == 42
    assert describe(job.connection) == f"{sentinel.url}/0"
    assert f"nbqueue: using Redis at {sentinel.url} (from NBQUEUE_URL)" in caplog.text


# --- row 11: a group waits on one connection -----------------------------------------------------
def test_group_results_wait_on_one_connection(private_redis, spawn_worker):
    client = redis.Redis.from_url(private_redis.url)
    group = Queue("grp", client).map(nbq_tasks.sleep_then, [0.005] * 400)
    spawn_worker("grp", "--inline", "--url", private_redis.url).wait_ready()
    wait_for(lambda: client.hget(keys.job(group[0].id), "status") == b"finished", 30, message="the first job to run")
    before = client.info("stats")["total_connections_received"]
    assert group.results(timeout=60) == [None] * 400
    opened = client.info("stats")["total_connections_received"] - before
    print(f"\n[group] Group.results() over 400 running jobs opened {opened} connection(s)")
    assert opened <= 2  # its one pub/sub (the pipelined reads reuse the pool's connection)
    assert group.results(timeout=0) == [None] * 400  # all done: read in pipelines, no subscription
    assert client.info("stats")["total_connections_received"] - before == opened


def test_group_results_raise_the_first_failure_in_order(private_redis, spawn_worker):
    client = redis.Redis.from_url(private_redis.url)
    q = Queue("grpfail", client)
    jobs = q.enqueue_many([(nbq_tasks.sleep_then, (0.5, 1)), (nbq_tasks.fail, ("second",)),
                           (nbq_tasks.fail, ("third",))])
    from nbqueue.group import Group

    spawn_worker("grpfail", "--inline", "-c", "3", "--url", private_redis.url).wait_ready()
    with pytest.raises(NbqueueError, match="second"):
        Group(jobs).results(timeout=30)


# --- row 6: an evicting Redis is refused; a full one says so -----------------------------------
def test_a_worker_refuses_an_evicting_redis(private_redis):
    with private_redis.client() as admin:
        admin.config_set("maxmemory-policy", "allkeys-lru")
    out = subprocess.run([sys.executable, "-m", "nbqueue.cli", "worker", "--burst", "--url", private_redis.url],
                         cwd=TESTS_DIR, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if "maxmemory-policy" in line]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "allkeys-lru" in lines[0] and "CONFIG SET maxmemory-policy noeviction" in lines[0]
    assert "--allow-eviction" in lines[0]
    with pytest.raises(EvictingRedis, match="volatile-lru"):
        with private_redis.client() as admin:
            admin.config_set("maxmemory-policy", "volatile-lru")
        Worker(["x"], redis.Redis.from_url(private_redis.url))


def test_allow_eviction_starts_the_worker_with_a_warning(private_redis, spawn_worker):
    with private_redis.client() as admin:
        admin.config_set("maxmemory-policy", "allkeys-lru")
    worker = spawn_worker("evict", "--inline", "--allow-eviction", "--url", private_redis.url).wait_ready()
    assert "allowed by --allow-eviction" in worker.log()
    job = Queue("evict", redis.Redis.from_url(private_redis.url)).enqueue(nbq_tasks.add, 1, 2)
    assert job.result(timeout=30) == 3


def test_a_client_warns_once_about_an_evicting_redis(private_redis, caplog):
    with private_redis.client() as admin:
        admin.config_set("maxmemory-policy", "allkeys-random")
    client = redis.Redis.from_url(private_redis.url)
    with caplog.at_level(logging.WARNING, logger="nbqueue"):
        q = Queue("warned", client)
        jobs = [q.enqueue(nbq_tasks.add, i, 1) for i in range(20)]
        Queue("warned-too", client).enqueue_many([(nbq_tasks.add, (1, 2))] * 5)
    warnings = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "allkeys-random" in warnings[0] and "CONFIG SET maxmemory-policy noeviction" in warnings[0]
    assert len(jobs) == 20


def test_no_warning_with_noeviction(private_redis, caplog):
    with caplog.at_level(logging.WARNING, logger="nbqueue"):
        Queue("quiet", redis.Redis.from_url(private_redis.url)).enqueue(nbq_tasks.add, 1, 2)
    assert not [r for r in caplog.records if "maxmemory" in r.getMessage()]


def test_a_full_redis_is_an_nbqueue_error_and_nothing_is_enqueued(private_redis):
    client = redis.Redis.from_url(private_redis.url)
    q = Queue("full", client)
    q.enqueue(nbq_tasks.add, 0, 0)  # scripts loaded, policy read: the refusals below are OOM's
    client.config_set("maxmemory", 1)  # less than Redis uses already: every write that adds is refused
    try:
        with pytest.raises(RedisFull, match="is full .*maxmemory.*nothing was enqueued"):
            q.enqueue(nbq_tasks.add, 1, 2)
        with pytest.raises(RedisFull, match="nothing was enqueued"):
            q.enqueue_many([(nbq_tasks.add, (i, 1)) for i in range(10)])
        with pytest.raises(RedisFull, match="nothing was enqueued"):
            q.enqueue_many([(nbq_tasks.add, (i, 1)) for i in range(2500)])  # several chunks, one MULTI
        assert len(q) == 1
        assert len(client.keys("nbq:{*}:job:*")) == 1
    finally:
        client.config_set("maxmemory", 0)
    q.enqueue(nbq_tasks.add, 1, 2)
    assert len(q) == 2


def test_a_worker_that_may_not_read_the_policy_says_so_and_runs(private_redis, spawn_worker):
    with private_redis.client() as admin:
        admin.acl_setuser("noinfo", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                          commands=["+@all", "-info"], reset=True)
    url = f"unix://noinfo:pw@{private_redis.unix_socket}"
    worker = spawn_worker("noinfo", "--inline", "--url", url).wait_ready()
    assert "could not read the maxmemory-policy" in worker.log()
    job = Queue("noinfo", redis.Redis.from_url(url)).enqueue(nbq_tasks.add, 1, 2)
    assert job.result(timeout=30) == 3
