"""Chaos: workers SIGKILLed or frozen mid-job, Redis restarted mid-run; no job may be lost.

Real ``nbqueue worker`` processes. The kill and fencing tests use the session's server; the
restart and chaos tests start a private AOF server (``servers.PrivateRedis``) they may restart.
Leases are LEASE = 5 s renewed every HEARTBEAT = 1 s, so a lost worker's job runs again within
about 6 s; the bounds below allow for a loaded 2-core machine.
"""
from __future__ import annotations

import collections
import random
import re
import signal
import threading
import time
from pathlib import Path

import redis

import chaos_tasks
from conftest import Events, children, pid_alive, wait_for
from nbqueue import Job, Queue, keys
from nbqueue.serialization import loads_result
from servers import forked_by, tolerant

RERUN_BOUND = 10.0  # seconds from a worker's death to the re-run's start (LEASE + HEARTBEAT + slack)
DISCARDED = re.compile(r"lost the job's lease .*its outcome is discarded|not recording the outcome: "
                       r"this attempt no longer holds the job")


def _runs(flag_dir: Path) -> list:
    """Pids of the runs of ``chaos_tasks.long_run`` that started, in start order."""
    started = sorted(flag_dir.glob("*.started"), key=lambda p: float(p.read_text() or 0))
    return [int(p.name.split(".")[0]) for p in started]


def _holder(client: redis.Redis, job: Job) -> str:
    return (client.hget(keys.job(job.id), "worker") or b"").decode()


# --- a worker SIGKILLed mid-job ------------------------------------------------------------------
def test_a_killed_workers_job_reruns_on_another_worker(start_worker, redis_client, tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    workers = {w: start_worker("chaos", "--name", w) for w in ("kill-1", "kill-2")}  # fork mode, both idle
    job = Queue("chaos", redis_client).enqueue_call(chaos_tasks.long_run, (str(flags), 3.0))
    wait_for(lambda: _runs(flags), 10, message="the job's first run to start")
    [child] = _runs(flags)
    name_a = _holder(redis_client, job)
    name_b = ({"kill-1", "kill-2"} - {name_a}).pop()
    a, b = workers[name_a], workers[name_b]
    assert pid_alive(child) and not (flags / f"{child}.done").exists(), "the first run ended before the kill"

    a.signal(signal.SIGKILL)
    killed_at = time.time()
    a.wait(timeout=5)
    wait_for(lambda: not pid_alive(child), 5, message=f"A's job child {child} to die with A (PR_SET_PDEATHSIG)")

    result = job.result(timeout=RERUN_BOUND + 10)
    job.refresh()
    delay = job.started_at.timestamp() - killed_at
    print(f"\n[kill] A={name_a} killed; B={name_b} re-ran the job {delay:.2f} s after the SIGKILL "
          f"(bound {RERUN_BOUND:g} s)")
    assert delay <= RERUN_BOUND
    assert forked_by(result["ppid"]) == b.pid and result["pid"] != child
    assert job.status == "finished" and job.attempt == 2 and job.lost == 1
    assert job.workers == [name_a, name_b]
    assert _runs(flags) == [child, result["pid"]]
    assert not (flags / f"{child}.done").exists()  # A's run never finished: it died with A
    assert "re-queued or failed 1 job(s) of lost workers" in b.log()


# --- a frozen worker's late outcome is refused ------------------------------------------------------
def test_a_frozen_inline_worker_cannot_overwrite_the_rerun(start_worker, redis_client, tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    a = start_worker("fence", "--inline", "--name", "fence-A")
    job = Queue("fence", redis_client).enqueue_call(chaos_tasks.long_run, (str(flags), 8.0, 0.2))
    wait_for(lambda: _runs(flags), 10, message="A's run to start")
    assert _runs(flags) == [a.pid] and _holder(redis_client, job) == "fence-A"
    b = start_worker("fence", "--inline", "--name", "fence-B")
    events = Events.listen(redis_client, job.id)
    key = keys.job(job.id)

    a.signal(signal.SIGSTOP)
    try:
        result = job.result(timeout=RERUN_BOUND + 10)  # B re-runs it once A's lease lapsed
        assert result["pid"] == b.pid
        written_by_b = redis_client.hgetall(key)
    finally:
        a.signal(signal.SIGCONT)
    resumed_at = time.time()
    wait_for(lambda: DISCARDED.search(a.log()), 15, message="A to notice it no longer holds the job")
    print(f"\n[fence] A resumed; its log says: {DISCARDED.search(a.log()).group(0)!r} "
          f"({time.time() - resumed_at:.2f} s after SIGCONT)")
    assert a.proc.poll() is None  # A goes on serving

    assert redis_client.hgetall(key) == written_by_b  # nothing of A's attempt landed
    assert job.result(timeout=1)["pid"] == b.pid
    job.refresh()
    assert (job.status, job.attempt, job.worker, job.workers) == ("finished", 2, "fence-B", ["fence-A", "fence-B"])
    ends = [s for s in events.close() if s.get("status") in ("finished", "failed", "canceled", "retrying")]
    assert [(e["status"], e["worker"], e["attempt"]) for e in ends] == [("finished", "fence-B", 2)]


def test_a_stale_attempts_output_and_progress_do_not_land_on_the_rerun(start_worker, redis_client, tmp_path):
    """A's worker hangs (SIGSTOP) but its job's child goes on: what the child prints and reports after
    B re-ran and finished the job must not land on it (output and progress are fenced by attempt)."""
    flags = tmp_path / "flags"
    flags.mkdir()
    a = start_worker("fence", "--name", "stale-A")  # fork mode: SIGSTOP hangs the worker, not its child
    job = Queue("fence", redis_client).enqueue_call(chaos_tasks.long_run, (str(flags), 7.0, 0.2, True))
    wait_for(lambda: _runs(flags), 10, message="A's run to start")
    [child_a] = _runs(flags)
    start_worker("fence", "--name", "stale-B")
    a.signal(signal.SIGSTOP)
    try:
        child_b = job.result(timeout=RERUN_BOUND + 10)["pid"]
        wait_for(lambda: not pid_alive(child_a), 15, message="A's child to finish its (stale) run")
    finally:
        a.signal(signal.SIGCONT)
    wait_for(lambda: DISCARDED.search(a.log()), 15, message="A to notice it no longer holds the job")
    assert (job.status, _holder(redis_client, job)) == ("finished", "stale-B")
    logs, progress = job.logs(), job.progress
    print(f"\n[stale] B's run {child_b}, A's stale run {child_a}: job.logs() = {logs}; job.progress = {progress}")
    assert logs == [f"output of run {child_b}"], "A's stale attempt appended its output to the job B finished"
    assert progress == {"done": 1, "total": 1, "message": f"run {child_b}"}, "A's stale progress landed"


# --- Redis restarted under a worker -------------------------------------------------------------
def _statuses(client: redis.Redis, ids: list, deadline: float) -> list:
    def read():
        with client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job(job_id), "status")
            return [(s or b"").decode() for s in pipe.execute()]
    return tolerant(read, deadline, "reading the jobs' statuses")


def _wait_all_finished(client: redis.Redis, ids: list, deadline: float) -> list:
    """Poll (tolerating Redis being away) until every job is finished or failed, or the deadline."""
    while True:
        statuses = _statuses(client, ids, deadline + 30)
        if all(s in ("finished", "failed", "canceled") for s in statuses) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.1)


def _outcomes(client: redis.Redis, ids: list) -> list:
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.job(job_id), "status", "result", "attempt", "lost", "exc")
        rows = pipe.execute()
    return [{"status": (s or b"").decode(), "result": loads_result(r) if r else None,
             "attempt": int(a or 0), "lost": int(lost or 0), "exc": (e or b"").decode()}
            for s, r, a, lost, e in rows]


def _executions(path: Path) -> collections.Counter:
    if not path.exists():
        return collections.Counter()
    return collections.Counter(int(line.split()[0]) for line in path.read_text().splitlines() if line.strip())


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_jobs_survive_a_redis_restart_under_the_worker(private_redis, spawn_worker, tmp_path):
    executions = tmp_path / "executions.log"
    client = private_redis.client(timeout=2)
    aof = client.config_get("append*")
    assert (aof["appendonly"], aof["appendfsync"]) == ("yes", "always")  # a restart loses nothing
    jobs = Queue("restart", client).enqueue_many(
        [(chaos_tasks.counted, (i, 0.02, str(executions))) for i in range(100)])
    worker = spawn_worker("restart", "--url", private_redis.url).wait_ready()
    wait_for(lambda: _lines(executions) >= 25, 30, message="a quarter of the jobs to run")
    away = private_redis.restart(while_down=lambda: wait_for(
        lambda: "lost Redis" in worker.log(), 10, message="the worker to notice Redis is away"))
    done_before = _lines(executions)
    ids = [j.id for j in jobs]
    statuses = _wait_all_finished(client, ids, time.monotonic() + 40)
    outcomes = _outcomes(client, ids)
    counts = _executions(executions)
    log = worker.log()
    print(f"\n[restart] Redis away {away:.2f} s after {done_before} executions; "
          f"statuses {dict(collections.Counter(statuses))}; executions {sum(counts.values())} for {len(ids)} jobs; "
          f"attempts>1: {sum(o['attempt'] > 1 for o in outcomes)}; "
          f"worker log: 'lost Redis' x{log.count('lost Redis')}, 'is back' x{log.count(' is back')}")
    assert statuses == ["finished"] * len(ids), log[-3000:]
    assert [o["result"] for o in outcomes] == [2 * i for i in range(len(ids))]
    assert set(counts) == set(range(len(ids)))
    assert log.count("lost Redis at") == 1, log[-3000:]
    assert log.count(" is back") == 1, log[-3000:]
    assert worker.proc.poll() is None


# --- the headline: kills every fraction of a second and a Redis restart ------------------------
CHAOS_JOBS = 300
CHAOS_WORKERS = 3
KILL_EVERY = (0.3, 0.6)  # seconds between two SIGKILLs
KILL_FOR = 12.0  # seconds the killer runs at most (it also stops once every job is done)
DEADLINE = 80.0  # seconds for the whole test


class Killer(threading.Thread):
    """SIGKILLs a random live worker every few tenths of a second and starts a replacement."""

    def __init__(self, spawn_worker, args: list, workers: list, jobs_done, rng: random.Random):
        super().__init__(name="killer", daemon=True)
        self.spawn_worker, self.args, self.workers = spawn_worker, args, workers
        self.jobs_done, self.rng = jobs_done, rng
        self.kills = 0
        self.busy_kills = 0  # kills of a worker that had a job child at that moment
        self.stop_event = threading.Event()
        self.error = None

    def run(self) -> None:
        ends = time.monotonic() + KILL_FOR
        try:
            while time.monotonic() < ends and not self.jobs_done() and not self.stop_event.wait(
                    self.rng.uniform(*KILL_EVERY)):
                live = [w for w in self.workers if w.proc.poll() is None]
                if live:
                    victim = self.rng.choice(live)
                    busy = bool(children(victim.pid))
                    victim.signal(signal.SIGKILL)
                    victim.wait(timeout=10)
                    self.kills += 1
                    self.busy_kills += busy
                self.workers.append(self.spawn_worker(*self.args))
        except BaseException as exc:  # reported by the test
            self.error = exc


def _until(predicate, seconds: float) -> bool:
    """Poll ``predicate`` for at most ``seconds``; whether it came true (no error if not)."""
    ends = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > ends:
            return False
        time.sleep(0.01)
    return True


def test_chaos_kills_and_a_redis_restart_lose_no_job(private_redis, spawn_worker, tmp_path):
    began = time.monotonic()
    deadline = began + DEADLINE
    executions = tmp_path / "executions.log"
    client = private_redis.client(timeout=2)
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    durations = [rng.uniform(0.02, 0.05) for _ in range(CHAOS_JOBS)]
    jobs = Queue("chaos", client).enqueue_many(
        [(chaos_tasks.counted, (i, durations[i], str(executions))) for i in range(CHAOS_JOBS)], lost_retries=100)
    ids = [j.id for j in jobs]
    args = ["chaos", "--url", private_redis.url]
    workers = [spawn_worker(*args) for _ in range(CHAOS_WORKERS)]
    for worker in workers:
        worker.wait_ready()

    killer = Killer(spawn_worker, args, workers, lambda: _lines(executions) >= CHAOS_JOBS, rng)
    killer.start()
    try:
        # one graceful restart in the middle: half the jobs run, or half the killing time passed
        wait_for(lambda: _lines(executions) >= CHAOS_JOBS // 2 or time.monotonic() > began + KILL_FOR / 2,
                 DEADLINE / 2, message="the middle of the run")
        done_at_restart, kills_at_restart = _lines(executions), killer.kills
        away = private_redis.restart(while_down=lambda: _until(  # down until a worker noticed (<= 2 s)
            lambda: any("lost Redis" in w.log() for w in list(workers) if w.proc.poll() is None), 2.0))
        statuses = _wait_all_finished(client, ids, deadline - 5)
    finally:
        killer.stop_event.set()
        killer.join(timeout=15)
    assert killer.error is None, f"the killer failed: {killer.error!r}"
    elapsed = time.monotonic() - began

    outcomes = _outcomes(client, ids)
    counts = _executions(executions)
    lost = [(i, o["status"], o["exc"]) for i, o in enumerate(outcomes) if o["status"] != "finished"]
    wrong = [(i, o["result"]) for i, o in enumerate(outcomes) if o["status"] == "finished" and o["result"] != 2 * i]
    duplicates = sum(counts.values()) - len(counts)
    over = [(i, counts[i], o["attempt"]) for i, o in enumerate(outcomes) if counts[i] > o["attempt"]]
    logs = [w.log() for w in spawn_worker.all]
    exited = [(w.proc.returncode, w.log()[-300:]) for w in spawn_worker.all
              if w.proc.poll() not in (None, -signal.SIGKILL)]
    print(f"\n[chaos] seed {seed}: {CHAOS_JOBS} jobs, {len(spawn_worker.all)} workers started, {killer.kills} kills "
          f"({killer.busy_kills} while running a job), 1 Redis restart (away {away:.2f} s, after "
          f"{done_at_restart} executions and {kills_at_restart} kills); lost {len(lost)}, wrong results {len(wrong)}, "
          f"executions {sum(counts.values())}, duplicated executions {duplicates}, jobs re-run after a lost worker "
          f"{sum(o['lost'] > 0 for o in outcomes)} (max attempts {max(o['attempt'] for o in outcomes)}); "
          f"{elapsed:.1f} s; statuses {dict(collections.Counter(statuses))}; "
          f"'lost Redis' in {sum('lost Redis' in log for log in logs)} worker logs; "
          f"fenced outcomes {sum(len(DISCARDED.findall(log)) for log in logs)}; "
          f"workers that exited by themselves {len(exited)}")
    for code, tail in exited[:3]:
        print(f"[chaos] a worker exited with {code}: ...{tail}")
    assert killer.kills >= 5, "the killer hardly ran; the test proved little"
    assert not lost, f"{len(lost)} job(s) lost: {lost[:5]}"
    assert not wrong, wrong[:5]
    assert set(counts) == set(range(CHAOS_JOBS)), "a finished job has no execution recorded"
    assert not over, f"jobs executed more often than they were started: {over[:5]}"
    assert duplicates <= killer.kills, "more duplicated executions than kills"
    assert elapsed < 90
