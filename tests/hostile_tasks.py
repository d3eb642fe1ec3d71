"""Jobs that misbehave on purpose (tests/test_hostile.py); each records the processes it makes.

``record`` is a file path: each process a task creates (and the job's own process) appends one
JSON line ``{"pid", "pgid", "sid"}``, so the test can check that none of them is left.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time


def note(record, pid=None) -> int:
    """Append ``pid`` (default: this process) with its process group and session to ``record``."""
    pid = pid or os.getpid()
    with open(record, "a") as f:
        f.write(json.dumps({"pid": pid, "pgid": os.getpgid(pid), "sid": os.getsid(pid)}) + "\n")
    return pid


def chatty_add(a, b):
    """A normal job that prints (so a worker whose streams a job broke shows it)."""
    print(f"adding {a} and {b}")
    print("to stderr", file=sys.stderr)
    return a + b


def os_exit(record):
    note(record)
    os._exit(7)


def segfault(record):
    note(record)
    ctypes.string_at(0)


def recurse(record, depth=0):
    if depth == 0:
        note(record)
    return recurse(record, depth + 1) + 1


def system_exit(record):
    note(record)
    sys.exit(3)


def keyboard_interrupt(record):
    note(record)
    raise KeyboardInterrupt


def close_streams(record, stderr=True):
    """Row 1 of issue 8 (stdout only): the child's flush raised, and it became a second worker."""
    note(record)
    sys.stdout.close()
    if stderr:
        sys.stderr.close()
    return "closed"


class _Broken:
    def write(self, text):
        raise OSError("this stream is broken")

    def flush(self):
        raise OSError("this stream is broken")


def replace_streams(record):
    note(record)
    sys.stdout = _Broken()
    sys.stderr = _Broken()
    return "replaced"


def close_all_fds(record, then_sleep=0):
    """Close every descriptor (nbqueue's pipe included), then optionally keep running."""
    note(record)
    os.closerange(0, 65536)
    time.sleep(then_sleep)
    return "closed all"


def flood(record, megabytes):
    """Print ``megabytes`` MB, in 1 MB lines."""
    note(record)
    line = "x" * (2**20 - 1)
    for _ in range(megabytes):
        print(line)
    return "flooded"


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("refuses to be pickled")


def unpicklable_result(record):
    note(record)
    import threading

    return threading.Lock()


def raising_reduce_result(record):
    note(record)
    return _Unpicklable()


def huge_result(record, megabytes):
    note(record)
    return b"x" * (megabytes * 2**20)


def ignore_sigterm_and_sleep(record, seconds):
    note(record)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)
    return "woke"


def alarm_storm(record, interval=0.001):
    """A raising SIGALRM handler firing every ``interval`` s, still going when the job returns."""
    note(record)

    def handler(signum, frame):
        raise RuntimeError("alarm from the job's own handler")

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, interval, interval)
    deadline = time.monotonic() + 0.1
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except RuntimeError:
            pass
    return "stormed"


def fork_and_return(record, wait=False):
    """Fork; both processes return from the job (the grandchild into nbqueue's code)."""
    note(record)
    pid = os.fork()
    if pid == 0:
        note(record)
        return "grandchild"
    if wait:
        os.waitpid(pid, 0)
    return "parent"


def leave_daemon(record, setsid=False, then_sleep=0):
    """Start a long ``sleep`` (in a new session if ``setsid``) and a forked daemon, and leave them."""
    note(record)
    proc = subprocess.Popen(["sleep", "300"], start_new_session=setsid)
    note(record, proc.pid)
    pid = os.fork()
    if pid == 0:  # a forked daemon that never returns
        try:
            if setsid:
                os.setsid()
            note(record)
            time.sleep(300)
        finally:
            os._exit(0)
    note(record, pid)
    time.sleep(then_sleep)
    return "left them"


def kill_self(record, signum):
    note(record)
    os.kill(os.getpid(), signum)
    time.sleep(5)


def generator_job(record):
    note(record)
    yield 1


def length(value):
    return len(value)


def depth(value):
    n = 0
    while isinstance(value, list) and value:
        value, n = value[0], n + 1
    return n


def _explode():
    raise RuntimeError("refuses to be unpickled")


class UnpicklesBadly:
    """Pickles fine; unpickling it (on the worker) raises."""

    def __reduce__(self):
        return (_explode, ())


class PicklesBadly:
    def __reduce__(self):
        raise RuntimeError("refuses to be pickled")
