"""Tasks for the dependency tests (tests/test_flow.py): steps of a pipeline that record their runs."""
from __future__ import annotations

import os
import time


def load(n):
    return list(range(n))


def clean(rows):
    return [r * 2 for r in rows]


def fit(rows, alpha=1.0):
    return sum(rows) * alpha


def square(x):
    return x * x


def total(values):
    return sum(values)


def echo(*args, **kwargs):
    return args, kwargs


def boom(message="boom"):
    raise ValueError(message)


def describe(value):
    """What it was given: an exception's type and text, or the value."""
    if isinstance(value, BaseException):
        return type(value).__name__, str(value).splitlines()[0]
    return value


def marked(folder, name, value=None, pause=0.0):
    """Record a run (one file per run) and return ``value``; pause first."""
    time.sleep(pause)
    path = os.path.join(folder, f"{name}.{os.getpid()}.{time.monotonic_ns()}")
    with open(path, "w") as f:
        f.write(name)
    return value


def step(folder, name, value, pause=0.0):
    """A fan-out step: ``value`` squared, recorded."""
    return marked(folder, name, value * value, pause)


def reduce(folder, values):
    marked(folder, "reduce")
    return sum(values)


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def scale(x, factor=1):
    return x * factor


def slow_boom(pause):
    time.sleep(pause)
    raise ValueError("late boom")
