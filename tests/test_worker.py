"""Real ``nbqueue worker`` processes running jobs end to end."""
from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time

import cloudpickle
import pytest

import nbq_tasks
from conftest import MODES, TESTS_DIR, wait_for
from nbqueue import Job, JobFailed, Queue, keys, signing
from nbqueue.stopping import STOP_GRACE


def test_the_readme_flow(start_worker, tmp_path):
    """`nbqueue worker low` in a folder with tasks.py; a separate python enqueues and prints 60."""
    (tmp_path / "tasks.py").write_text("def add(a, b):\n    return a + b\n")
    start_worker("low", cwd=tmp_path)
    code = ("from nbqueue import Queue; import tasks; j = Queue('low').enqueue(tasks.add, 20, 40); "
            "print(j.result(timeout=10))")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "60"
    assert run.stderr.count("nbqueue: using Redis at") == 1  # says once which Redis


@pytest.mark.parametrize("mode", MODES)
def test_results_times_and_worker_are_recorded(start_worker, redis_client, mode):
    worker = start_worker("low", *mode)
    q = Queue("low", redis_client)
    job = q.enqueue(nbq_tasks.takes_timeout, 1, timeout=5)
    assert job.result(timeout=10) == {"x": 1, "timeout": 5, "result_ttl": None, "job_id": None}
    job.refresh()
    assert job.status == "finished" and job.attempt == 1
    assert job.enqueued_at <= job.started_at <= job.ended_at
    assert job.worker and str(worker.pid) in job.worker
    whoami = q.enqueue(nbq_tasks.whoami)
    assert whoami.result(timeout=10) == whoami.id  # get_current_job() inside the job
    assert 0 < redis_client.ttl(keys.job(job.id)) <= 24 * 3600
    assert q.enqueue(nbq_tasks.Greeter("hi").greet, "ann").result(timeout=10) == "hi, ann"


def test_fork_mode_runs_each_job_in_a_fresh_child(start_worker, redis_client):
    worker = start_worker("low")
    q = Queue("low", redis_client)
    pids = [j.result(timeout=10) for j in [q.enqueue(nbq_tasks.pid) for _ in range(3)]]
    assert len(set(pids)) == 3 and worker.pid not in pids


def test_inline_mode_runs_jobs_in_the_worker(start_worker, redis_client):
    worker = start_worker("low", "--inline")
    q = Queue("low", redis_client)
    assert {q.enqueue(nbq_tasks.pid).result(timeout=10) for _ in range(3)} == {worker.pid}


def test_queues_are_served_in_priority_order(start_worker, redis_client):
    low, high = Queue("low", redis_client), Queue("high", redis_client)
    jobs = low.enqueue_many([(nbq_tasks.now, ())] * 5) + high.enqueue_many([(nbq_tasks.now, ())] * 5)
    worker = start_worker("high", "low", "--inline", "--burst", ready=False)
    assert worker.wait() == 0
    started = sorted(jobs, key=lambda j: j.result(timeout=1))
    assert [j.queue for j in started] == ["high"] * 5 + ["low"] * 5


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_job_keeps_the_traceback_and_the_worker_goes_on(start_worker, redis_client, mode):
    start_worker("low", *mode)
    q = Queue("low", redis_client)
    bad = q.enqueue(nbq_tasks.fail, "disk full")
    with pytest.raises(JobFailed) as info:
        bad.result(timeout=10)
    assert "ValueError: disk full" in str(info.value)
    assert 'nbq_tasks.py", line' in info.value.traceback and "in fail" in info.value.traceback
    assert "execute.py" not in info.value.traceback  # the worker's own frames are left out
    assert bad.status == "failed" and redis_client.zscore(keys.failed("low"), bad.id)
    assert q.enqueue(nbq_tasks.add, 1, 2).result(timeout=10) == 3


@pytest.mark.parametrize("mode", MODES)
def test_corrupt_payload_and_missing_function_fail_only_their_job(start_worker, redis_client, mode, monkeypatch):
    monkeypatch.delenv("NBQUEUE_SECRET")  # jobs written by hand are unsigned (test_signing refuses them)
    start_worker("low", *mode)
    q = Queue("low", redis_client)
    for job_id, fields in {
        "garbage": {"func": "nbq_tasks:add", "data": b"\x80\x05not a pickle"},
        "nofunc": {"data": b""},
        "nomodule": {"func": "no_such_module_xyz:run", "data": _args()},
        "noattr": {"func": "nbq_tasks:no_such_function", "data": _args()},
        "badattempt": {"func": "nbq_tasks:add", "data": _args(), "attempt": "x", "retries": "y"},
    }.items():
        redis_client.hset(keys.job(job_id, "low"), mapping={**fields, "queue": "low", "status": "queued"})
        redis_client.rpush(keys.queue("low"), job_id)
    redis_client.rpush(keys.wake("low"), "1")
    expected = {
        "garbage": "The job's arguments can't be loaded",
        "nofunc": "has no function recorded",
        "nomodule": "This worker can't import no_such_module_xyz.run: No module named 'no_such_module_xyz'",
        "noattr": "has no attribute 'no_such_function'",
    }
    for job_id, message in expected.items():
        job = Job(job_id, redis_client, queue="low")
        with pytest.raises(JobFailed, match=message):
            job.result(timeout=10)
    # fields broken by hand
    assert Job(job_id="badattempt", connection=redis_client, queue="low").result(timeout=10) == 3
    assert q.enqueue(nbq_tasks.add, 2, 3).result(timeout=10) == 5


def _args() -> bytes:
    import cloudpickle
    return cloudpickle.dumps(((1, 2), {}))


def test_a_module_only_the_caller_has(start_worker, redis_client, tmp_path, monkeypatch):
    (tmp_path / "only_here.py").write_text("def job():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here

    start_worker("low")  # runs in tests/, where only_here.py is not
    job = Queue("low", redis_client).enqueue(only_here.job)
    with pytest.raises(JobFailed, match="Start the worker in the folder that holds the module"):
        job.result(timeout=10)


def test_fork_mode_picks_up_an_edited_module_and_detects_stale_callers(start_worker, redis_client, tmp_path,
                                                                       monkeypatch):
    module = tmp_path / "edited_tasks.py"
    module.write_text("def version():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import edited_tasks

    start_worker("low", cwd=tmp_path)
    q = Queue("low", redis_client)
    assert q.enqueue(edited_tasks.version).result(timeout=10) == 1
    module.write_text("def version():\n    return 2  # edited\n")
    stale = q.enqueue(edited_tasks.version)  # the caller still has version 1 loaded
    with pytest.raises(JobFailed, match="(?i)the worker runs different code for edited_tasks.version than the caller"):
        stale.result(timeout=10)
    importlib.reload(edited_tasks)
    assert q.enqueue(edited_tasks.version).result(timeout=10) == 2  # same worker, fresh import


@pytest.mark.parametrize("func, message", [
    (nbq_tasks.die_hard, "killed by SIGKILL"),
    (nbq_tasks.exit_process, "exited with code 3"),
    (nbq_tasks.unpicklable_result, "ResultError: the job returned lock, which can't be pickled"),
])
def test_a_dying_child_fails_its_job_only(start_worker, redis_client, func, message):
    worker = start_worker("low")
    q = Queue("low", redis_client)
    with pytest.raises(JobFailed, match=message):
        q.enqueue(func).result(timeout=10)
    assert q.enqueue(nbq_tasks.add, 1, 1).result(timeout=10) == 2
    assert worker.proc.poll() is None


def test_timeout_kills_the_job_in_fork_mode(start_worker, redis_client):
    start_worker("low")
    q = Queue("low", redis_client)
    job = q.enqueue_call(nbq_tasks.sleep_then, (30,), timeout=0.5)
    with pytest.raises(JobFailed, match="longer than its timeout of 0.5 s"):
        job.result(timeout=15)
    assert q.enqueue(nbq_tasks.add, 1, 1).result(timeout=10) == 2


def test_requeue_a_failed_job(start_worker, redis_client):
    start_worker("low")
    q = Queue("low", redis_client)
    failing = q.enqueue(nbq_tasks.fail)
    with pytest.raises(JobFailed):
        failing.result(timeout=10)
    failing.requeue()
    assert not redis_client.zscore(keys.failed("low"), failing.id)
    with pytest.raises(JobFailed):
        failing.result(timeout=10)
    assert Job.fetch(failing.id, redis_client).attempt == 2


@pytest.mark.parametrize("mode", MODES)
def test_warm_shutdown_finishes_the_job(start_worker, redis_client, tmp_path, mode):
    worker = start_worker("low", *mode)
    flag = tmp_path / "started"
    job = Queue("low", redis_client).enqueue(nbq_tasks.sleep_then, 1.0, "finished anyway", str(flag))
    wait_for(flag.exists, message="job start")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert job.result(timeout=1) == "finished anyway"
    assert "warm shutdown" in worker.log()
    assert redis_client.zcard("nbq:workers") == 0


@pytest.mark.parametrize("mode, task", [
    pytest.param([], nbq_tasks.sleep_then, id="fork"),
    pytest.param(["--inline"], nbq_tasks.busy, id="inline"),  # Python code: the interrupt lands at once
])
def test_second_signal_stops_now_and_fails_the_job(start_worker, redis_client, tmp_path, mode, task):
    """Rows 9 and 13 of issue 8: a "stop now" exits 0 as soon as the job is recorded failed (no 3 s
    timer, no exit code 1), and signals only wake the main thread."""
    worker = start_worker("low", *mode)
    flag = tmp_path / "started"
    job = Queue("low", redis_client).enqueue(task, 30, str(flag)) if task is nbq_tasks.busy else \
        Queue("low", redis_client).enqueue(task, 30, None, str(flag))
    wait_for(flag.exists, message="job start")
    worker.signal(signal.SIGINT)
    wait_for(lambda: "warm shutdown" in worker.log(), message="first signal handled")
    started = time.monotonic()
    worker.signal(signal.SIGINT)
    assert worker.wait() == 0
    assert time.monotonic() - started < STOP_GRACE - 0.2, "waited for nothing after the job was recorded"
    with pytest.raises(JobFailed, match="told to stop now"):
        job.result(timeout=1)
    assert "ignored the stop" not in worker.log()
    assert redis_client.zcard("nbq:workers") == 0


def test_stop_now_gives_up_on_an_inline_job_blocked_in_c(start_worker, redis_client, tmp_path):
    """The grace wait is only for an inline job that can't be interrupted; then it is recorded failed, exit 0."""
    worker = start_worker("low", "--inline")
    flag = tmp_path / "started"
    job = Queue("low", redis_client).enqueue(nbq_tasks.sleep_then, 60, None, str(flag))
    wait_for(flag.exists, message="job start")
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "warm shutdown" in worker.log(), message="first signal handled")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert time.monotonic() - started >= STOP_GRACE - 0.5
    with pytest.raises(JobFailed, match="told to stop now"):
        job.result(timeout=1)
    assert "1 job(s) marked failed that ignored the stop" in worker.log()


def test_a_storm_of_signals_to_a_burst_workers_group(redis_client, redis_url, tmp_path):
    """Row 13 of issue 8: SIGTERMs to the process group of a burst worker while it waits for its
    slots: the job's child is in its own group (not hit), the worker stops now and exits 0. (One
    signal first: how many signals of a burst the kernel merges depends on the load, and a second
    one that is not merged rightly means "stop now".)"""
    flag = tmp_path / "started"
    q = Queue("low", redis_client)
    job = q.enqueue(nbq_tasks.sleep_then, 30, None, str(flag))
    rest = q.enqueue_many([(nbq_tasks.add, (1, 1))] * 3)
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "nbqueue.cli", "worker", "low", "--burst", "--url", redis_url],
                            cwd=str(TESTS_DIR), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(flag.exists, 20, message="job start")
        os.killpg(proc.pid, signal.SIGTERM)  # to the group: the job's child is not in it
        wait_for(lambda: "warm shutdown" in (tmp_path / "worker.log").read_text(), message="first signal handled")
        assert proc.poll() is None and job.status == "started"  # a warm stop: the job goes on
        for _ in range(25):  # then a storm: the first of it means "stop now", the rest find it stopping
            os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    with pytest.raises(JobFailed, match="told to stop now"):
        job.result(timeout=1)
    assert [j.status for j in rest] == ["queued"] * 3  # nothing lost: still there for the next worker
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


def test_cancel_with_busy_siblings_is_prompt(start_worker, redis_client, tmp_path):
    """Row 2 of issue 8: with several children forked at once, a child held its sibling's pipe and
    a cancel waited for the sibling (5-60 s here). Many rounds: every cancel ends its job at once."""
    start_worker("low", "--concurrency", "3")
    q = Queue("low", redis_client)
    slowest = 0.0
    for round_ in range(8):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        jobs = q.enqueue_many([(nbq_tasks.sleep_then, (60, None, str(folder / str(i)))) for i in range(3)])
        wait_for(lambda folder=folder: len(os.listdir(folder)) == 3, 20, message="three jobs running at once")
        for job in jobs:
            started = time.monotonic()
            job.cancel()
            wait_for(lambda job=job: job.status == "canceled", 10, message="the cancel")
            slowest = max(slowest, time.monotonic() - started)
    assert slowest < 2.5, f"a cancel took {slowest:.2f} s"


@pytest.mark.parametrize("mode", MODES)
def test_junk_timeouts_and_ttls_written_by_hand(start_worker, redis_client, mode):
    """Row 7 of issue 8 (worker side): NaN, infinite, negative, huge or junk numbers in a job hash
    never break the worker: a bad timeout means the default, infinity no limit; TTLs stay valid."""
    worker = start_worker("low", *mode)
    fields = {
        "nan": {"timeout": "nan", "result_ttl": "nan"},
        "inf": {"timeout": "inf", "result_ttl": "inf"},
        "negative": {"timeout": "-1", "result_ttl": "-5"},
        "junk": {"timeout": "soon", "result_ttl": "later", "failure_ttl": "x"},
        "huge": {"timeout": "1e300", "result_ttl": "1e300"},
        "zero": {"timeout": "0", "result_ttl": "0"},
    }
    signer = signing.from_value(os.environ["NBQUEUE_SECRET"])  # signed with the junk: only parsing can stop it
    for job_id, extra in fields.items():
        stored = [x for pair in extra.items() for x in pair]
        sig = signer.sign_job(signer.job_mac("nbq_tasks:add", "", stored), job_id, _args())
        redis_client.hset(keys.job(job_id, "low"), mapping={"func": "nbq_tasks:add", "data": _args(), "queue": "low",
                                                        "status": "queued", "sig": sig, **extra})
        redis_client.rpush(keys.queue("low"), job_id)
    redis_client.rpush(keys.wake("low"), "1")
    for job_id in fields:
        assert Job(job_id, redis_client, queue="low").result(timeout=20) == 3, job_id
        assert Job.fetch(job_id, redis_client, queue="low").attempt == 1  # ran once: no lost attempts
    assert redis_client.ttl(keys.job("inf", "low")) == -1  # kept forever
    for job_id in ("nan", "negative", "junk", "zero"):
        assert 0 < redis_client.ttl(keys.job(job_id, "low")) <= 24 * 3600, job_id
    assert 24 * 3600 < redis_client.ttl(keys.job("huge", "low")) <= 2**31
    assert "unexpected error" not in worker.log()


def test_fork_mode_leaks_no_descriptor_and_no_zombie(start_worker, redis_client):
    """Each attempt closes its pipe and pidfd and reaps its child, however the job ended."""
    worker = start_worker("low")
    q = Queue("low", redis_client)
    assert q.enqueue(nbq_tasks.add, 1, 1).result(timeout=10) == 2
    before = _pipes_and_pidfds(worker.pid)
    server = _children(_children(worker.pid)[0])[0]  # the fork server: it holds no Redis connection of its own
    # once the job's process is reaped (the server reaps it when it exits, after its outcome was recorded)
    wait_for(lambda: _job_processes(server) == [], 10, message="the first job's process reaped")
    server_fds = len(os.listdir(f"/proc/{server}/fd"))
    for func, args, options in [(nbq_tasks.add, (1, 2), {}), (nbq_tasks.die_hard, (), {}),
                                (nbq_tasks.sleep_then, (30,), {"timeout": 0.2}), (nbq_tasks.exit_process, (), {})] * 5:
        job = q.enqueue_call(func, args, **options)
        wait_for(lambda job=job: job.status in ("finished", "failed"), 20, message="the job's end")
    wait_for(lambda: _pipes_and_pidfds(worker.pid) == before, 10, message="no pipe or pidfd left open")
    kids = _children(worker.pid)  # the fork server's keeper, its server, and no job's process
    assert [_comm(k) for k in kids] == ["nbqueue-keeper"], "a child left unreaped"
    servers = _children(kids[0])
    assert servers == [server] and _comm(server) == "nbqueue-forks", "a child left unreaped"
    wait_for(lambda: _job_processes(server) == [], 10, message="a child left unreaped")  # but the next job's
    wait_for(lambda: len(os.listdir(f"/proc/{server}/fd")) == server_fds, 10,
             message="the fork server left a descriptor open")


def _job_processes(server: int) -> list:
    """The fork server's children but the spare (the next job's, forked beforehand)."""
    kids = []
    for kid in _children(server):
        try:
            if _comm(kid) != "nbqueue-spare":
                kids.append(kid)
        except OSError:
            pass  # reaped meanwhile
    return kids


def _children(pid: int) -> list:
    return [int(c) for t in os.listdir(f"/proc/{pid}/task")
            for c in open(f"/proc/{pid}/task/{t}/children").read().split()]


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def _pipes_and_pidfds(pid: int) -> int:
    """A worker's descriptors for its children (not its Redis connections, whose pool may grow)."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return sum(link.startswith(("pipe:", "anon_inode:[pidfd]")) for link in links)


@pytest.mark.parametrize("args, code", [
    (["worker", "--concurrency", "0"], 2),
    (["worker", "--no-such-option"], 2),
    (["worker", "--url", "redis://127.0.0.1:1/0"], 1),
])
def test_worker_exit_codes(args, code):
    """0 clean stop (the tests above), 1 error, 2 usage."""
    run = subprocess.run([sys.executable, "-m", "nbqueue.cli", *args], capture_output=True, text=True, timeout=30)
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr


def test_idle_worker_stops_at_once_on_a_signal(start_worker):
    worker = start_worker("low")
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    try:
        assert worker.wait(timeout=5) == 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {time.monotonic() - began:.1f} s after SIGTERM:\n{worker.log()}")


def test_burst_exits_when_queues_are_empty(start_worker, redis_client):
    jobs = Queue("a", redis_client).enqueue_many([(nbq_tasks.add, (i, i)) for i in range(20)])
    worker = start_worker("a", "--burst", ready=False)
    assert worker.wait() == 0
    assert [j.result(timeout=1) for j in jobs] == [2 * i for i in range(20)]
    assert worker.log().count(" ok") == 20  # one line per job


def test_info_shows_queues_and_what_workers_run(start_worker, redis_client, tmp_path, redis_url):
    start_worker("low")
    flag = tmp_path / "started"
    q = Queue("low", redis_client)
    running = q.enqueue(nbq_tasks.sleep_then, 30, None, str(flag))
    q.enqueue(nbq_tasks.add, 1, 1)
    wait_for(flag.exists, message="job start")
    out = subprocess.run([sys.executable, "-m", "nbqueue.cli", "info", "--url", redis_url],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "low" in out.stdout and "workers: 1" in out.stdout
    lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.startswith("low")}
    assert lines["low"] == ["1", "1", "0", "0", "0", "0/s"]  # queued, started, then the last 10 min, the rate
    assert f"{running.id} nbq_tasks.sleep_then" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["worker", "bad name", "--url", "{url}"], "Invalid queue name 'bad name'"),
    (["worker", "--url", "redis://127.0.0.1:1/0"], "cannot connect to Redis at redis://127.0.0.1:1/0"),
    (["info", "--url", "ftp://x"], "redis://"),
])
def test_cli_errors_are_one_clear_line(redis_url, args, message):
    args = [a.replace("{url}", redis_url) for a in args]
    run = subprocess.run([sys.executable, "-m", "nbqueue.cli", *args], capture_output=True, text=True, timeout=30)
    assert run.returncode != 0
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_help_everywhere():
    for args in ([], ["worker"], ["info"], ["server"], ["server", "start"], ["demo"]):
        run = subprocess.run([sys.executable, "-m", "nbqueue.cli", *args, "--help"],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0 and "Usage:" in run.stdout


# --- the fork machinery itself (real children of the test process), with and without pidfd -------
@pytest.fixture(params=["pidfd", "polling", "served", "served-polling"])
def forked(request, monkeypatch):
    """``nbqueue.child.Forked``; in the "polling" runs as on a system without ``os.pidfd_open``; in
    the "served" runs forked by a fork server (``run`` is sent to it, cloudpickled)."""
    from nbqueue import child, forkserver

    if request.param.endswith("polling"):
        monkeypatch.setattr(child, "_pidfd", lambda pid: None)
    before = _own_pipes_and_pidfds()
    if not request.param.startswith("served"):
        yield child.Forked
    else:
        def runner(payload: bytes) -> bytes:
            run, fallback = cloudpickle.loads(payload)
            try:
                return run()
            except BaseException:
                return fallback

        server = forkserver.ForkServer(runner, b"")
        try:
            yield lambda run, fallback=b"": child.Forked(run, fallback, server, cloudpickle.dumps((run, fallback)))
        finally:
            server.close()
    assert _own_pipes_and_pidfds() <= before, "a pipe or pidfd was left open"


def _own_pipes_and_pidfds() -> set:
    """This process's open pipes and pidfds: what ``Forked`` opens (sockets that other threads of
    the test process open and close meanwhile, e.g. a notebook test's watcher, are not counted)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith(("pipe:", "anon_inode:[pidfd]")):
            found.add((fd, target))
    return found


def test_a_child_sends_a_large_outcome(forked):
    ended = forked(lambda: b"y" * (30 * 2**20)).wait(timeout=60)
    assert ended.data == b"y" * (30 * 2**20) and ended.status == 0 and not ended.timed_out


def test_a_child_that_stops_talking_is_still_stopped_at_its_deadline(forked):
    """It closes every descriptor (its pipe too) and ignores SIGTERM: killed at the deadline, reaped."""
    def run() -> bytes:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.closerange(0, 65536)
        time.sleep(60)
        return b"never"

    started = time.monotonic()
    child = forked(run)
    ended = child.wait(timeout=0.5)
    assert ended.timed_out and ended.data is None
    assert os.WIFSIGNALED(ended.status) and os.WTERMSIG(ended.status) == signal.SIGKILL
    assert time.monotonic() - started < 10
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)  # reaped already


def test_a_child_whose_run_raises_sends_the_fallback(forked):
    def run() -> bytes:
        raise SystemExit(5)  # nbqueue's run_job never raises, but the guard holds anyway

    ended = forked(run, b"it raised").wait(timeout=10)
    assert ended.data == b"it raised" and ended.status == 0  # the guard sends the fallback and exits
