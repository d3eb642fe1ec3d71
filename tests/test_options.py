"""Every number a caller gives checked at the door: the bad-number corpus, the bounds, generator refusal.

Each bad value goes through every way in (``enqueue_call``, ``enqueue_many``, ``map``, and
``enqueue_in`` / ``enqueue_at`` for the delay) and must raise an ``EnqueueError`` naming the
option, with nothing written to Redis. Values on the bounds must be accepted and then work on a
real worker.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest
from IPython.core.error import UsageError

import nbq_tasks
from conftest import MODES
from nbqueue import Call, EnqueueError, JobFailed, Options, Queue, keys
from nbqueue.queue import MAX_DELAY, MAX_RETRIES, MAX_RETRY_DELAY, MAX_TIMEOUT, MAX_TTL

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is in the test extras
    np = None

NAN, INF = float("nan"), float("inf")


def _numpy(*values):
    """numpy scalars, if numpy is there (``numpy.float64(nan)`` and friends)."""
    return [] if np is None else [getattr(np, kind)(v) for kind, v in values]


SECONDS_JUNK = [NAN, INF, -INF, -1, -1e-9, True, False, "5", b"5", [5], 1j, Decimal("NaN"), Decimal("sNaN"),
                Decimal("Infinity"), Fraction(-1, 2), 10 ** 400, timedelta(seconds=-1), object(),
                *_numpy(("float64", NAN), ("float64", INF), ("bool_", True))]
COUNT_JUNK = [NAN, INF, -1, 1.5, 2.0, True, False, "3", None, Decimal(2), Fraction(2), 10 ** 400, MAX_RETRIES + 1,
              *_numpy(("float64", 2.0), ("int64", -1), ("int64", MAX_RETRIES + 1), ("bool_", True))]
BAD = {
    "timeout": SECONDS_JUNK + [0, 0.0, MAX_TIMEOUT + 1, timedelta(days=366), 1e300],
    "result_ttl": SECONDS_JUNK + [0, MAX_TTL + 1, timedelta(days=3651)],
    "failure_ttl": SECONDS_JUNK + [0, MAX_TTL + 1],
    "retry_delay": SECONDS_JUNK + [None, MAX_RETRY_DELAY + 0.001, -0.0001],
    "retries": COUNT_JUNK,
    "lost_retries": COUNT_JUNK,
}
BAD_DELAYS = SECONDS_JUNK + [MAX_DELAY + 1, timedelta.max, -0.001]
CASES = [pytest.param(name, value, id=f"{name}={value!r}"[:60]) for name, values in BAD.items() for value in values]
WAYS = ["enqueue_call", "enqueue_many", "map", "Options"]


@pytest.fixture
def q(redis_client):
    return Queue("opts", redis_client)


def enqueue_with(q, way, **options):
    if way == "enqueue_call":
        return q.enqueue_call(nbq_tasks.add, (1, 2), **options)
    if way == "enqueue_many":
        return q.enqueue_many([(nbq_tasks.add, (1, 2)), Call(nbq_tasks.echo, (3,))], **options)
    if way == "map":
        return q.map(nbq_tasks.echo, range(3), **options)
    return Options(**options)


def assert_nothing_written(redis_client):
    assert redis_client.keys("*") == [], "a refused enqueue wrote to Redis"


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("name, value", CASES)
def test_a_bad_option_is_refused_by_name_and_nothing_is_written(q, redis_client, way, name, value):
    with pytest.raises(EnqueueError, match=rf"^{name}=.* is not valid: give .*Nothing was enqueued"):
        enqueue_with(q, way, **{name: value})
    assert_nothing_written(redis_client)


@pytest.mark.parametrize("way", ["enqueue_call", "enqueue_many", "map", "enqueue_in"])
@pytest.mark.parametrize("value", [pytest.param(v, id=repr(v)[:40]) for v in BAD_DELAYS])
def test_a_bad_delay_is_refused_and_nothing_is_written(q, redis_client, way, value):
    with pytest.raises(EnqueueError, match=r"^delay=.* is not valid: give a number of seconds"):
        if way == "enqueue_in":
            q.enqueue_in(value, nbq_tasks.add, 1, 2)
        else:
            enqueue_with(q, way, delay=value)
    assert_nothing_written(redis_client)


@pytest.mark.parametrize("when", ["2030-01-01", 1893456000, None, datetime.now().date(),
                                  datetime.now(timezone.utc) + timedelta(days=3651)], ids=repr)
def test_enqueue_at_checks_its_datetime(q, redis_client, when):
    with pytest.raises(EnqueueError, match=r"^when=.* (is not valid: give a datetime|is more than 10 years ahead)"):
        q.enqueue_at(when, nbq_tasks.add, 1, 2)
    assert_nothing_written(redis_client)


def test_one_bad_option_among_good_ones_writes_nothing(q, redis_client):
    q.enqueue(nbq_tasks.add, 0, 0)
    before = {k: redis_client.type(k) for k in redis_client.keys("*")}
    with pytest.raises(EnqueueError, match="retries=-1"):
        q.enqueue_many([(nbq_tasks.add, (i, i)) for i in range(2500)], timeout=5, retries=-1)  # several batches
    assert {k: redis_client.type(k) for k in redis_client.keys("*")} == before and len(q) == 1


# --- what is accepted, and how it is stored -----------------------------------------------------
GOOD = [  # option, value given, value stored in the job hash (None: the default, not stored)
    ("timeout", 0.5, b"0.5"), ("timeout", 30, b"30"), ("timeout", 30.0, b"30"), ("timeout", Decimal("2.5"), b"2.5"),
    ("timeout", Fraction(1, 4), b"0.25"), ("timeout", timedelta(minutes=2), b"120"), ("timeout", None, b"none"),
    ("timeout", MAX_TIMEOUT, b"31536000"), ("timeout", 3600.0, None), ("timeout", 1e-3, b"0.001"),
    ("result_ttl", 1.2, b"2"), ("result_ttl", 1e-9, b"1"), ("result_ttl", MAX_TTL, b"315360000"),
    ("result_ttl", None, b"none"), ("result_ttl", timedelta(hours=1), b"3600"), ("result_ttl", 86400.0, None),
    ("failure_ttl", Decimal("60"), b"60"), ("failure_ttl", MAX_TTL, b"315360000"), ("failure_ttl", None, b"none"),
    ("retries", 0, None), ("retries", MAX_RETRIES, b"1000"), ("retries", 3, b"3"),
    ("retry_delay", 0, b"0"), ("retry_delay", MAX_RETRY_DELAY, b"3600"), ("retry_delay", 0.25, b"0.25"),
    ("retry_delay", timedelta(milliseconds=1500), b"1.5"),
    ("lost_retries", 0, b"0"), ("lost_retries", MAX_RETRIES, b"1000"),
]
if np is not None:
    GOOD += [("timeout", np.float64(2.5), b"2.5"), ("timeout", np.float32(0.5), b"0.5"), ("timeout", np.int64(7), b"7"),
             ("result_ttl", np.int32(90), b"90"), ("retries", np.int64(4), b"4"), ("lost_retries", np.uint8(2), b"2")]


@pytest.mark.parametrize("name, value, stored", GOOD, ids=[f"{n}={v!r}"[:50] for n, v, _ in GOOD])
def test_good_values_are_accepted_and_stored_as_plain_numbers(q, redis_client, name, value, stored):
    job = q.enqueue_call(nbq_tasks.add, (1, 2), **{name: value})
    assert redis_client.hget(keys.job(job.id), name) == stored
    assert [redis_client.hget(keys.job(j.id), name) for j in q.map(nbq_tasks.echo, [1, 2], **{name: value})] == [
        stored, stored]


def test_an_int_subclass_is_a_count_but_a_bool_is_not():
    class Count(int):
        pass

    assert Options(retries=Count(5)).retries == 5 and type(Options(retries=Count(5)).retries) is int
    with pytest.raises(EnqueueError, match="retries=True"):
        Options(retries=True)


@pytest.mark.parametrize("delay", [0, 0.0, timedelta(0), None, Decimal(0)], ids=repr)
def test_no_delay_queues_at_once(q, delay):
    assert q.enqueue_call(nbq_tasks.add, (1, 2), delay=delay).status == "queued" and len(q) == 1


def test_the_longest_delay_is_an_exact_millisecond_score(q, redis_client):
    before = int(time.time() * 1000)
    job = q.enqueue_in(MAX_DELAY, nbq_tasks.add, 1, 2)
    after = int(time.time() * 1000) + 1
    score = redis_client.zscore(keys.scheduled(job.queue), job.id)
    assert job.status == "scheduled" and score == int(score) and score < 2 ** 53
    assert before + MAX_DELAY * 1000 <= score <= after + MAX_DELAY * 1000
    tiny = q.enqueue_in(0.0001, nbq_tasks.add, 1, 2)  # any delay above 0 schedules the job, rounded up to 1 ms
    assert tiny.status == "scheduled"
    if np is not None:
        assert q.enqueue_in(np.float64(60), nbq_tasks.add, 1, 2).status == "scheduled"


def test_enqueue_at_a_past_time_queues_now_and_a_future_one_schedules(q, redis_client):
    assert q.enqueue_at(datetime(2000, 1, 1, tzinfo=timezone.utc), nbq_tasks.add, 1, 2).status == "queued"
    assert q.enqueue_at(datetime.min, nbq_tasks.add, 1, 2).status == "queued"
    later = q.enqueue_at(datetime.now() + timedelta(hours=1), nbq_tasks.add, 1, 2)  # naive: local time
    due = redis_client.zscore(keys.scheduled(later.queue), later.id) / 1000
    assert later.status == "scheduled" and abs(due - (time.time() + 3600)) < 60


# --- the bounds really work on a worker ---------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_half_second_timeout_given_as_numpy_or_decimal_stops_the_job(start_worker, redis_client, mode):
    start_worker("opts", *mode)
    q = Queue("opts", redis_client)
    timeouts = [Decimal("0.5"), Fraction(1, 2)] + ([np.float64(0.5)] if np is not None else [])
    jobs = [q.enqueue_call(nbq_tasks.busy, (30,), timeout=t, lost_retries=0) for t in timeouts]
    for job in jobs:
        with pytest.raises(JobFailed, match="longer than its timeout of 0.5 s"):
            job.result(timeout=30)
    assert q.enqueue(nbq_tasks.add, 1, 1).result(timeout=15) == 2  # the worker goes on


@pytest.mark.parametrize("mode", MODES)
def test_the_largest_values_are_honoured(start_worker, redis_client, mode):
    start_worker("opts", *mode)
    q = Queue("opts", redis_client)
    done = q.enqueue_call(nbq_tasks.add, (1, 2), timeout=MAX_TIMEOUT, result_ttl=MAX_TTL, lost_retries=MAX_RETRIES)
    failed = q.enqueue_call(nbq_tasks.fail, failure_ttl=MAX_TTL, timeout=None)
    assert done.result(timeout=15) == 3
    with pytest.raises(JobFailed):
        failed.result(timeout=15)
    for job in (done, failed):
        assert MAX_TTL - 60 < redis_client.ttl(keys.job(job.id)) <= MAX_TTL


def test_a_fractional_ttl_is_rounded_up_and_then_expires(start_worker, redis_client, wait_for):
    start_worker("opts", "--inline")
    job = Queue("opts", redis_client).enqueue_call(nbq_tasks.add, (1, 2), result_ttl=2.5)
    assert redis_client.hget(keys.job(job.id), "result_ttl") == b"3"
    assert job.result(timeout=15) == 3
    assert 0 < redis_client.ttl(keys.job(job.id)) <= 3  # kept, not forever
    wait_for(lambda: not redis_client.exists(keys.job(job.id)), timeout=15, message="the job to expire")


def test_retries_with_no_delay_rerun_at_once(start_worker, redis_client, tmp_path):
    start_worker("opts", "--inline")
    job = Queue("opts", redis_client).enqueue_call(
        nbq_tasks.flaky, (str(tmp_path / "count"), 2), retries=2, retry_delay=0)
    assert job.result(timeout=20) == 3
    assert job.refresh().failures == 2


# --- async def and generators -------------------------------------------------------------------
async def coroutine_function():
    return 1


async def async_generator_function():
    yield 1


def generator_function():
    yield 1


class Service:
    async def fetch(self):
        return 1

    @classmethod
    async def create(cls):
        return cls()

    @staticmethod
    async def ping():
        return 1


ASYNC = [coroutine_function, Service().fetch, Service.create, Service.ping]


@pytest.mark.parametrize("func", ASYNC, ids=lambda f: f.__qualname__)
def test_async_def_functions_are_accepted_at_enqueue(q, redis_client, func):
    for enqueue in (lambda: q.enqueue(func), lambda: q.map(func, [1]), lambda: q.enqueue_in(5, func)):
        enqueue()  # run by workers on an event loop (tests/test_async_jobs.py)


def test_async_generator_functions_are_refused_at_enqueue(q, redis_client):
    for enqueue in (lambda: q.enqueue(async_generator_function),
                    lambda: q.enqueue_many([(nbq_tasks.add, (1, 2)), (async_generator_function, ())]),
                    lambda: q.map(async_generator_function, [1]), lambda: q.enqueue_in(5, async_generator_function)):
        with pytest.raises(EnqueueError, match="async generator function.*returns a list"):
            enqueue()
    assert_nothing_written(redis_client)


def test_a_generator_function_is_refused_and_a_plain_wrapper_is_not(q, redis_client):
    with pytest.raises(EnqueueError, match="generator function.*returns a list"):
        q.enqueue(generator_function)
    assert_nothing_written(redis_client)
    assert q.enqueue(nbq_tasks.add, 1, 2).status == "queued"


# --- the magics -----------------------------------------------------------------------------------
@pytest.fixture
def ip(redis_client):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbqueue")
    shell.user_ns.update(nbq_tasks=nbq_tasks, async_generator_function=async_generator_function)
    return shell


@pytest.mark.parametrize("line, expected", [
    ("nbq_tasks.add(1, 2) --timeout nan", "timeout=nan is not valid"),
    ("nbq_tasks.add(1, 2) --timeout inf", "or None for no limit"),
    ("nbq_tasks.add(1, 2) --timeout 5s", "timeout='5s' is not valid"),
    ("nbq_tasks.add(1, 2) --result-ttl 0", "result_ttl=0 is not valid"),
    ("nbq_tasks.add(1, 2) --retries 1.5", "retries=1.5 is not valid"),
    ("nbq_tasks.add(1, 2) --retries 1e9", "from 0 to 1000"),
    ("nbq_tasks.add(1, 2) --delay -1", "delay=-1 is not valid"),
    ("nbq_tasks.add(1, 2) --retry-delay none", "retry_delay=None is not valid"),
    ("async_generator_function()", "async generator function"),
])
def test_magic_options_are_checked_the_same_way(ip, redis_client, line, expected):
    with pytest.raises(UsageError, match=expected.replace("(", r"\(")):
        ip.run_line_magic("enqueue", line)
    map_line = line.replace("(1, 2)", " [1, 2]", 1)
    map_line = map_line.replace("async_generator_function()", "async_generator_function [1]")
    with pytest.raises(UsageError, match=expected.replace("(", r"\(")):
        ip.run_line_magic("map", map_line)
    assert_nothing_written(redis_client)


def test_magic_accepts_the_bounds(ip, redis_client):
    job = ip.run_line_magic("enqueue", f"nbq_tasks.add(1, 2) --timeout {MAX_TIMEOUT} --result-ttl none --retries 1000")
    stored = redis_client.hmget(keys.job(job.id), "timeout", "result_ttl", "retries")
    assert stored == [b"31536000", b"none", b"1000"]
    job = ip.run_line_magic("enqueue", "nbq_tasks.add(1, 2) --timeout 0.5 --retry-delay 0")
    assert redis_client.hmget(keys.job(job.id), "timeout", "retry_delay") == [b"0.5", b"0"]


# --- waits: result(timeout=), cancel(wait=), Group.results(timeout=) ------------------------------
BAD_WAITS = [float("nan"), -1, -0.001, "5", True, b"1", [1], complex(1, 0)]


@pytest.mark.parametrize("bad", BAD_WAITS, ids=repr)
def test_bad_waits_are_refused_at_once_and_change_nothing(redis_client, bad):
    """NaN used to wait for ever, a string raised a raw TypeError from select; a bad cancel wait
    must not cancel the job before it is refused."""
    from nbqueue.errors import InvalidTimeout

    q = Queue("waits", redis_client)
    job = q.enqueue(nbq_tasks.add, 1, 2)
    group = q.map(nbq_tasks.echo, [1, 2])
    started = time.monotonic()
    with pytest.raises(InvalidTimeout, match="is not valid: give seconds to wait"):
        job.result(timeout=bad)
    with pytest.raises(InvalidTimeout, match="wait="):
        job.cancel(wait=bad)
    with pytest.raises(InvalidTimeout):
        group.results(timeout=bad)
    assert time.monotonic() - started < 2  # refused, not waited on
    assert job.status == "queued" and len(q) == 3  # nothing was canceled


def test_zero_and_infinite_waits(redis_client, start_worker):
    from nbqueue import ResultTimeout

    q = Queue("waits", redis_client)
    job = q.enqueue(nbq_tasks.add, 1, 2)
    with pytest.raises(ResultTimeout):
        job.result(timeout=0)  # not done, and no time to wait: says so at once
    start_worker("waits", "--inline")
    assert job.result(timeout=float("inf")) == 3  # inf: as long as it takes
    assert job.result(timeout=Decimal("0")) == 3  # done: no wait needed


@pytest.mark.parametrize("enqueue", [
    lambda q: q.enqueue_call(nbq_tasks.add, 5),
    lambda q: q.enqueue_call(nbq_tasks.add, (1, 2), kwargs=5),
    lambda q: q.enqueue_many([nbq_tasks.add]),
    lambda q: q.enqueue_many([(nbq_tasks.add, (1, 2)), (nbq_tasks.add,) * 5]),
    lambda q: q.enqueue_many([(nbq_tasks.add, 3)]),
    lambda q: q.enqueue_call(nbq_tasks.add, (1, 2), at_front="no"),
    lambda q: q.enqueue_many([(nbq_tasks.add, (1, 2))], at_front=1),
], ids=["args-int", "kwargs-int", "bare-func", "five-tuple", "args-int-many", "at_front-str", "at_front-int"])
def test_calls_of_the_wrong_shape_are_enqueue_errors(redis_client, enqueue):
    """They raised raw TypeErrors (and at_front="no" put the job at the front)."""
    q = Queue("shapes", redis_client)
    with pytest.raises(EnqueueError, match="Nothing was enqueued"):
        enqueue(q)
    assert len(q) == 0 and not redis_client.keys("nbq:{*}:job:*")


def test_a_worker_refuses_a_bool_concurrency(redis_client):
    from nbqueue import Worker
    from nbqueue.errors import WorkerError

    with pytest.raises(WorkerError, match="concurrency=True"):
        Worker(["x"], redis_client, concurrency=True)
