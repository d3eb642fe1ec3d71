"""The fork server (nbqueue/forkserver.py): fork-mode jobs are forked from a single-threaded process.

Real ``nbqueue worker`` processes; the fork server's processes are found in /proc by the names they
give themselves (``nbqueue-keeper``, a child of the worker; ``nbqueue-forks``, a child of the keeper).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import forkserver_tasks as ft
from conftest import TESTS_DIR, children as conftest_children, wait_for
from nbqueue import JobFailed, Queue

KEEPER, SERVER, SPARE = "nbqueue-keeper", "nbqueue-forks", "nbqueue-spare"


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def children(pid: int) -> list:
    return [int(k) for k in conftest_children(pid)]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def keeper_of(worker_pid: int) -> int:
    found = [k for k in children(worker_pid) if comm(k) == KEEPER]
    assert len(found) == 1, f"the worker's children: {[(k, comm(k)) for k in children(worker_pid)]}"
    return found[0]


def server_of(worker_pid: int) -> int:
    """The worker's live fork server (waited for: it is replaced after a death)."""
    def live() -> list:
        return [s for s in children(keeper_of(worker_pid)) if comm(s) == SERVER and alive(s)]
    return wait_for(live, 15, message="a live fork server")[0]


@pytest.mark.parametrize("concurrency", ["1", "3"])
def test_jobs_are_forked_by_a_single_threaded_server(redis_client, start_worker, concurrency):
    worker = start_worker("fsq", "-c", concurrency)
    # the worker runs threads (its slots and heartbeat start just after it logs "serving"): it must not fork
    wait_for(lambda: len(os.listdir(f"/proc/{worker.pid}/task")) > 1, 15, message="the worker's threads")
    server = server_of(worker.pid)
    q = Queue("fsq", redis_client)
    for job in [q.enqueue(ft.where) for _ in range(6)]:
        seen = job.result(timeout=30)
        assert seen["ppid"] == server and seen["parent_comm"] == SERVER and seen["parent_threads"] == 1, seen
        assert seen["comm"] != SERVER  # the job's process takes the worker's name again
    assert len(os.listdir(f"/proc/{server}/task")) == 1
    assert "forks each job itself" not in worker.log()


def test_killed_fork_server_mid_job_fails_the_job_clearly_and_is_replaced(redis_client, start_worker, tmp_path):
    worker = start_worker("fskill")
    server = server_of(worker.pid)
    q = Queue("fskill", redis_client)
    record = tmp_path / "pid"
    job = q.enqueue(ft.note_then_wait, str(record))
    wait_for(record.exists, 30, message="the job started")
    job_pid = int(record.read_text())
    os.kill(server, signal.SIGKILL)
    with pytest.raises(JobFailed) as info:
        job.result(timeout=30)
    assert "the worker's fork server died while the job ran" in info.value.exc_info
    wait_for(lambda: not alive(job_pid), 15, message="the job's process ended")
    # the next jobs run, forked by a new single-threaded server
    for later in [q.enqueue(ft.where) for _ in range(3)]:
        seen = later.result(timeout=30)
        assert seen["ppid"] != server and seen["parent_comm"] == SERVER and seen["parent_threads"] == 1, seen
    assert f"the fork server (pid {server}) died; starting a new one" in worker.log()
    assert worker.proc.poll() is None
    wait_for(lambda: not os.path.exists(f"/proc/{server}"), 15, message="the dead server reaped")


def test_fork_server_killed_while_idle_costs_no_job(redis_client, start_worker):
    """The spare child forked for the next job dies with its server: it is never given a job."""
    worker = start_worker("fsidle")
    q = Queue("fsidle", redis_client)
    assert q.enqueue(divmod, 7, 2).result(timeout=30) == (3, 1)  # a spare is forked meanwhile
    server = server_of(worker.pid)
    spares = wait_for(lambda: [k for k in children(server) if comm(k) == SPARE], 15, message="a spare child")
    os.kill(server, signal.SIGKILL)
    wait_for(lambda: not alive(spares[0]), 15, message="the spare died with its server")
    for job in [q.enqueue(ft.where) for _ in range(3)]:
        seen = job.result(timeout=30)  # finished, not failed
        assert seen["ppid"] != server and seen["parent_comm"] == SERVER, seen
    assert worker.proc.poll() is None


def test_job_that_kills_its_fork_server(redis_client, start_worker, tmp_path):
    worker = start_worker("fsparent")
    q = Queue("fsparent", redis_client)
    record = tmp_path / "pid"
    job = q.enqueue(ft.kill_parent, str(record))
    with pytest.raises(JobFailed) as info:
        job.result(timeout=30)
    assert "fork server died" in info.value.exc_info
    wait_for(lambda: record.exists() and not alive(int(record.read_text())), 15, message="the job's process ended")
    assert q.enqueue(divmod, 7, 2).result(timeout=30) == (3, 1)
    assert worker.proc.poll() is None


def test_dead_keeper_leaves_the_worker_forking_by_itself(redis_client, start_worker):
    worker = start_worker("fskeeper")
    keeper = keeper_of(worker.pid)
    os.kill(keeper, signal.SIGKILL)  # its server dies with it (PR_SET_PDEATHSIG)
    q = Queue("fskeeper", redis_client)
    assert q.enqueue(divmod, 9, 4).result(timeout=30) == (2, 1)
    seen = q.enqueue(ft.where).result(timeout=30)
    assert seen["ppid"] == worker.pid  # forked from the worker, as without a fork server
    assert "forking each job from the worker itself" in worker.log()
    assert worker.proc.poll() is None


def test_fork_server_processes_end_with_the_worker(redis_client, start_worker):
    worker = start_worker("fsend")
    keeper, server = keeper_of(worker.pid), server_of(worker.pid)
    worker.signal(signal.SIGTERM)  # warm stop
    assert worker.wait(20) == 0
    wait_for(lambda: not alive(keeper) and not alive(server), 15, message="keeper and server ended")


def test_fork_server_processes_die_with_a_killed_worker(redis_client, start_worker, tmp_path):
    worker = start_worker("fsdie")
    keeper, server = keeper_of(worker.pid), server_of(worker.pid)
    record = tmp_path / "pid"
    Queue("fsdie", redis_client).enqueue(ft.note_then_wait, str(record))
    wait_for(record.exists, 30, message="the job started")
    worker.proc.kill()
    worker.wait(10)
    job_pid = int(record.read_text())
    wait_for(lambda: not any(map(alive, (keeper, server, job_pid))), 15, message="keeper, server and job ended")


WARNS = (
    "import os, threading, time\n"
    "threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n"
    "pid = os.fork()\n"
    "os._exit(0) if pid == 0 else os.waitpid(pid, 0)\n"
)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python 3.12+ warns about fork() with threads")
def test_no_fork_with_threads_warning(redis_client, redis_url):
    flags = [sys.executable, "-W", "always::DeprecationWarning"]
    # the check can fail: with these flags, this interpreter shows the warning of a fork with threads
    control = subprocess.run([*flags, "-c", WARNS], capture_output=True, text=True, timeout=60)
    assert "multi-threaded, use of fork()" in control.stderr, control.stderr
    q = Queue("fswarn", redis_client)
    jobs = [q.enqueue(divmod, i, 3) for i in range(10)]
    done = subprocess.run([*flags, "-m", "nbqueue.cli", "worker", "fswarn", "--burst", "-c", "2", "--url", redis_url],
                          cwd=str(TESTS_DIR), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [job.result(timeout=10) for job in jobs] == [divmod(i, 3) for i in range(10)]
    assert "DeprecationWarning" not in done.stderr, done.stderr
