"""The duty: one worker at a time runs the deployment's sweeps; idle workers cost almost nothing.

Real ``nbqueue worker`` processes. The count of an idle worker's commands uses a private server
(nothing else talks to it); the hand-over tests use the session's server.
"""
from __future__ import annotations

import signal
import time

import pytest
import redis

import nbq_tasks
from conftest import wait_for
from nbqueue import Job, Queue, keys
from nbqueue.heartbeat import CHECK_EVERY, DUTY_LEASE, DUTY_MAX, HEARTBEAT, LEASE, SWEEP

WINDOW = 15.0  # seconds each count of commands lasts (several beats, at most one slot's idle wake-up)
TARGET = 2.0  # commands a second per idle worker (issue 11)
HANDOVER = DUTY_LEASE + HEARTBEAT + SWEEP  # seconds from the holder's death to the next sweep, at most


def _calls(client: redis.Redis) -> dict:
    """Commands run so far (sent, and run inside scripts), the measurement's own left out."""
    return {name[len("cmdstat_"):]: stats["calls"] for name, stats in client.info("commandstats").items()
            if name[len("cmdstat_"):] != "info"}


def _rates(client: redis.Redis, seconds: float) -> dict:
    before, start = _calls(client), time.monotonic()
    time.sleep(seconds)  # counting over a measured window (no state is awaited here)
    after, elapsed = _calls(client), time.monotonic() - start
    return {name: (count - before.get(name, 0)) / elapsed for name, count in after.items()}


def _holder(client: redis.Redis) -> str:
    """The name of the worker holding the duty ('' if none)."""
    token = client.get(keys.DUTY)
    return token.decode().split(" ")[0] if token else ""


def test_idle_workers_send_at_most_two_commands_a_second_each(private_redis, spawn_worker):
    """1 idle worker, then 5: each one more adds at most TARGET commands/s (presence, bids, the
    slot's wake-ups), and the sweeps (one sweep.lua, one TIME call, per queue: one queue here) run
    once per SWEEP in all, not per worker."""
    client = private_redis.client(timeout=5)
    names = [f"idle-{i}" for i in range(5)]
    spawn_worker("idle", "--url", private_redis.url, "--name", names[0]).wait_ready()
    wait_for(lambda: _holder(client) == names[0], timeout=10, message="the first worker to take the duty")
    one = _rates(client, WINDOW)
    for name in names[1:]:
        spawn_worker("idle", "--url", private_redis.url, "--name", name)
    wait_for(lambda: client.zcard(keys.WORKERS) == 5, timeout=60, message="five workers registered")
    time.sleep(HEARTBEAT)  # past the start-up beats, into the idle steady state
    five = _rates(client, WINDOW)
    added = (sum(five.values()) - sum(one.values())) / 4
    detail = {k: round(v, 2) for k, v in five.items() if v}
    assert added <= TARGET, f"{added:.2f} commands/s per idle worker added; with 5: {detail}"
    assert five.get("time", 0) <= 1 / SWEEP * 1.5, f"the sweeps ran more than once per {SWEEP} s: {detail}"
    assert one.get("time", 0) >= 1 / SWEEP * 0.5, f"the sweeps did not run: {one}"
    assert _holder(client) in names


@pytest.fixture
def sweeps(redis_client):
    """A check that the sweeps run: a delayed job is promoted (and run) within ``timeout``."""
    def check(timeout: float, delay: float = 0.2) -> float:
        job = Queue("duty", redis_client).enqueue_in(delay, nbq_tasks.add, 2, 3)
        started = time.monotonic()
        assert job.result(timeout=timeout) == 5
        return time.monotonic() - started
    return check


def test_the_duty_passes_on_within_seconds_when_its_holder_is_killed(start_worker, redis_client, sweeps):
    """SIGKILL of the holder while it runs a job: another worker takes the duty within
    HANDOVER seconds, promotes delayed jobs, and re-runs the dead holder's job as soon as its
    lease lapses: not a lease later (the hand-over's gap in sweeps is not taken for Redis away)."""
    doomed = start_worker("duty", "--name", "doomed", "--inline")
    wait_for(lambda: _holder(redis_client) == "doomed", timeout=10, message="doomed to take the duty")
    job = Queue("duty", redis_client).enqueue(nbq_tasks.busy, 60)
    wait_for(lambda: Job.fetch(job.id, redis_client).status == "started", timeout=10, message="the job started")
    start_worker("duty", "--name", "heir", "-c", "2")  # one slot for the re-run, one for the check
    doomed.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    doomed.wait(timeout=10)
    wait_for(lambda: _holder(redis_client) == "heir", timeout=HANDOVER + 3, message="heir to take the duty")
    handed = time.monotonic() - killed
    wait_for(lambda: Job.fetch(job.id, redis_client).attempt == 2, timeout=30, message="the job re-run by heir")
    rerun = time.monotonic() - killed
    assert rerun <= LEASE + SWEEP + 2, f"re-run {rerun:.1f} s after the kill (hand-over after {handed:.1f} s)"
    assert Job.fetch(job.id, redis_client).worker == "heir"
    assert sweeps(timeout=SWEEP + 5) < SWEEP + 5


def test_a_clean_stop_gives_the_duty_back_at_once(start_worker, redis_client, sweeps):
    first = start_worker("duty", "--name", "first")
    wait_for(lambda: _holder(redis_client) == "first", timeout=10, message="first to take the duty")
    second = start_worker("duty", "--name", "second")
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0
    assert _holder(redis_client) in ("", "second"), "the stopped worker still holds the duty"
    wait_for(lambda: _holder(redis_client) == "second", timeout=HEARTBEAT + 3, message="second to take the duty")
    assert sweeps(timeout=SWEEP + 5) < SWEEP + 5
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=20) == 0
    assert redis_client.get(keys.DUTY) is None


@pytest.mark.parametrize("junk", ["list", "huge-ttl"])
def test_junk_in_the_duty_key_stops_the_sweeps_for_a_while_only(start_worker, redis_client, sweeps, junk):
    """A key of another type with no expiry, or a string with an expiry of a year: each bid
    fails, and the script run every CHECK_EVERY beats clears it."""
    if junk == "list":
        redis_client.rpush(keys.DUTY, "junk")
    else:
        redis_client.set(keys.DUTY, "someone else", ex=365 * 24 * 3600)
    worker = start_worker("duty", "--name", "janitor")
    assert sweeps(timeout=CHECK_EVERY * HEARTBEAT + 10) > 0
    assert _holder(redis_client) == "janitor"
    assert 0 < redis_client.pttl(keys.DUTY) <= DUTY_LEASE * 1000
    assert "error in the heartbeat" not in worker.log(), worker.log()


def test_the_duty_script_is_fenced_by_its_token(redis_client):
    """Held by a: b can neither renew nor give it back; a can; junk is taken over."""
    a, b = "worker-a " + "a" * 16, "worker-b " + "b" * 16

    def hold(token: str, lease_ms: int) -> int:
        return keys.run(redis_client, "duty", [keys.DUTY], [token, lease_ms, DUTY_MAX])

    assert hold(a, 3000) == 1 and redis_client.get(keys.DUTY) == a.encode()
    assert hold(b, 3000) == 0 and hold(b, 0) == 0 and redis_client.get(keys.DUTY) == a.encode()
    assert hold(a, 3000) == 1 and 2000 < redis_client.pttl(keys.DUTY) <= 3000
    assert hold(a, 0) == 0 and redis_client.get(keys.DUTY) is None
    for junk in (lambda: redis_client.hset(keys.DUTY, "x", "y"),  # another type, no expiry
                 lambda: redis_client.set(keys.DUTY, "not a token", px=2000)):  # a short expiry does not save it
        redis_client.delete(keys.DUTY)
        junk()
        assert hold(b, 3000) == 1 and redis_client.get(keys.DUTY) == b.encode(), redis_client.type(keys.DUTY)
    redis_client.set(keys.DUTY, a, ex=10**9)  # a holder's token, but an expiry of 30 years: cut to DUTY_MAX
    assert hold(b, 3000) == 0
    version = tuple(int(x) for x in redis_client.info("server")["redis_version"].split(".")[:2])
    if version >= (7, 0):  # EXPIRE ... LT; on Redis 6.2 that one junk stays until it expires (README)
        assert 0 < redis_client.pttl(keys.DUTY) <= DUTY_MAX * 1000
