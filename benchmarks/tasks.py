"""Trivial, importable job functions shared by the nbqueue and RQ benchmarks."""
import time


def noop(*args, **kwargs):
    return None


def add(a, b):
    return a + b


def stamp():
    """The wall-clock time at which the job started (for enqueue -> start latency)."""
    return time.time()
