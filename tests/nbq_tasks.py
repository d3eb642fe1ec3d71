"""Tasks the tests enqueue; workers started in this folder import them."""
from __future__ import annotations

import os
import signal
import threading
import time

from nbqueue import get_current_job


def add(a, b):
    return a + b


def echo(*args, **kwargs):
    return args, kwargs


def takes_timeout(x, timeout=None, result_ttl=None, job_id=None):
    """A user function whose own parameters share names with job options."""
    return {"x": x, "timeout": timeout, "result_ttl": result_ttl, "job_id": job_id}


def fail(message="boom"):
    raise ValueError(message)


def whoami():
    job = get_current_job()
    return job.id if job else None


def pid():
    return os.getpid()


def now():
    return time.time()


def sleep_then(seconds, value=None, flag=None):
    """Sleep (the job's work), optionally creating ``flag`` first so a test knows it started."""
    if flag:
        open(flag, "w").close()
    time.sleep(seconds)
    return value


def die_hard():
    os.kill(os.getpid(), signal.SIGKILL)


def unpicklable_result():
    return threading.Lock()


def exit_process():
    os._exit(3)


class Greeter:
    def __init__(self, greeting):
        self.greeting = greeting

    def greet(self, name):
        return f"{self.greeting}, {name}"

    @classmethod
    def make(cls, greeting):
        return cls(greeting).greeting

    @staticmethod
    def shout(text):
        return text.upper()


def busy(seconds, flag=None):
    """Work in Python for ``seconds`` (an inline worker can interrupt this, unlike one long sleep)."""
    if flag:
        open(flag, "w").close()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"


def flaky(counter, failures):
    """Fail the first ``failures`` calls (counted in the file ``counter``), then succeed."""
    with open(counter, "a") as f:
        f.write("x")
    calls = os.path.getsize(counter)
    if calls <= failures:
        raise RuntimeError(f"flaky failure {calls}")
    return calls


def barrier(folder, parties, index, timeout=20):
    """Wait until ``parties`` jobs have arrived here: proves they run at the same time."""
    open(os.path.join(folder, str(index)), "w").close()
    deadline = time.monotonic() + timeout
    while len(os.listdir(folder)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(folder))} of {parties} jobs ran at once")
        time.sleep(0.01)
    return index


# --- results of every kind, for the result summaries (tests/test_results.py) -----------------------
def big_bytes(size):
    return b"x" * size


def array(rows, cols):
    import numpy

    return numpy.arange(rows * cols, dtype="float64").reshape(rows, cols)


def frame(rows, hostile=False):
    """A pandas DataFrame of ``rows`` × 3; with ``hostile``, a column name and a cell hold markup."""
    import pandas

    third = "<script>alert(1)</script>" if hostile else "c"
    return pandas.DataFrame({"a": range(rows), "b": [f"r{i}" for i in range(rows)],
                             third: ["<img src=x onerror=alert(2)>" if hostile else 1.5] * rows})


class FakeFrame:
    """A DataFrame-like without pandas: ``shape``, ``head``, ``columns``, ``index``, ``itertuples``."""

    def __init__(self, rows, columns):
        self.rows, self.columns = rows, [f"col{j}" for j in range(columns)]
        self.shape = (len(rows), len(self.columns))
        self.index = list(range(len(rows)))

    def head(self, n):
        return FakeFrame(self.rows[:n], len(self.columns))

    def itertuples(self, index=False, name=None):
        return iter(tuple(row) for row in self.rows)

    def __repr__(self):
        raise RuntimeError("a fake frame has no repr")


def fake_frame(rows, columns):
    return FakeFrame([[i * columns + j for j in range(columns)] for i in range(rows)], columns)


class BadRepr:
    """A value whose repr raises."""

    def __repr__(self):
        raise ValueError("no repr for <script>alert(3)</script>")


def bad_repr():
    return BadRepr()


class HugeRepr:
    def __init__(self, size):
        self.size = size

    def __repr__(self):
        return "<b>" + "y" * self.size


def huge_repr(size):
    return HugeRepr(size)


def small_list(n):
    return list(range(n))


def until_file(path, value=None, timeout=30):
    """Wait until ``path`` exists (the test opens the gate), then return ``value``."""
    from chaos_tasks import gated

    return gated(path, value, timeout)


def chatty(n):
    """Prints and reports progress: what a testing-mode run records like a worker's."""
    import nbqueue

    for i in range(n):
        print(f"line {i}")
        nbqueue.progress(i + 1, n)
    return n


def enqueue_inner(queue_name, a, b):
    """A job that enqueues another job (in testing mode, run at once too) and returns its result."""
    from nbqueue import Queue

    return Queue(queue_name).enqueue(add, a, b).result(timeout=10)


def multiply(a, b):
    """The seed's example task."""
    return a * b


def bump_meta(key):
    """Reads its meta, adds to it and saves it."""
    job = get_current_job()
    job.meta[key] = job.meta.get(key, 0) + 1
    job.meta["seen"] = sorted(job.meta)
    job.save_meta()
    return job.meta[key]


def on_ok(job):
    """A success callback: gets the ended job's handle."""
    return f"ok {job.id} {job.result(timeout=0)}"


def on_bad(job):
    """A failure callback."""
    return f"bad {job.id} {job.refresh().exc_info} after {job.failures} failure(s)"
