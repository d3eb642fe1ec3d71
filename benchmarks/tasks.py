"""Trivial, importable job functions shared by every system's benchmark (plain functions: the
Huey and Dramatiq adapters wrap these same functions in their task/actor decorators).

``started``, ``tick`` and ``mark`` report to the benchmark over Redis, so the figures are read the same
way for every system (not through each system's own result API): the worker's process has
``NBQUEUE_URL`` set to the private server.
"""
import os
import threading
import time

STAMPS = "bench:stamps"  # started(): the time each job started
DONE = "bench:done"  # mark()/tick(): the time the last job ended
TICKS = "bench:ticks"

_lock = threading.Lock()
_client = None


def _conn():
    global _client
    with _lock:
        if _client is None:
            import redis

            _client = redis.Redis.from_url(os.environ["NBQUEUE_URL"], socket_timeout=None)
        return _client


def noop(*args, **kwargs):
    return None


def add(a, b):
    return a + b


def stamp():
    """The wall-clock time at which the job started (its result; benchmarks/fork_drain.py reads it)."""
    return time.time()


def started():
    """Push the wall-clock time at which the job started (for enqueue -> start latency)."""
    _conn().rpush(STAMPS, repr(time.time()))


def mark():
    """The last job of a drain: push the time it ran (the queue is FIFO, so every job before it ran)."""
    _conn().rpush(DONE, repr(time.time()))


def tick(n):
    """A 10 ms job; the n-th to end pushes the time (for N jobs at concurrency C)."""
    time.sleep(0.01)
    if _conn().incr(TICKS) == n:
        _conn().rpush(DONE, repr(time.time()))
