"""nbqueue beside RQ, Huey, Dramatiq and Celery, on one private Redis server, alternating the systems every repeat.

    python benchmarks/run.py [--quick] [--repeat N] [--only enqueue,bulk,...] [--systems nbqueue,rq,...]
                             [--unix] [--port P] [--server-binary /usr/bin/redis-server]

Each figure is the median of the repeats. A full run (all rows and systems, not --quick) rewrites
benchmarks/RESULTS.md. Rows: enqueue bulk drain drain2 concurrency latency fork memory cpu events idle.
A peer whose library is missing or fails to import is a '—' column, with the reason below the table.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# `python benchmarks/run.py` works; appended, so PYTHONPATH=/some/snapshot benchmarks another nbqueue
sys.path.append(str(Path(__file__).resolve().parent.parent))

import redis

import nbqueue
from benchmarks.harness import ROOT, Ctx, Server, run_row, summary
from benchmarks.peers import SYSTEMS, load_all
from benchmarks.rows import limits, rows

FULL = {"enqueue": 5000, "bulk": 20000, "drain": 2000, "fork": 300, "concurrency": 1000, "latency": 200,
        "memory": 4000, "cpu": 2000, "idle": 5, "ping": 20000, "forks": 300}
QUICK = {"enqueue": 300, "bulk": 2000, "drain": 200, "fork": 30, "concurrency": 200, "latency": 30,
         "memory": 300, "cpu": 200, "idle": 1, "ping": 2000, "forks": 100}
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
LABELS = {"nbqueue": "nbqueue", "rq": "RQ", "huey": "Huey", "dramatiq": "Dramatiq", "celery": "Celery"}
NOTES = """\
- Columns: each system's median over the repeats. "vs best peer": how many times better nbqueue is
  than the best peer of that row (nbqueue/peer for rates, peer/nbqueue where lower is better), taken
  per repeat (the systems measured back to back) and then the median, so drifts of the shared
  machine's load cancel out. "met" judges the issue's target on those paired ratios (or on
  nbqueue's median for absolute targets). "limit": measured in the same run, on the same server.
- One private server for the whole run (`--save "" --appendonly no`), TCP loopback unless `--unix`;
  FLUSHALL before every measurement (then a wait until background freeing is done). Within each
  repeat every system runs once, the order rotating by one system from repeat to repeat.
- Every system gets the same client: redis-py with hiredis, `socket_timeout=None`; its own key
  prefix (Huey `RedisHuey("bench")`, Dramatiq `RedisBroker(namespace="bench-dramatiq")`, Celery
  its queue `bench-celery`; Celery's broker is kombu's Redis transport, redis-py underneath, on the
  same server); logging at WARNING (no log line per job). Adapters: `benchmarks/peers/`.
- Jobs (`benchmarks/tasks.py`, the same plain functions for all; Huey/Dramatiq/Celery wrap them in
  their decorators): `add(1, 2)` for enqueue and memory, `noop()` for drains, `started()` for latency,
  `tick(n)` (sleeps 10 ms) for concurrency. The jobs report over Redis (not via each system's result
  API), so every figure is read the same way.
- Workers are separate processes (`benchmarks/workerproc.py`). Drains: N jobs pre-filled with the
  system's bulk enqueue plus a final `mark()` job (queues are FIFO), workers started and waiting,
  then one "go": time from "go" to `mark()` running. Fastest mode: nbqueue `Worker(inline=True)`,
  RQ `SimpleWorker`, Huey consumer with 1 thread worker, Dramatiq `Worker` with its default 8
  threads, Celery's worker with the `solo` pool (gossip, mingle, heartbeats off). Fork per job:
  nbqueue `Worker()`, RQ `Worker`. Concurrency 20: nbqueue `Worker(inline=True, concurrency=20)`,
  Huey 20 thread workers, Dramatiq 20 worker threads, Celery's `threads` pool of 20, from the start
  of the bulk enqueue to the end of the last job, on a worker that has already run a job.
- Latency: one idle worker; the job's `time.time()` at start minus the time just before the enqueue
  call, 10 ms apart. The limit: an RPUSH → another idle client's BLPOP returning.
- Memory: `INFO memory` used_memory delta / N after N jobs queued, then after a worker ran them all
  with results kept (each system's default; Dramatiq with its Results middleware, Celery with its
  result backend, both on Redis) and
  stopped. Server CPU: `INFO cpu` (user+sys of the server process, network I/O included) over N
  one-by-one enqueues and the drain, / N; "in commands": `INFO commandstats` usec summed with
  EVAL/EVALSHA/EXEC left out (their usec includes their inner commands, which are counted under
  those commands already), so Lua and MULTI overhead is not in it.
- Idle CPU: one idle worker of each system, side by side over the same window (all threads, /proc schedstat).
- Peers not measured: arq 0.28 needs redis-py < 6 (installing it would downgrade the client every
  system here uses); SAQ and taskiq install but have no adapter yet (`benchmarks/peers/`).
- Numbers on a shared 2-core VM with other benchmarks running beside (load averages above): the
  paired ratios are steadier than the absolute figures, the latency tails and two-process rows least.
"""


def facts(ctx: Ctx, adapters: dict) -> list:
    info = ctx.r.info("server")
    server = (f"valkey {info['valkey_version']}" if "valkey_version" in info
              else f"redis {info['redis_version']}")
    where = Path(nbqueue.__file__).resolve().parent.parent
    try:  # --dirty: uncommitted changes to tracked files (benchmarks/ itself may be untracked)
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=where, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    if not commit:  # a `git archive` snapshot on PYTHONPATH may carry its commit in a COMMIT file
        stamp = where / "COMMIT"
        commit = f"snapshot of {stamp.read_text().strip()}" if stamp.exists() else "no git"
    peers = ", ".join(f"{LABELS[n]} {a.version}" for n, a in adapters.items() if n != "nbqueue")
    return [
        f"date {datetime.datetime.now().isoformat(timespec='seconds')}",
        "load avg at start {:.2f} {:.2f} {:.2f} (shared machine: other work competes)".format(*os.getloadavg()),
        f"{os.cpu_count()} CPUs ({platform.machine()}, {platform.system()} {platform.release()})",
        f"Python {platform.python_version()}",
        f"redis-py {redis.__version__}",
        f"nbqueue {nbqueue.__version__} ({commit}, {where})",
        f"peers: {peers or 'none'}",
        f"server {server} at {ctx.url} ({'unix socket' if ctx.url.startswith('unix') else 'TCP loopback'})",
    ]


def fmt(value, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "jobs/s" and value >= 10000:
        return f"{value / 1000:,.1f}k/s"
    if unit == "jobs/s":
        return f"{value:,.{0 if value >= 100 else 1}f}/s"
    if unit in ("B", "µs"):
        return f"{value:,.{0 if value >= 100 else 1}f} {unit}"
    return f"{value:,.{0 if value >= 100 else 2}f} {unit}"


def table(results: dict, names: list, lim: dict, sizes: dict) -> tuple:
    """Markdown rows: row | each system | vs best peer | target | met | limit; and the '—' reasons."""
    peers = [n for n in names if n != "nbqueue"]
    out = ["| row | " + " | ".join(LABELS[n] for n in names) + " | vs best peer | target | met | limit |",
           "|---|" + "---:|" * len(names) + "---:|---|---|---|"]
    why: dict = {}
    for row in rows(sizes):
        if row.key not in results:
            continue
        samples, errors = results[row.key]
        for name, reason in errors.items():
            why.setdefault(reason, []).append(f"{row.key}: {LABELS[name]}")
        for line in row.lines:
            m = summary(line, samples)
            best = m.best
            r = m.vs(best)
            zero = best is not None and r is None and m.medians.get(best) == 0  # e.g. no CPU at all
            winner = best if zero else None if r is None else "nbqueue" if r >= 1 else best  # in bold
            cells = [f"**{fmt(m.medians.get(n), line.unit)}**" if n == winner else fmt(m.medians.get(n), line.unit)
                     for n in names]
            vs = f"{r:.2f}× ({LABELS[best]})" if r is not None and best else f"— ({LABELS[best]}: 0)" if zero else "—"
            met = {None: "", True: "yes", False: "**NO**"}[line.judge(m, lim) if line.judge else None]
            limit = line.limit(m, lim) if line.limit else ""
            out.append(f"| {line.label} | " + " | ".join(cells) + f" | {vs} | {line.target} | {met} | {limit} |")
    notes = [f"- '—': {reason} ({', '.join(where)})" for reason, where in why.items()]
    return out, notes, peers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 repeat, small sizes (CI smoke test, about a minute)")
    p.add_argument("--repeat", type=int, help="repeats per row (default 3, --quick 1)")
    all_rows = [r.key for r in rows(FULL)]
    p.add_argument("--only", help="comma-separated rows: " + ",".join(all_rows))
    p.add_argument("--systems", help="comma-separated systems (default all): " + ",".join(SYSTEMS))
    p.add_argument("--server-binary", help="redis-server/valkey-server to run (default: nbqueue's valkey)")
    p.add_argument("--unix", action="store_true", help="talk to the server over a unix socket, not TCP")
    p.add_argument("--port", type=int, help="the private server's TCP port (default: a free one)")
    args = p.parse_args()
    started = time.monotonic()
    sizes = QUICK if args.quick else FULL
    repeat = args.repeat or (1 if args.quick else 3)
    only = set(args.only.split(",")) if args.only else set(all_rows)
    if only - set(all_rows):
        p.error(f"unknown rows: {', '.join(sorted(only - set(all_rows)))}")
    wanted = args.systems.split(",") if args.systems else list(SYSTEMS)
    if set(wanted) - set(SYSTEMS) or "nbqueue" not in wanted:
        p.error(f"--systems: nbqueue and any of {', '.join(SYSTEMS[1:])}")
    adapters, missing = load_all([n for n in SYSTEMS if n in wanted])
    if "nbqueue" in missing:
        raise SystemExit(f"nbqueue's adapter failed to import: {missing['nbqueue']}")
    names = [n for n in SYSTEMS if n in wanted]

    binary = args.server_binary or nbqueue.server.find_binary()
    with Server(binary, unix=args.unix, port=args.port) as server:
        os.environ["NBQUEUE_URL"] = server.url  # nothing may fall back to the machine's Redis
        ctx = Ctx(server.url, sizes, server.dir)
        head = facts(ctx, adapters)
        print("# nbqueue beside " + ", ".join(LABELS[n] for n in names[1:]) + "\n\n" + " · ".join(head), flush=True)
        for name, reason in missing.items():
            print(f"{LABELS[name]}: not measured ({reason})", flush=True)
        lim = [limits(ctx) for _ in range(min(repeat, 3))]
        lim = {k: statistics.median(m[k] for m in lim) for k in lim[0]}
        limit_line = (f"limits: PING round trip {lim['ping']:,.0f}/s ({lim['ping_cpu']:.1f} µs server CPU each) · "
                      f"pipelined PING {lim['pipelined']:,.0f} ops/s · fork+waitpid {lim['fork']:,.0f}/s "
                      f"(this process) · idle wake-up RPUSH→BLPOP p50 {lim['wake']:.3f} ms, p99 {lim['wake99']:.3f} ms")
        print(limit_line, flush=True)
        results = {}
        for row in rows(sizes):
            if row.key in only:
                results[row.key] = run_row(row, ctx, adapters, repeat,
                                           lambda s: print(s, file=sys.stderr, flush=True))
    lines, notes, _ = table(results, names, lim, sizes)
    notes += [f"- '—' ({LABELS[n]}, every row): {why}" for n, why in missing.items()]
    elapsed = time.monotonic() - started
    load = "load avg at end {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print("\n" + "\n".join(lines + [""] + notes) + f"\n\n{repeat} repeats; wall time {elapsed:.0f} s; {load}",
          flush=True)
    if not args.quick and only == set(all_rows) and names == list(SYSTEMS):
        RESULTS.write_text(
            "# nbqueue beside RQ, Huey, Dramatiq and Celery — benchmark results\n\n`python benchmarks/run.py` "
            f"({repeat} repeats, wall time {elapsed:.0f} s)\n\n" + "\n".join(f"- {h}" for h in [*head, load])
            + f"\n- {limit_line}\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes + [""]) + NOTES
            + "- Sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + " (idle: seconds)\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
