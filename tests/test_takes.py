"""Taking from queues on several slots (``nbqueue/takes.py``), run the cluster's way on one server:
``Worker.split_runs`` makes every queue its own run, as queues on different cluster slots are.
(``test_cluster.py`` runs the same on a real cluster.)"""
from __future__ import annotations

import resource
import threading
import time

import pytest

import nbq_tasks
from conftest import wait_for
from nbqueue import Queue, Worker, wire

pytestmark = pytest.mark.standalone("runs the cluster's way on one standalone server")


@pytest.fixture
def split(monkeypatch):
    monkeypatch.setattr(Worker, "split_runs", True)


def _work(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    return thread


def _commands(client) -> dict:
    return {k: v["calls"] for k, v in client.info("commandstats").items()}


def test_runs_are_taken_in_priority_order_whenever_several_have_jobs(redis_client, split):
    queues = [Queue(name, redis_client) for name in ("first", "second", "third")]
    jobs = [job for q in reversed(queues) for job in q.enqueue_many([(nbq_tasks.now, ())] * 4)]
    worker = Worker([q.name for q in queues], redis_client, inline=True, burst=True)
    assert worker._takes is not None and len(worker._takes.runs) == 3
    assert worker.work() == 12
    started = sorted(jobs, key=lambda j: j.result(timeout=1))
    assert [j.queue for j in started] == ["first"] * 4 + ["second"] * 4 + ["third"] * 4


def test_an_idle_worker_on_several_runs_blocks_wakes_at_once_and_stops_at_once(redis_client, split):
    names = ["hi", "mid", "lo"]
    worker = Worker(names, redis_client, inline=True, concurrency=2)
    thread = _work(worker)
    wait_for(lambda: redis_client.zscore("nbq:workers", worker.name), message="worker registered")
    time.sleep(0.3)  # let it settle into its wait
    before, cpu = _commands(redis_client), resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(2.0)  # idle: measure what it costs
    after, cpu2 = _commands(redis_client), resource.getrusage(resource.RUSAGE_SELF)
    takes = after.get("cmdstat_evalsha", 0) - before.get("cmdstat_evalsha", 0)
    blpops = after.get("cmdstat_blpop", 0) - before.get("cmdstat_blpop", 0)
    assert blpops <= 3, f"wakers re-block every {worker._idle_wait} s, not {blpops} times in 2 s"
    assert takes <= 2 * 4, f"{takes} scripts in 2 s idle: the heartbeat's only"
    used = (cpu2.ru_utime + cpu2.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    assert used < 0.3, f"an idle worker used {used:.2f} s of CPU in 2 s"
    began = time.monotonic()
    job = Queue("lo", redis_client).enqueue(nbq_tasks.now)  # the lowest run: its waker wakes a slot
    assert job.result(timeout=5) and time.monotonic() - began < 1.5
    began = time.monotonic()
    worker.request_stop()
    thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - began < 1.5, "an idle worker stops at once"
    assert all(not t.is_alive() for t in worker._takes._wakers), "the wakers ended too"


def _enqueued_together(monkeypatch, client, *calls):
    """Enqueue ``(queue, func, args)`` calls in one MULTI/EXEC: their wake flags are set in one step."""
    captured, me, real = [], threading.current_thread(), wire.send

    def capture(connection, *commands):
        if threading.current_thread() is not me:
            return real(connection, *commands)
        captured.extend(commands)
        return [None] * len(commands)

    monkeypatch.setattr(wire, "send", capture)
    jobs = [queue.enqueue(func, *args) for queue, func, args in calls]
    monkeypatch.setattr(wire, "send", real)
    assert len(captured) == len(calls)
    replies = wire.send(client, ("MULTI",), *captured, ("EXEC",))
    assert not any(isinstance(r, Exception) for r in replies[-1]), replies
    return jobs


def test_a_flag_popped_for_a_lower_run_is_set_again_for_other_workers(redis_client, split, tmp_path, monkeypatch):
    """W1 serves [a, b]; jobs arrive on both at once: W1 takes a's, and b's flag, which its waker
    popped, must be set again, or W2 (blocked on b alone) would sleep until its wait times out."""
    w1 = Worker(["a", "b"], redis_client, inline=True)
    w2 = Worker(["b"], redis_client, inline=True)
    w2.split_runs = False
    threads = [_work(w1), _work(w2)]
    try:
        wait_for(lambda: redis_client.zcard("nbq:workers") == 2, message="both workers registered")
        time.sleep(0.5)  # both idle, blocked
        flag = tmp_path / "go"
        a, b = _enqueued_together(monkeypatch, redis_client,
                                  (Queue("a", redis_client), nbq_tasks.until_file, (str(flag), "a")),
                                  (Queue("b", redis_client), nbq_tasks.now, ()))
        began = time.monotonic()
        assert b.result(timeout=4) and time.monotonic() - began < 2.0, "b's job waited for a timeout"
        assert b.refresh().worker == w2.name, "W2 took it (its flag was set again)"
        flag.write_text("")
        assert a.result(timeout=10) == "a" and a.refresh().worker == w1.name
    finally:
        for worker in (w1, w2):
            worker.request_stop()
        for thread in threads:
            thread.join(timeout=10)
