"""Schedules in Redis, fired by the workers' heartbeats: rules, one job per tick, catch-up, list/remove, hostile cases."""
from __future__ import annotations

import math
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

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
    assert Rule.make(cron="0 9 * * mon-fri", tz=BERLIN).next_after(friday_ten) == ms(2026, 1, 5, 8, 0)  # 9:00 CET in UTC


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
    assert rule.ticks(ms(2026, 1, 1, 0, 0), ms(2026, 1, 1, 10, 0), 3) == [ms(2026, 1, 1, 9, 58 + i) for i in range(2)] + [
        ms(2026, 1, 1, 10, 0)]


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

def scheduled_jobs(client, name: str) -> list:
    """Every job hash a schedule queued, by tick."""
    jobs = []
    for key in client.scan_iter(match=keys.job("*")):
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
