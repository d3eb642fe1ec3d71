"""The hostile-job and bad-input corpus (issue 8): one real worker per mode serves every case.

For each case: a clear error at enqueue, or a finished job / a failed job with a clear message;
then no process the job made is left (its own, its subprocesses, its process group and
session, checked in /proc), the worker has no child left, and it serves the next job.
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import pytest
import redis

import hostile_tasks as ht
from conftest import TESTS_DIR, children as conftest_children, pid_alive, proc_stat, wait_for
from nbqueue import EnqueueError, Job, JobCanceled, JobFailed, Queue, keys

FORK, INLINE, BOTH = ("fork",), ("inline",), ("fork", "inline")
ENQUEUE = ("enqueue",)  # refused at enqueue: no worker involved


class Case(NamedTuple):
    name: str
    modes: tuple
    call: Callable[[str, str], tuple]  # (record, mode) -> (func, args, job options)
    expect: str  # "ok:<repr of the result>", "failed:<regex>", "canceled", "refused:<regex>"
    cancel: bool = False  # cancel the job once it has recorded ``cancel`` processes


def _case(name, modes, call, expect, cancel=False) -> Case:
    return Case(name, modes, call, expect, cancel)


NESTED_OK = functools.reduce(lambda inner, _: [inner], range(200), [])
NESTED_TOO_DEEP = functools.reduce(lambda inner, _: [inner], range(100_000), [])

CASES = [
    # --- the job's own process ---
    _case("os._exit", FORK, lambda r, m: (ht.os_exit, (r,), {}), "failed:exited with code 7 before it finished"),
    _case("segfault", FORK, lambda r, m: (ht.segfault, (r,), {}), "failed:killed by SIGSEGV"),
    _case("SIGTERM to itself", FORK, lambda r, m: (ht.kill_self, (r, 15), {}), "failed:killed by SIGTERM"),
    _case("endless recursion", BOTH, lambda r, m: (ht.recurse, (r,), {}), "failed:RecursionError: maximum recursion"),
    _case("SystemExit", BOTH, lambda r, m: (ht.system_exit, (r,), {}), "failed:SystemExit: 3"),
    _case("KeyboardInterrupt", BOTH, lambda r, m: (ht.keyboard_interrupt, (r,), {}), "failed:KeyboardInterrupt"),
    _case("raising SIGALRM handler still firing", FORK, lambda r, m: (ht.alarm_storm, (r,), {}),
          "ok-or-failed:'stormed'|alarm from the job's own handler|JobInterrupted: a signal handler the job"),
    _case("signal handler from a thread", INLINE, lambda r, m: (ht.alarm_storm, (r,), {}),
          "failed:signal only works in main thread"),
    # --- streams and descriptors ---
    _case("close stdout", BOTH, lambda r, m: (ht.close_streams, (r, False), {}), "ok:'closed'"),
    _case("close stdout and stderr", BOTH, lambda r, m: (ht.close_streams, (r,), {}), "ok:'closed'"),
    _case("replace stdout and stderr", BOTH, lambda r, m: (ht.replace_streams, (r,), {}), "ok:'replaced'"),
    _case("close all descriptors", FORK, lambda r, m: (ht.close_all_fds, (r,), {}),
          "failed:could not send its outcome to the worker: the job closed or broke the pipe"),
    _case("close all descriptors, run past the timeout", FORK,
          lambda r, m: (ht.close_all_fds, (r, 60), {"timeout": 1}), "failed:longer than its timeout of 1 s"),
    _case("print 200 MB", BOTH, lambda r, m: (ht.flood, (r, 200), {}), "ok:'flooded'"),
    # --- results ---
    _case("unpicklable result", BOTH, lambda r, m: (ht.unpicklable_result, (r,), {}),
          "failed:ResultError: the job returned lock, which can't be pickled"),
    _case("result whose __reduce__ raises", BOTH, lambda r, m: (ht.raising_reduce_result, (r,), {}),
          "failed:ResultError: .*RuntimeError: refuses to be pickled"),
    _case("200 MB result", BOTH, lambda r, m: (ht.huge_result, (r, 200), {}),
          "failed:ResultTooLarge: the job returned bytes of 200.0 MiB pickled, over nbqueue's limit of 64 MiB"),
    _case("generator function", ENQUEUE, lambda r, m: (ht.generator_job, (r,), {}),
          "refused:it is a generator function"),
    # --- time and processes ---
    _case("ignore SIGTERM, sleep past the timeout", FORK,
          lambda r, m: (ht.ignore_sigterm_and_sleep, (r, 60), {"timeout": 1}), "failed:longer than its timeout of 1 s"),
    _case("fork and return in the grandchild", BOTH,
          lambda r, m: (ht.fork_and_return, (r, m == "inline"), {}), "ok:'parent'"),
    _case("daemon grandchildren", FORK, lambda r, m: (ht.leave_daemon, (r,), {}), "ok:'left them'"),
    _case("daemon grandchildren in new sessions", FORK, lambda r, m: (ht.leave_daemon, (r, True), {}),
          "ok:'left them'"),
    _case("grandchildren, past the timeout", FORK, lambda r, m: (ht.leave_daemon, (r, False, 60), {"timeout": 1}),
          "failed:longer than its timeout of 1 s"),
    _case("grandchildren in new sessions, past the timeout", FORK,
          lambda r, m: (ht.leave_daemon, (r, True, 60), {"timeout": 1}), "failed:longer than its timeout of 1 s"),
    _case("grandchildren in new sessions, canceled", FORK, lambda r, m: (ht.leave_daemon, (r, True, 60), {}),
          "canceled", cancel=True),
    # --- what is enqueued ---
    _case("100 MB argument", BOTH, lambda r, m: (ht.length, (b"x" * (100 * 2**20),), {}), f"ok:{100 * 2**20}"),
    _case("argument nested 200 deep", BOTH, lambda r, m: (ht.depth, (NESTED_OK,), {}), "ok:200"),
    _case("argument whose unpickling raises", BOTH, lambda r, m: (ht.length, (ht.UnpicklesBadly(),), {}),
          "failed:The job's arguments can't be loaded on this worker: RuntimeError: refuses to be unpickled"),
    _case("builtin function", BOTH, lambda r, m: (len, ([1, 2, 3],), {}), "ok:3"),
    _case("argument nested 100,000 deep", ENQUEUE, lambda r, m: (ht.depth, (NESTED_TOO_DEEP,), {}),
          "refused:argument 1 \\(list\\) can't be pickled"),
    _case("argument whose pickling raises", ENQUEUE, lambda r, m: (ht.length, (ht.PicklesBadly(),), {}),
          "refused:argument 1 \\(PicklesBadly\\) can't be pickled.*refuses to be pickled"),
    _case("generator argument", ENQUEUE, lambda r, m: (ht.length, ((i for i in range(3)),), {}),
          "refused:argument 1 \\(generator\\) can't be pickled"),
    _case("partial", ENQUEUE, lambda r, m: (functools.partial(ht.length, [1]), (), {}),
          "refused:partials and callable instances don't"),
    _case("builtin method", ENQUEUE, lambda r, m: ("abc".upper, (), {}), "refused:has no module path"),
]

PARAMS = [pytest.param(case, mode, id=f"{mode}-{case.name}") for case in CASES for mode in case.modes]


# --- one worker per mode for the whole module -------------------------------------------------------
class Served:
    """A real ``nbqueue worker`` for one mode; started again (after the case failed) if a case kills it."""

    def __init__(self, mode: str, url: str, folder: Path):
        self.mode, self.url, self.folder = mode, url, folder
        self.queue = f"hostile-{mode}"
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    def ensure(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.starts += 1
            log = self.folder / f"worker-{self.mode}-{self.starts}.log"
            args = [sys.executable, "-m", "nbqueue.cli", "worker", self.queue, "--url", self.url]
            # the job's stdout (200 MB floods) goes nowhere; the worker's log (stderr) to a file
            self.proc = subprocess.Popen(args + (["--inline"] if self.mode == "inline" else []), cwd=str(TESTS_DIR),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
            self.log = log
            wait_for(lambda: " serving " in log.read_text() or self.proc.poll() is not None, 20, message="worker start")
            assert self.proc.poll() is None, log.read_text()
        return self.proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def served(redis_url, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    workers = {mode: Served(mode, redis_url, folder) for mode in ("fork", "inline")}
    yield workers
    for worker in workers.values():
        worker.stop()


@pytest.fixture(scope="module")
def client(redis_url):
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


# --- what the checks read in /proc ------------------------------------------------------------------

def strays(record: Path, worker: int) -> list:
    """Processes the job made that still run: its recorded pids (but the inline worker's own), and
    any live member of a process group or session it made (not the test's own)."""
    if not record.exists():
        return []
    notes = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    left = [f"pid {n['pid']}" for n in notes if n["pid"] != worker and pid_alive(n["pid"])]
    ours = {os.getpgrp(), os.getsid(0)}
    groups = {n["pgid"] for n in notes} - ours
    sessions = {n["sid"] for n in notes} - ours
    if groups or sessions:
        for name in os.listdir("/proc"):
            stat = proc_stat(int(name)) if name.isdigit() else None
            if stat and stat[0] != "Z" and (int(stat[2]) in groups or int(stat[3]) in sessions):
                left.append(f"pid {name} (group {stat[2]}, session {stat[3]})")
    return left


def children(pid: int) -> list:
    """The worker's child processes, its fork server and keeper left out but their children in."""
    kids = conftest_children(pid)
    found = []
    for kid in kids:
        if _comm(int(kid)) in FORK_SERVER:
            found += children(int(kid))
        else:
            found.append(kid)
    return found


FORK_SERVER = ("nbqueue-keeper", "nbqueue-forks", "nbqueue-spare")  # the fork server's processes (and the
# next job's, forked beforehand), as they call themselves


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# --- the corpus -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, mode", PARAMS)
def test_hostile(case: Case, mode: str, served, client, tmp_path):
    record = tmp_path / "record"
    func, args, options = case.call(str(record), mode)
    kind, _, detail = case.expect.partition(":")
    if mode == "enqueue":
        with pytest.raises(EnqueueError) as info:
            Queue("hostile-enqueue", client).enqueue_call(func, args, **options)
        assert re.search(detail, str(info.value)), str(info.value)
        assert "Nothing was enqueued" in str(info.value) or "Wrap the call" in str(info.value)
        assert client.llen(keys.queue("hostile-enqueue")) == 0
        return

    worker = served[mode]
    proc = worker.ensure()
    q = Queue(worker.queue, client)
    job = q.enqueue_call(func, args, **options)
    try:
        if case.cancel:
            wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= 4, 20, message="job start")
            job.cancel()
        _check_outcome(job, kind, detail)
        wait_for(lambda: not strays(record, proc.pid), 15, message="no process of the job left")
        assert not strays(record, proc.pid)
        wait_for(lambda: not children(proc.pid), 15, message=f"no child of the worker left: {children(proc.pid)}")
        if case.name == "print 200 MB":
            lines = job.logs()
            assert 0 < len(lines) <= 1001 and all(len(line) < 2100 for line in lines)  # capture is bounded
        # the worker serves the next job, with working streams, and is the same process
        assert q.enqueue(ht.chatty_add, 2, 3).result(timeout=20) == 5
        assert proc.poll() is None, f"the worker died:\n{worker.log.read_text()[-3000:]}"
        assert "unexpected error" not in worker.log.read_text()
    finally:
        client.delete(keys.job(job.id))  # big payloads and results don't stay in the session's Redis


def _check_outcome(job: Job, kind: str, detail: str) -> None:
    if kind == "ok":
        assert repr(job.result(timeout=60)) == detail
    elif kind == "failed":
        with pytest.raises(JobFailed) as info:
            job.result(timeout=60)
        assert re.search(detail, info.value.exc_info), info.value.exc_info
    elif kind == "ok-or-failed":
        value, *messages = detail.split("|")
        try:
            assert repr(job.result(timeout=60)) == value
        except JobFailed as exc:
            assert any(message in exc.exc_info for message in messages), exc.exc_info
    else:
        assert kind == "canceled"
        with pytest.raises(JobCanceled):
            job.result(timeout=20)
