"""nbqueue on a Redis/Valkey Cluster: a local 3-master cluster (``tests/clusters.py``), a single-shard
cluster-mode server (as managed services give), and 3 masters + 3 replicas to kill a master."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis
from redis.cluster import RedisCluster

import nbq_tasks
from conftest import wait_for
from nbqueue import CrossSlotDependency, Queue, connection, info, keys, wire
from nbqueue.errors import InvalidURL

HOST = "127.0.0.1"


# --- connecting -------------------------------------------------------------------------------
def test_cluster_urls_plain_node_urls_and_node_clients_all_give_a_cluster_client(cluster):
    by_url = connection.get_connection(cluster.url)
    assert isinstance(by_url, RedisCluster)
    assert len(by_url.get_primaries()) == 3
    several = connection.get_connection(f"redis+cluster://{HOST}:{cluster.nodes[1].port},{HOST}:1")
    assert isinstance(several, RedisCluster)
    detected = connection.get_connection(cluster.nodes[2].url)  # redis://host:port/0 of one node
    assert isinstance(detected, RedisCluster), "a plain URL to a cluster node is detected"
    node_client = redis.Redis(host=HOST, port=cluster.nodes[0].port)
    wrapped = connection.get_connection(node_client)
    assert isinstance(wrapped, RedisCluster) and connection.get_connection(node_client) is wrapped
    assert connection.describe(wrapped).startswith("redis+cluster://127.0.0.1:")
    wrapped.set("k", "v")
    assert [c.get("k") for c in (by_url, several, detected)] == [b"v"] * 3


def test_standalone_clients_stay_standalone(redis_client):
    if isinstance(redis_client, RedisCluster):
        pytest.skip("NBQUEUE_TEST_CLUSTER: the session's server is a cluster")
    assert connection.get_connection(redis_client) is redis_client


@pytest.mark.parametrize("url, why", [
    ("redis+cluster://", "no host"),
    ("redis+cluster://h:notaport", "not a port number"),
    ("redis+cluster://h:7000/3", "only db 0"),
])
def test_malformed_cluster_urls_are_refused_saying_why(url, why):
    with pytest.raises(InvalidURL, match=why):
        connection.resolve(url)


def test_a_cluster_url_with_a_password_is_masked():
    assert connection.mask_url("redis+cluster://u:secret@h:1,h:2") == "redis+cluster://u:***@h:1,h:2"


def test_a_single_shard_cluster_mode_endpoint_is_a_cluster(single_shard):
    client = connection.get_connection(single_shard.nodes[0].url)
    assert isinstance(client, RedisCluster) and len(client.get_primaries()) == 1
    assert wire.send(client, ("SET", "{t}a", 1), ("INCR", "{t}a")) == [b"OK", 2]
    assert wire.send_grouped(client, ("SET", "a", 1), ("SET", "b", 2)) == [b"OK", b"OK"]


# --- wire.send: routing, redirections, scripts ----------------------------------------------
def _move_slot(cluster, key: bytes, dst=None, finish: bool = True):
    """Migrate ``key``'s slot to ``dst`` (another master; half-way, MIGRATING/IMPORTING, if not ``finish``)."""
    slot = redis.crc.key_slot(key)
    src = cluster.master_of(key)
    dst = dst or next(n for n in cluster.masters() if n is not src)
    with src.client() as s, dst.client() as d:
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src.node_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst.node_id)
        if finish:
            while True:
                names = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
                if not names:
                    break
                s.execute_command("MIGRATE", HOST, dst.port, "", 0, 5000, "KEYS", *names)
            for node in cluster.masters():
                with node.client() as c:
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst.node_id)
    return src, dst


def test_send_follows_moved_and_ask_and_runs_nothing_twice(cluster, redis_client):
    client = connection.get_connection(cluster.url)
    assert wire.send(client, ("SET", "{m}count", 0), ("INCR", "{m}count")) == [b"OK", 1]
    src, dst = _move_slot(cluster, b"{m}count", finish=False)
    # half-way: the existing key still answers on the old owner, a new one is asked of the new one
    assert wire.send(client, ("INCR", "{m}count"), ("SET", "{m}new", "x")) == [2, b"OK"]
    with dst.client() as d:
        d.execute_command("ASKING")
        assert d.get("{m}new") == b"x"
    _move_slot(cluster, b"{m}count", dst)  # now done: MOVED, the map is read anew
    assert wire.send(client, ("INCR", "{m}count"), ("GET", "{m}new")) == [3, b"x"]
    assert cluster.master_of(b"{m}count") is dst


def test_send_loads_scripts_a_node_lost_and_refuses_commands_of_several_slots(cluster, redis_client):
    client = connection.get_connection(cluster.url)
    command = keys.evalsha("reflag", ["{s}:queue:x", "{s}:wake:x"], [])
    assert wire.send(client, command) == [1]
    with cluster.master_of(b"{s}").client() as node:
        node.script_flush()
    # the script is loaded and sent again, alone: the commands after it ran once, before it
    assert wire.send(client, ("RPUSH", "{s}:queue:x", "id"), command, ("LLEN", "{s}:wake:x")) == [1, 1, 0]
    assert wire.send(client, ("LLEN", "{s}:wake:x")) == [1]
    with pytest.raises(AssertionError, match="share a slot"):
        wire.send(client, ("GET", "{a}"), ("GET", "{b}"))
    assert wire.send_grouped(client, ("SET", "{a}", 1), ("SET", "{b}", 2), ("MGET", "{a}")) == [b"OK", b"OK", [b"1"]]


def test_a_cluster_pubsub_hears_what_a_script_publishes_on_another_node(cluster, redis_client):
    """Events stay plain PUBLISH: a cluster forwards them to every node, so a watcher's pub/sub on
    any node (redis-py picks one) hears jobs of every slot, and patterns work too."""
    client = connection.get_connection(cluster.url)
    channels = [f"nbq:{{{t}}}:ev:job" for t in ("a", "b", "c", "d")]
    owners = {cluster.master_of(c.encode()).port for c in channels}
    assert len(owners) >= 2, "the channels' slots are on several nodes"
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(keys.PREFIX + "{*}:ev:*")
    pubsub.subscribe(channels[0])
    heard: list = []
    stop = threading.Event()

    def listen():
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.1)
            if message:
                heard.append((message["type"], message["data"]))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.2)
    try:
        for channel in channels:  # from a script, on the master of the channel's slot
            wire.send(client, ("EVAL", "redis.call('PUBLISH', KEYS[1], ARGV[1]) return 1", 1, channel,
                               json.dumps({"c": channel})))
        wait_for(lambda: len([h for h in heard if h[0] == "pmessage"]) == 4, 5, message="4 pattern messages")
        wait_for(lambda: len([h for h in heard if h[0] == "message"]) == 1, 5, message="1 channel message")
    finally:
        stop.set()
        thread.join(5)
        pubsub.close()


# --- failover ---------------------------------------------------------------------------------
def _write_until(client, stop: threading.Event, tag: str, acked: list, errors: list) -> None:
    """RPUSH numbers onto ``{tag}list`` with wire.send, as the worker does: a lost connection is
    waited out; a number counts as acknowledged once its reply came back."""
    n = 0
    while not stop.is_set():
        n += 1
        while True:
            try:
                wire.send(client, ("RPUSH", f"{{{tag}}}list", n))
                acked.append(n)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                errors.append(type(exc).__name__)
                if stop.is_set():
                    return
                time.sleep(0.05)


def test_a_killed_master_fails_over_and_sends_find_the_promoted_replica(cluster_ha):
    client = connection.client_for(cluster_ha.url, socket_timeout=2, socket_connect_timeout=1)
    tags = ["a", "b", "c"]  # {a}, {b}, {c}: three slots on three masters
    assert len({cluster_ha.master_of(f"{{{t}}}list".encode()).port for t in tags}) == 3
    stop = threading.Event()
    acked: dict = {t: [] for t in tags}
    errors: list = []
    threads = [threading.Thread(target=_write_until, args=(client, stop, t, acked[t], errors), daemon=True)
               for t in tags]
    for thread in threads:
        thread.start()
    wait_for(lambda: all(len(acked[t]) > 200 for t in tags), 20, message="writes on every shard")
    victim = cluster_ha.master_of(b"{a}list")
    replica = cluster_ha.replica_of(victim)
    killed_at = time.monotonic()
    cluster_ha.kill(victim)
    promoted_after = cluster_ha.wait_promoted(replica)
    count = len(acked["a"])
    wait_for(lambda: len(acked["a"]) > count + 100, 20, message="writes to the promoted replica")
    resumed_after = time.monotonic() - killed_at
    stop.set()
    for thread in threads:
        thread.join(10)
    lost = {t: sorted(set(acked[t]) - {int(x) for x in client.lrange(f"{{{t}}}list", 0, -1)}) for t in tags}
    print(f"\nfailover: promoted {promoted_after:.2f} s after the kill, writes resumed after "
          f"{resumed_after:.2f} s; acknowledged {sum(len(v) for v in acked.values())}, lost "
          f"{sum(len(v) for v in lost.values())} ({lost['a'][:5]}); {len(errors)} retries")
    assert not lost["b"] and not lost["c"], "the other shards lost nothing"
    assert len(lost["a"]) <= 2, f"asynchronous replication may lose the last write or two, not {lost['a']}"


# --- nbqueue on a cluster -------------------------------------------------------------------
def _slot_owners(cluster, names) -> dict:
    """Queue name -> port of the master holding its keys' slot (CLUSTER KEYSLOT, CLUSTER NODES)."""
    owners = {}
    with cluster.nodes[0].client() as node:
        for name in names:
            slot = node.execute_command("CLUSTER", "KEYSLOT", keys.queue(name))
            assert slot == redis.crc.key_slot(keys.queue(name).encode())
            owners[name] = cluster.master_of(keys.queue(name).encode()).port
    return owners


def _spread_queues(cluster, count: int = 3) -> list:
    """``count`` queue names whose keys live on ``count`` different masters."""
    names, ports = [], set()
    for i in range(200):
        name = f"q{i}"
        port = cluster.master_of(keys.queue(name).encode()).port
        if port not in ports:
            names.append(name)
            ports.add(port)
        if len(names) == count:
            return names
    raise AssertionError("no queues on enough masters")


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    """The session cluster, flushed, as NBQUEUE_URL."""
    cluster.flush()
    monkeypatch.setenv("NBQUEUE_URL", cluster.url)
    return cluster


def test_queues_spread_over_shards_and_one_worker_serves_them_in_priority_order(on_cluster, spawn_worker):
    names = ["high", "mid", "low", "default", "emails", "reports"]
    owners = _slot_owners(on_cluster, names)
    assert len(set(owners.values())) >= 2, f"queues land on several shards: {owners}"
    first, second, third = _spread_queues(on_cluster)
    conn = connection.get_connection(on_cluster.url)
    jobs = [j for name in (third, second, first) for j in Queue(name, conn).enqueue_many([(nbq_tasks.now, ())] * 5)]
    worker = spawn_worker(first, second, third, "--inline", "--burst", "--url", on_cluster.url)
    assert worker.wait(60) == 0, worker.log()
    started = sorted(jobs, key=lambda j: j.result(timeout=5))
    assert [j.queue for j in started] == [first] * 5 + [second] * 5 + [third] * 5
    snap = info.snapshot(conn)
    assert {q.name: q.finished_recent for q in snap.queues} == {first: 5, second: 5, third: 5}


def test_an_idle_worker_on_three_shards_wakes_at_once_and_stops_at_once(on_cluster, spawn_worker):
    names = _spread_queues(on_cluster)
    worker = spawn_worker(*names, "--url", on_cluster.url).wait_ready()
    conn = connection.get_connection(on_cluster.url)
    time.sleep(1.0)
    for name in reversed(names):  # each shard's waker wakes it
        began = time.monotonic()
        job = Queue(name, conn).enqueue(nbq_tasks.add, 1, 2)
        assert job.result(timeout=5) == 3 and time.monotonic() - began < 2
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0 and time.monotonic() - began < 3, worker.log()


def test_a_cross_slot_dependency_is_refused_saying_why(on_cluster):
    conn = connection.get_connection(on_cluster.url)
    a, b = _spread_queues(on_cluster, 2)
    parent = Queue(a, conn).enqueue(nbq_tasks.add, 1, 2)
    with pytest.raises(CrossSlotDependency, match="another Redis Cluster hash slot.*Nothing was enqueued"):
        Queue(b, conn).enqueue_call(nbq_tasks.add, (1, 2), depends_on=parent)
    assert not conn.llen(keys.queue(b)) and not conn.exists(keys.dependents(parent.id))
    child = Queue(a, conn).enqueue_call(nbq_tasks.add, (3, 4), depends_on=parent)  # same queue: fine
    assert child.status == "deferred"


def test_nbqueue_info_and_the_readme_quickstart_run_unchanged_on_a_cluster_node(on_cluster, tmp_path):
    node_url = on_cluster.nodes[1].url  # a plain redis://host:port/0 of one node: cluster mode is found out
    (tmp_path / "tasks.py").write_text("def add(a, b):\n    return a + b\n")
    env = {**os.environ, "NBQUEUE_URL": node_url, "PYTHONPATH": str(tmp_path)}
    worker = subprocess.Popen([sys.executable, "-m", "nbqueue.cli", "worker", "low"], cwd=str(tmp_path), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        script = ("from nbqueue import Queue\nimport tasks\n\njob = Queue(\"low\").enqueue(tasks.add, 20, 40)\n"
                  "print(job.result(timeout=10))   # 60\n")
        out = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == "60", out.stdout + out.stderr
        shown = subprocess.run([sys.executable, "-m", "nbqueue.cli", "info"], env=env, capture_output=True,
                               text=True, timeout=60)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert re.search(r"^low\s+0\s+0\s+1\s", shown.stdout, re.M) and "workers: 1" in shown.stdout, shown.stdout
    finally:
        worker.terminate()
        rest = worker.communicate(timeout=20)[0]
    assert worker.returncode == 0 and "redis+cluster://" in rest, rest


def test_a_worker_and_client_on_a_single_shard_cluster_mode_endpoint(single_shard, spawn_worker, monkeypatch):
    single_shard.flush()
    url = single_shard.nodes[0].url
    monkeypatch.setenv("NBQUEUE_URL", url)
    conn = connection.get_connection(url)
    assert isinstance(conn, RedisCluster)
    spawn_worker("a", "b", "--url", url).wait_ready()
    parent = Queue("a", conn).enqueue(nbq_tasks.add, 1, 2)
    child = Queue("a", conn).enqueue_call(nbq_tasks.add, (3, 4), depends_on=parent)
    other = Queue("b", conn).enqueue(nbq_tasks.add, 5, 6)
    assert (parent.result(timeout=10), child.result(timeout=10), other.result(timeout=10)) == (3, 7, 11)


def test_a_master_killed_under_load_loses_no_acknowledged_job(cluster_ha, spawn_worker, monkeypatch):
    """3 masters + 3 replicas (AOF, fsync always): jobs are enqueued on three shards while a worker
    runs them; the master of one shard is killed and its replica promoted. Every job whose enqueue
    returned must finish."""
    url = cluster_ha.url
    monkeypatch.setenv("NBQUEUE_URL", url)
    names = _spread_queues(cluster_ha)
    conn = connection.client_for(url, socket_timeout=2, socket_connect_timeout=1)
    spawn_worker(*names, "--inline", "--concurrency", "4", "--url", url).wait_ready()
    victim = cluster_ha.master_of(keys.queue(names[0]).encode())
    replica = cluster_ha.replica_of(victim)
    acked: list = []
    retries: list = []
    stop = threading.Event()
    first_after: dict = {}

    def enqueue() -> None:
        queues = [Queue(name, conn) for name in names]
        i = 0
        while not stop.is_set():
            queue = queues[i % 3]
            try:
                acked.append((queue.enqueue(nbq_tasks.add, i, 0), i))
                if "killed" in first_after and queue.name == names[0] and "resumed" not in first_after:
                    first_after["resumed"] = time.monotonic() - first_after["killed"]
                i += 1
            except (redis.ConnectionError, redis.TimeoutError):
                retries.append(i)
                time.sleep(0.05)

    thread = threading.Thread(target=enqueue, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(acked) > 300, 30, message="jobs enqueued before the kill")
        first_after["killed"] = time.monotonic()
        cluster_ha.kill(victim)
        promoted = cluster_ha.wait_promoted(replica)
        wait_for(lambda: "resumed" in first_after, 30, message="enqueues on the failed shard again")
        count = len(acked)
        wait_for(lambda: len(acked) > count + 300, 30, message="jobs enqueued after the failover")
    finally:
        stop.set()
        thread.join(10)
    deadline = time.monotonic() + 90
    lost = []
    for job, i in acked:
        try:
            assert job.result(timeout=max(0.1, deadline - time.monotonic())) == i
        except Exception as exc:
            lost.append((job.id, job.queue, type(exc).__name__))
    on_victim = sum(1 for job, _ in acked if job.queue == names[0])
    print(f"\nfailover under load: promoted {promoted:.2f} s after the kill, enqueues on that shard resumed "
          f"after {first_after['resumed']:.2f} s; enqueued {len(acked)} ({on_victim} on the killed shard), "
          f"finished {len(acked) - len(lost)}, lost {len(lost)}; {len(retries)} enqueue retries")
    assert not lost, f"acknowledged jobs lost: {lost[:10]}"


def test_a_worker_serves_its_other_shards_while_one_is_down(tmp_path, spawn_worker, monkeypatch):
    """3 masters, no replicas, cluster-require-full-coverage no: the shard of the worker's first
    queue dies for good; its other queues' jobs still run. (That shard holds no global key the
    worker and the client use: those live on one shard each, and nothing works without them.)"""
    from clusters import LocalCluster

    with LocalCluster(tmp_path / "cluster", masters=3) as local:
        monkeypatch.setenv("NBQUEUE_URL", local.url)
        victim = local.master_of(keys.SUSPENDED.encode())
        used = [keys.SCHEMA, keys.QUEUES, keys.WORKERS, keys.worker("w1"), keys.worker_wake("w1")]
        assert all(local.master_of(k.encode()) is not victim for k in used)
        names = sorted(_spread_queues(local), key=lambda n: local.master_of(keys.queue(n).encode()) is not victim)
        worker = spawn_worker(*names, "--inline", "--name", "w1", "--url", local.url).wait_ready()
        local.kill(victim)
        conn = connection.client_for(local.url, socket_timeout=2, socket_connect_timeout=1)
        jobs = [Queue(name, conn).enqueue(nbq_tasks.add, i, 1) for i, name in enumerate(names[1:])]
        assert [job.result(timeout=15) for job in jobs] == [1, 2], worker.log()
        assert "lost the shard of queue(s) " + names[0] in worker.log()


def test_a_one_queue_worker_on_a_cluster_stops_at_once(on_cluster, spawn_worker):
    worker = spawn_worker("solo", "--url", on_cluster.url).wait_ready()
    time.sleep(0.5)  # blocked in its wait
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0 and time.monotonic() - began < 2, worker.log()
