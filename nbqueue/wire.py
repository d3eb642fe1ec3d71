"""The one way nbqueue sends commands to Redis: ``send`` (one round trip on this thread's own
connection), ``post`` / ``collect`` (write now, read the replies with the next send), ``send_grouped``
(several cluster slots) and, on a cluster, the routing of a round trip to the master of its slot."""
from __future__ import annotations

import os
import select
import threading
import weakref
from collections.abc import Iterable
from typing import Any, Optional

from redis import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, ResponseError, TryAgainError

try:  # redis[hiredis] brings it; its own packer costs a fifth of redis-py's wrapper around it
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - an old hiredis, or none
    _pack_command = None  # type: ignore[assignment]

from .connection import is_cluster
from .keys import SCRIPTS, script

_local = threading.local()  # per thread: connection pool -> the thread's own connection


def send(client: Any, *commands: tuple) -> list:
    """Send ``commands`` in one round trip on this thread's own connection; return the replies.

    The hot paths (enqueue, take, finish, heartbeat) use this instead of the client: redis-py's
    per-command machinery costs more than the round trip itself on loopback (25k vs 65k PINGs/s
    here). The connection is one of the client's own pool, opened the pool's way (its Sentinel
    master lookup, TLS, AUTH), never to a host the client was not given. One found dead before
    anything was sent on it (the server closed it: a restart) is reopened first; a server that
    lost its scripts gets them loaded and the commands resent. Any other error drops the
    connection (the next call reconnects) and is raised: a command that may have run is never
    sent twice.

    On a cluster (a ``RedisCluster`` client) the commands must share one slot (asserted); they go
    to the master owning it (``_send_cluster``).
    """
    if is_cluster(client):
        return _send_cluster(client, commands)
    conn = _connection(client.connection_pool)
    packed = _pack(conn, commands)
    for attempt in range(2):
        posted = _local.posted.pop(conn, 0)
        try:
            if not posted:
                _ready(conn)
            conn.send_packed_command(packed)
            _local.early.setdefault(conn, []).extend(_reply_or_error(conn) for _ in range(posted))
            return [conn.read_response() for _ in commands]
        except NoScriptError:  # every script is gone (a restart) and every reply read up to here
            conn.disconnect()
            if attempt:
                raise
            for name in SCRIPTS:
                client.script_load(script(name).script)
        except BaseException:
            conn.disconnect()
            raise
    raise AssertionError("unreachable")


def post(client: Any, *commands: tuple) -> None:
    """Write ``commands`` on this thread's own connection (standalone) without waiting for their
    replies: the next ``send`` on it reads them first, and ``collect`` returns them. A reply that
    is an error is returned as the exception; replies lost with a connection are not returned (the
    caller sends again what it got no reply for)."""
    conn = _connection(client.connection_pool)
    packed = _pack(conn, commands)
    posted = _local.posted.pop(conn, 0)
    try:
        if not posted:
            _ready(conn)
        conn.send_packed_command(packed)
    except BaseException:
        conn.disconnect()
        raise
    _local.posted[conn] = posted + len(commands)


def collect(client: Any) -> list:
    """The replies of the commands ``post`` wrote on this thread's connection that a ``send`` read
    since (in order); their count tells how many were lost with a connection."""
    return _local.early.pop(_connection(client.connection_pool), [])


def _reply_or_error(conn: Any) -> Any:
    try:
        return conn.read_response()
    except ResponseError as exc:  # the command's own error: the replies after it are still read
        return exc


def _pack(conn: Any, commands: Iterable[tuple]) -> Any:
    """The commands in the wire protocol, to send in one write (nbqueue's commands: a one-word name,
    then str, bytes and numbers)."""
    if _pack_command is not None:
        try:
            return [b"".join([_pack_command(command) for command in commands])]
        except TypeError:  # a value hiredis takes only redis-py's way (a bytearray, a memoryview)
            pass
    return conn.pack_commands(commands)


def _first_error(replies: list) -> ResponseError:
    """The first error reply of a cluster round trip that kept being redirected."""
    return next(r for r in replies if isinstance(r, ResponseError))


def send_grouped(client: Any, *commands: tuple) -> list:
    """``send`` for commands of several slots: on a cluster, one round trip per slot (in the order
    each slot first appears), keyless commands with the first; standalone, one round trip. The
    replies in the commands' order."""
    if not is_cluster(client):
        return send(client, *commands)
    groups: dict = {}
    for i, command in enumerate(commands):
        groups.setdefault(slot_of(command), []).append(i)
    if None in groups and len(groups) > 1:
        keyless = groups.pop(None)
        groups[next(iter(groups))] += keyless
    replies: list = [None] * len(commands)
    for indexes in groups.values():
        for i, reply in zip(indexes, send(client, *(commands[i] for i in indexes))):
            replies[i] = reply
    return replies


def _connection(pool: Any) -> Any:
    """This thread's own connection of ``pool`` (a new one after a fork)."""
    if getattr(_local, "pid", None) != os.getpid():  # a forked child must not share the parent's sockets
        _local.pid, _local.connections = os.getpid(), weakref.WeakKeyDictionary()
        _local.posted, _local.early = weakref.WeakKeyDictionary(), weakref.WeakKeyDictionary()  # conn -> (post)
    conn = _local.connections.get(pool)
    if conn is None:
        conn = _local.connections[pool] = pool.make_connection()
    return conn


def slot_of(command: tuple) -> Optional[int]:
    """The cluster slot of the keys of a command given to ``send`` (None: it has none); an
    ``AssertionError`` if they are in different slots."""
    name = (command[0] if isinstance(command[0], str) else command[0].decode()).upper()
    if name in ("EVALSHA", "EVAL"):
        names = command[3:3 + int(command[2])]
    elif name in ("BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX"):
        names = command[1:-1]
    elif name in ("PING", "ASKING", "PUBLISH"):
        names = ()
    else:
        names = command[1:2]
    slots = {key_slot(k if isinstance(k, bytes) else str(k).encode()) for k in names}
    assert len(slots) <= 1, f"one command's keys span slots {sorted(slots)}: {command[:4]}"
    return slots.pop() if slots else None


_REDIRECTED = (MovedError, AskError)  # MovedError is an AskError: the command did not run, ask elsewhere
_NOT_RUN = (TryAgainError, ClusterDownError)  # the command did not run: a failover or a migration under way
_stale: weakref.WeakSet[Any] = weakref.WeakSet()  # cluster clients whose slot map must be read anew


def _send_cluster(client: RedisCluster, commands: tuple) -> list:
    """``send`` on a cluster: one round trip to the master of the commands' slot, on this thread's
    own connection to it. A command answered MOVED or ASK did not run: the slot map is read anew
    (MOVED) and the commands that were redirected, only those, are sent once more to the node
    named (after ASKING, for ASK). A node that lost its scripts gets them loaded and the commands
    that failed so resent (commands after them in the packet ran once, before them). A lost connection,
    TRYAGAIN or CLUSTERDOWN (a failover under way) is raised as a ``ConnectionError`` (callers wait
    those out), and the slot map is read anew before the next call."""
    slots = {s for s in map(slot_of, commands) if s is not None}
    assert len(slots) <= 1, f"commands sent together must share a slot, not {sorted(slots)}"
    slot = slots.pop() if slots else None
    manager = client.nodes_manager
    if client in _stale:
        _stale.discard(client)
        manager.initialize()
    node = client.get_default_node() if slot is None else manager.get_node_from_slot(slot)
    replies: list = [None] * len(commands)
    todo, asking = list(range(len(commands))), False
    for attempt in range(3):
        for i, reply in zip(todo, _round_trip(client, node, [commands[i] for i in todo], asking)):
            replies[i] = reply
        errors = [r for r in replies if isinstance(r, ResponseError)]
        if not errors:
            return replies
        redirected = [i for i in todo if isinstance(replies[i], _REDIRECTED)]
        unloaded = [i for i in todo if isinstance(replies[i], NoScriptError)]
        other = [r for r in errors if not isinstance(r, (*_REDIRECTED, NoScriptError))]
        if other:
            if any(isinstance(r, _NOT_RUN) for r in other):
                _stale.add(client)
                raise RedisConnectionError(f"cluster not ready for slot {slot}: {other[0]}")
            raise other[0]
        if attempt == 2:
            break
        if redirected:
            error = replies[redirected[0]]
            asking = not isinstance(error, MovedError)
            if not asking:
                manager.initialize()
            node = manager.get_node(error.host, error.port)
            if node is None:  # a node the map does not know yet
                manager.initialize()
                node = manager.get_node(error.host, error.port)
            if node is None:
                _stale.add(client)
                raise RedisConnectionError(f"cluster: slot {slot} moved to unknown node {error.node_addr}")
            todo = redirected
        else:
            target = client.get_redis_connection(node)
            for name in SCRIPTS:
                target.script_load(script(name).script)
            todo, asking = unloaded, False
    raise _first_error(replies)


def _round_trip(client: RedisCluster, node: Any, commands: list, asking: bool) -> list:
    """Send ``commands`` to ``node`` in one packet (each after ASKING if ``asking``); the replies,
    errors as values. A lost connection is raised, and the slot map marked stale."""
    conn = _connection(client.get_redis_connection(node).connection_pool)
    sent = [c for command in commands for c in ((("ASKING",), command) if asking else (command,))]
    try:
        _ready(conn)
        conn.send_packed_command(_pack(conn, sent))
        replies = []
        for _ in sent:
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:  # read whole: the connection stays in step
                replies.append(exc)
    except BaseException as exc:
        conn.disconnect()
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
            _stale.add(client)
        raise
    return replies[1::2] if asking else replies


def _ready(conn: Any) -> None:
    """Make ``conn`` fit to send on: connected through ``connect()`` (which a Sentinel-managed
    connection overrides to ask for the master; sending alone would dial its default host), and
    with nothing to read while idle: an idle socket that is readable was closed by the server (a
    restart: it reads EOF) or holds a stray reply; either way it is reopened before anything was
    sent on it. A poll of the socket costs about a microsecond (redis-py's ``can_read`` several)."""
    sock = conn._sock  # redis-py's socket (None: not connected); its public is_connected is 5.x+ only
    if sock is not None:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return
        conn.disconnect()
    conn.connect()


def close_pubsub(pubsub: Any) -> None:
    """Close a pub/sub (if any) whatever state its connection is in: a dead one may fail to close,
    and is dropped either way."""
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception:
            pass


def node_for(client: Any, key: str) -> Any:
    """The client to run a transaction (MULTI/EXEC pipeline, scripts too) on ``key``'s slot: ``client``
    itself, or on a cluster the plain client of the master holding that slot (redis-py's cluster
    pipelines refuse scripts). Every key of the transaction must share the slot."""
    if not isinstance(client, RedisCluster):
        return client
    return client.get_redis_connection(client.get_node_from_key(key))
