"""Signed jobs and results: HMAC-SHA256 with a secret the clients and workers share.

A client signs each job over everything a worker acts on (job id, function path, source hash,
the job options stored with it, and the pickled arguments); the worker checks that signature
before it imports or unpickles anything, and refuses an unsigned job when it has a secret. The
worker signs what it records at the end of an attempt (result, or error text), bound to the job
id, attempt and status; the client checks a result's signature before unpickling it. The result's
summary (see ``summary``) has a signature of its own, bound the same way, so a notebook can check
and show it without fetching the result (which may be 50 MB).

The secret, first found wins: ``secret=`` (a string or bytes; or a list, the first signs and all
verify, for rotation) → ``$NBQUEUE_SECRET`` (with ``$NBQUEUE_OLD_SECRETS``, comma-separated, also
accepted) → ``$NBQUEUE_SECRET_FILE`` (first line the secret, further lines old secrets) → with the
embedded server, a per-user secret file created next to its data → none: jobs are unsigned.

Job hash fields: ``sig`` (the job's signature), ``rsig`` (the outcome's) and ``ssig`` (the result
summary's), raw 32-byte digests. Messages start with their kind (``job,``, ``outcome,``, ``summary,``),
so no signature of one kind verifies as another.
"""
from __future__ import annotations

import hashlib
import hmac
import importlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

from .connection import connection_options
from .errors import SecretError
from .schema import CALLBACK_FIELDS, OPTION_FIELDS  # noqa: F401  (the fields signed, in order)

Secret = Union[str, bytes, Sequence[Union[str, bytes]], "Signer", None]
UNSET: Any = object()  # a signer not looked up yet


def _netstrings(*parts: bytes) -> bytes:
    """An unambiguous concatenation: no two different field lists give the same bytes."""
    return b"".join([b"%d:%b," % (len(p), p) for p in parts])




def job_head(func: bytes, code: bytes, options: Sequence[Optional[bytes]],
             callbacks: Sequence[Optional[bytes]] = ()) -> bytes:
    """The part of a job's signed message shared by jobs of one function and options (and
    callbacks: only a job that has some signs them, so older signatures stay valid)."""
    head = _netstrings(func, code, *[value or b"" for value in options])  # absent and "" alike
    if any(callbacks):  # "cb," can't start the id's netstring that follows a head
        head += b"cb," + _netstrings(*[value or b"" for value in callbacks])
    return head


def options_of(stored: Sequence) -> list:
    """The signed option values from ``Options.stored()``'s field/value pairs (absent: None)."""
    given = dict(zip(stored[::2], stored[1::2]))
    unknown = set(given) - set(OPTION_FIELDS)
    if unknown:  # an option the worker would act on but nobody signs: a bug, caught by the tests
        raise AssertionError(f"options {sorted(unknown)} are not in signing.OPTION_FIELDS")
    return [str(given[name]).encode() if name in given else None for name in OPTION_FIELDS]


_IPAD, _OPAD = bytes(x ^ 0x36 for x in range(256)), bytes(x ^ 0x5C for x in range(256))


def _find_sha256() -> Any:
    """CPython's own SHA-256 where it has one (``_sha2``; before 3.12 ``_sha256``), else hashlib's
    (OpenSSL): copying its state is a plain memory copy, where OpenSSL's goes through its provider
    machinery; on the enqueue path that difference measured about 3 % of the one-by-one rate."""
    for module in ("_sha2", "_sha256"):
        try:
            return importlib.import_module(module).sha256
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256


_SHA256 = _find_sha256()


class _Hmac:
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer states computed once, so a message costs
    two state copies of the SHA-256 above (``hmac.new(...).copy()`` can't use it). The same digests as
    ``hmac.new(secret, msg, "sha256")``: checked when made, and by the tests."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, inner: Any, outer: Any):
        self._inner, self._outer = inner, outer

    @classmethod
    def keyed(cls, secret: bytes) -> _Hmac:
        block = (hashlib.sha256(secret).digest() if len(secret) > 64 else secret).ljust(64, b"\0")
        mac = cls(_SHA256(block.translate(_IPAD)), _SHA256(block.translate(_OPAD)))
        if mac.digest(b"nbqueue", b"self-check") != hmac.new(secret, b"nbqueueself-check", "sha256").digest():
            raise AssertionError("HMAC-SHA256 self-check failed")
        return mac

    def absorbed(self, prefix: bytes) -> _Hmac:
        """This HMAC with ``prefix`` already fed in: the same digests for messages starting so."""
        inner = self._inner.copy()
        inner.update(prefix)
        return _Hmac(inner, self._outer)

    def digest(self, head: bytes, data: bytes) -> bytes:
        """HMAC of ``head`` then ``data`` (not concatenated: ``data`` may be large)."""
        inner = self._inner.copy()
        inner.update(head)
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class Signer:
    """Signs with the first secret, verifies against all of them; ``source`` says where they came from."""

    __slots__ = ("_macs", "_heads", "source")

    def __init__(self, secrets: Sequence[bytes], source: str):
        if not secrets or not all(secrets):
            raise SecretError(f"The signing secret from {source} is empty: give at least one character, "
                              f"e.g. NBQUEUE_SECRET=$(python -c 'import secrets; print(secrets.token_hex(32))').")
        self._macs = [_Hmac.keyed(s) for s in secrets]
        self._heads: dict = {}  # (path, code hash, *stored options) -> job_mac
        self.source = source

    def _matches(self, sig: Optional[bytes], head: bytes, data: bytes) -> bool:
        return sig is not None and sig != b"" and any(
            hmac.compare_digest(sig, mac.digest(head, data)) for mac in self._macs)

    # a job, b"job," + head + id + data: the worker checks it before importing or unpickling anything
    def job_mac(self, path: str, code: str, stored: Sequence, callbacks: Sequence[Optional[bytes]] = ()) -> _Hmac:
        """The signing HMAC with what jobs of one function and options share absorbed (made once)."""
        key = (path, code, *stored, *callbacks)
        mac = self._heads.get(key)
        if mac is None:
            mac = self._macs[0].absorbed(b"job," + job_head(path.encode(), code.encode(), options_of(stored),
                                                            callbacks))
            if len(self._heads) > 1024:
                self._heads.clear()
            self._heads[key] = mac
        return mac

    @staticmethod
    def sign_job(mac: _Hmac, job_id: str, data: bytes) -> bytes:
        """A job's signature, from ``job_mac`` of its function and options."""
        job_id_bytes = job_id.encode()
        return mac.digest(b"%d:%b,%d:" % (len(job_id_bytes), job_id_bytes, len(data)), data)

    def job_matches(self, sig: Optional[bytes], job_id: bytes, head: bytes, data: bytes) -> bool:
        return self._matches(sig, b"job,%b%d:%b,%d:" % (head, len(job_id), job_id, len(data)), data)

    def job_refusal(self, job_id: bytes, func: Optional[bytes], code: Optional[bytes],
                    options: Sequence[Optional[bytes]], data: Optional[bytes], sig: Optional[bytes],
                    callbacks: Sequence[Optional[bytes]] = ()) -> str:
        """"" if a job as stored (its fields in ``OPTION_FIELDS`` order) is signed with our secrets,
        else the error line it fails with, before anything of it is imported or unpickled."""
        if not sig:
            return ("SignatureError: unsigned job refused: this worker has a secret and the job carries no "
                    "signature, so it was not enqueued by a client with that secret; it was not imported or unpickled")
        if self.job_matches(sig, job_id, job_head(func or b"", code or b"", options, callbacks), data or b""):
            return ""
        return ("SignatureError: signature does not match: the job's function, arguments or options were changed "
                "after it was enqueued, or it was signed with another secret; it was not imported or unpickled")

    # an outcome: the client checks a result before unpickling it
    @staticmethod
    def _outcome_head(job_id: bytes, attempt: bytes, status: bytes, exc: bytes, error: bytes, result: bytes) -> bytes:
        return b"outcome,%b%d:" % (_netstrings(job_id, attempt, status, exc, error), len(result))

    def sign_outcome(self, job_id: bytes, attempt: bytes, status: bytes, result: bytes, exc: bytes,
                     error: bytes) -> bytes:
        return self._macs[0].digest(self._outcome_head(job_id, attempt, status, exc, error, result), result)

    def outcome_matches(self, sig: Optional[bytes], job_id: bytes, attempt: bytes, status: bytes, result: bytes,
                        exc: bytes, error: bytes) -> bool:
        return self._matches(sig, self._outcome_head(job_id, attempt, status, exc, error, result), result)

    # a result's summary: a notebook checks it before showing it, without the result itself
    @staticmethod
    def _summary_head(job_id: bytes, attempt: bytes, status: bytes, summary: bytes) -> bytes:
        return b"summary,%b%d:" % (_netstrings(job_id, attempt, status), len(summary))

    def sign_summary(self, job_id: bytes, attempt: bytes, status: bytes, summary: bytes) -> bytes:
        return self._macs[0].digest(self._summary_head(job_id, attempt, status, summary), summary)

    def summary_matches(self, sig: Optional[bytes], job_id: bytes, attempt: bytes, status: bytes,
                        summary: bytes) -> bool:
        return self._matches(sig, self._summary_head(job_id, attempt, status, summary), summary)

    def __repr__(self) -> str:
        return f"<Signer from {self.source}, {len(self._macs)} secret(s)>"


def _encode(value: Union[str, bytes]) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise SecretError(f"A secret must be a string or bytes, not {type(value).__name__}.")


def from_value(secret: Secret, source: str = "secret=") -> Optional[Signer]:
    """A ``Signer`` for ``secret=``: a string, bytes, a list (first signs), a ``Signer``, or None."""
    if secret is None or isinstance(secret, Signer):
        return secret
    if isinstance(secret, (str, bytes)):
        return Signer([_encode(secret)], source)
    return Signer([_encode(s) for s in secret], source)


def read_file(path: Union[str, os.PathLike]) -> list:
    """The secrets in a key file: one a line, the first signs; blank lines are skipped."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise SecretError(f"Can't read the signing key file {path} ({exc.strerror or exc}): fix the path in "
                          f"NBQUEUE_SECRET_FILE, or its permissions.") from None
    secrets = [line.strip() for line in lines if line.strip()]
    if not secrets:
        raise SecretError(f"The signing key file {path} is empty: put a secret on its first line.")
    return secrets


def _embedded_secret(connection: Any) -> Optional[Signer]:
    """The embedded server's per-user secret, if ``connection`` talks to the embedded server."""
    path = connection_options(connection).get("path")
    if not path:
        return None
    from .server import EmbeddedServer, ServerError

    try:
        server = EmbeddedServer()
    except ServerError:  # no embedded server can live here (its socket path would be too long)
        return None
    if os.path.realpath(path) != os.path.realpath(server.socket_path):
        return None
    try:
        return Signer([server.secret()], f"the embedded server's key file {server.secret_path}")
    except (ServerError, OSError) as exc:
        raise SecretError(f"Can't use the embedded server's signing secret: {exc}") from None


_ENV = ("NBQUEUE_SECRET", "NBQUEUE_OLD_SECRETS", "NBQUEUE_SECRET_FILE", "NBQUEUE_RUNTIME_DIR", "NBQUEUE_DATA_DIR")
_defaults: dict = {}  # (environment, socket path) -> Signer or None, found once
_lock = threading.Lock()


def default(connection: Any) -> Optional[Signer]:
    """The secret from the environment, a key file, or the embedded server (see the module docstring)."""
    env = tuple(os.environ.get(name) or "" for name in _ENV)
    cache_key = (env, connection_options(connection).get("path"))
    try:
        return _defaults[cache_key]
    except KeyError:
        pass
    secret, old, key_file = env[:3]
    if secret:
        found: Optional[Signer] = Signer(
            [secret.encode(), *[s.strip().encode() for s in old.split(",") if s.strip()]],
            "NBQUEUE_SECRET" + (" and NBQUEUE_OLD_SECRETS" if old.strip() else ""))
    elif key_file:
        found = Signer(read_file(key_file), f"the key file {key_file} (NBQUEUE_SECRET_FILE)")
    else:
        found = _embedded_secret(connection)
    with _lock:
        if len(_defaults) > 64:
            _defaults.clear()
        _defaults[cache_key] = found
    return found


def get(connection: Any, secret: Secret = None) -> Optional[Signer]:
    """The ``Signer`` for ``secret=`` if given, else the default for ``connection``; None: unsigned."""
    return from_value(secret) if secret is not None else default(connection)


UNSIGNED_WARNING = (
    "jobs are unsigned: no secret is set (NBQUEUE_SECRET, NBQUEUE_SECRET_FILE or secret=), so anyone who can "
    "write to this Redis can make this worker run any code; give clients and workers one secret, and start "
    "workers with --require-signed to refuse to run without one"
)
