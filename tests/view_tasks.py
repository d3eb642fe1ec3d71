"""Tasks for the notebook view tests (tests/test_view.py); workers started in this folder import them."""
from __future__ import annotations

import json
import time

from nbqueue import get_current_job, keys, progress


def steps(n, pause=0.05, total=True):
    """Report progress ``i`` of ``n`` (or of an unknown total) every ``pause`` seconds."""
    for i in range(1, n + 1):
        time.sleep(pause)
        progress(i, n if total else None, f"step {i}")
    return n


def flood(lines):
    for i in range(lines):
        print(f"line {i}")
    return lines


HOSTILE = ['NaN', 'Infinity', '-Infinity', '-5', '1e308', '"many"', '[1, 2]', '{"a": 1}', 'true', 'null', '1e400']


def hostile_progress(flag=None):
    """Write junk progress where a widget reads it: the job hash and the job's channel."""
    job = get_current_job()
    conn, channel = job.connection, keys.events(job.ref)
    for done in HOSTILE:
        for total in HOSTILE[:6]:
            raw = f'{{"done": {done}, "total": {total}, "message": {total}}}'
            conn.hset(keys.job(job.ref), "progress", raw)
            conn.publish(channel, f'{{"id": "{job.id}", "status": "progress", "done": {done}, "total": {total}}}')
    for junk in ("not json", "[1, 2]", '{"status": "progress"}', '{"status": "log", "lines": "abc"}',
                 '{"status": "log", "lines": [1, null, {"x": 1}]}', '{"id": 5, "status": "finished"}',
                 json.dumps({"id": job.id, "status": "progress", "done": 10 ** 30, "total": -1})):
        conn.publish(channel, junk)
    conn.hset(keys.job(job.ref), "progress", "{broken")
    if flag:
        open(flag, "w").close()
    time.sleep(0.5)
    progress(3, 4, "sane again")
    time.sleep(0.5)
    return "survived"


def fail_some(i):
    if i % 7 == 3:
        raise ValueError(f"bad item {i}")
    time.sleep(0.02)
    return i


def chatty(lines, pause=0.01):
    """Print ``lines`` lines, one every ``pause`` seconds, reporting progress."""
    for i in range(1, lines + 1):
        print(f"line {i}")
        progress(i, lines)
        time.sleep(pause)
    return lines


def nap(seconds):
    time.sleep(seconds)
    return seconds
