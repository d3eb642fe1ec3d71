"""One function per row, the same for every system (through its adapter in ``benchmarks/peers``).

Each gets an adapter and a ``Ctx`` on a flushed server and returns {field: value}; sizes come from
``ctx.sizes``; each checks that the work was really done. Workers run in their own processes
(``benchmarks/workerproc.py``); the jobs report when they ran (``benchmarks/tasks.py``), so every
system's figure is read the same way.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from time import perf_counter

import nbqueue
from benchmarks import tasks
from benchmarks.harness import GO, QUEUE, READY, Ctx, Line, Row, Summary, percentile, stop

GAP = 0.01  # seconds between one-at-a-time jobs, so the worker is idle again for the next
TICK = 0.01  # seconds each job of the concurrency row sleeps
CONCURRENCY = 20
WRAPPERS = {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro", "exec"}  # their usec holds inner calls'
ADMIN = {"info", "config|resetstat", "config", "flushall", "ping"}  # the benchmark's own commands


def check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"benchmark sanity check failed: {what}")


def wait_done(ctx: Ctx, procs: list, timeout: float = 600) -> float:
    """The time pushed by the last job (``tasks.mark`` / ``tasks.tick``); fails at once if a worker died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = ctx.r.blpop([tasks.DONE], timeout=1)
        if reply is not None:
            return float(reply[1])
        dead = [p.returncode for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a worker process exited ({dead}) before the jobs were done; logs: {ctx.logdir}")
    raise TimeoutError(f"the jobs did not finish within {timeout} s (worker logs: {ctx.logdir})")


def bare_forks(n: int) -> float:
    t = perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return n / (perf_counter() - t)


def bare_threads(ctx: Ctx) -> float:
    """Seconds for the concurrency row's job bodies (sleep ``TICK``, INCR a counter on one shared
    client, as ``tasks.tick``) run by ``CONCURRENCY`` plain threads, no queue: that row's floor here."""
    client, each = ctx.client(), ctx.sizes["concurrency"] // CONCURRENCY

    def body() -> None:
        for _ in range(each):
            time.sleep(TICK)
            client.incr("bench:bare-ticks")

    threads = [threading.Thread(target=body) for _ in range(CONCURRENCY)]
    t = perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = perf_counter() - t
    client.close()
    return elapsed


def used_memory(ctx: Ctx) -> int:
    """used_memory less the clients' buffers (workers connecting and leaving would blur the delta) and
    the script cache (a worker loading its scripts the first time is not memory per job)."""
    info = ctx.r.info("memory")
    return info["used_memory"] - info.get("mem_clients_normal", 0) - info.get("used_memory_scripts", 0)


def server_cpu(ctx: Ctx) -> float:
    cpu = ctx.r.info("cpu")
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"]


# --- limits ------------------------------------------------------------------------------------

def limits(ctx: Ctx) -> dict:
    n = ctx.sizes["ping"]
    cpu0, t = server_cpu(ctx), perf_counter()
    for _ in range(n):
        ctx.r.ping()
    ping = n / (perf_counter() - t)
    ping_cpu = (server_cpu(ctx) - cpu0) / n * 1e6
    pipe = ctx.r.pipeline(transaction=False)
    for _ in range(n * 5):
        pipe.ping()
    t = perf_counter()
    pipe.execute()
    piped = n * 5 / (perf_counter() - t)
    wake = wake_floor(ctx)
    return {"ping": ping, "ping_cpu": ping_cpu, "pipelined": piped, "fork": bare_forks(ctx.sizes["forks"]),
            "wake": percentile(wake, 50), "wake99": percentile(wake, 99), "threads": bare_threads(ctx)}


def wake_floor(ctx: Ctx) -> list:
    """ms from an RPUSH to the return of another client's BLPOP, both idle before (GAP apart):
    the least any enqueue -> start path can take, one Redis-mediated wake-up."""
    lags, woke = [], []
    blocker = ctx.client()

    def wait() -> None:
        blocker.blpop(["bench:wake"], timeout=10)
        woke.append(time.time())

    for _ in range(ctx.sizes["latency"] // 2):
        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(GAP)
        t = time.time()
        ctx.r.rpush("bench:wake", 1)
        thread.join()
        lags.append((woke.pop() - t) * 1000)
    blocker.close()
    return lags


# --- enqueue one by one, bulk ------------------------------------------------------------------

def enqueue(s, ctx: Ctx) -> dict:
    s.setup(ctx.url)
    n, add = ctx.sizes["enqueue"], s.enqueuer("add")
    for _ in range(20):
        add(1, 2)  # warm: scripts loaded, function checked once
    ctx.flush()
    t = perf_counter()
    for _ in range(n):
        add(1, 2)
    seconds = perf_counter() - t
    check(s.queued() == n, f"{s.name} enqueued all jobs")
    return {"rate": n / seconds}


def bulk(s, ctx: Ctx) -> dict:
    s.setup(ctx.url)
    n = ctx.sizes["bulk"]
    s.enqueue_many("add", (1, 2), 20)
    ctx.flush()
    t = perf_counter()
    s.enqueue_many("add", (1, 2), n)
    seconds = perf_counter() - t
    check(s.queued() == n, f"{s.name} enqueued all jobs")
    return {"rate": n / seconds}


# --- drains: N jobs waiting, then worker processes told to go; ends when the last job ran -------

def _drain(s, ctx: Ctx, n: int, mode: str = "fast", procs: int = 1) -> float:
    s.setup(ctx.url)
    s.enqueue_many("noop", (), n)
    s.enqueuer("mark")()  # FIFO: it runs after every noop
    with ctx.workers(s.name, procs, mode=mode, go=True) as workers:
        start = time.time()
        ctx.r.rpush(GO, *["go"] * procs)
        end = wait_done(ctx, workers)
    check(s.queued() == 0, f"{s.name} drained the queue")
    return (n + 1) / (end - start)


def drain(s, ctx: Ctx) -> dict:
    return {"rate": _drain(s, ctx, ctx.sizes["drain"])}


def drain2(s, ctx: Ctx) -> dict:
    return {"rate": _drain(s, ctx, ctx.sizes["drain"], procs=2)}


def fork(s, ctx: Ctx) -> dict:
    bare = bare_forks(ctx.sizes["forks"])  # the floor, measured right before, in this process
    return {"rate": _drain(s, ctx, ctx.sizes["fork"], mode="fork"), "bare": bare}


def concurrency(s, ctx: Ctx) -> dict:
    """N 10 ms jobs bulk-enqueued to one idle, warmed-up worker with 20 slots: seconds from the
    start of the enqueue to the end of the last job (ideal: N x 10 ms / 20)."""
    s.setup(ctx.url)
    n = ctx.sizes["concurrency"]
    with ctx.workers(s.name, 1, mode="threads", concurrency=CONCURRENCY) as workers:
        s.enqueuer("mark")()
        wait_done(ctx, workers, 60)  # warm: the worker is up and has run a job
        time.sleep(0.05)
        start = time.time()
        s.enqueue_many("tick", (n,), n)
        end = wait_done(ctx, workers)
    return {"seconds": end - start}


# --- enqueue -> start latency, idle worker ------------------------------------------------------

def latency(s, ctx: Ctx) -> dict:
    s.setup(ctx.url)
    go, lags = s.enqueuer("started"), []
    with ctx.workers(s.name, 1, mode="fast"):
        for i in range(5 + ctx.sizes["latency"]):  # the first 5 warm the worker up
            t = time.time()
            go()
            reply = ctx.r.blpop([tasks.STAMPS], timeout=10)
            check(reply is not None, f"{s.name}: a job started within 10 s")
            if i >= 5:
                lags.append((float(reply[1]) - t) * 1000)
            time.sleep(GAP)  # the worker is idle again for the next
    return {"p50": percentile(lags, 50), "p99": percentile(lags, 99)}


# --- Redis memory per queued job and per finished job kept -------------------------------------

def memory(s, ctx: Ctx) -> dict:
    """used_memory delta / N after N ``add(1, 2)`` jobs are queued, then after a worker ran them
    (results kept, as each system keeps them by default; Dramatiq with its Results middleware) and stopped."""
    s.setup(ctx.url, results=True)
    n = ctx.sizes["memory"]
    s.enqueue_many("add", (1, 2), 1)  # scripts loaded, queue registered: not counted per job
    ctx.flush()
    before = used_memory(ctx)
    s.enqueue_many("add", (1, 2), n)
    queued = (used_memory(ctx) - before) / n
    s.enqueuer("mark")()
    with ctx.workers(s.name, 1, mode="fast", results=True) as workers:
        wait_done(ctx, workers)
    check(s.queued() == 0, f"{s.name} ran every job")
    return {"queued": queued, "finished": (used_memory(ctx) - before) / n}


# --- server CPU per job: enqueue one by one, then take + run + finish ---------------------------

def counters(ctx: Ctx) -> tuple:
    """(server CPU seconds, usec in commands counted once): scripts' and transactions' usec include
    their inner commands' (counted under those commands too), so the wrappers are left out."""
    stats = ctx.r.info("commandstats")
    usec = sum(v["usec"] for k, v in stats.items() if k[len("cmdstat_"):] not in WRAPPERS | ADMIN)
    return server_cpu(ctx), usec


def cpu(s, ctx: Ctx) -> dict:
    s.setup(ctx.url)
    n, add = ctx.sizes["cpu"], s.enqueuer("add")
    with ctx.workers(s.name, 1, mode="fast", go=True) as workers:
        ctx.r.config_resetstat()
        (cpu0, usec0) = counters(ctx)
        for _ in range(n):
            add(1, 2)
        s.enqueuer("mark")()
        cpu1, _ = counters(ctx)
        ctx.r.rpush(GO, "go")
        wait_done(ctx, workers)
        cpu2, usec2 = counters(ctx)
    check(s.queued() == 0, f"{s.name} ran every job")
    return {"cpu": (cpu2 - cpu0) / n * 1e6, "enqueue": (cpu1 - cpu0) / n * 1e6, "run": (cpu2 - cpu1) / n * 1e6,
            "usec": (usec2 - usec0) / n}


# --- nbqueue only: status change -> event seen by a watcher -------------------------------------

def events(s, ctx: Ctx) -> dict:
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

    q, n = nbqueue.Queue(QUEUE, ctx.r), ctx.sizes["latency"]
    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        with ctx.workers("nbqueue"):
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
    decoded = [(got, json.loads(data)) for got, data in received]
    changes = [(got, e) for got, e in decoded if e.get("status") in ("queued", "started", "finished")]
    check(len(changes) == 3 * n, f"{len(changes)} state changes seen for {n} jobs (queued, started, finished each)")
    ms = [(got - float(e["t"])) * 1000 for got, e in changes]  # t: Redis server time of the change
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95)}


# --- idle worker CPU, every system's side by side ----------------------------------------------

def cpu_seconds(pid: int) -> float:
    """CPU time of all threads of ``pid``: ns-precise schedstat where there is one, else ticks."""
    tasks_dir = Path(f"/proc/{pid}/task")
    try:
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks_dir.iterdir()) / 1e9
    except (OSError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_all(adapters: dict, ctx: Ctx) -> dict:
    window, procs = ctx.sizes["idle"], {}
    try:
        for name in adapters:  # started together, measured over the same window
            procs[name] = ctx.spawn(name)
        ready, deadline = 0, time.monotonic() + 60
        while ready < len(procs) and time.monotonic() < deadline:  # one that dies is left out
            if ctx.r.blpop([READY], timeout=1) is not None:
                ready += 1
            procs = {s: p for s, p in procs.items() if p.poll() is None}
        time.sleep(1.0)  # let all finish starting up and go idle
        before = {s: cpu_seconds(p.pid) for s, p in procs.items()}
        time.sleep(window)
        after = {s: cpu_seconds(p.pid) for s, p in procs.items()}
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            stop(p)  # one slow to stop is killed: the window is measured already
    return {s: {"cpu": (after[s] - before[s]) * 1000 * 10 / window} for s in procs}  # ms per 10 s


# --- the table ---------------------------------------------------------------------------------

def at_least(times: float, peer: str = ""):
    """Judge: nbqueue at least ``times`` better than ``peer`` (the best peer if not given), paired."""
    return lambda m, lim: (lambda r: None if r is None else r >= times)(m.vs(peer or m.best))


def ideal(ctx_sizes: dict) -> float:
    return ctx_sizes["concurrency"] * TICK / CONCURRENCY


def _fork_met(m: Summary, lim: dict) -> bool:
    bare = m.fields.get("nbqueue", {}).get("bare")
    vs_rq = m.vs("rq")
    return bool(m.nbq and bare and vs_rq is not None and vs_rq >= 3 and m.nbq >= 0.5 * bare)


def _fork_limit(m: Summary, lim: dict) -> str:
    bare = [f["bare"] for f in m.fields.values() if "bare" in f]
    return f"bare fork+waitpid {sorted(bare)[len(bare) // 2]:,.0f}/s" if bare else "—"


def _ping(m, lim):
    return f"PING round trip {lim['ping']:,.0f}/s"


def rows(sizes: dict) -> list:
    """The rows, in the order of the issue's target table; the extras after."""
    best = ideal(sizes)
    no_fork = "no fork-per-job worker"
    return [
        Row("enqueue", [Line("enqueue one by one", "rate", "jobs/s", target="≥ 1.1× Huey",
                             judge=at_least(1.1, "huey"), limit=_ping)], enqueue),
        Row("bulk", [Line("bulk enqueue", "rate", "jobs/s", target="≥ 3× best peer", judge=at_least(3),
                          limit=lambda m, lim: f"pipelined PING {lim['pipelined']:,.0f}/s")], bulk),
        Row("drain", [Line("drain, one process, fastest mode", "rate", "jobs/s", target="≥ 2× Huey",
                           judge=at_least(2, "huey"), limit=_ping)], drain),
        Row("drain2", [Line("drain, two processes", "rate", "jobs/s", target="≥ 2× Huey",
                            judge=at_least(2, "huey"), limit=_ping)], drain2),
        Row("concurrency", [Line(f"{sizes['concurrency']} × 10 ms jobs at concurrency {CONCURRENCY}", "seconds",
                                 "s", False, target=f"≤ 1.1× ideal ({1.1 * best:.3g} s)",
                                 judge=lambda m, lim: m.nbq is not None and m.nbq <= 1.1 * best,
                                 limit=lambda m, lim: f"ideal {best:.3g} s; the job bodies in "
                                                       f"{CONCURRENCY} bare threads {lim['threads']:.3f} s")],
            concurrency, applies=lambda s: "threads" in s.modes, na="no concurrency within one worker"),
        Row("latency", [
            Line("enqueue → start, idle worker, p50", "p50", "ms", False, target="≤ 1.5× bare wake-up",
                 judge=lambda m, lim: m.nbq is not None and m.nbq <= 1.5 * lim["wake"],
                 limit=lambda m, lim: f"RPUSH→BLPOP p50 {lim['wake']:.3f} ms"),
            Line("enqueue → start, idle worker, p99", "p99", "ms", False, target="≤ 1 ms",
                 judge=lambda m, lim: m.nbq is not None and m.nbq <= 1.0,
                 limit=lambda m, lim: f"RPUSH→BLPOP p99 {lim['wake99']:.3f} ms"),
        ], latency),
        Row("fork", [Line("fork per job", "rate", "jobs/s", target="≥ 3× RQ and ≥ 50 % of bare fork",
                          judge=_fork_met, limit=_fork_limit)], fork,
            applies=lambda s: "fork" in s.modes, na=no_fork),
        Row("memory", [
            Line("Redis memory per queued job", "queued", "B", False, target="≤ Huey's",
                 judge=at_least(1, "huey")),
            Line("Redis memory per finished job kept", "finished", "B", False, target="≤ Huey's",
                 judge=at_least(1, "huey")),
        ], memory),
        Row("cpu", [
            Line("server CPU per job (enqueue + take + finish)", "cpu", "µs", False, target="≤ 35 µs",
                 judge=lambda m, lim: m.nbq is not None and m.nbq <= 35,
                 limit=lambda m, lim: f"one PING {lim['ping_cpu']:.1f} µs"),
            Line("… of which the enqueue", "enqueue", "µs", False),
            Line("… in commands (commandstats usec, each once)", "usec", "µs", False),
        ], cpu),
        Row("events", [
            Line("status change → watcher, p50", "p50", "ms", False),
            Line("status change → watcher, p95", "p95", "ms", False),
        ], events, applies=lambda s: s.name == "nbqueue", na="no status events"),
        Row("idle", [Line("idle worker CPU", "cpu", "ms CPU/10 s", False)], both=idle_all, max_repeat=3),
    ]
