"""The ``nbqueue`` command's failures: one line on stderr (no traceback) and exit code 1; bad usage 2.

Every case runs the real command (``python -m nbqueue.cli``) in a subprocess.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nbq_tasks
from conftest import wait_for
from nbqueue import Queue
from servers import free_port

SECRET = "hunter2-secret"


def nbqueue(*args: str, env: dict = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbqueue.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def assert_one_line_error(run: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit code 1 and exactly one line on stderr, "Error: ..." with each of ``expected``; returns it."""
    lines = run.stderr.splitlines()
    assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), (
        f"exit {run.returncode}, stderr:\n{run.stderr}")
    assert "Traceback" not in run.stderr and SECRET not in run.stderr + run.stdout
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def folders(tmp_path: Path) -> dict:
    """Fresh runtime and data folders: no embedded server runs there."""
    return {"NBQUEUE_RUNTIME_DIR": str(tmp_path / "run"), "NBQUEUE_DATA_DIR": str(tmp_path / "data")}


def _closed() -> str:
    return f"127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there (never the machine's 6379)


CASES = [  # (arguments, environment, expected in the line); "{closed}" is a port nothing listens on
    (["server", "start"], {"NBQUEUE_SERVER_BINARY": "/nonexistent"}, ["NBQUEUE_SERVER_BINARY='/nonexistent'"]),
    (["server", "start"], {"NBQUEUE_SERVER_BINARY": "/bin/false"}, ["exited with code 1 at start", "see its log"]),
    (["server", "start"], {"NBQUEUE_RUNTIME_DIR": "/etc/hostname/run"}, ["can't make the folder /etc/hostname/run"]),
    (["info", "--url", "redis://{closed}/0"], {}, ["cannot connect to Redis at redis://{closed}/0", "refused"]),
    (["info", "--url", f"redis://user:{SECRET}@{{closed}}/0"], {}, ["redis://user:***@{closed}/0"]),
    (["info", "--url", "unix:///nonexistent/nbq.sock"], {}, ["cannot connect", "/nonexistent/nbq.sock"]),
    (["info"], {"NBQUEUE_URL": "redis://{closed}/0"}, ["from NBQUEUE_URL", "unset NBQUEUE_URL"]),
    (["info", "--url", "foo://x"], {}, ["invalid Redis URL 'foo://x'"]),
    (["info", "--url", "redis://localhost:notaport"], {}, ["invalid Redis URL"]),
    (["info", "--url", f"redis://:{SECRET}@[::1"], {}, ["invalid Redis URL"]),
    (["requeue", "default", "x", "--url", f"redis://:{SECRET}@{{closed}}/0"], {}, ["redis://:***@{closed}/0"]),
    (["requeue", "bad/name", "x"], {}, ["Invalid queue name 'bad/name'"]),
    (["worker", "--url", "unix:///nonexistent/nbq.sock"], {}, ["cannot connect", "/nonexistent/nbq.sock"]),
    (["demo", "--url", "redis://{closed}/0"], {}, ["cannot connect"]),
]


@pytest.mark.parametrize("args, env, expected", CASES, ids=[" ".join(c[0])[:40] + str(sorted(c[1])) for c in CASES])
def test_a_failing_command_prints_one_line_and_exits_1(folders, args, env, expected):
    closed = _closed()
    fill = lambda text: text.replace("{closed}", closed)  # noqa: E731
    run = nbqueue(*map(fill, args), env={**folders, **{k: fill(v) for k, v in env.items()}})
    assert_one_line_error(run, *map(fill, expected))


@pytest.mark.parametrize("args", [["requeue", "default"], ["worker", "-c", "0"], ["info", "--nope"], ["nope"]])
def test_bad_usage_exits_2(args):
    run = nbqueue(*args)
    assert run.returncode == 2 and "Traceback" not in run.stderr and "Usage:" in run.stderr, run.stderr


def test_server_stop_when_none_runs_is_a_quiet_no_op(folders):
    run = nbqueue("server", "stop", env=folders)
    assert (run.returncode, run.stdout.strip(), run.stderr) == (0, "embedded Redis was not running", "")


def test_requeue_goes_on_past_unknown_ids_and_says_which_failed(redis_client, redis_url):
    q = Queue("default", redis_client)
    canceled, waiting = q.enqueue(nbq_tasks.add, 1, 1), q.enqueue(nbq_tasks.add, 2, 2)
    canceled.cancel()
    run = nbqueue("requeue", "default", "nope-1", canceled.id, waiting.id, "--url", redis_url)
    line = assert_one_line_error(run, "2 of 3 job(s) not requeued", "No job 'nope-1'", f"job {waiting.id} is queued")
    assert run.stdout.startswith("requeued 1 job(s) on default"), run.stdout
    assert canceled.status == "queued" and line


# --- errors of redis-py itself, after the connection was made --------------------------------------
def test_info_while_redis_is_down(private_redis):
    url = private_redis.url
    private_redis.stop()
    assert_one_line_error(nbqueue("info", "--url", url), f"cannot connect to Redis at {url}", "start Redis there")
    assert_one_line_error(nbqueue("info", env={"NBQUEUE_URL": url}), "unset NBQUEUE_URL")


def test_a_hung_redis_is_one_line_too(private_redis):
    os.kill(private_redis.pid, signal.SIGSTOP)
    started = time.monotonic()
    assert_one_line_error(nbqueue("info", "--url", private_redis.url), private_redis.url, "Timeout")
    assert time.monotonic() - started < 30


def test_a_response_error_names_the_redis(redis_client, redis_url):
    redis_client.set("nbq:queues", "not a set")  # written by something else
    run = nbqueue("info", "--url", redis_url)
    assert_one_line_error(run, f"Redis at {redis_url} answered with an error: ", "WRONGTYPE")


def test_a_user_without_permissions_gets_one_line_and_the_password_is_masked(private_redis):
    with private_redis.client() as admin:
        admin.acl_setuser("limited", enabled=True, passwords=[f"+{SECRET}"], keys=["*"], channels=["*"],
                          commands=["+ping", "+hello", "+auth", "+client"])
    url = private_redis.url.replace("unix://", f"unix://limited:{SECRET}@")
    run = nbqueue("info", "--url", url)
    assert_one_line_error(run, "unix://limited:***@", "refused a command", "no permissions to run the 'smembers'")
    wrong = private_redis.url.replace("unix://", "unix://limited:wrong@")
    assert_one_line_error(nbqueue("info", "--url", wrong), "refused the credentials")


def _info_watch_until(url: str, admin, break_it) -> subprocess.CompletedProcess:
    """Run ``nbqueue info --watch``, ``break_it()`` once it follows the events, and return how it ended."""
    proc = subprocess.Popen([sys.executable, "-m", "nbqueue.cli", "info", "--watch", "--url", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: admin.pubsub_numpat() == 1, timeout=30, message="info --watch to subscribe")
        break_it()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_redis_going_away_under_info_watch_is_one_line(private_redis):
    run = _info_watch_until(private_redis.url, private_redis.client(), private_redis.stop)
    assert_one_line_error(run, f"lost the connection to Redis at {private_redis.url}")


def test_a_password_changed_under_info_watch_is_one_line(private_redis):
    with private_redis.client() as admin:
        admin.acl_setuser("watcher", enabled=True, passwords=[f"+{SECRET}"], keys=["*"], channels=["*"],
                          commands=["+@all"])

        def change_password() -> None:
            admin.acl_setuser("watcher", reset_passwords=True, passwords=["+another-one"], enabled=True)
            admin.client_kill_filter(user="watcher")  # it reconnects, and its password is refused

        run = _info_watch_until(private_redis.url.replace("unix://", f"unix://watcher:{SECRET}@"), admin,
                                change_password)
    assert_one_line_error(run, "unix://watcher:***@", "refused the credentials")
