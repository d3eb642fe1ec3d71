"""A restricted Redis user (ACL) and TLS: nbqueue runs in full with only the rules the README gives.

Each test starts its own server (never the session's, never 6379), creates the user with
``ACL_RULES``, and runs everything nbqueue does as that user, with real workers: enqueue, both
worker modes, results, output and progress, failures, retries, delays, requeue, cancel, groups,
``info`` and ``info --watch``, the notebook watcher, a lost worker's recovery, a clean stop. The
server's ``ACL LOG`` must stay empty (nothing was refused), and the same user must be refused
everything outside ``nbq:*``.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
import redis

import chaos_tasks
import nbq_tasks
from conftest import MODES, TESTS_DIR, WorkerProcess, wait_for
from nbqueue import Group, Job, JobCanceled, JobFailed, Queue, keys
from nbqueue.info import render, snapshot
from nbqueue.watcher import Watcher
from servers import PrivateRedis

USER, PASSWORD = "nbq-test", "s3cret-Pass"
# The README's rules, word for word: keys and channels under nbq:, and the commands nbqueue sends
# (directly, or from its scripts: a script's own calls are checked against the user's rules too).
ACL_RULES = (
    "on ~nbq:* resetchannels &nbq:* &nbq:{*}:ev:* -@all "
    "+ping +info +select +client|setinfo +multi +exec +evalsha +script|load +script|exists "
    "+blpop +lpop +lpush +rpush +llen +lindex +lrange +lrem +ltrim +hget +hmget +hgetall +hset +hdel "
    "+exists +del +expire +persist +get +set +sadd +smembers +zadd +zrem +zrange +zrangebyscore +zscore +zcard +time "
    "+publish +subscribe +unsubscribe +psubscribe +punsubscribe"
).split()
OLD_SERVER_LACKS = "+client|setinfo"  # Redis < 7.2 has no CLIENT SETINFO (and redis-py then sends none)


def create_user(admin: redis.Redis) -> list:
    """Create the restricted user; returns the rules used (without the one an old server lacks)."""
    rules = list(ACL_RULES)
    try:
        admin.execute_command("ACL", "SETUSER", USER, "reset", f">{PASSWORD}", *rules)
    except redis.ResponseError as exc:
        if OLD_SERVER_LACKS not in str(exc):
            raise
        rules.remove(OLD_SERVER_LACKS)
        admin.execute_command("ACL", "SETUSER", USER, "reset", f">{PASSWORD}", *rules)
    admin.execute_command("ACL", "LOG", "RESET")
    return rules


class Workers:
    """Worker subprocesses on a private server (killed at the end)."""

    def __init__(self, url: str, tmp_path: Path):
        self.url, self.tmp_path, self.started = url, tmp_path, []

    def start(self, *args: str) -> WorkerProcess:
        worker = WorkerProcess([*args, "--url", self.url], TESTS_DIR, self.tmp_path / f"w{len(self.started)}.log")
        self.started.append(worker)
        return worker.wait_ready()

    def stop(self) -> None:
        for worker in self.started:
            worker.stop()


def exercise(url: str, tmp_path: Path, mode: list) -> None:
    """Everything nbqueue does, as the user of ``url``."""
    workers = Workers(url, tmp_path)
    try:
        _exercise(url, tmp_path, mode, workers)
    finally:
        workers.stop()


def _exercise(url: str, tmp_path: Path, mode: list, workers: Workers) -> None:
    worker = workers.start("acl", "-c", "2", "--name", "acl-worker", *mode)
    q = Queue("acl", url)  # a URL: connect() checks it (PING) and makes the client
    assert q.enqueue(nbq_tasks.add, 1, 2).result(timeout=20) == 3

    flags = tmp_path / "flags"
    flags.mkdir()
    chatty = q.enqueue(chaos_tasks.long_run, str(flags), 0, report=True)  # output and progress
    assert chatty.result(timeout=20)["pid"] > 0
    assert any("output of run" in line for line in chatty.logs()) and chatty.progress["done"] == 1

    failing = q.enqueue(nbq_tasks.fail, "acl boom")
    with pytest.raises(JobFailed, match="acl boom"):
        failing.result(timeout=20)
    assert failing.id in q.failed_job_ids and [j.id for j in q.failed_jobs] == [failing.id]
    failing.requeue()
    with pytest.raises(JobFailed):
        failing.result(timeout=20)
    retried = q.enqueue_call(nbq_tasks.flaky, (str(tmp_path / "calls"), 1), retries=1, retry_delay=0.1)
    assert retried.result(timeout=20) == 2  # failed once, scheduled, promoted, ran again
    assert q.enqueue_in(0.3, nbq_tasks.add, 2, 2).result(timeout=20) == 4

    started = tmp_path / "busy"
    running = q.enqueue(nbq_tasks.busy, 60, str(started))
    wait_for(started.exists, timeout=20, message="the job to cancel starts")
    assert running.cancel(wait=15) == "canceled"
    with pytest.raises(JobCanceled):
        running.result(timeout=1)
    assert q.enqueue_in(60, nbq_tasks.add, 1, 1).cancel() == "canceled"

    idle = Queue("acl-idle", q.connection)  # no worker serves it
    many = idle.enqueue_many([(nbq_tasks.add, (i, i)) for i in range(1200)])  # two chunks: MULTI/EXEC
    assert len(idle) == 1200 and idle.empty() == 1200 and many[0].status == "canceled"
    group = q.map(nbq_tasks.echo, range(5))
    assert [r[0][0] for r in group.results(timeout=30)] == list(range(5))
    assert group.statuses()["finished"] == 5 and isinstance(group, Group)

    snap = snapshot(q.connection)
    assert [w.name for w in snap.workers] == ["acl-worker"] and "acl" in render(snap)
    _watch(url, q)

    # a lost worker: its job is recovered (recover.lua) by a heartbeat and re-run
    doomed = workers.start("acl-lost", "--name", "acl-doomed", *mode)
    lost_flags = tmp_path / "lost"
    lost_flags.mkdir()
    lost = Queue("acl-lost", q.connection).enqueue(chaos_tasks.long_run, str(lost_flags), 60, 0)
    wait_for(lambda: list(lost_flags.iterdir()), timeout=20, message="the doomed worker's job starts")
    doomed.signal(signal.SIGKILL)
    workers.start("acl-lost", *mode)
    lost.result(timeout=40)
    assert Job.fetch(lost.id, q.connection).lost == 1

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.log()
    assert "Traceback" not in worker.log() and "error in the heartbeat" not in worker.log(), worker.log()


def _watch(url: str, q: Queue) -> None:
    """The notebook's watcher (SUBSCRIBE) and ``nbqueue info --watch`` (PSUBSCRIBE)."""
    seen: list = []
    everything: list = []
    watcher = Watcher(q.connection)
    first, second = q.enqueue_in(0.5, nbq_tasks.add, 3, 3), q.enqueue_in(60, nbq_tasks.add, 1, 1)
    sub = watcher.watch([first.id, second.id], on_event=seen.append)
    dashboard = watcher.watch(on_event=everything.append, all_jobs=True)
    assert first.result(timeout=20) == 6

    def got(events: list, job: Job, status: str) -> bool:
        return watcher.catch_up(timeout=2) and any(e.get("id") == job.id and e.get("status") == status for e in events)

    wait_for(lambda: got(seen, first, "finished") and got(everything, first, "finished"), message="watched events")
    dashboard.close()  # PUNSUBSCRIBE, while one job is still watched
    sub.remove([first.id])  # UNSUBSCRIBE
    assert second.cancel() == "canceled"
    wait_for(lambda: got(seen, second, "canceled"), message="the watched job's canceled event")
    sub.close()

    cli = subprocess.Popen([sys.executable, "-m", "nbqueue.cli", "info", "--watch", "--url", url],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list = []
        threading.Thread(target=lambda: lines.extend(iter(cli.stdout.readline, "")), daemon=True).start()
        wait_for(lambda: "events:" in "".join(lines), timeout=20, message="info --watch starts")
        jobs: list = []

        def one_more_seen() -> bool:  # it subscribes after printing "events:", at a moment we can't see
            jobs.append(q.enqueue(nbq_tasks.add, 4, 4))
            assert jobs[-1].result(timeout=20) == 8
            return any(f"{job.id} finished" in "".join(lines) for job in jobs)

        wait_for(one_more_seen, timeout=30, interval=0.2, message=f"a finished event in info --watch: {lines[-1:]}")
        assert "acl-worker" in "".join(lines)  # the snapshot it printed first
    finally:
        cli.terminate()
        cli.wait(timeout=10)


def assert_restricted(url: str, admin: redis.Redis) -> None:
    """The user can't touch anything outside nbq:*, even from a script it loads."""
    admin.set("outside", "kept")
    user = redis.Redis.from_url(url)
    try:
        for refused in (lambda: user.set("outside", "x"), lambda: user.get("outside"), lambda: user.get("nbq"),
                        lambda: user.delete("outside"), lambda: user.publish("other", "x"),
                        lambda: user.keys("*"), lambda: user.flushall(), lambda: user.config_get("*"),
                        lambda: user.execute_command("EVAL", "return 1", 0),
                        lambda: user.execute_command("ACL", "SETUSER", USER, "+@all")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
        sha = user.script_load("return redis.call('SET', 'outside', 'from a script')")
        with pytest.raises(redis.ResponseError, match="(?i)no permissions|noperm|can't access"):
            user.evalsha(sha, 0)
        assert user.set("nbq:mine", "ok") and user.get("nbq:mine") == b"ok"  # and this is allowed
    finally:
        user.close()
    assert admin.get("outside") == b"kept"


def acl_log(admin: redis.Redis) -> list:
    return [{k: v for k, v in entry.items() if k in ("reason", "context", "object", "username")}
            for entry in admin.acl_log()]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis.unix(tmp_path / "redis") as private:
        yield private


@pytest.mark.parametrize("mode", MODES)
def test_a_restricted_user_runs_nbqueue(server: PrivateRedis, tmp_path: Path, mode: list):
    admin = server.client(timeout=5)
    create_user(admin)
    url = f"unix://{USER}:{PASSWORD}@{server.unix_socket}?db=1"  # a db of its own: SELECT too
    exercise(url, tmp_path, mode)
    assert acl_log(admin) == []  # nothing nbqueue sent was refused
    assert_restricted(url, redis.Redis.from_url(f"{server.url}?db=1"))


# --- TLS ----------------------------------------------------------------------------------------
def tls_candidates() -> list:
    """Server binaries to try for TLS: Debian's redis-server has it, the embedded valkey has not."""
    from nbqueue.server import find_binary

    found = ["/usr/bin/redis-server", shutil.which("redis-server"), shutil.which("valkey-server"), find_binary()]
    return list(dict.fromkeys(b for b in found if b and Path(b).exists()))


def start_tls_server(tmp_path: Path, certs: dict) -> Optional[TLSRedis]:
    """The first candidate that starts with TLS on (and answers a TLS PING), or None."""
    for i, binary in enumerate(tls_candidates()):
        server = TLSRedis(tmp_path / f"redis-{i}", binary, certs)
        try:
            server.start()
            return server
        except RuntimeError:  # e.g. "Failed finding TLS support": this build has none
            server.kill()
    return None


def make_certificates(folder: Path) -> dict:
    """A self-signed CA and a server certificate it signed, for 127.0.0.1 (openssl CLI)."""
    folder.mkdir()
    names = [f"{who}.{ext}" for who in ("server", "client") for ext in ("key", "csr", "crt")]
    paths = {name: str(folder / name) for name in ("ca.key", "ca.crt", *names)}
    (folder / "san").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", paths["ca.key"], "-out", paths["ca.crt"],
         "-days", "2", "-subj", "/CN=nbqueue test CA"],
        ["req", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", paths["server.key"], "-out", paths["server.csr"],
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", paths["server.csr"], "-CA", paths["ca.crt"], "-CAkey", paths["ca.key"],
         "-CAcreateserial", "-out", paths["server.crt"], "-days", "2", "-extfile", str(folder / "san")],
        ["req", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", paths["client.key"], "-out", paths["client.csr"],
         "-subj", "/CN=nbqueue test client"],
        ["x509", "-req", "-in", paths["client.csr"], "-CA", paths["ca.crt"], "-CAkey", paths["ca.key"],
         "-CAcreateserial", "-out", paths["client.crt"], "-days", "2"],
    ]
    for step in steps:
        subprocess.run(["openssl", *step], check=True, capture_output=True, timeout=60)
    return paths


class TLSRedis(PrivateRedis):
    """A private server that speaks only TLS, on 127.0.0.1 and a port of its own."""

    def __init__(self, data_dir: Path, binary: str, certs: dict):
        super().__init__(data_dir, host="127.0.0.1", port=_free_port(), binary=binary)
        self.certs = certs
        self.user = ""  # "user:password@" once the tests go on as the restricted user

    def command(self) -> list:
        return super().command() + [
            "--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.certs["server.crt"],
            "--tls-key-file", self.certs["server.key"], "--tls-ca-cert-file", self.certs["ca.crt"],
            "--tls-auth-clients", "no"]

    @property
    def url(self) -> str:
        return f"rediss://{self.user}127.0.0.1:{self.port}/0?ssl_ca_certs={self.certs['ca.crt']}"


def _free_port() -> int:
    from servers import free_port

    port = free_port("127.0.0.1")
    assert port != 6379
    return port


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command to make the test certificates")
def test_tls_with_a_self_signed_ca(tmp_path: Path):
    certs = make_certificates(tmp_path / "certs")
    server = start_tls_server(tmp_path, certs)
    if server is None:
        pytest.skip(f"no TLS-capable redis-server/valkey-server among {tls_candidates()} (the embedded valkey "
                    f"has no TLS; Debian's redis-server has: apt-get install redis-server)")
    try:
        admin = server.client(timeout=5)
        assert admin.ping()
        plain = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2, retry=None)
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):  # the server speaks TLS only
            plain.ping()
        create_user(admin)
        server.user = f"{USER}:{PASSWORD}@"
        exercise(server.url, tmp_path, [])
        assert acl_log(admin) == []
        assert_restricted(server.url, admin)
        untrusted = server.url.split("?")[0]  # no CA given: the system's CAs don't know ours
        with pytest.raises(redis.ConnectionError, match="(?i)certificate"):
            redis.Redis.from_url(untrusted, socket_timeout=5).ping()

        admin.config_set("tls-auth-clients", "yes")  # now clients must show a certificate of the CA too
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            redis.Redis.from_url(server.url, socket_timeout=5, retry=None).ping()
        mutual = f"{server.url}&ssl_certfile={certs['client.crt']}&ssl_keyfile={certs['client.key']}"
        assert Queue("tls", mutual).enqueue(nbq_tasks.add, 5, 5).id  # the README's URL form, as given
        assert redis.Redis.from_url(mutual, socket_timeout=5).llen(keys.queue("tls")) == 1
    finally:
        server.kill()
