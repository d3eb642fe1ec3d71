"""One small function per row and system. Each gets a ``Ctx`` on a flushed server, returns {field: value}.

Sizes come from ``ctx.sizes``; each function checks that the work was really done.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from time import perf_counter

import rq

import nbqueue
from benchmarks import tasks
from benchmarks.harness import ROOT, Ctx, Line, Row, percentile

QUEUE = "bench"
GAP = 0.01  # seconds between one-at-a-time jobs, so the worker is idle again for the next

logging.getLogger("nbqueue").setLevel(logging.WARNING)  # in-process workers: no log line per job
logging.getLogger("rq").setLevel(logging.WARNING)  # RQ's work() also gets logging_level="WARNING"


def nbq(ctx: Ctx) -> nbqueue.Queue:
    return nbqueue.Queue(QUEUE, ctx.r)


def rqq(ctx: Ctx) -> rq.Queue:
    return rq.Queue(QUEUE, connection=ctx.r)


def check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"benchmark sanity check failed: {what}")


def rate(n: int, seconds: float) -> dict:
    return {"rate": n / seconds}


# --- limits ------------------------------------------------------------------------------------

def limits(ctx: Ctx) -> dict:
    n = ctx.sizes["ping"]
    t = perf_counter()
    for _ in range(n):
        ctx.r.ping()
    ping = n / (perf_counter() - t)
    pipe = ctx.r.pipeline(transaction=False)
    for _ in range(n * 5):
        pipe.ping()
    t = perf_counter()
    pipe.execute()
    piped = n * 5 / (perf_counter() - t)
    forks = ctx.sizes["forks"]
    t = perf_counter()
    for _ in range(forks):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return {"ping": ping, "pipelined": piped, "fork": forks / (perf_counter() - t), "wake": wake_floor(ctx)}


def wake_floor(ctx: Ctx) -> float:
    """p50 ms from an RPUSH to the return of another client's BLPOP, both idle before (GAP apart):
    the least any enqueue -> start path can take, one Redis-mediated wake-up."""
    lags, woke = [], []
    blocker = ctx.client()

    def wait() -> None:
        blocker.blpop(["bench:wake"], timeout=10)
        woke.append(time.time())

    for _ in range(ctx.sizes["latency"] // 4):
        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(GAP)
        t = time.time()
        ctx.r.rpush("bench:wake", 1)
        thread.join()
        lags.append((woke.pop() - t) * 1000)
    blocker.close()
    return percentile(lags, 50)


# --- 1. enqueue one by one ---------------------------------------------------------------------

def enqueue_nbq(ctx: Ctx) -> dict:
    q, n = nbq(ctx), ctx.sizes["enqueue"]
    for _ in range(20):
        q.enqueue(tasks.add, 1, 2)  # warm: script loaded, function checked once
    ctx.flush()
    t = perf_counter()
    for _ in range(n):
        q.enqueue(tasks.add, 1, 2)
    seconds = perf_counter() - t
    check(len(q) == n, "nbqueue enqueued all jobs")
    return rate(n, seconds)


def enqueue_rq(ctx: Ctx) -> dict:
    q, n = rqq(ctx), ctx.sizes["enqueue"]
    for _ in range(20):
        q.enqueue(tasks.add, 1, 2)
    ctx.flush()
    t = perf_counter()
    for _ in range(n):
        q.enqueue(tasks.add, 1, 2)
    seconds = perf_counter() - t
    check(q.count == n, "RQ enqueued all jobs")
    return rate(n, seconds)


# --- 2. bulk enqueue ---------------------------------------------------------------------------

def fill_nbq(ctx: Ctx, n: int, func=tasks.add, args=(1, 2)) -> None:
    nbq(ctx).enqueue_many([(func, args) for _ in range(n)])


def fill_rq(ctx: Ctx, n: int, func=tasks.add, args=(1, 2)) -> None:
    rqq(ctx).enqueue_many([rq.Queue.prepare_data(func, args) for _ in range(n)])


def bulk_nbq(ctx: Ctx) -> dict:
    n = ctx.sizes["bulk"]
    fill_nbq(ctx, 20)
    ctx.flush()
    t = perf_counter()
    fill_nbq(ctx, n)
    seconds = perf_counter() - t
    check(len(nbq(ctx)) == n, "nbqueue enqueued all jobs")
    return rate(n, seconds)


def bulk_rq(ctx: Ctx) -> dict:
    n = ctx.sizes["bulk"]
    fill_rq(ctx, 20)
    ctx.flush()
    t = perf_counter()
    fill_rq(ctx, n)
    seconds = perf_counter() - t
    check(rqq(ctx).count == n, "RQ enqueued all jobs")
    return rate(n, seconds)


# --- 3./4. drain, in-process worker / fork per job ---------------------------------------------

def drain_nbq(ctx: Ctx, inline: bool = True) -> dict:
    n = ctx.sizes["drain"]
    fill_nbq(ctx, n, tasks.noop, ())
    worker = nbqueue.Worker([QUEUE], ctx.r, inline=inline, burst=True)
    t = perf_counter()
    ran = worker.work()
    seconds = perf_counter() - t
    check(ran == n and len(nbq(ctx)) == 0, f"nbqueue ran {ran} of {n} jobs")
    return rate(n, seconds)


def drain_rq(ctx: Ctx, inline: bool = True) -> dict:
    n = ctx.sizes["drain"]
    fill_rq(ctx, n, tasks.noop, ())
    q = rqq(ctx)
    worker = (rq.SimpleWorker if inline else rq.Worker)([q], connection=ctx.r)
    t = perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    seconds = perf_counter() - t
    done = q.finished_job_registry.count
    check(done == n and q.count == 0, f"RQ ran {done} of {n} jobs")
    return rate(n, seconds)


def _fork_drain(ctx: Ctx, command: list, starts) -> dict:
    """A real fork-mode worker process drains the queue, as users run one (``nbqueue worker --burst``,
    ``rq worker --burst``: for nbqueue, its fork server, forked while the fresh process runs one thread).
    The rate is from the first job's start to the last's (``tasks.stamp``), so neither process start-up
    nor shutdown counts; ``starts()`` reads the stamps."""
    n = ctx.sizes["fork"]
    done = subprocess.run(command, cwd=ROOT, env=ctx.env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600)
    check(done.returncode == 0, f"the worker process failed: {done.stderr[-2000:]}")
    stamps = sorted(starts())
    check(len(stamps) == n, f"ran {len(stamps)} of {n} jobs")
    return rate(n - 1, stamps[-1] - stamps[0])


def fork_nbq(ctx: Ctx) -> dict:
    jobs = nbq(ctx).enqueue_many([(tasks.stamp, ()) for _ in range(ctx.sizes["fork"])])
    return _fork_drain(ctx, [sys.executable, "-m", "nbqueue.cli", "worker", QUEUE, "--burst", "--url", ctx.url, "-q"],
                       lambda: [job.result(timeout=10) for job in jobs])


def fork_rq(ctx: Ctx) -> dict:
    q = rqq(ctx)
    jobs = q.enqueue_many([rq.Queue.prepare_data(tasks.stamp) for _ in range(ctx.sizes["fork"])])
    return _fork_drain(ctx, [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", ctx.url, "-q", QUEUE],
                       lambda: [job.latest_result(timeout=10).return_value for job in jobs])


# --- 5. enqueue -> start latency, idle worker in a subprocess ----------------------------------

def _latency(ctx: Ctx, system: str, enqueue, started_at) -> dict:
    """``enqueue()`` -> job of ``tasks.stamp``; ``started_at(job)`` -> the time the job started."""
    lags = []
    with ctx.workers(system, QUEUE):
        for i in range(5 + ctx.sizes["latency"]):  # the first 5 warm the worker up
            t = time.time()
            job = enqueue()
            time.sleep(GAP)  # wait before asking, so the waiting client doesn't compete
            if i >= 5:
                lags.append(started_at(job) - t)
    ms = [lag * 1000 for lag in lags]
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99)}


def latency_nbq(ctx: Ctx) -> dict:
    q = nbq(ctx)
    return _latency(ctx, "nbqueue", lambda: q.enqueue(tasks.stamp), lambda job: job.result(timeout=10))


def latency_rq(ctx: Ctx) -> dict:
    q = rqq(ctx)
    return _latency(ctx, "rq", lambda: q.enqueue(tasks.stamp),
                    lambda job: job.latest_result(timeout=10).return_value)


# --- 6. status change -> event seen by a watcher (nbqueue only) --------------------------------

def events_nbq(ctx: Ctx) -> dict:
    """Jobs run one at a time by an idle worker; a thread receives every event (keys.EVENTS_PATTERN)."""
    received: list = []
    pubsub = ctx.client().pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(nbqueue.keys.EVENTS_PATTERN)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.05)
            if message is not None:
                received.append((time.time(), message["data"]))

    q, n = nbq(ctx), ctx.sizes["latency"]
    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        with ctx.workers("nbqueue", QUEUE):
            q.enqueue(tasks.noop).result(timeout=10)  # warm
            time.sleep(GAP)
            received.clear()
            jobs = []
            for _ in range(n):
                jobs.append(q.enqueue(tasks.noop))
                time.sleep(GAP)
            jobs[-1].result(timeout=10)
            time.sleep(0.2)  # the last job's events are on their way
    finally:
        stop.set()
        thread.join()
        pubsub.close()
    events = [(got, json.loads(data)) for got, data in received]
    changes = [(got, e) for got, e in events if e.get("status") in ("queued", "started", "finished")]
    check(len(changes) == 3 * n, f"{len(changes)} state changes seen for {n} jobs (queued, started, finished each)")
    ms = [(got - float(e["t"])) * 1000 for got, e in changes]  # t: Redis server time of the change
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95)}


# --- 7. idle worker CPU (both measured side by side) -------------------------------------------

def cpu_seconds(pid: int) -> float:
    """CPU time of all threads of ``pid``: ns-precise schedstat where there is one, else ticks."""
    tasks_dir = Path(f"/proc/{pid}/task")
    try:
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks_dir.iterdir()) / 1e9
    except (OSError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_both(ctx: Ctx) -> dict:
    window = ctx.sizes["idle"]
    with ctx.workers("nbqueue", QUEUE) as (nbq_proc,), ctx.workers("rq", QUEUE + "-rq") as (rq_proc,):
        time.sleep(1.0)  # let both finish starting up and go idle
        pids = {"nbqueue": nbq_proc.pid, "rq": rq_proc.pid}
        before = {s: cpu_seconds(p) for s, p in pids.items()}
        time.sleep(window)
        after = {s: cpu_seconds(p) for s, p in pids.items()}
    return {s: {"cpu": (after[s] - before[s]) * 1000 * 10 / window} for s in pids}  # ms per 10 s


# --- 8. Redis memory per queued job ------------------------------------------------------------

def _memory(ctx: Ctx, fill) -> dict:
    n = ctx.sizes["memory"]
    fill(ctx, 1)  # scripts loaded, queue registered: not counted per job
    ctx.flush()
    before = ctx.r.info("memory")["used_memory"]
    fill(ctx, n)
    return {"bytes": (ctx.r.info("memory")["used_memory"] - before) / n}


def memory_nbq(ctx: Ctx) -> dict:
    return _memory(ctx, fill_nbq)


def memory_rq(ctx: Ctx) -> dict:
    return _memory(ctx, fill_rq)


# --- 9. drain with 4 worker processes vs 1 -----------------------------------------------------

def _drain_procs(ctx: Ctx, system: str, fill, count: int) -> float:
    n = ctx.sizes["scaling"]
    ctx.flush()
    fill(ctx, n, tasks.noop, ())
    with ctx.workers(system, QUEUE, count, go="bench:go", done="bench:done") as procs:
        start = time.time()
        ctx.r.rpush("bench:go", *["go"] * count)
        ends = [float(ctx.r.blpop(["bench:done"], timeout=600)[1].split()[0]) for _ in procs]
    return n / (max(ends) - start)


def _scaling(ctx: Ctx, system: str, fill) -> dict:
    one, four = _drain_procs(ctx, system, fill, 1), _drain_procs(ctx, system, fill, 4)
    return {"w1": one, "w4": four, "x": four / one}


def scaling_nbq(ctx: Ctx) -> dict:
    result = _scaling(ctx, "nbqueue", fill_nbq)
    check(len(nbq(ctx)) == 0, "nbqueue workers drained the queue")
    return result


def scaling_rq(ctx: Ctx) -> dict:
    result = _scaling(ctx, "rq", fill_rq)
    q = rqq(ctx)
    check(q.count == 0 and q.finished_job_registry.count == ctx.sizes["scaling"], "RQ workers drained the queue")
    return result


# --- the table ---------------------------------------------------------------------------------

ROWS = [
    Row("enqueue", [Line("enqueue one by one", "rate", "jobs/s", at_least=3)],
        enqueue_nbq, enqueue_rq),
    Row("bulk", [Line("bulk enqueue (enqueue_many)", "rate", "jobs/s", at_least=10)],
        bulk_nbq, bulk_rq),
    Row("drain", [Line("drain, in-process worker", "rate", "jobs/s", at_least=10)],
        drain_nbq, drain_rq),
    Row("fork", [Line("drain, fork per job", "rate", "jobs/s", at_least=5)],
        fork_nbq, fork_rq),
    Row("latency", [
        Line("enqueue → start, idle worker, p50", "p50", "ms", False, at_most=0.5),
        Line("enqueue → start, idle worker, p99", "p99", "ms", False),
    ], latency_nbq, latency_rq),
    Row("events", [
        Line("status change → watcher, p50", "p50", "ms", False),
        Line("status change → watcher, p95", "p95", "ms", False),
    ], events_nbq),
    Row("idle", [Line("idle worker CPU", "cpu", "ms CPU/10 s", False)], both=idle_both, max_repeat=3),
    Row("memory", [Line("Redis memory per queued job", "bytes", "B", False, at_least=1)],
        memory_nbq, memory_rq),
    Row("scaling", [
        Line("drain, 1 worker process", "w1", "jobs/s"),
        Line("drain, 4 worker processes", "w4", "jobs/s"),
        Line("scaling, 4 workers vs 1", "x", "×"),
    ], scaling_nbq, scaling_rq),
]
