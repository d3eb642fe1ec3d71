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
