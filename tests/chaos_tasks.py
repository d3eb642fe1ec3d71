"""Tasks of the chaos tests (workers started in tests/ import them)."""
from __future__ import annotations

import os
import time


def long_run(flag_dir, seconds, rerun_seconds=None, report=False):
    """Create ``<flag_dir>/<pid>.started`` (the run began), work, create ``<pid>.done``.

    The first run works ``seconds``; a re-run (a flag of an earlier run exists) works
    ``rerun_seconds`` if given, so a test need not wait for a second long run. With ``report``,
    the run prints a line and reports progress (``nbqueue.progress``) naming itself at the end.
    Returns what identifies the run: its pid, its parent's pid, when it started.
    """
    earlier = any(name.endswith(".started") for name in os.listdir(flag_dir))
    began = time.time()
    _touch(os.path.join(flag_dir, f"{os.getpid()}.started"), f"{began:.6f}")
    time.sleep(rerun_seconds if earlier and rerun_seconds is not None else seconds)
    if report:
        from nbqueue import progress

        print(f"output of run {os.getpid()}", flush=True)
        progress(1, 1, f"run {os.getpid()}")
    _touch(os.path.join(flag_dir, f"{os.getpid()}.done"), f"{time.time():.6f}")
    return {"pid": os.getpid(), "ppid": os.getppid(), "started": began}


def counted(index, seconds, log_path):
    """A short job: work ``seconds``, then append "index pid" to ``log_path``; returns index * 2."""
    time.sleep(seconds)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{index} {os.getpid()}\n".encode())  # one write with O_APPEND: lines never mix
    finally:
        os.close(fd)
    return index * 2


def _touch(path, text):
    with open(path, "w") as f:
        f.write(text)


def gated(path, value, timeout=120):
    """Wait until the file ``path`` exists (the test opens the gate), then return ``value``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)
    return value
