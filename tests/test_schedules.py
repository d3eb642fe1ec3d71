"""Schedules in Redis, fired by the workers' heartbeats: rules, one job per tick, catch-up, list/remove,
hostile cases."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import redis

import nbq_tasks
import nbqueue
from conftest import wait_for
from nbqueue import Queue, ScheduleError, keys
from nbqueue.rules import Rule
from nbqueue.schedule import MAX_CATCH_UP

BERLIN = ZoneInfo("Europe/Berlin")


def ms(*args, tz=timezone.utc) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


# --- rules: pure arithmetic, no Redis ---------------------------------------------------------

def test_every_ticks_on_a_fixed_grid_from_the_first_due_time():
    rule = Rule.make(every=timedelta(minutes=5))
    assert rule.every_ms == 300_000 and rule.describe() == "every 5m"
    assert rule.next_after(1_000) == 301_000  # the first tick: one period from now
    assert rule.next_after(1_000_000, anchor=600_000) == 1_200_000  # strictly after, on the grid
    assert rule.next_after(1_200_000, anchor=600_000) == 1_500_000
    assert rule.next_after(100, anchor=600_000) == 600_000  # a tick still ahead is the next one
    assert rule.ticks(600_000, 1_250_000, 100) == [600_000, 900_000, 1_200_000]
    assert rule.ticks(600_000, 1_250_000, 2) == [900_000, 1_200_000]  # the last ones, oldest first
    assert Rule.make(every=1.5).every_ms == 1500


def test_every_after_a_year_away_is_computed_not_walked():
    rule = Rule.make(every=1)
    start = time.perf_counter()
    late = rule.ticks(0, 365 * 86400 * 1000, MAX_CATCH_UP)
    assert len(late) == MAX_CATCH_UP and late[-1] == 365 * 86400 * 1000
    assert rule.next_after(365 * 86400 * 1000, anchor=0) == 365 * 86400 * 1000 + 1000
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("every", [0, -1, 0.5, math.nan, math.inf, -math.inf, 10 ** 12, True, "60", None])
def test_bad_every_is_refused(every):
    with pytest.raises(ScheduleError):
        Rule.make(every=every) if every is not None else Rule.make()


def test_cron_weekdays_at_nine_in_a_time_zone():
    rule = Rule.make(cron="0  9 * *   1-5", tz="Europe/Berlin")
    assert rule.cron == "0 9 * * 1-5" and rule.describe() == "cron 0 9 * * 1-5 (Europe/Berlin)"
    friday_ten = ms(2026, 1, 2, 10, 0, tz=BERLIN)
    assert rule.next_after(friday_ten) == ms(2026, 1, 5, 9, 0, tz=BERLIN)  # Monday
    assert rule.next_after(ms(2026, 1, 5, 9, 0, tz=BERLIN)) == ms(2026, 1, 6, 9, 0, tz=BERLIN)  # strictly after
    weekdays = Rule.make(cron="0 9 * * mon-fri", tz=BERLIN)
    assert weekdays.next_after(friday_ten) == ms(2026, 1, 5, 8, 0)  # 9:00 CET in UTC


@pytest.mark.parametrize("expr, start, expected", [
    ("*/15 * * * *", (2026, 1, 1, 0, 7), [(2026, 1, 1, 0, 15), (2026, 1, 1, 0, 30)]),
    ("0 0 1,15 * *", (2026, 1, 2), [(2026, 1, 15), (2026, 2, 1)]),
    ("0 0 29 2 *", (2026, 1, 1), [(2028, 2, 29), (2032, 2, 29)]),  # leap days only
    ("30 23 31 * *", (2026, 4, 1), [(2026, 5, 31, 23, 30), (2026, 7, 31, 23, 30)]),  # skips 30-day months
    ("0 12 * jan,jul sun", (2026, 1, 1), [(2026, 1, 4, 12), (2026, 1, 11, 12)]),
    ("59 23 31 12 *", (2026, 12, 31, 23, 59), [(2027, 12, 31, 23, 59), (2028, 12, 31, 23, 59)]),
])
def test_cron_next_times(expr, start, expected):
    rule = Rule.make(cron=expr)
    got, t = [], ms(*start)
    for _ in expected:
        t = rule.next_after(t)
        got.append(t)
    assert got == [ms(*e) for e in expected]


def test_cron_across_dst_in_berlin():
    daily = Rule.make(cron="30 2 * * *", tz="Europe/Berlin")
    # spring forward (29 March 2026, 02:00 -> 03:00): 02:30 does not exist; it runs once, right after the gap
    t = daily.next_after(ms(2026, 3, 28, 12, tz=BERLIN))
    assert t == ms(2026, 3, 29, 1, 0)  # 03:00 CEST
    assert daily.next_after(t) == ms(2026, 3, 30, 0, 30)  # 02:30 CEST
    # fall back (25 October 2026, 03:00 -> 02:00): 02:30 happens twice; a daily job runs once
    t = daily.next_after(ms(2026, 10, 24, 12, tz=BERLIN))
    assert t == ms(2026, 10, 25, 0, 30)  # 02:30 CEST
    assert daily.next_after(t) == ms(2026, 10, 26, 1, 30)  # the next day, 02:30 CET
    # every 30 minutes runs in both 02:xx hours: wall-clock minutes that happen twice
    half = Rule.make(cron="*/30 * * * *", tz="Europe/Berlin")
    t, seen = ms(2026, 10, 25, 0, 0), []  # 02:00 CEST
    for _ in range(4):
        t = half.next_after(t)
        seen.append(t)
    assert [b - a for a, b in zip([ms(2026, 10, 25, 0, 0)] + seen, seen)] == [1_800_000] * 4


def test_cron_missed_ticks_are_listed_last_ones_first_capped():
    rule = Rule.make(cron="* * * * *")
    assert rule.ticks(ms(2026, 1, 1, 0, 0), ms(2026, 1, 1, 0, 3, 30), 100) == [
        ms(2026, 1, 1, 0, m) for m in range(4)]
    assert rule.ticks(ms(2026, 1, 1, 0, 0), ms(2026, 1, 1, 10, 0), 3) == [
        ms(2026, 1, 1, 9, 58), ms(2026, 1, 1, 9, 59), ms(2026, 1, 1, 10, 0)]


@pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "61 * * * *", "* * * *", "*/0 * * * *",
                                  "0 9 * * 1-5 extra", "@daily", "", 42, "x" * 300])
def test_a_cron_that_never_matches_or_is_malformed_is_refused(expr):
    with pytest.raises(ScheduleError):
        Rule.make(cron=expr)


def test_rule_options_are_exclusive_and_time_zones_checked():
    for kwargs in ({}, {"every": 5, "cron": "* * * * *"}, {"every": 5, "tz": "UTC"},
                   {"cron": "* * * * *", "tz": "Mars/Olympus"}, {"cron": "* * * * *", "tz": "../etc/passwd"},
                   {"cron": "* * * * *", "tz": 3}):
        with pytest.raises(ScheduleError):
            Rule.make(**kwargs)
    assert Rule.make(cron="* * * * *", tz=ZoneInfo("America/New_York")).timezone == "America/New_York"
    for junk in ("every:0", "every:x", "every:", "cron:UTC:61 * * * *", "cron:Nowhere/Else:* * * * *", "daily", ""):
        with pytest.raises(ValueError):
            Rule.from_stored(junk)


# --- in Redis, with real workers ----------------------------------------------------------------

def due_now(client, queue: str = "sched") -> list:
    """The schedules of ``queue`` due now, as a sweep reads them (``sweep.lua``'s third part)."""
    return keys.run(client, "sweep", [keys.active(queue), keys.beat(queue), keys.scheduled(queue),
                                      keys.schedules(queue)], [5000, 2500, 10, 10])[2]


def scheduled_jobs(client, name: str) -> list:
    """Every job hash a schedule queued, by tick."""
    jobs = []
    for key in client.scan_iter(match="nbq:{*}:job:*"):
        fields = client.hgetall(key)
        if fields.get(b"schedule") == name.encode():
            jobs.append({"id": key.decode().rsplit(":", 1)[1], **{k.decode(): v for k, v in fields.items()}})
    return sorted(jobs, key=lambda j: int(j["tick"]))


def redis_ms(client) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def test_every_second_under_three_workers_queues_one_job_per_tick(redis_client, start_worker):
    q = Queue("sched")
    made = q.schedule(nbq_tasks.add, 1, 2, every=1, name="tick")
    assert made.name == "tick" and made.rule == "every 1s" and made.queue == "sched"
    workers = [start_worker("sched", "--inline", "--name", f"w{i}") for i in range(3)]
    wait_for(lambda: len(scheduled_jobs(redis_client, "tick")) >= 10, timeout=30, message="10 ticks")
    assert q.unschedule("tick") is True
    jobs = scheduled_jobs(redis_client, "tick")
    ticks = [int(j["tick"]) for j in jobs]
    assert len(set(ticks)) == len(ticks), "a tick was queued twice"
    assert all(b - a == 1000 for a, b in zip(ticks, ticks[1:])), f"a tick was lost or off the grid: {ticks}"
    assert ticks[0] == int(made.next_run.timestamp() * 1000)
    assert {nbqueue.Job.fetch(j["id"]).result(timeout=20) for j in jobs} == {3}
    for w in workers:
        assert w.proc.poll() is None
    assert "Traceback" not in "".join(w.log() for w in workers)


@pytest.mark.parametrize("missed, every", [("once", 1), ("all", 1), ("once", 6), ("skip", 6)])
def test_ticks_missed_while_no_worker_ran(redis_client, start_worker, missed, every):
    """No worker for 3 s, then one: "once" queues one job for the missed ticks, "all" one per missed tick,
    "skip" none for a tick more than 2.5 s late (so with every=1 the latest tick, never late, still runs)."""
    q = Queue("sched")
    made = q.schedule_call(nbq_tasks.add, (1, 2), every=every, name="late", missed=missed)
    first = int(made.next_run.timestamp() * 1000)
    wait_for(lambda: redis_ms(redis_client) >= first + 3000, timeout=15, message="3 s of missed ticks")
    assert scheduled_jobs(redis_client, "late") == []  # nobody fires without a worker
    start_worker("sched", "--inline")
    wait_for(lambda: scheduled_jobs(redis_client, "late"), timeout=20, message="a job")
    jobs = scheduled_jobs(redis_client, "late")
    batch = [j for j in jobs if j["enqueued_at"] == min(j["enqueued_at"] for j in jobs)]  # the first firing
    ticks = [int(j["tick"]) for j in batch]
    fired_at = float(batch[0]["enqueued_at"]) * 1000
    if missed == "all":
        assert len(ticks) >= 4 and ticks[:4] == [first + i * 1000 for i in range(4)], ticks
    elif missed == "once" and every == 1:
        assert len(ticks) == 1 and ticks[0] >= first + 3000, ticks  # the latest of them
    elif missed == "once":
        assert ticks == [first], ticks  # late, but run
        assert fired_at - first >= 3000
    else:
        assert ticks == [first + 6000], ticks  # the missed one skipped: the next one runs on time
        assert fired_at - ticks[0] < 2500
    assert nbqueue.Job.fetch(batch[-1]["id"]).result(timeout=10) == 3


def nbqueue_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbqueue.cli", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_list_and_remove_through_the_api_and_the_command(redis_client, start_worker):
    q = Queue("sched")
    assert nbqueue.schedules() == [] and "no schedules" in nbqueue_cli("schedule", "list").stdout
    q.schedule(nbq_tasks.add, 1, 2, every=3600, name="hourly")
    q.schedule_call(nbq_tasks.add, (2, 3), cron="0 9 * * 1-5", timezone="Europe/Berlin", name="morning",
                    timeout=30, retries=2, catch_up=True)
    q.schedule(nbq_tasks.echo, every=1, name="often")
    start_worker("sched", "--inline")
    wait_for(lambda: [s for s in nbqueue.schedules() if s.name == "often" and s.last_status == "finished"],
             timeout=20, message="the often schedule's job finished")
    listed = {s.name: s for s in nbqueue.schedules()}
    assert set(listed) == {"often", "hourly", "morning"} and next(iter(listed)) == "often"  # next due first
    often, morning = listed["often"], listed["morning"]
    assert often.fired >= 1 and often.last_job_id and often.func == "nbq_tasks:echo" and often.error is None
    assert nbqueue.Job.fetch(often.last_job_id).result(timeout=10) == ((), {})
    assert morning.rule == "cron 0 9 * * 1-5 (Europe/Berlin)" and morning.missed == "all" and morning.fired == 0
    assert morning.next_run.astimezone(BERLIN).hour == 9 and morning.next_run.astimezone(BERLIN).weekday() < 5
    assert morning.last_job_id is None and morning.last_status is None
    out = nbqueue_cli("schedule", "list")
    assert out.returncode == 0, out.stderr
    for text in ("hourly", "every 1h", "morning", "cron 0 9 * * 1-5 (Europe/Berlin)"):
        assert text in out.stdout
    # "often" fires every second, so its last job may be a newer one than read above: one of its jobs
    shown = re.search(r"^often .* ([0-9a-f]{32}) ", out.stdout, re.M)
    assert shown and redis_client.hget(keys.job(shown.group(1)), "schedule") == b"often", out.stdout
    removed = nbqueue_cli("schedule", "remove", "hourly")
    assert removed.returncode == 0 and "removed schedule hourly" in removed.stdout
    again = nbqueue_cli("schedule", "remove", "hourly")
    assert again.returncode == 1 and "no schedule named 'hourly'" in again.stderr and "Traceback" not in again.stderr
    assert nbqueue.Schedule.remove("morning") is True and nbqueue.Schedule.remove("morning") is False
    assert [s.name for s in nbqueue.schedules()] == ["often"]
    assert q.unschedule("often") and redis_client.exists(keys.schedule("often", "sched"), keys.schedules("sched")) == 0
    assert "schedule" in nbqueue_cli("--help").stdout and nbqueue_cli("schedule", "list", "--help").returncode == 0


def test_a_job_options_are_those_of_enqueue_call_and_signed(redis_client, start_worker):
    q = Queue("sched")
    q.schedule_call(nbq_tasks.takes_timeout, (7,), {"timeout": "mine"}, every=1, name="opts", timeout=30,
                    result_ttl=60, retries=1)
    start_worker("sched", "--inline")
    job_id = wait_for(lambda: nbqueue.schedules()[0].last_job_id, timeout=20, message="a fired job")
    assert nbqueue.Job.fetch(job_id).result(timeout=10) == {"x": 7, "timeout": "mine", "result_ttl": None,
                                                            "job_id": None}
    fields = redis_client.hgetall(keys.job(job_id))
    assert fields[b"timeout"] == b"30" and fields[b"retries"] == b"1" and len(fields[b"sig"]) == 32
    assert 0 < redis_client.ttl(keys.job(job_id)) <= 60
    for bad in ({"retries": -1}, {"timeout": math.nan}, {"colour": "red"}):
        with pytest.raises(nbqueue.EnqueueError):
            q.schedule_call(nbq_tasks.add, (1, 2), every=5, name="bad", **bad)
    for bad in ({"name": "no spaces"}, {"name": ""}, {"catch_up": "yes"}, {"missed": "sometimes"},
                {"missed": "skip", "catch_up": True}):
        with pytest.raises(ScheduleError):
            q.schedule_call(nbq_tasks.add, (1, 2), **{"every": 5, "name": "bad", **bad})
    with pytest.raises(nbqueue.EnqueueError, match="lambda"):
        q.schedule(lambda: 1, every=5)
    assert [s.name for s in nbqueue.schedules()] == ["opts"]  # nothing of the refused ones was stored


def test_scheduling_a_name_again_replaces_it(redis_client):
    q = Queue("sched")
    q.schedule(nbq_tasks.add, 1, 2, every=60, name="same")
    Queue("other").schedule(nbq_tasks.echo, cron="*/5 * * * *", name="same")
    (only,) = nbqueue.schedules()
    assert (only.queue, only.func, only.rule) == ("other", "nbq_tasks:echo", "cron */5 * * * * (UTC)")
    assert redis_client.zcard(keys.schedules("other")) == 1 and redis_client.zcard(keys.schedules("sched")) == 0
    assert not redis_client.exists(keys.schedule("same", "sched"))  # moved to the other queue's keys, whole
    assert Queue("sched").schedule(nbq_tasks.add, 1, 2, every=60).name == "nbq_tasks.add"  # default name: the path


def test_a_schedule_made_by_a_process_that_ended_keeps_running(redis_client, start_worker):
    code = ("import nbq_tasks; from nbqueue import Queue; "
            "Queue('sched').schedule(nbq_tasks.add, 20, 22, every=1, name='orphan')")
    made = subprocess.run([sys.executable, "-c", code], cwd=nbq_tasks.__file__.rsplit("/", 1)[0], timeout=60,
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    start_worker("sched", "--inline")
    job_id = wait_for(lambda: nbqueue.schedules()[0].last_job_id, timeout=20, message="a fired job")
    assert nbqueue.Job.fetch(job_id).result(timeout=10) == 42


# --- hostile ------------------------------------------------------------------------------------

def test_a_function_whose_module_the_worker_lacks_fails_each_tick_clearly_and_the_schedule_goes_on(
        redis_client, start_worker, tmp_path, monkeypatch):
    (tmp_path / "only_here.py").write_text("def job():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here

    Queue("sched").schedule(only_here.job, every=1, name="gone")
    start_worker("sched", "--inline")  # in tests/: no only_here module there

    def two_failed():
        jobs = scheduled_jobs(redis_client, "gone")
        return len(jobs) >= 2 and all(j["status"] == b"failed" for j in jobs[:2]) and jobs

    jobs = wait_for(two_failed, timeout=30, message="two failed ticks")
    with pytest.raises(nbqueue.JobFailed, match="only_here"):
        nbqueue.Job.fetch(jobs[0]["id"]).result(timeout=5)
    assert nbqueue.schedules()[0].error is None  # the schedule itself is fine


def test_junk_in_redis_is_logged_and_skipped_and_other_schedules_fire(redis_client, start_worker):
    q = Queue("sched")
    q.schedule(nbq_tasks.add, 1, 1, every=1, name="good")
    for name in ("norule", "badrule", "badqueue", "badopts", "badfunc", "forged", "unsigned"):
        q.schedule(nbq_tasks.add, 1, 2, every=1, name=name)
    redis_client.hdel(keys.schedule("norule", "sched"), "rule")
    redis_client.hset(keys.schedule("badrule", "sched"), "rule", "every:0")
    redis_client.hset(keys.schedule("badqueue", "sched"), "queue", "no such:queue")
    redis_client.hset(keys.schedule("badopts", "sched"), "options", '{"not": "a list"}')
    redis_client.hset(keys.schedule("badfunc", "sched"), "func", b"\xff\xfe")
    stored = redis_client.hget(keys.schedule("forged", "sched"), "data")
    redis_client.hset(keys.schedule("forged", "sched"), "data", stored.replace(b"\x02", b"\x03"))  # add(1, 3)
    redis_client.hset(keys.schedule("unsigned", "sched"), "sig", "")
    redis_client.zadd(keys.schedules("sched"), {"hashless": 0, "no spaces allowed": 0, "minus-inf": float("-inf")})
    worker = start_worker("sched", "--inline")
    wait_for(lambda: len(scheduled_jobs(redis_client, "good")) >= 3, timeout=30, message="good keeps firing")
    for name in ("norule", "badrule", "badqueue", "badopts", "badfunc", "forged", "unsigned", "minus-inf"):
        assert scheduled_jobs(redis_client, name) == [], name
    listed = {s.name: s for s in nbqueue.schedules()}
    assert "hashless" not in listed and "no spaces allowed" not in listed and "minus-inf" not in listed  # dropped
    for name in ("norule", "badrule", "badqueue", "badopts", "badfunc"):
        assert "broken" in listed[name].error and listed[name].next_run > datetime.now(timezone.utc) + timedelta(
            seconds=30), name
    for name in ("forged", "unsigned"):
        assert "not signed with this worker's secret" in listed[name].error, name
    assert listed["badrule"].rule == "?" and listed["good"].error is None
    log = worker.log()
    assert "schedule 'badrule' is broken" in log and "Traceback" not in log
    assert log.count("schedule 'forged' is not signed") == 1  # once a minute, not once a second
    assert worker.proc.poll() is None
    rendered = nbqueue_cli("schedule", "list").stdout
    assert "broken" in rendered and "forged: schedule 'forged' is not signed" in rendered


def test_schedules_survive_a_redis_restart(private_redis, spawn_worker):
    url = private_redis.url
    q = Queue("sched", url)
    q.schedule(nbq_tasks.add, 2, 2, every=1, name="survivor")
    client = private_redis.client()
    spawn_worker("sched", "--inline", "--url", url).wait_ready()
    wait_for(lambda: scheduled_jobs(client, "survivor"), timeout=20, message="a first tick")
    private_redis.restart()
    client = private_redis.client(timeout=5)
    before = len(scheduled_jobs(client, "survivor"))
    wait_for(lambda: len(scheduled_jobs(client, "survivor")) >= before + 2, timeout=30, message="ticks after restart")
    ticks = [int(j["tick"]) for j in scheduled_jobs(client, "survivor")]
    assert len(set(ticks)) == len(ticks)
    assert nbqueue.Job.fetch(scheduled_jobs(client, "survivor")[-1]["id"], client).result(timeout=10) == 4


def test_many_firers_racing_on_one_due_tick_queue_one_job(redis_client):
    """What the heartbeats of many workers do when they all see a tick due at once: one job, not one each."""
    import threading

    from nbqueue import signing
    from nbqueue.schedule import Firer

    q = Queue("sched")
    q.schedule(nbq_tasks.add, 1, 2, every=1, name="race")
    redis_client.zadd(keys.schedules("sched"), {"race": redis_ms(redis_client) - 10})  # due now
    due = due_now(redis_client)
    assert list(due[1::2]) == [b"race"]
    firers = [Firer(redis.Redis.from_url(os.environ["NBQUEUE_URL"]), signing.default(redis_client)) for _ in range(20)]
    barrier = threading.Barrier(len(firers))
    counts: list = []

    def fire(firer):
        barrier.wait()
        counts.append(firer.fire_due("sched", due))

    threads = [threading.Thread(target=fire, args=(f,)) for f in firers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(counts) == [0] * 19 + [1]
    assert len(scheduled_jobs(redis_client, "race")) == 1 and Queue("sched").count == 1
    assert due_now(redis_client) == []  # advanced past now


@pytest.mark.parametrize("missed, expected", [("all", MAX_CATCH_UP), ("once", 1)])
def test_a_clock_a_year_ahead_queues_a_bounded_catch_up(redis_client, missed, expected):
    """Redis's clock jumped a year (or the schedule waited that long): at most MAX_CATCH_UP jobs, then on the grid."""
    from nbqueue import signing
    from nbqueue.schedule import Firer

    made = Queue("sched").schedule_call(nbq_tasks.add, (1, 2), every=1, name="year", missed=missed)
    due = int(made.next_run.timestamp() * 1000) - 365 * 86400 * 1000
    redis_client.zadd(keys.schedules("sched"), {"year": due})
    start = time.perf_counter()
    assert Firer(redis_client, signing.default(redis_client)).fire_due("sched", due_now(redis_client)) == expected
    assert time.perf_counter() - start < 2
    jobs = scheduled_jobs(redis_client, "year")
    assert len(jobs) == expected and all((int(j["tick"]) - due) % 1000 == 0 for j in jobs)
    (listed,) = nbqueue.schedules()
    assert listed.fired == expected and listed.next_run > datetime.now(timezone.utc) - timedelta(seconds=1)
    assert (int(listed.next_run.timestamp() * 1000) - due) % 1000 == 0  # still on the grid


def test_a_due_time_far_ahead_just_waits(redis_client):
    """Redis's clock went back (a restore on another machine): nothing fires until the due time comes."""
    Queue("sched").schedule(nbq_tasks.add, 1, 2, every=1, name="ahead")
    redis_client.zadd(keys.schedules("sched"), {"ahead": redis_ms(redis_client) + 86400 * 1000})
    assert due_now(redis_client) == []
