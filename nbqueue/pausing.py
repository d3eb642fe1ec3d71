"""Suspending and resuming every worker on a Redis (``nbqueue suspend`` / ``resume``)."""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Union

import redis

from . import keys, sweep
from .connection import get_connection


def suspend(connection: Union[redis.Redis, str, None] = None) -> None:
    """Suspend every worker on this Redis: they finish what they run and take nothing new (each
    known queue gets its ``paused`` flag, which takes read; a worker starting later sets its queues')."""
    conn = get_connection(connection)
    conn.set(keys.SUSPENDED, str(time.time()))
    _pause(conn, sweep.known_queues(conn, ()), True)


def _pause(conn: redis.Redis, queues: Iterable[str], on: bool) -> None:
    with conn.pipeline(transaction=False) as pipe:
        for q in queues:
            pipe.set(keys.paused(q), "1") if on else pipe.delete(keys.paused(q))
        pipe.execute()


def resume(connection: Union[redis.Redis, str, None] = None) -> int:
    """Let suspended workers take jobs again (they are woken now); returns how many were woken."""
    conn = get_connection(connection)
    conn.delete(keys.SUSPENDED)
    _pause(conn, sweep.known_queues(conn, ()), False)
    names = [n.decode() for n in conn.zrange(keys.WORKERS, 0, -1)]
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.rpush(keys.worker_wake(name), b"resume")
            pipe.expire(keys.worker_wake(name), 60)
        pipe.execute()
    return len(names)


def is_suspended(connection: Union[redis.Redis, str, None] = None) -> bool:
    return bool(get_connection(connection).exists(keys.SUSPENDED))
