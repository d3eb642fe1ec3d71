"""Signed jobs and results (issue 8, row 8), with real workers and a real server.

The session signs with ``NBQUEUE_SECRET`` (conftest); tests of unsigned mode unset it. Each hostile
job is written into Redis by hand, as anyone who can write to it could, and carries a probe: its
import or its unpickling would create a file. The file must never appear.
"""
from __future__ import annotations

import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest
import redis

import nbq_tasks
from conftest import MODES, TESTS_DIR, WorkerProcess
from nbqueue import Job, JobFailed, Options, Queue, keys, signing
from nbqueue.errors import SecretError, SignatureError
from nbqueue.server import EmbeddedServer

MISMATCH = "SignatureError: signature does not match"
UNSIGNED = "SignatureError: unsigned job refused"


class _Touch:
    """Unpickling this creates ``path``: a stand-in for a malicious pickle."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _evil_data(path: Path) -> bytes:
    return pickle.dumps(((_Touch(path),), {}))


@pytest.fixture
def evil_module(tmp_path, monkeypatch) -> tuple:
    """A module on the workers' path whose import creates a file; returns (func path, that file)."""
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "imported"
    (folder / "nbq_evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n\ndef run():\n    return 1\n")
    monkeypatch.setenv("PYTHONPATH", str(folder))  # worker subprocesses inherit it
    return "nbq_evil_module:run", marker


def _hand_written(client: redis.Redis, job_id: str, queue: str, **fields) -> Job:
    client.hset(keys.job(job_id, queue), mapping={"queue": queue, "status": "queued", **fields})
    client.rpush(keys.queue(queue), job_id)
    client.rpush(keys.wake(queue), "1")
    return Job(job_id, client, queue=queue)


def test_every_option_a_worker_acts_on_is_signed():
    assert {f.name for f in fields(Options)} == set(signing.OPTION_FIELDS)


@pytest.mark.parametrize("secret", [b"k", os.urandom(64), os.urandom(65), "ünïcode".encode()])
def test_signatures_are_hmac_sha256_of_the_canonical_message(secret):
    """What both sides compute: netstrings of function, source hash, the six options, the id, the data."""
    import hmac

    signer = signing.Signer([secret], "test")
    stored = ["timeout", "30", "retries", "2"]
    options = [b"30", None, None, b"2", None, None]
    head = signing.job_head(b"m:f", b"c0de", options)
    assert head == b"3:m:f,4:c0de,2:30,0:,0:,1:2,0:,0:,"
    data = os.urandom(5000)
    sig = signer.sign_job(signer.job_mac("m:f", "c0de", stored), "job1", data)
    assert sig == hmac.new(secret, b"job," + head + b"4:job1,5000:" + data, "sha256").digest()
    assert signer.job_matches(sig, b"job1", head, data)
    for changed in ((b"job2", head, data), (b"job1", signing.job_head(b"m:g", b"c0de", options), data),
                    (b"job1", head, data[:-1])):
        assert not signer.job_matches(sig, *changed)
    result = signer.sign_outcome(b"job1", b"1", b"finished", b"\x80result", b"", b"")
    assert signer.outcome_matches(result, b"job1", b"1", b"finished", b"\x80result", b"", b"")
    assert not signer.outcome_matches(result, b"job1", b"2", b"finished", b"\x80result", b"", b"")
    assert not signer.outcome_matches(None, b"job1", b"1", b"finished", b"\x80result", b"", b"")
    # the outcome's message is as before summaries existed: signatures recorded then still verify
    assert result == hmac.new(secret, b"outcome,4:job1,1:1,8:finished,0:,0:,7:\x80result", "sha256").digest()


def test_a_result_summary_has_its_own_signature_of_its_own_kind():
    """Checked without the result (which may be 50 MB); bound to the job id, attempt and status."""
    import hmac

    signer = signing.Signer([b"k"], "test")
    summary = b'{"type":"int","text":"5","size":5}'
    sig = signer.sign_summary(b"job1", b"1", b"finished", summary)
    assert sig == hmac.new(b"k", b"summary,4:job1,1:1,8:finished,%d:%b" % (len(summary), summary), "sha256").digest()
    assert signer.summary_matches(sig, b"job1", b"1", b"finished", summary)
    for changed in ((b"job2", b"1", b"finished", summary), (b"job1", b"2", b"finished", summary),
                    (b"job1", b"1", b"failed", summary), (b"job1", b"1", b"finished", summary[:-1] + b" }")):
        assert not signer.summary_matches(sig, *changed)
    assert not signer.summary_matches(None, b"job1", b"1", b"finished", summary)
    # no outcome signature passes for a summary's (a worker signs a result "summary" text as both)
    outcome = signer.sign_outcome(b"job1", b"1", b"finished", summary, b"", b"")
    assert not signer.summary_matches(outcome, b"job1", b"1", b"finished", summary)
    assert signing.Signer([b"old", b"k"], "test").summary_matches(sig, b"job1", b"1", b"finished", summary)


@pytest.mark.parametrize("mode", MODES)
def test_signed_jobs_run_and_their_results_are_checked(start_worker, redis_client, mode):
    start_worker("sig", "--require-signed", *mode)
    q = Queue("sig", redis_client)
    job = q.enqueue_call(nbq_tasks.add, (2, 3), retries=1, timeout=30)
    assert job.result(timeout=20) == 5
    raw = redis_client.hmget(keys.job(job.id), "sig", "rsig")
    assert all(len(value) == 32 for value in raw)  # both signed
    listed = q.enqueue(nbq_tasks.echo, *range(20))
    assert listed.result(timeout=20)[0] == tuple(range(20))
    assert len(redis_client.hget(keys.job(listed.id), "ssig")) == 32  # and the summary of a result
    assert listed.summary()["text"].startswith("((0, 1, 2,") and job.summary() is None  # (none for a small number)
    failed = q.enqueue(nbq_tasks.fail, "no")
    with pytest.raises(JobFailed, match="ValueError: no"):
        failed.result(timeout=20)
    assert len(redis_client.hget(keys.job(failed.id), "rsig")) == 32  # the error is signed too
    assert redis_client.hmget(keys.job(failed.id), "summary", "ssig") == [None, None]  # no result, no summary
    assert q.map(nbq_tasks.echo, [1, 2]).results(timeout=20) == [((1,), {}), ((2,), {})]


@pytest.mark.parametrize("mode", MODES)
def test_tampered_and_unsigned_jobs_are_refused_unimported_and_unpickled(
        start_worker, redis_client, tmp_path, evil_module, mode):
    q = Queue("sig", redis_client)
    evil_func, imported = evil_module
    unpickled = tmp_path / "unpickled"
    jobs = {name: q.enqueue_call(nbq_tasks.add, (1, 2), job_id=name, retries=1)
            for name in ("data", "func", "system", "option", "new_option", "sig", "swapped", "no_sig")}
    tamper = {
        "data": {"data": _evil_data(unpickled)},
        "func": {"func": evil_func},
        "system": {"func": "os:system", "data": pickle.dumps(((f"touch {unpickled}",), {}))},
        "option": {"retries": "1000"},
        "new_option": {"timeout": "0.5"},
        "sig": {"sig": os.urandom(32)},
        "swapped": {"sig": redis_client.hget(keys.job("data", "sig"), "sig")},  # same call, another job's signature
    }
    for name, changes in tamper.items():
        redis_client.hset(keys.job(name, "sig"), mapping=changes)
    redis_client.hdel(keys.job("no_sig", "sig"), "sig")
    hand = _hand_written(redis_client, "hand", "sig", func=evil_func, data=_evil_data(unpickled))
    start_worker("sig", *mode)
    for name in [*tamper, "no_sig", "hand"]:
        expected = UNSIGNED if name in ("no_sig", "hand") else MISMATCH
        with pytest.raises(JobFailed, match=expected) as info:
            (hand if name == "hand" else jobs[name]).result(timeout=20)
        assert "not imported or unpickled" in str(info.value)
    assert Job.fetch("option", redis_client, queue="sig").attempt == 1  # refused once: not retried 1000 times
    assert not imported.exists() and not unpickled.exists()
    assert q.enqueue(nbq_tasks.add, 4, 5).result(timeout=20) == 9  # the worker goes on


def test_unsigned_worker_runs_what_it_is_given_and_says_so_once(start_worker, redis_client, tmp_path,
                                                                monkeypatch, evil_module):
    """The control: without a secret, the probes fire (so the test above could fail), and the
    worker warns at start; a client with a secret refuses the unsigned result."""
    monkeypatch.delenv("NBQUEUE_SECRET")
    evil_func, imported = evil_module
    worker = start_worker("plain", "--inline")
    assert worker.log().count("jobs are unsigned") == 1
    assert "anyone who can write to this Redis can make this worker run any code" in worker.log()
    assert Queue("plain", redis_client).enqueue(nbq_tasks.add, 1, 1).result(timeout=20) == 2
    _hand_written(redis_client, "evil", "plain", func=evil_func, data=pickle.dumps(((), {}))).result(timeout=20)
    assert imported.exists()
    signed_client = Queue("plain", redis_client, secret="client-secret")
    job = signed_client.enqueue(nbq_tasks.add, 1, 2)
    with pytest.raises(SignatureError, match="carries no signature: the worker that ran it has no secret"):
        job.result(timeout=20)
    assert Job.fetch(job.id, redis_client).result() == 3  # unsigned client, unsigned worker
    assert worker.log().count("jobs are unsigned") == 1


def test_a_forged_result_is_refused_without_unpickling(start_worker, redis_client, tmp_path, monkeypatch):
    start_worker("sig", "--inline")
    q = Queue("sig", redis_client)
    one, two = q.enqueue(nbq_tasks.add, 1, 1), q.enqueue(nbq_tasks.add, 2, 2)
    assert one.result(timeout=20) == 2 and two.result(timeout=20) == 4
    key = keys.job(one.id)
    own = redis_client.hgetall(key)
    unpickled = tmp_path / "unpickled"
    evil = pickle.dumps(_Touch(unpickled))
    redis_client.hset(key, "result", evil)
    with pytest.raises(SignatureError, match="signature does not match.*not unpickled"):
        one.result()
    redis_client.hset(key, mapping={k: redis_client.hget(keys.job(two.id), k) for k in (b"result", b"rsig")})
    with pytest.raises(SignatureError, match="signature does not match"):  # another job's signed result
        Job.fetch(one.id, redis_client).result()
    redis_client.hset(key, mapping={k: own[k] for k in (b"result", b"rsig")})
    assert one.result() == 2  # its own again
    redis_client.hset(key, "attempt", "2")  # its own result, claimed for another attempt
    with pytest.raises(SignatureError):
        one.result()
    forged = _hand_written(redis_client, "forged", "nowhere", status="finished", result=evil)
    with pytest.raises(SignatureError, match="carries no signature"):
        forged.result()
    assert not unpickled.exists()
    monkeypatch.delenv("NBQUEUE_SECRET")  # the control: a client without a secret unpickles it
    Job.fetch("forged", redis_client, queue="nowhere").result().close()  # the file object its unpickling opened
    assert unpickled.exists()


def test_old_secrets_verify_and_the_current_one_signs(start_worker, redis_client, monkeypatch):
    monkeypatch.setenv("NBQUEUE_SECRET", "new")
    monkeypatch.setenv("NBQUEUE_OLD_SECRETS", "older, old")
    start_worker("rot")
    old_client = Queue("rot", redis_client, secret="old")
    job = old_client.enqueue(nbq_tasks.add, 1, 2)  # enqueued before the clients got the new secret
    with pytest.raises(SignatureError, match="signature does not match"):  # the worker signs with "new"
        job.result(timeout=20)
    assert Job.fetch(job.id, redis_client, secret=["new", "old"]).result() == 3
    assert Job.fetch(job.id, redis_client).result() == 3  # the environment: new, and old ones
    stranger = Queue("rot", redis_client, secret="stranger").enqueue(nbq_tasks.add, 1, 2)
    with pytest.raises(JobFailed, match=MISMATCH):
        Job.fetch(stranger.id, redis_client).result(timeout=20)


def test_key_file_with_old_secrets(tmp_path, monkeypatch, redis_client):
    key_file = tmp_path / "key"
    key_file.write_text("current\n\nprevious\n")
    monkeypatch.delenv("NBQUEUE_SECRET")
    monkeypatch.setenv("NBQUEUE_SECRET_FILE", str(key_file))
    signer = signing.default(redis_client)
    head = signing.job_head(b"m:f", b"", [None] * 6)

    def sign(by: signing.Signer) -> bytes:
        return by.sign_job(by.job_mac("m:f", "", []), "id", b"data")

    assert signer.job_matches(sign(signing.Signer([b"previous"], "x")), b"id", head, b"data")
    assert sign(signer) == sign(signing.Signer([b"current"], "x"))
    assert not signer.job_matches(sign(signing.Signer([b"other"], "x")), b"id", head, b"data")
    assert not signer.job_matches(sign(signer), b"id2", head, b"data")
    key_file.write_text("\n")
    monkeypatch.setenv("NBQUEUE_SECRET_FILE", str(tmp_path / "key"))  # same name: cached ...
    monkeypatch.setenv("NBQUEUE_OLD_SECRETS", "x")  # ... until the environment changes
    with pytest.raises(SecretError, match="is empty"):
        signing.default(redis_client)
    monkeypatch.setenv("NBQUEUE_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(SecretError, match="Can't read the signing key file"):
        signing.default(redis_client)
    with pytest.raises(SecretError, match="empty"):
        Queue("x", redis_client, secret="")


def test_require_signed_without_a_secret_exits_with_one_line(redis_url):
    env = {k: v for k, v in os.environ.items() if k != "NBQUEUE_SECRET"}
    done = subprocess.run([sys.executable, "-m", "nbqueue.cli", "worker", "--require-signed", "--url", redis_url],
                          cwd=str(TESTS_DIR), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip() and "nbqueue: using Redis" not in line]
    assert len(lines) == 1 and "--require-signed: no signing secret is set" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def embedded_env(monkeypatch, wait_for):
    """No configuration at all: the embedded server, in private folders, and no secret."""
    path = tempfile.mkdtemp(prefix="nbqg-")
    monkeypatch.setenv("NBQUEUE_RUNTIME_DIR", os.path.join(path, "run"))
    monkeypatch.setenv("NBQUEUE_DATA_DIR", os.path.join(path, "data"))
    monkeypatch.setenv("NBQUEUE_URL", "embedded")
    monkeypatch.delenv("NBQUEUE_SECRET")
    server = EmbeddedServer()
    yield server
    server.stop()
    shutil.rmtree(path, ignore_errors=True)


def test_the_embedded_server_signs_with_no_configuration(embedded_env, tmp_path):
    server = embedded_env
    worker = WorkerProcess(["emb", "--inline", "--require-signed"], TESTS_DIR, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        secret_file = server.secret_path
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert len(secret_file.read_text().strip()) == 64
        assert f"secret from the embedded server's key file {secret_file}" in worker.log()
        q = Queue("emb", server.url)  # this client too has no secret configured
        job = q.enqueue(nbq_tasks.add, 20, 22)
        assert len(q.connection.hget(keys.job(job.id), "sig")) == 32
        assert job.result(timeout=20) == 42
        q.connection.hset(keys.job(job.id), "result", pickle.dumps(41))
        with pytest.raises(SignatureError):
            Job.fetch(job.id, server.url).result()
    finally:
        worker.stop()


def test_racing_starters_agree_on_one_secret():
    tmp_path = Path(tempfile.mkdtemp(prefix="nbqr-"))  # short: the socket path is checked
    data = tmp_path / "data"
    code = ("import sys; from nbqueue.server import EmbeddedServer; "
            "print(EmbeddedServer(sys.argv[1], sys.argv[2]).secret().decode())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run"), str(data)],
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outputs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert outputs == {(data / "nbqueue.secret").read_text().strip()}
    assert sorted(os.listdir(data)) == ["nbqueue.secret"]  # no temporary file left behind
    (data / "nbqueue.secret").chmod(0o644)
    from nbqueue.server import ServerError

    with pytest.raises(ServerError, match="mode 0600"):
        EmbeddedServer(tmp_path / "run", data).secret()
    shutil.rmtree(tmp_path)


def test_the_python_api_takes_the_secret(redis_client, monkeypatch):
    """``Queue(secret=)``, ``Worker(secret=)``, ``Job.fetch(secret=)``; a burst worker in this process."""
    from nbqueue import Worker
    from nbqueue.errors import WorkerError

    monkeypatch.delenv("NBQUEUE_SECRET")
    with pytest.raises(WorkerError, match="--require-signed: no signing secret"):
        Worker(["api"], redis_client, require_signed=True)
    ours, theirs = Queue("api", redis_client, secret="ours"), Queue("api", redis_client, secret="theirs")
    good, bad = ours.enqueue(nbq_tasks.add, 1, 2), theirs.enqueue(nbq_tasks.add, 1, 2)
    assert Worker(["api"], redis_client, secret=["ours", "older"], inline=True, burst=True,
                  require_signed=True).work() == 2
    assert good.result() == 3 and Job.fetch(good.id, redis_client, secret="ours").result() == 3
    with pytest.raises(JobFailed, match=MISMATCH):
        bad.result()
