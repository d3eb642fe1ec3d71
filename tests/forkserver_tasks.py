"""Jobs for tests/test_forkserver.py: where they run, and jobs that hit their fork server."""
from __future__ import annotations

import os
import signal
import time


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def where() -> dict:
    """This process, its parent (the process that forked it) and that parent's thread count."""
    parent = os.getppid()
    return {"pid": os.getpid(), "ppid": parent, "parent_comm": _comm(parent),
            "parent_threads": len(os.listdir(f"/proc/{parent}/task")), "comm": _comm(os.getpid())}


def note_then_wait(record: str, seconds: float = 60) -> str:
    """Write this process's pid to ``record``, then sleep (a job to kill things under)."""
    with open(record + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(record + ".tmp", record)
    time.sleep(seconds)
    return "slept"


def kill_parent(record: str) -> str:
    """SIGKILL the process that forked this job (the fork server), then go on as if nothing happened."""
    with open(record, "w") as f:
        f.write(str(os.getpid()))
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)
    return "survived"
