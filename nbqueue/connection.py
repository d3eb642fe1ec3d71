"""Which Redis nbqueue uses, decided in one place, and the client for it.

Order: an explicit URL → ``$NBQUEUE_URL`` → a Redis answering on
``redis://localhost:6379/0`` → the embedded server (started if needed).
The URL ``"embedded"`` forces the embedded server; ``redis+sentinel://`` URLs
reach the master of a Sentinel-monitored service; ``redis+cluster://`` (``rediss+cluster://``
with TLS) URLs a Redis or Valkey Cluster, as does a plain ``redis://`` URL to a node that runs
in cluster mode (found out on first contact), and a ``redis.cluster.RedisCluster`` client.
On first contact with a Redis nbqueue reads its ``maxmemory-policy``: one that evicts keys
would drop jobs.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional, Union
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from .errors import ConnectionFailed, EvictingRedis, InvalidConnection, InvalidURL
from .server import EmbeddedServer

__all__ = [
    "Client", "ConnectionFailed", "InvalidURL", "Resolved", "SentinelURL", "check_eviction", "client_for", "connect",
    "connection_options", "describe", "is_cluster", "eviction_policy", "get_connection", "mask_url", "resolve",
]

LOCAL_URL = "redis://localhost:6379/0"  # probed when nothing is configured
PROBE_TIMEOUT = 0.25  # seconds for the localhost probe
CHECK_TIMEOUT = 5.0  # seconds for the first PING of a configured URL
SENTINEL_TIMEOUT = 2.0  # seconds for a sentinel's answer (which master), so a hung one can't hang us
EMBEDDED = "embedded"
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}  # -> the scheme of its nodes
URL_FORMS = (
    "redis://[user:password@]host[:port][/db], rediss://... (TLS), "
    "unix://[user:password@]/path/to/socket[?db=N], "
    "redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db], "
    "redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster://: TLS), or 'embedded'"
)
Client = Union[redis.Redis, RedisCluster]  # what nbqueue works with

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
            query = [(k, "***" if "password" in k else v) for k, v in parse_qsl(parts.query)]
            parts = parts._replace(query=urlencode(query, safe="*"))
        tail = f"?{parts.query}" if parts.query else ""
        return f"{parts.scheme}://{parts.netloc}{parts.path}{tail}"
    except ValueError:
        return "<unparsable URL>"


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]``.

    The user and password are the Redis servers' (the master's); the query parameters
    ``sentinel_username`` and ``sentinel_password`` are the sentinels' own, if they need any.
    """

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    sentinel_username: Optional[str] = None
    sentinel_password: Optional[str] = None

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        """Parse ``url``; ``InvalidURL`` if it is not a well-formed Sentinel URL."""
        def bad(why: str) -> InvalidURL:
            return InvalidURL(f"invalid Sentinel URL {mask_url(url)!r} ({why}); use "
                              f"{SENTINEL_SCHEME}://[user:password@]host:port[,host:port...]/service_name[/db]")

        scheme, sep, rest = url.partition("://")
        if scheme.lower() != SENTINEL_SCHEME or not sep:
            raise bad(f"the scheme must be {SENTINEL_SCHEME}")
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        userinfo, at, hostlist = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username, password = unquote(user) or None, unquote(secret) if colon else None
        sentinels = tuple(_host_port(item, bad) for item in hostlist.split(","))
        parts = [unquote(p) for p in path.split("/") if p]
        if not parts or len(parts) > 2:
            raise bad("give the service name, and optionally the db, as the path")
        db = parts[1] if len(parts) == 2 else "0"
        if not db.isdigit():
            raise bad(f"db {db!r} is not a number")
        options = dict(parse_qsl(query))
        unknown = set(options) - {"sentinel_username", "sentinel_password"}
        if unknown:
            raise bad(f"unknown option {sorted(unknown)[0]!r}")
        return cls(sentinels, parts[0], int(db), username, password,
                   options.get("sentinel_username"), options.get("sentinel_password"))


def _host_port(item: str, bad: Any, default: int = 26379) -> tuple[str, int]:
    """``host:port`` (port ``default`` if left out; IPv6 in brackets) of one sentinel or node."""
    item = item.strip()
    if item.startswith("["):
        host, _, port = item[1:].partition("]")
        port = port[1:] if port.startswith(":") else port
    else:
        host, _, port = item.partition(":")
    if not host:
        raise bad("an address has no host")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise bad(f"port {port!r} is not a port number")
    return host, int(port or default)


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a Redis Cluster client (``redis.cluster.RedisCluster``), asked once per type:
    ``isinstance`` through the Protocol among RedisCluster's bases costs a microsecond, on every hot call."""
    kind = type(client)
    found = _cluster_types.get(kind)
    if found is None:
        found = _cluster_types[kind] = issubclass(kind, RedisCluster)
    return found


_cluster_types: dict[type, bool] = {}  # client class -> whether it is a cluster client


def _cluster_url(url: str) -> Optional[tuple[str, list]]:
    """For a ``redis+cluster://`` URL: the URL of its first node (``redis://`` or ``rediss://``, with
    the credentials and options) and the (host, port) of the others; None for any other URL.
    ``InvalidURL`` if it is malformed."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    if plain is None or not sep:
        return None
    netloc, slash, tail = rest.partition("/")
    path, _, query = ("/" + tail if slash else "").partition("?")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
    if path.strip("/") not in ("", "0"):
        raise InvalidURL(f"invalid cluster URL {mask_url(url)!r}: a cluster has only db 0; use {URL_FORMS}")
    userinfo, at, hostlist = netloc.rpartition("@")

    def bad(why: str) -> InvalidURL:
        return InvalidURL(f"invalid cluster URL {mask_url(url)!r} ({why}); use {URL_FORMS}")

    hosts = [_host_port(item, bad, 6379) for item in hostlist.split(",")]
    first = f"{plain}://{userinfo}{at}{_join(hosts[0])}" + (f"?{query}" if query else "")
    return first, hosts[1:]


def _join(host_port: tuple[str, int]) -> str:
    host, port = host_port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _as_cluster(url: str, **options: Any) -> RedisCluster:
    """A RedisCluster for a ``redis://``/``rediss://`` URL of one node (or a cluster URL)."""
    parsed = _cluster_url(url)
    first, others = parsed if parsed else (url, [])
    options = {k: v for k, v in options.items() if k not in ("db", "health_check_interval")}
    nodes = [ClusterNode(host, port) for host, port in others]
    return RedisCluster.from_url(first, startup_nodes=nodes, **options)


def client_for(url: str, **options: Any) -> Client:
    """A redis-py client for ``url`` (any form nbqueue accepts but 'embedded'), with ``options``
    for its connections. A Sentinel URL gives ``Sentinel(...).master_for(service)``: every
    connection asks the sentinels for the master when it opens; a cluster URL a ``RedisCluster``."""
    if _cluster_url(url) is not None:
        return _as_cluster(url, **options)
    if not url.lower().startswith(SENTINEL_SCHEME + "://"):
        return redis.Redis.from_url(url, **options)
    parsed = SentinelURL.parse(url)
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    for name in ("socket_timeout", "socket_connect_timeout"):
        sentinel_options[name] = min(options.get(name) or SENTINEL_TIMEOUT, SENTINEL_TIMEOUT)
    if parsed.sentinel_password is not None:
        sentinel_options.update(username=parsed.sentinel_username, password=parsed.sentinel_password)
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_options)
    return sentinel.master_for(parsed.service, db=parsed.db, username=parsed.username,
                               password=parsed.password, **options)


def _check_url(url: str) -> None:
    """Raise ``InvalidURL`` unless redis-py accepts ``url``."""
    if url.lower().startswith(SENTINEL_SCHEME + "://"):
        SentinelURL.parse(url)
        return
    parsed = _cluster_url(url)
    try:
        redis.ConnectionPool.from_url(parsed[0] if parsed else url)
    except (ValueError, TypeError) as e:
        raise InvalidURL(f"invalid Redis URL {mask_url(url)!r} ({e}); use {URL_FORMS}") from None


def _ping(url: str, timeout: float) -> None:
    """PING ``url`` once, without retries; raise redis errors."""
    client = client_for(url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
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
        options = dict(decode_responses=False, health_check_interval=30, socket_timeout=None,
                       **_keepalive(resolved.url))
        client = client_for(resolved.url, **options)
        if isinstance(client, redis.Redis) and _cluster_enabled(client):
            client.close()
            client = _as_cluster(resolved.url, **options)
        elif isinstance(client, redis.Redis):
            _clusters[client.connection_pool] = False  # asked: a job's Job() (in a forked child too) won't ask again
        with _lock:
            client = _by_url.setdefault(resolved.url, client)
    with _lock:
        _by_request[request] = client
    _announce(resolved)
    return client


def _cluster_enabled(client: redis.Redis) -> bool:
    """Whether ``client``'s server is a cluster node (``INFO cluster``); False if it can't tell.
    A unix socket or Sentinel-managed client is taken as standalone (a cluster is reached over TCP)."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool) or pool.connection_kwargs.get("path"):
        return False
    try:
        return str(client.info("cluster").get("cluster_enabled", 0)) == "1"
    except redis.ResponseError:  # e.g. INFO not allowed: standalone as far as we know
        return False


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
    else:  # in a notebook, a quiet line: a kernel shows stderr as an error
        print(line, file=sys.stdout if _in_kernel() else sys.stderr, flush=True)


def _in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (its stdout is ipykernel's stream)."""
    return type(sys.stdout).__module__.startswith("ipykernel")


_chosen: dict = {}  # "client": what use_redis() chose for this process


def use_redis(connection: Union[Client, str, None] = None) -> Client:
    """Use this Redis (a client, a URL, or by default the one nbqueue resolves: ``NBQUEUE_URL``,
    a local Redis, else the embedded one) for every queue, job and worker of this process made
    without ``connection=``; returns its client. ``use_redis()`` again with another one switches."""
    _chosen.pop("client", None)
    client = get_connection(connection)
    _chosen["client"] = client
    return client


def get_connection(connection: Union[Client, str, None] = None, evicting: str = "warn") -> Client:
    """``connection`` if it is a client, else :func:`connect` to it (a URL or None: the one
    ``use_redis`` chose, if it did). A ``redis.Redis`` to a node of a cluster is used through a
    ``RedisCluster`` to that cluster (made once per client). ``evicting`` says what to do if that
    Redis may evict keys (see :func:`check_eviction`)."""
    if connection is None and "client" in _chosen:  # redis-py's pool reopens its sockets after a fork
        connection = _chosen["client"]
    if connection is None or isinstance(connection, str):
        client = connect(connection)
    elif isinstance(connection, redis.Redis):  # first: the common case, and a cheap isinstance
        client = _cluster_for(connection)
    elif isinstance(connection, RedisCluster):
        client = connection
    else:
        kind = type(connection).__name__
        raise InvalidConnection(f"connection must be a redis.Redis, a redis.cluster.RedisCluster, a URL or None, "
                                f"not {kind}")
    check_eviction(client, evicting)
    return client


_clusters: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # pool -> RedisCluster or False


def _cluster_for(client: redis.Redis) -> Client:
    """``client``, or a RedisCluster (same options) if its server is a cluster node; asked once per pool."""
    pool = client.connection_pool
    found = _clusters.get(pool)
    if found is None:
        found = False
        try:
            if _cluster_enabled(client):
                kw = {k: v for k, v in pool.connection_kwargs.items()
                      if k not in ("db", "connection_class", "health_check_interval")}
                if issubclass(pool.connection_class, redis.SSLConnection):
                    kw["ssl"] = True
                found = RedisCluster(**kw)
        except (redis.ConnectionError, redis.TimeoutError):
            return client  # away: ask again at the next contact
        _clusters[pool] = found
    return found or client


def _key(client: Client) -> Any:
    """What per-client facts are cached by: the connection pool (a cluster client: itself)."""
    return client if is_cluster(client) else client.connection_pool


# Per connection pool (per client): its server's maxmemory-policy, read once per process.
_policies: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_told: weakref.WeakSet[Any] = weakref.WeakSet()  # pools whose eviction was logged


def eviction_policy(client: Client) -> str:
    """The ``maxmemory-policy`` of ``client``'s Redis ("" if it can't be read, e.g. a user not
    allowed INFO), read from ``INFO memory`` (no CONFIG rights needed) once per process; of a
    cluster, the first master's that evicts (else "noeviction")."""
    pool = _key(client)
    policy = _policies.get(pool)
    if policy is None:
        try:
            if isinstance(client, RedisCluster):
                replies = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
                policies = [str(r.get("maxmemory_policy", "")) for r in replies.values()] if len(
                    client.get_primaries()) > 1 else [str(replies.get("maxmemory_policy", ""))]
                policy = next((p for p in policies if p != "noeviction"), "noeviction")
            else:
                policy = str(client.info("memory").get("maxmemory_policy", ""))
        except redis.ResponseError as exc:  # e.g. NOPERM: don't ask again
            logger.debug("nbqueue: cannot read maxmemory-policy of %s: %s", describe(client), exc)
            policy = ""
        _policies[pool] = policy
    return policy


def check_eviction(client: Client, evicting: str = "warn") -> None:
    """Act on a Redis that may evict keys when full (a ``maxmemory-policy`` other than
    ``noeviction``), which drops jobs silently: ``"refuse"`` raises ``EvictingRedis`` (a worker),
    ``"warn"`` logs a warning once per client (a client), ``"allow"`` logs that it was allowed."""
    if evicting == "warn" and _key(client) in _told:
        return  # fast: Job() calls this for every job
    try:
        policy = eviction_policy(client)
    except (redis.ConnectionError, redis.TimeoutError):
        if evicting == "refuse":
            raise
        return  # Redis away: ask at the next contact
    if policy in ("", "noeviction"):
        if not policy and evicting == "refuse" and client.connection_pool not in _told:
            logger.warning("nbqueue: could not read the maxmemory-policy of Redis at %s (INFO memory): make sure it "
                           "is noeviction, or jobs can be evicted silently", describe(client))
        _told.add(_key(client))
        return
    where = describe(client)
    fix = "CONFIG SET maxmemory-policy noeviction (and in its config file)"
    if evicting == "refuse":
        raise EvictingRedis(
            f"Redis at {where} has maxmemory-policy {policy}: when full it evicts keys, which drops jobs "
            f"silently; set it to noeviction ({fix}), or start the worker with --allow-eviction.")
    if client.connection_pool not in _told:
        _told.add(_key(client))
        if evicting == "allow":
            logger.warning("nbqueue: Redis at %s has maxmemory-policy %s, allowed by --allow-eviction: "
                           "when full it evicts keys, and jobs are lost silently", where, policy)
        else:
            logger.warning("nbqueue: Redis at %s has maxmemory-policy %s: when full it evicts keys, which drops "
                           "jobs silently; set it to noeviction: %s", where, policy, fix)


def connection_options(client: Client) -> dict:
    """The options ``client`` opens its connections with (of a cluster: those to its nodes)."""
    if isinstance(client, RedisCluster):
        node = client.get_default_node()
        return dict(node.redis_connection.connection_pool.connection_kwargs) if node.redis_connection else {}
    return dict(client.connection_pool.connection_kwargs)


def describe(client: Client) -> str:
    """A URL-like description of ``client`` with any password masked."""
    if isinstance(client, RedisCluster):
        node = client.get_default_node()
        kw = connection_options(client)
        user = kw.get("username") or ""
        auth = f"{user}:***@" if kw.get("password") else (f"{user}@" if user else "")
        tls = kw.get("ssl") or (node.redis_connection is not None and issubclass(
            node.redis_connection.connection_pool.connection_class, redis.SSLConnection))
        hosts = ",".join(_join((n.host, n.port)) for n in client.get_primaries())
        return f"{'rediss' if tls else 'redis'}+cluster://{auth}{hosts}"
    pool = client.connection_pool
    kw = pool.connection_kwargs
    user = kw.get("username") or ""
    auth = f"{user}:***@" if kw.get("password") else (f"{user}@" if user else "")
    db = int(kw.get("db") or 0)
    if isinstance(pool, SentinelConnectionPool):
        hosts = ",".join(_address(s.connection_pool.connection_kwargs) for s in pool.sentinel_manager.sentinels)
        return f"{SENTINEL_SCHEME}://{auth}{hosts}/{pool.service_name}/{db}"
    if kw.get("path"):
        return f"unix://{auth}{kw['path']}" + (f"?db={db}" if db else "")
    tls = issubclass(pool.connection_class, redis.SSLConnection)
    scheme = "rediss" if tls else "redis"
    return f"{scheme}://{auth}{_address(kw)}/{db}"


def _address(kw: dict) -> str:
    host = str(kw.get("host", "localhost"))
    return f"[{host}]:{kw.get('port', 6379)}" if ":" in host else f"{host}:{kw.get('port', 6379)}"
