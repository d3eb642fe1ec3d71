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
SYSTEMS = ("nbqueue", "rq")  # measured in this order, alternating, every repeat
READY = "bench:ready"


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 6379:  # never the machine's own Redis
            return port


class Server:
    """A private, throw-away Redis/Valkey server: no persistence, TCP loopback or a unix socket."""

    def __init__(self, binary: str, unix: bool = False):
        self.binary, self.unix = binary, unix
        self.dir = tempfile.mkdtemp(prefix="nbq-bench-")
        self.proc: Optional[subprocess.Popen] = None
        if unix:
            self.url = f"unix://{self.dir}/redis.sock"
            where = ["--port", "0", "--unixsocket", f"{self.dir}/redis.sock", "--unixsocketperm", "700"]
        else:
            port = free_port()
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
                    raise SystemExit(f"{self.binary} did not start: {log.read_text() if log.exists() else ''}")
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

    def spawn(self, system: str, queue: str, go: Optional[str] = None, done: Optional[str] = None):
        # by path, not -m: -m would put the cwd (the repo) before PYTHONPATH on sys.path
        cmd = [sys.executable, str(ROOT / "benchmarks" / "workerproc.py"), system, self.url, queue]
        if go:
            cmd += ["--go", go, "--done", done]
        with tempfile.NamedTemporaryFile(dir=self.logdir, prefix=f"{system}-", suffix=".log", delete=False) as log:
            return subprocess.Popen(cmd, cwd=ROOT, env=self.env(), stdin=subprocess.DEVNULL, stderr=log)

    def wait_ready(self, count: int) -> None:
        import nbqueue

        for _ in range(count):
            reply = self.r.blpop([READY], timeout=60)
            if reply is None:
                raise RuntimeError(f"a worker subprocess did not start within 60 s; see {self.logdir}/*.log")
            if reply[1].decode() != nbqueue.__file__:
                raise RuntimeError(f"a worker subprocess runs {reply[1].decode()}, not {nbqueue.__file__}")

    @contextlib.contextmanager
    def workers(self, system: str, queue: str, count: int = 1, **kw) -> Iterator[list]:
        procs = [self.spawn(system, queue, **kw) for _ in range(count)]
        try:
            self.wait_ready(count)
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
class Line:
    """One printed line of a row: a field of the measurements and how to judge it."""

    label: str
    field: str
    unit: str
    higher_is_better: bool = True
    at_least: Optional[float] = None  # target: nbqueue at least this many times better than RQ
    at_most: Optional[float] = None  # target: nbqueue's value at most this (in ``unit``)

    @property
    def target(self) -> str:
        if self.at_least == 1 and not self.higher_is_better:
            return "≤ RQ"
        if self.at_least is not None:
            return f"≥ {self.at_least:g}× RQ"
        return f"≤ {self.at_most:g} {self.unit}" if self.at_most is not None else "—"

    def met(self, nbq: Optional[float], paired_ratio: Optional[float]) -> Optional[bool]:
        if self.at_least is not None:
            return paired_ratio is not None and paired_ratio >= self.at_least
        if self.at_most is not None and nbq is not None:
            return nbq <= self.at_most
        return None


@dataclass
class Row:
    key: str
    lines: list
    nbqueue: Optional[Callable] = None  # ctx -> {field: value}
    rq: Optional[Callable] = None
    both: Optional[Callable] = None  # ctx -> {"nbqueue": {...}, "rq": {...}}, measured together
    max_repeat: Optional[int] = None


def run_row(row: Row, ctx: Ctx, repeat: int, say: Callable) -> dict:
    """Measure a row ``repeat`` times, alternating the systems; return the samples per system."""
    samples: dict = {s: [] for s in SYSTEMS}
    repeat = min(repeat, row.max_repeat or repeat)
    for i in range(repeat):
        if row.both is not None:
            ctx.flush()
            for system, values in row.both(ctx).items():
                samples[system].append(values)
        for system in SYSTEMS:
            func = getattr(row, system)
            if func is not None:
                ctx.flush()
                samples[system].append(func(ctx))
        say(f"  {row.key} {i + 1}/{repeat}: " + "  ".join(
            f"{s} " + " ".join(f"{k}={v:.4g}" for k, v in samples[s][-1].items()) for s in SYSTEMS if samples[s]))
    return {s: ms for s, ms in samples.items() if ms}


def ratio(line: Line, nbq: Optional[float], rq: Optional[float]) -> Optional[float]:
    """How many times better nbqueue is: nbqueue/RQ, or RQ/nbqueue where lower is better."""
    if nbq is None or rq is None or nbq <= 0 or rq <= 0:
        return None
    return nbq / rq if line.higher_is_better else rq / nbq


def summary(line: Line, samples: dict) -> tuple:
    """(RQ median, nbqueue median, paired ratio): the median of the per-repeat ratios, each repeat
    having measured both systems back to back, so slow drifts of a shared machine cancel out."""
    values = {s: [m[line.field] for m in ms] for s, ms in samples.items()}
    medians = {s: statistics.median(v) for s, v in values.items()}
    pairs = [ratio(line, n, r) for n, r in zip(values.get("nbqueue", []), values.get("rq", []))]
    pairs = [p for p in pairs if p is not None]
    return medians.get("rq"), medians.get("nbqueue"), statistics.median(pairs) if pairs else None
