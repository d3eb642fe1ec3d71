"""Worker operations: --max-jobs, --max-idle, suspend/resume, and the CLI's enqueue, empty and
info QUEUE filters — real workers, real Redis."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import nbq_tasks
from conftest import wait_for
from nbqueue import Queue, Worker
from nbqueue.errors import WorkerError
from nbqueue.worker import is_suspended, resume, suspend

TESTS = Path(__file__).resolve().parent


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbqueue.cli", *args], cwd=TESTS, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("mode", [[], ["--inline", "-c", "3"]], ids=["fork", "inline-3"])
def test_max_jobs_runs_exactly_that_many_then_exits_0(redis_client, spawn_worker, mode):
    q = Queue("maxjobs", redis_client)
    jobs = [q.enqueue(nbq_tasks.add, i, i) for i in range(7)]
    worker = spawn_worker("maxjobs", "--max-jobs", "5", *mode)
    assert worker.wait(timeout=30) == 0
    statuses = [j.status for j in jobs]
    assert statuses.count("finished") == 5 and statuses.count("queued") == 2, statuses


def test_max_idle_exits_after_the_idle_time_not_while_a_job_runs(redis_client, spawn_worker):
    q = Queue("maxidle", redis_client)
    job = q.enqueue(nbq_tasks.sleep_then, 2.0, "slept")
    worker = spawn_worker("maxidle", "--max-idle", "0.5", "--inline")
    assert worker.wait(timeout=30) == 0
    assert job.status == "finished", "the running job was not cut short by --max-idle"
    assert "idle for 0.5 s" in worker.log()


def test_bad_limits_are_refused(redis_client):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(WorkerError, match="max_jobs"):
            Worker(["x"], redis_client, max_jobs=bad)
    for bad in (0, -1, float("nan"), float("inf"), "soon"):
        with pytest.raises(WorkerError, match="max_idle"):
            Worker(["x"], redis_client, max_idle=bad)
    assert cli("worker", "x", "--max-jobs", "0").returncode == 2


def test_suspended_workers_finish_the_running_job_and_take_nothing_until_resume(redis_client, start_worker, tmp_path):
    start_worker("susp", "--inline")
    q = Queue("susp", redis_client)
    gate = tmp_path / "gate"
    running = q.enqueue(nbq_tasks.until_file, str(gate), "ran")
    wait_for(lambda: running.status == "started", timeout=20)
    out = cli("suspend")
    assert out.returncode == 0 and "suspended" in out.stdout and is_suspended(redis_client)
    waiting = q.enqueue(nbq_tasks.add, 1, 2)
    gate.touch()
    assert running.result(timeout=20) == "ran"
    assert "SUSPENDED" in cli("info").stdout
    commands = redis_client.info("stats")["total_commands_processed"]
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # that it stays queued for a while is what is tested
        assert waiting.status == "queued"
        time.sleep(0.1)
    spent = redis_client.info("stats")["total_commands_processed"] - commands  # ours ~17, the heartbeat's
    assert spent < 100, f"a suspended worker is quiet, not spinning ({spent} commands in 1.5 s)"
    out = cli("resume")
    assert out.returncode == 0 and "1 live worker" in out.stdout
    started = time.monotonic()
    assert waiting.result(timeout=10) == 3
    assert time.monotonic() - started < 5, "resume wakes the worker (no wait for its idle timeout)"


def test_cli_enqueue_empty_and_info_filters(redis_client, start_worker):
    out = cli("enqueue", "clionly", "nbq_tasks:echo", "1", "'two'", "[3]", "plain", "key={'a': 1}")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    from nbqueue import Job

    job = Job.fetch(job_id, redis_client)
    assert job.args == (1, "two", [3], "plain") and job.kwargs == {"key": {"a": 1}}
    for _ in range(3):
        assert cli("enqueue", "clionly", "nbq_tasks.add", "1", "2").returncode == 0
    info = cli("info", "clionly")
    assert "clionly" in info.stdout and "otherq" not in info.stdout
    out = cli("empty", "clionly")
    assert out.returncode == 0 and "canceled 4 queued job(s)" in out.stdout
    assert Job.fetch(job_id, redis_client).status == "canceled"
    start_worker("cliwait", "--inline")
    out = cli("enqueue", "cliwait", "nbq_tasks.add", "20", "b=22", "--wait", "20")
    assert out.returncode == 0 and out.stdout.strip() == "42", out
    for bad, message in ((["clionly", "nope:f"], "can't import"), (["clionly", "nbq_tasks"], "module:name"),
                         (["clionly", "nbq_tasks.add", "a=1", "2"], "after keyword")):
        out = cli("enqueue", *bad)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    out = cli("enqueue", "clionly", "nbq_tasks.add", "1", "2", "--timeout", "nan")
    assert out.returncode == 1 and "timeout=nan is not valid" in out.stderr


def test_suspend_and_resume_from_python(redis_client):
    suspend(redis_client)
    assert is_suspended(redis_client)
    resume(redis_client)
    assert not is_suspended(redis_client)
