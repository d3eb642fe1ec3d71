"""The tiny harness: a private Redis server, a context for the rows, repeat/median/alternation."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import redis

ROOT = Path(__file__).resolve().parent.parent
READY = "bench:ready"
QUEUE = "bench"  # every system's queue (each keeps its own key prefix)
GO = "bench:go"


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 6379:  # never the machine's own Redis
            return port


class Server:
    """A private, throw-away Redis/Valkey server: no persistence, TCP loopback or a unix socket."""

    def __init__(self, binary: str, unix: bool = False, port: Optional[int] = None):
        self.binary, self.unix = binary, unix
        self.dir = tempfile.mkdtemp(prefix="nbq-bench-")
        self.proc: Optional[subprocess.Popen] = None
        if unix:
            self.url = f"unix://{self.dir}/redis.sock"
            where = ["--port", "0", "--unixsocket", f"{self.dir}/redis.sock", "--unixsocketperm", "700"]
        else:
            port = port or free_port()
            self.url = f"redis://127.0.0.1:{port}/0"
            where = ["--port", str(port), "--bind", "127.0.0.1"]
        self.cmd = [binary, *where, "--save", "", "--appendonly", "no", "--dir", self.dir,
                    "--daemonize", "no", "--logfile", f"{self.dir}/server.log"]

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return self
            except (redis.ConnectionError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = Path(self.dir, "server.log")
                    text = log.read_text() if log.exists() else ""
                    raise SystemExit(f"{self.binary} did not start: {text}") from None
                time.sleep(0.02)

    def __exit__(self, exc_type, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if exc_type is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"kept {self.dir} (server and worker logs)", file=sys.stderr)


@dataclass
class Ctx:
    """What a row function gets: the server's URL, a client, the sizes of this run."""

    url: str
    sizes: dict
    logdir: str  # worker subprocesses' stderr goes here
    r: redis.Redis = field(init=False)

    def __post_init__(self) -> None:
        self.r = self.client()

    def client(self) -> redis.Redis:
        return connect(self.url)

    def flush(self) -> None:
        """FLUSHALL, and wait until the server has freed it all: Valkey 8 frees in a background
        thread even for FLUSHALL SYNC, which would skew the next measurement (CPU and memory)."""
        self.r.flushall(asynchronous=False)
        deadline = time.monotonic() + 30
        while self.r.info("memory").get("lazyfree_pending_objects", 0) and time.monotonic() < deadline:
            time.sleep(0.005)

    def env(self) -> dict:
        env = dict(os.environ, NBQUEUE_URL=self.url)  # nothing may fall back to localhost:6379
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
        return env

    def spawn(self, system: str, mode: str = "fast", concurrency: int = 1, results: bool = False,
              go: bool = False) -> subprocess.Popen:
        # by path, not -m: -m would put the cwd (the repo) before PYTHONPATH on sys.path
        cmd = [sys.executable, str(ROOT / "benchmarks" / "workerproc.py"), system, self.url, "--mode", mode,
               "--concurrency", str(concurrency)] + (["--results"] if results else []) + (["--go", GO] if go else [])
        with tempfile.NamedTemporaryFile(dir=self.logdir, prefix=f"{system}-", suffix=".log", delete=False) as log:
            return subprocess.Popen(cmd, cwd=ROOT, env=self.env(), stdin=subprocess.DEVNULL, stderr=log)

    def wait_ready(self, procs: list) -> None:
        """Until each of ``procs`` said it is ready; fails at once if one exits first."""
        import nbqueue

        deadline = time.monotonic() + 60
        for _ in procs:
            while True:
                reply = self.r.blpop([READY], timeout=1)
                if reply is not None:
                    break
                dead = [p.returncode for p in procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"a worker subprocess did not start ({'exit ' + str(dead) if dead else '60 s'})"
                                       f"; see {self.logdir}/*.log")
            if reply[1].decode() != nbqueue.__file__:
                raise RuntimeError(f"a worker subprocess runs {reply[1].decode()}, not {nbqueue.__file__}")

    @contextlib.contextmanager
    def workers(self, system: str, count: int = 1, **kw) -> Iterator[list]:
        """``count`` worker processes of ``system`` (``spawn``'s options), started and ready; stopped after."""
        procs = [self.spawn(system, **kw) for _ in range(count)]
        try:
            self.wait_ready(procs)
            yield procs
        finally:
            for p in procs:
                stop(p)


def connect(url: str) -> redis.Redis:
    """The one client kind both systems get (hiredis parser). No socket timeout: redis-py 8's
    default of 5 s cuts off blocking reads (RQ raises it on its own connection, nbqueue does not)."""
    return redis.Redis.from_url(url, socket_timeout=None)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # both workers do a warm shutdown on SIGTERM
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(values: list, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))]


# --- rows --------------------------------------------------------------------------------------

@dataclass
class Summary:
    """One line of a row over the repeats: each system's median, and how many times better nbqueue
    is than each peer, paired per repeat (both measured back to back) then the median."""

    medians: dict  # system -> median of the line's field
    paired: dict  # peer -> median of the per-repeat ratios (nbqueue/peer, or peer/nbqueue if lower is better)
    best: Optional[str]  # the best peer by median
    fields: dict  # system -> {field: median} of every field it measured (e.g. the fork row's bare fork)

    @property
    def nbq(self) -> Optional[float]:
        return self.medians.get("nbqueue")

    def vs(self, peer: Optional[str]) -> Optional[float]:
        return self.paired.get(peer) if peer else None


@dataclass
class Line:
    """One printed line of a row: a field of the measurements, how to judge it, the limit beside it."""

    label: str
    field: str
    unit: str
    higher_is_better: bool = True
    target: str = "—"
    judge: Optional[Callable[[Summary, dict], Optional[bool]]] = None  # (summary, limits) -> met
    limit: Optional[Callable[[Summary, dict], str]] = None  # (summary, limits) -> the limit's text


@dataclass
class Row:
    key: str
    lines: list
    measure: Optional[Callable] = None  # (adapter, ctx) -> {field: value}, on a flushed server
    applies: Callable = lambda system: True  # else '—' for that system, with ``na`` as the reason
    na: str = ""
    both: Optional[Callable] = None  # (adapters, ctx) -> {system: {field: value}}, measured together
    max_repeat: Optional[int] = None


def run_row(row: Row, ctx: Ctx, adapters: dict, repeat: int, say: Callable) -> tuple:
    """Measure a row ``repeat`` times; every repeat runs each system once, the order rotating by one
    from repeat to repeat. Returns ({system: {repeat: values}}, {system: why it has no figure})."""
    samples: dict = {name: {} for name in adapters}
    errors: dict = {name: row.na for name, a in adapters.items() if not row.applies(a)}
    names = [name for name in adapters if name not in errors]
    for i in range(min(repeat, row.max_repeat or repeat)):
        if row.both is not None:
            ctx.flush()
            try:
                for name, values in row.both({n: adapters[n] for n in names}, ctx).items():
                    samples[name][i] = values
            except Exception as exc:
                errors.update({n: f"{type(exc).__name__}: {exc}" for n in names})
            for name in names:
                if i not in samples[name]:
                    errors.setdefault(name, f"its worker did not run (logs: {ctx.logdir})")
        else:
            for name in names[i % len(names):] + names[:i % len(names)] if names else []:
                if name in errors:
                    continue
                ctx.flush()
                try:
                    samples[name][i] = row.measure(adapters[name], ctx)
                except Exception as exc:  # one system's failure is its '—', not the run's end
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    say(f"  {row.key}: {name} failed: {errors[name]} (logs: {ctx.logdir})")
        say(f"  {row.key} {i + 1}: " + "  ".join(
            f"{n} " + " ".join(f"{k}={v:.4g}" for k, v in samples[n][i].items()) for n in names if i in samples[n]))
    return {n: s for n, s in samples.items() if s and n not in errors}, errors


def ratio(line: Line, nbq: Optional[float], peer: Optional[float]) -> Optional[float]:
    """How many times better nbqueue is: nbqueue/peer, or peer/nbqueue where lower is better."""
    if nbq is None or peer is None or nbq <= 0 or peer <= 0:
        return None
    return nbq / peer if line.higher_is_better else peer / nbq


def summary(line: Line, samples: dict) -> Summary:
    values = {s: {i: m[line.field] for i, m in ms.items() if m.get(line.field) is not None}
              for s, ms in samples.items()}
    medians = {s: statistics.median(v.values()) for s, v in values.items() if v}
    fields = {s: {k: statistics.median(m[k] for m in ms.values() if k in m) for k in next(iter(ms.values()))}
              for s, ms in samples.items() if ms}
    paired = {}
    mine = values.get("nbqueue", {})
    for peer, theirs in values.items():
        if peer != "nbqueue":
            pairs = [ratio(line, mine[i], theirs[i]) for i in mine if i in theirs]
            pairs = [p for p in pairs if p is not None]
            if pairs:
                paired[peer] = statistics.median(pairs)
    peers = {s: v for s, v in medians.items() if s != "nbqueue" and v >= 0}
    best = (max if line.higher_is_better else min)(peers, key=peers.get) if peers else None
    return Summary(medians, paired, best, fields)
