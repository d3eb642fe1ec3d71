"""An inline worker running short jobs takes a few per round trip (nbqueue/ahead.py): each job
still runs once, in order, with its own lease; it can be canceled while it waits its turn; a
stop now gives the waiting ones back; other workers still get work."""
from __future__ import annotations

import collections
import threading

import redis

import chaos_tasks
import nbq_tasks
from conftest import wait_for
from nbqueue import Job, Queue, Worker, keys
from nbqueue.ahead import AHEAD, Ahead


def _gate_with_one_waiting(q: Queue, tmp_path):
    """Queue short jobs, a job that waits for a gate file, a victim right after it, then more short
    jobs: the worker takes the victim ahead while the gate holds it. Returns (gate, victim, rest, flags)."""
    gate_file, ran_file = tmp_path / "gate", tmp_path / "victim-ran"
    jobs = q.enqueue_many([*[(nbq_tasks.add, (i, 1)) for i in range(3)],  # in one step: a worker that
                           (nbq_tasks.until_file, (str(gate_file), "opened")),  # waits sees them all
                           (nbq_tasks.sleep_then, (0, "victim", str(ran_file))),
                           *[(nbq_tasks.add, (i, 2)) for i in range(4)]])
    first, gate, victim, rest = jobs[:3], jobs[3], jobs[4], jobs[5:]
    return first, gate, victim, rest, gate_file, ran_file


def test_short_jobs_are_taken_a_few_at_a_time_and_each_runs_once_in_order(redis_client, start_worker):
    q = Queue("ahead", redis_client)
    jobs = q.enqueue_many([(nbq_tasks.add, (i, 1)) for i in range(60)])
    start_worker("ahead", "--inline")
    assert [job.result(timeout=30) for job in jobs] == [i + 1 for i in range(60)]
    for job in jobs:
        job.refresh()
    assert all(job.attempt == 1 and job.lost == 0 for job in jobs)
    ended = [job.ended_at for job in jobs]
    assert ended == sorted(ended)  # FIFO, one after another
    # taken together: several share the time of their take
    assert len({job.started_at for job in jobs}) < len(jobs)


def test_a_take_of_several_leaves_half_the_queue_to_workers_that_wait(redis_client):
    q = Queue("half", redis_client)
    jobs = q.enqueue_many([(nbq_tasks.add, (i, 1)) for i in range(3)])
    worker = Worker(["half"], redis_client, inline=True)
    ahead = Ahead()
    ahead.short = True
    first = worker._take(ahead)
    assert first is not None and first.id == jobs[0].id
    assert [run.taken.id for run in ahead.runs] == [jobs[1].id]  # 2 of 3: half, rounded up
    assert len(q) == 1 and redis_client.exists(keys.wake("half"))  # a waiting worker wakes for the third
    leased = redis_client.zrange(keys.active("half"), 0, -1)
    assert sorted(leased) == sorted([jobs[0].id.encode(), jobs[1].id.encode()])  # a lease each
    assert [Job.fetch(j.id, redis_client).status for j in jobs] == ["started", "started", "queued"]
    assert set(worker.held()) == {jobs[1].id}  # renewed by the heartbeat while it waits its turn
    # more than AHEAD queued: AHEAD at most
    many = q.enqueue_many([(nbq_tasks.add, (i, 1)) for i in range(4 * AHEAD)])
    ahead2 = Ahead()
    ahead2.short = True
    assert Worker(["half"], redis_client, inline=True)._take(ahead2) is not None
    assert len(ahead2.runs) == AHEAD - 1 and len(q) == 1 + 4 * AHEAD - AHEAD
    assert many  # enqueued


def _in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    return thread


def _holding(redis_client, name: str, tmp_path):
    """An in-process inline worker (its hold long: nothing is given back on its own) running the
    gated job, with the victim taken ahead behind it."""
    q = Queue(name, redis_client)
    first, gate, victim, rest, gate_file, ran_file = _gate_with_one_waiting(q, tmp_path)
    worker = Worker([name], redis_client, inline=True)
    worker.ahead_hold = 600.0
    thread = _in_thread(worker)
    wait_for(lambda: worker._ahead is not None and any(r.taken.id == victim.id for r in worker._ahead.runs)
             and Job.fetch(gate.id, redis_client).status == "started", message="the victim held behind the gate")
    assert Job.fetch(victim.id, redis_client).status == "started"  # taken ahead: it waits its turn
    return worker, thread, gate, victim, rest, gate_file, ran_file


def test_a_job_taken_ahead_can_be_canceled_before_it_runs(redis_client, tmp_path):
    worker, thread, gate, victim, rest, gate_file, ran_file = _holding(redis_client, "ahead-cancel", tmp_path)
    assert victim.cancel(wait=0) == "started"  # its worker is asked
    gate_file.touch()
    assert gate.result(timeout=20) == "opened"
    wait_for(lambda: Job.fetch(victim.id, redis_client).status == "canceled", timeout=20, message="the victim canceled")
    assert not ran_file.exists()  # it never ran
    assert [job.result(timeout=20) for job in rest] == [i + 2 for i in range(4)]
    worker.request_stop()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_stop_now_gives_the_jobs_taken_ahead_back_to_the_queue(redis_client, start_worker, tmp_path):
    worker, thread, gate, victim, rest, gate_file, ran_file = _holding(redis_client, "ahead-stop", tmp_path)
    worker.stop_now()  # as a second SIGINT: the gated job fails, the victim goes back to its queue
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert Job.fetch(gate.id, redis_client).status == "failed"
    back = Job.fetch(victim.id, redis_client)
    assert back.status == "queued" and back.attempt == 0 and back.worker is None
    assert Queue("ahead-stop", redis_client).job_ids[0] == victim.id  # at the front, in order
    assert not redis_client.zscore(keys.active("ahead-stop"), victim.id)  # no lease left
    assert not ran_file.exists()
    start_worker("ahead-stop", "--inline")
    assert victim.result(timeout=30) == "victim" and ran_file.exists()
    victim.refresh()
    assert victim.attempt == 1 and victim.lost == 0  # it never ran before: not a lost attempt
    assert [job.result(timeout=20) for job in rest] == [i + 2 for i in range(4)]


def test_a_warm_stop_runs_the_jobs_taken_ahead(redis_client, tmp_path):
    worker, thread, gate, victim, rest, gate_file, ran_file = _holding(redis_client, "ahead-warm", tmp_path)
    worker.request_stop()
    gate_file.touch()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert victim.result(timeout=1) == "victim"


def test_jobs_held_behind_a_long_one_are_given_back_and_run_elsewhere(redis_client, start_worker, tmp_path):
    q = Queue("ahead-long", redis_client)
    first, gate, victim, rest, gate_file, ran_file = _gate_with_one_waiting(q, tmp_path)
    start_worker("ahead-long", "--inline", "--name", "held")
    wait_for(lambda: Job.fetch(gate.id, redis_client).status == "started", message="the gated job running")
    # HOLD after the gated job began, what it held goes back to the queue's front
    wait_for(lambda: Job.fetch(victim.id, redis_client).status == "queued", timeout=10,
             message="the victim given back")
    start_worker("ahead-long", "--inline", "--name", "other")
    assert victim.result(timeout=20) == "victim"
    assert [job.result(timeout=20) for job in rest] == [i + 2 for i in range(4)]
    assert Job.fetch(gate.id, redis_client).status == "started"  # all that while the gate held "held"
    ran = [Job.fetch(j.id, redis_client) for j in (victim, *rest)]
    assert {j.worker for j in ran} == {"other"} and all(j.attempt == 1 and j.lost == 0 for j in ran)
    gate_file.touch()
    assert gate.result(timeout=20) == "opened"


def test_a_redis_restart_while_outcomes_are_written_ahead_loses_none(private_redis, spawn_worker, tmp_path):
    """Outcomes written without waiting for their replies when the connection goes: each is
    recorded again the usual way (fenced), every job ends finished, none is lost."""
    executions = tmp_path / "executions.log"
    client = redis.Redis(unix_socket_path=private_redis.unix_socket)
    q = Queue("ahead-restart", client)
    n = 3000
    jobs = q.enqueue_many([(chaos_tasks.counted, (i, 0, str(executions))) for i in range(n)])
    worker = spawn_worker("ahead-restart", "--inline", "--url", private_redis.url).wait_ready()

    def ran() -> int:
        return len(executions.read_text().splitlines()) if executions.exists() else 0

    wait_for(lambda: ran() >= 300, 60, message="some jobs to run")
    assert ran() < n, "the jobs ran out before Redis restarted"
    private_redis.restart(while_down=lambda: wait_for(lambda: "lost Redis" in worker.log(), 30,
                                                       message="the worker to notice"))
    # a take whose reply the restart cut off left its jobs leased to this worker: they run again
    # once those leases lapse (as a lost worker's), so every result comes, some seconds later
    assert [job.result(timeout=120) for job in jobs] == [2 * i for i in range(n)]
    counts = collections.Counter(int(line.split()[0]) for line in executions.read_text().splitlines())
    assert set(counts) == set(range(n))
    with client.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.hget(keys.job(job.id), "status")
        statuses = pipe.execute()
    assert statuses == [b"finished"] * n
    log = worker.log()
    assert "lost Redis" in log and " is back" in log and worker.proc.poll() is None
    assert "discarded" not in log, log  # an outcome whose reply was lost was found recorded, not redone
