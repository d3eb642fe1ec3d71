"""One adapter per system, each the same small interface (see ``nbqueue_.System``):

- ``name``, ``version``, ``modes``: which worker modes it has ("fast": its fastest single-job mode;
  "fork": a fork per job; "threads": ``concurrency`` jobs at once in threads);
- ``setup(url, results=False)``: its client objects on the private server (in the benchmark and in
  each worker process alike); ``results=True`` only where the finished-job row needs stored results;
- ``enqueuer(task)``: a callable that enqueues one job of ``benchmarks.tasks.<task>(*args)``;
- ``enqueue_many(task, args, n)``: its bulk enqueue (or the closest it has, said in ``bulk_note``);
- ``queued()``: jobs still waiting; ``serve(mode, concurrency)``: run its worker here until SIGTERM.

``load()`` imports them; a system whose library is missing or fails to import is reported with the
reason, never a crash.
"""
from __future__ import annotations

import importlib

SYSTEMS = ("nbqueue", "rq", "huey", "dramatiq", "celery")  # columns, in this order; nbqueue first


def load(name: str):
    """The adapter ``System()`` of ``name`` (ImportError etc. propagate: the caller reports them)."""
    return importlib.import_module(f"benchmarks.peers.{name}_").System()


def load_all(names=SYSTEMS) -> tuple:
    """({name: adapter}, {name: why it is missing})."""
    adapters, missing = {}, {}
    for name in names:
        try:
            adapters[name] = load(name)
        except Exception as exc:  # a peer that fails to import is a '—' column, not a failed run
            missing[name] = f"{type(exc).__name__}: {exc}"
    return adapters, missing
