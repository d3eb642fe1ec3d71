"""nbqueue vs RQ, on one private Redis server, alternating the two systems every repeat.

    python benchmarks/run.py [--quick] [--repeat N] [--only enqueue,bulk,...] [--unix]
                             [--server-binary /usr/bin/redis-server]

Each figure is the median of the repeats. A full run (all rows, not --quick) rewrites
benchmarks/RESULTS.md. Rows: enqueue bulk drain fork latency events idle memory scaling.
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
import rq

import nbqueue
from benchmarks.harness import ROOT, Ctx, Server, run_row, summary
from benchmarks.rows import ROWS, limits

FULL = {"enqueue": 5000, "bulk": 20000, "drain": 2000, "fork": 300, "latency": 200, "idle": 10,
            "memory": 10000, "scaling": 1000, "ping": 20000, "forks": 500}
QUICK = {"enqueue": 300, "bulk": 2000, "drain": 200, "fork": 40, "latency": 30, "idle": 2,
             "memory": 1000, "scaling": 150, "ping": 2000, "forks": 100}
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
NOTES = """\
- RQ and nbqueue columns: the median of the repeats. ratio: how many times better nbqueue is —
  nbqueue/RQ for throughput rows, RQ/nbqueue where lower is better (latency, CPU, memory) — taken
  per repeat (both systems measured back to back) and then the median: drifts of the shared
  machine's load cancel out, so it can differ a little from the quotient of the two medians.
- One private server for the whole run (`--save "" --appendonly no`), TCP loopback unless `--unix`;
  FLUSHALL before every measurement, then a wait until Valkey's background freeing is done;
  nbqueue and RQ alternate within every repeat. Both get the same client: redis-py with hiredis,
  `socket_timeout=None` (redis-py 8 defaults to 5 s, which cuts off blocking reads).
- Jobs: `benchmarks/tasks.py` (`add(1, 2)` to enqueue, `noop()` to drain, `stamp()` for latency).
- Logging at WARNING for both: `logging_level="WARNING"` to RQ's `work()`, the `nbqueue` logger
  set to WARNING; so neither pays for a log line per job.
- Drain rows: N jobs pre-filled with each system's own bulk enqueue, then the worker is timed in
  the benchmark process until it returns (burst): nbqueue `Worker(inline=True, burst=True)`,
  RQ `SimpleWorker.work(burst=True)`.
- Fork per job: N `stamp()` jobs drained by a real worker process, as users run one:
  `nbqueue worker --burst` (its fork server forks the jobs) and `rq worker --burst`; the rate is
  from the first job's start to the last's, so neither process's start-up or shutdown counts.
- Latency, events, idle CPU, scaling: workers are subprocesses (`benchmarks/workerproc.py`,
  nbqueue inline `Worker` / RQ `SimpleWorker`); latency = the job's `time.time()` at start minus
  the time just before the enqueue call; events = receipt time minus the event's `t` (server time);
  the two idle workers are measured side by side over the same window (CPU of all threads,
  /proc schedstat); scaling times from one "go" to the last worker's exit from burst work.
"""


def facts(ctx: Ctx) -> list:
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
    return [
        f"date {datetime.datetime.now().isoformat(timespec='seconds')}",
        "load avg at start {:.2f} {:.2f} {:.2f} (shared machine: other work competes)".format(*os.getloadavg()),
        f"{os.cpu_count()} CPUs ({platform.machine()}, {platform.system()} {platform.release()})",
        f"Python {platform.python_version()}",
        f"redis-py {redis.__version__}",
        f"rq {rq.__version__}",
        f"nbqueue {nbqueue.__version__} ({commit}, {where})",
        f"server {server} at {ctx.url} ({'unix socket' if ctx.url.startswith('unix') else 'TCP loopback'})",
    ]


def fmt(value, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "jobs/s" and value >= 10000:
        return f"{value / 1000:,.1f}k {unit}"
    if unit == "B":
        return f"{value:,.0f} {unit}"
    return f"{value:,.{0 if value >= 100 else 2}f} {unit}"


def table(results: dict) -> list:
    """Markdown rows: row | RQ | nbqueue | ratio | target | met."""
    out = ["| row | RQ | nbqueue | ratio | target | met |", "|---|---:|---:|---:|---|---|"]
    for row in ROWS:
        for line in row.lines if row.key in results else []:
            rqv, nbq, r = summary(line, results[row.key])
            how = "nbq/RQ" if line.higher_is_better else "RQ/nbq"
            met = {None: "", True: "yes", False: "**NO**"}[line.met(nbq, r)]
            out.append(f"| {line.label} | {fmt(rqv, line.unit)} | {fmt(nbq, line.unit)} | "
                       f"{f'{r:.2f}× ({how})' if r else '—'} | {line.target} | {met} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 repeats, small sizes (CI smoke test, < 60 s)")
    p.add_argument("--repeat", type=int, help="repeats per row (default 5, --quick 2)")
    p.add_argument("--only", help="comma-separated rows: " + ",".join(r.key for r in ROWS))
    p.add_argument("--server-binary", help="redis-server/valkey-server to run (default: nbqueue's valkey)")
    p.add_argument("--unix", action="store_true", help="talk to the server over a unix socket, not TCP")
    args = p.parse_args()
    started = time.monotonic()
    sizes = QUICK if args.quick else FULL
    repeat = args.repeat or (2 if args.quick else 5)
    only = set(args.only.split(",")) if args.only else {r.key for r in ROWS}
    unknown = only - {r.key for r in ROWS}
    if unknown:
        p.error(f"unknown rows: {', '.join(sorted(unknown))}")

    binary = args.server_binary or nbqueue.server.find_binary()
    with Server(binary, unix=args.unix) as server:
        os.environ["NBQUEUE_URL"] = server.url  # nothing may fall back to the machine's Redis
        ctx = Ctx(server.url, sizes, server.dir)
        head = facts(ctx)
        print("# nbqueue vs RQ\n\n" + " · ".join(head), flush=True)
        lim = [limits(ctx) for _ in range(min(repeat, 3))]
        lim = {k: statistics.median(m[k] for m in lim) for k in lim[0]}
        limit_line = (f"limits: PING round trip {lim['ping']:,.0f}/s · pipelined PING "
                      f"{lim['pipelined']:,.0f} ops/s · fork+waitpid {lim['fork']:,.0f}/s (this process) · "
                      f"idle wake-up RPUSH→BLPOP p50 {lim['wake']:.3f} ms")
        print(limit_line, flush=True)
        results = {}
        for row in ROWS:
            if row.key in only:
                results[row.key] = run_row(row, ctx, repeat, lambda s: print(s, file=sys.stderr, flush=True))
    lines = table(results)
    elapsed = time.monotonic() - started
    load = "load avg at end {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print("\n" + "\n".join(lines) + f"\n\n{repeat} repeats; wall time {elapsed:.0f} s; {load}", flush=True)
    if not args.quick and only == {r.key for r in ROWS}:
        RESULTS.write_text(
            "# nbqueue vs RQ — benchmark results\n\n`python benchmarks/run.py` "
            f"({repeat} repeats, wall time {elapsed:.0f} s)\n\n" + "\n".join(f"- {h}" for h in [*head, load])
            + f"\n- {limit_line}\n\n" + "\n".join(lines) + "\n\n" + NOTES
            + "- Sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + " (idle: seconds)\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
