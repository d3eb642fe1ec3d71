"""Which Redis nbqueue uses, decided in one place, and the client for it.

Order: an explicit URL → ``$NBQUEUE_URL`` → a Redis answering on
``redis://localhost:6379/0`` → the embedded server (started if needed).
The URL ``"embedded"`` forces the embedded server.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Optional, Union
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import ConnectionFailed, InvalidConnection, InvalidURL
from .server import EmbeddedServer

__all__ = [
    "ConnectionFailed", "InvalidURL", "Resolved", "connect", "describe", "get_connection", "mask_url", "resolve",
]

LOCAL_URL = "redis://localhost:6379/0"  # probed when nothing is configured
PROBE_TIMEOUT = 0.25  # seconds for the localhost probe
CHECK_TIMEOUT = 5.0  # seconds for the first PING of a configured URL
EMBEDDED = "embedded"
URL_FORMS = (
    "redis://[user:password@]host[:port][/db], rediss://... (TLS), "
    "unix://[user:password@]/path/to/socket[?db=N], or 'embedded'"
)

logger = logging.getLogger("nbqueue")


@dataclass(frozen=True)
class Resolved:
    """The Redis to use: its ``url`` and where that came from (``source``)."""

    url: str
    source: str  # "argument", "NBQUEUE_URL", "localhost" or "embedded"
    started: bool = field(default=False, compare=False)  # embedded: launched just now
    data_dir: Optional[str] = field(default=None, compare=False)  # embedded only


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            userinfo, _, hostinfo = parts.netloc.rpartition("@")
            parts = parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostinfo}")
        if "password" in parts.query:
            query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)]
            parts = parts._replace(query=urlencode(query, safe="*"))
        query = f"?{parts.query}" if parts.query else ""
        return f"{parts.scheme}://{parts.netloc}{parts.path}{query}"
    except ValueError:
        return "<unparsable URL>"


def _check_url(url: str) -> None:
    """Raise ``InvalidURL`` unless redis-py accepts ``url``."""
    try:
        redis.ConnectionPool.from_url(url)
    except (ValueError, TypeError) as e:
        raise InvalidURL(f"invalid Redis URL {mask_url(url)!r} ({e}); use {URL_FORMS}") from None


def _ping(url: str, timeout: float) -> None:
    """PING ``url`` once, without retries; raise redis errors."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    finally:
        client.close()


def _answers(url: str) -> bool:
    try:
        _ping(url, PROBE_TIMEOUT)
        return True
    except (redis.RedisError, OSError):
        return False


def resolve(url: Optional[str] = None) -> Resolved:
    """Decide which Redis to use (see the module docstring); may start the embedded one."""
    for value, source in ((url, "argument"), (os.environ.get("NBQUEUE_URL"), "NBQUEUE_URL")):
        value = (value or "").strip()
        if value == EMBEDDED:
            return _embedded()
        if value:
            _check_url(value)
            return Resolved(value, source)
    if _answers(LOCAL_URL):
        return Resolved(LOCAL_URL, "localhost")
    return _embedded()


def _embedded() -> Resolved:
    server = EmbeddedServer()
    url = server.start()
    return Resolved(url, EMBEDDED, started=server.launched, data_dir=str(server.data_dir))


# Per-process caches: request → client, and resolved URL → client.
_lock = threading.Lock()
_pid = os.getpid()
_by_request: dict = {}
_by_url: dict = {}
_announced: set = set()  # URLs announced; kept across fork so children stay quiet


def _forget_clients() -> None:
    global _lock, _pid
    _lock = threading.Lock()
    _pid = os.getpid()
    _by_request.clear()
    _by_url.clear()


os.register_at_fork(after_in_child=_forget_clients)


def connect(url: Optional[str] = None) -> redis.Redis:
    """The process's client for the resolved Redis (one per URL, new after fork)."""
    if os.getpid() != _pid:
        _forget_clients()
    request = (url, os.environ.get("NBQUEUE_URL"))
    client = _by_request.get(request)
    if client is not None:
        return client
    resolved = resolve(url)
    with _lock:
        client = _by_url.get(resolved.url)
    if client is None:
        if resolved.source in ("argument", "NBQUEUE_URL"):
            _check_reachable(resolved)
        client = redis.Redis.from_url(
            resolved.url, decode_responses=False, health_check_interval=30, socket_timeout=None,
            **_keepalive(resolved.url),
        )
        with _lock:
            client = _by_url.setdefault(resolved.url, client)
    with _lock:
        _by_request[request] = client
    _announce(resolved)
    return client


def _keepalive(url: str) -> dict:
    """TCP keepalive, so a connection that died silently (host crash, cut link) fails a blocked
    read within about ten seconds instead of hanging it forever. Unix sockets can't die so."""
    if url.startswith("unix:"):
        return {}
    options = {}
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            options[getattr(socket, name)] = value
    return {"socket_keepalive": True, "socket_keepalive_options": options}


def _check_reachable(resolved: Resolved) -> None:
    """PING a configured URL once, turning failure into a message that says what to do."""
    where = "given as argument" if resolved.source == "argument" else "from NBQUEUE_URL"
    fix = (
        "pass another URL, or 'embedded' for the embedded server"
        if resolved.source == "argument"
        else "unset NBQUEUE_URL to use the embedded server"
    )
    url = mask_url(resolved.url)
    try:
        _ping(resolved.url, CHECK_TIMEOUT)
    except (redis.RedisError, OSError) as e:
        reason = str(e).rstrip(".")
        if isinstance(e, redis.AuthenticationError):
            hint = "check the user and password in the URL"
            msg = f"Redis at {url} ({where}) refused the credentials: {reason}; {hint}"
        elif isinstance(e, (redis.ConnectionError, redis.TimeoutError, OSError)):
            msg = f"cannot connect to Redis at {url} ({where}): {reason}; "
            msg += f"start Redis there, or {fix}"
        else:  # e.g. NOAUTH: reachable, but needs credentials
            hint = "put the user and password in the URL"
            msg = f"Redis at {url} ({where}) answered: {reason}; {hint}"
        raise ConnectionFailed(msg) from None


def _announce(resolved: Resolved) -> None:
    """Say once per process and URL which Redis nbqueue uses."""
    with _lock:
        if resolved.url in _announced:
            return
        _announced.add(resolved.url)
    masked = mask_url(resolved.url)
    if resolved.source == EMBEDDED:
        how = f"started it; data in {resolved.data_dir}" if resolved.started else "already running"
        line = f"nbqueue: using the embedded Redis at {masked} ({how})"
    else:
        how = {
            "localhost": "found running on localhost",
            "NBQUEUE_URL": "from NBQUEUE_URL",
            "argument": "given as argument",
        }[resolved.source]
        line = f"nbqueue: using Redis at {masked} ({how})"
    if logger.hasHandlers():
        logger.info(line)
    else:
        print(line, file=sys.stderr, flush=True)


def get_connection(connection: Union[redis.Redis, str, None] = None) -> redis.Redis:
    """``connection`` if it is a client, else :func:`connect` to it (a URL or None)."""
    if connection is None or isinstance(connection, str):
        return connect(connection)
    if isinstance(connection, redis.Redis):
        return connection
    kind = type(connection).__name__
    raise InvalidConnection(f"connection must be a redis.Redis, a URL or None, not {kind}")


def describe(client: redis.Redis) -> str:
    """A URL-like description of ``client`` with any password masked."""
    kw = client.connection_pool.connection_kwargs
    user = kw.get("username") or ""
    auth = f"{user}:***@" if kw.get("password") else (f"{user}@" if user else "")
    db = int(kw.get("db") or 0)
    if kw.get("path"):
        return f"unix://{auth}{kw['path']}" + (f"?db={db}" if db else "")
    tls = issubclass(client.connection_pool.connection_class, redis.SSLConnection)
    scheme = "rediss" if tls else "redis"
    return f"{scheme}://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{db}"
