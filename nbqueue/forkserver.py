"""The fork server: a fork-mode worker's jobs are forked from a process that runs one thread.

A worker runs threads (its slots, the heartbeat), and forking such a process is unsafe (the child
inherits a lock another thread held at that moment, and never sees it released); Python 3.12+
warns about it (``DeprecationWarning``). So at the start of ``work()``, while it still has one
thread, the worker forks a *keeper*; the keeper forks the *server*, and a new server whenever the
worker finds its server gone. The worker asks the server for a child per job; the server forks it
(``child.fork_child``: the same child, with the same guards, as a worker forking by itself) and
is given one end of a socket pair, whose other end the worker keeps: the worker writes the job
to it and reads the outcome from it, and sees the child's death on a pidfd it opens. As soon as a job's child
has its job, the worker has the server fork the next one (a *spare*, ``nbqueue-spare`` until it gets
its job), so a fork is never on a job's way; a spare whose server died is dropped, never given a job. The server reaps a
child only when the worker asks, killing its process group first, so the zombie holds its pid and
group until the worker is done with it, and then ends (as subreaper) what the job left behind.

Processes: worker → keeper → server → a child per job. Each ends with its parent: ``PR_SET_PDEATHSIG``,
and the end of file of its control socket. The keeper and the server ignore SIGINT and SIGTERM (the
worker decides), call themselves ``nbqueue-keeper`` and ``nbqueue-forks`` (``ps -o comm``), and never
return into the worker's code. Control messages (``SOCK_SEQPACKET``): ``S`` (to the keeper: a new
server; reply: its pid and the socket's end), ``F`` with the child's end of its socket (a child; no reply:
the child itself sends its pid on its socket once it is ready for its job, and a fork that failed closes
that socket), ``R`` + pid + orphans flag (reap it now; reply: its wait status, -1 if it is not a child),
``r`` (the same, no reply), ``E`` (no reply: its outcome arrived whole; reap it when it exits, killing it
``child.FINISH_GRACE`` seconds on if it still runs, its group and what it left then ended as for ``R``).
So neither the next job's fork nor a child's exit is on a job's way: the worker asks for the spare
without waiting, and goes on with the next job as soon as the outcome is read.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import signal
import socket
import struct
import threading
import time
from typing import Callable, Optional

from . import child
from .errors import ForkServerGone

log = logging.getLogger("nbqueue.worker")

_PID = struct.Struct("!q")
_REAP = struct.Struct("!cqB")
_FORK_GONE = 1.0  # seconds the worker waits to see its server's exit once a fork it asked for came to nothing
REPLY_TIMEOUT = 30.0  # seconds the worker waits for its server's reply before calling it dead
KEEPER_NAME, SERVER_NAME, SPARE_NAME = b"nbqueue-keeper", b"nbqueue-forks", b"nbqueue-spare"
PR_SET_NAME = 15
_WORKER_NAME: Optional[bytes] = None  # the worker's process name, which job processes keep




def usable() -> bool:
    """This process may start a fork server now: Linux (pidfds, prctl) with one thread running."""
    if child._PRCTL is None or not hasattr(os, "pidfd_open") or not hasattr(socket, "SOCK_SEQPACKET"):
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class Server:
    """The worker's side of one fork server process: forks children, reaps them, from any thread."""

    def __init__(self, pid: int, sock: socket.socket):
        self.pid, self._sock = pid, sock
        self._sock.settimeout(REPLY_TIMEOUT)
        self._pidfd = child._pidfd(pid)  # to kill it if it hangs, never a process that reused its pid
        self._lock = threading.Lock()
        self.dead = False

    def fork(self, channel: int) -> None:
        """Ask for a new child, given ``channel`` (its end of its socket with the worker), without
        waiting: the child sends its pid on it when it is ready. ``ForkServerGone`` if the server is gone."""
        self._send(b"F", channel)

    def end(self, pid: int, orphans: bool) -> None:
        """The child sent its outcome: the server reaps it once it exits (``E``), ending its group and,
        with ``orphans``, what it left; no round trip."""
        try:
            self._send(_REAP.pack(b"E", pid, orphans))
        except ForkServerGone:
            pass  # its children died with it

    def gone(self) -> bool:
        """Whether the server has exited (waiting ``_FORK_GONE`` s for it): a fork came to nothing."""
        if not self.dead and self._pidfd is not None:
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            if poller.poll(int(_FORK_GONE * 1000)):
                with self._lock:
                    self.close()
        return self.dead

    def kill(self) -> None:
        """The server is stuck: killed (its children die with it), and called dead."""
        with self._lock:
            if self._pidfd is not None:
                child._pidfd_kill(self._pidfd)
            self.close()

    def _send(self, message: bytes, fd: Optional[int] = None) -> None:
        with self._lock:
            if self.dead:
                raise ForkServerGone("the fork server is gone")
            try:
                _send_fd(self._sock, message, fd)
            except OSError:
                self.close()
                raise ForkServerGone("the fork server is gone") from None

    def reap(self, pid: int, orphans: bool, wait: bool = True) -> Optional[int]:
        """End the child's group, reap it (and, with ``orphans``, what it left): its wait status,
        or None if the server is gone (then the child was killed with it). Without ``wait``, the
        request is only sent (no round trip): for a child whose outcome arrived whole."""
        if not wait:
            with contextlib.suppress(ForkServerGone):  # the next fork finds out and starts a new server
                self._send(_REAP.pack(b"r", pid, orphans))
            return None
        try:
            status = _PID.unpack(self._call(_REAP.pack(b"R", pid, orphans))[0])[0]
        except ForkServerGone:
            return None
        return None if status < 0 else status

    def _call(self, message: bytes, fd: Optional[int] = None) -> tuple:
        with self._lock:
            if self.dead:
                raise ForkServerGone("the fork server is gone")
            try:
                _send_fd(self._sock, message, fd)
                data, fds = _recv(self._sock, False)
            except socket.timeout:  # alive but stuck: it is replaced
                data, fds = b"", []
                if self._pidfd is not None:
                    child._pidfd_kill(self._pidfd)
            except OSError:  # broken pipe, reset: it died
                data, fds = b"", []
            if not data:
                self.close()
                raise ForkServerGone("the fork server is gone")
            return data, fds

    def close(self) -> None:
        """Called with the lock held or at the end: end of file for the server, which ends its children."""
        if not self.dead:
            self.dead = True
            with child._spawn_lock:  # a child the worker forks meanwhile must not close a reused number
                child._kept.discard(self._sock.fileno())
                self._sock.close()
            if self._pidfd is not None:
                child._close(self._pidfd)
                self._pidfd = None


class ForkServer:
    """A keeper process forked now (call while this process runs one thread) and its current server."""

    def __init__(self, run: Callable[[bytes], bytes], fallback: bytes):
        """Children run ``run(payload)`` and send back what it returns (``fallback`` if it raises)."""
        self._lock = threading.Lock()
        theirs, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the keeper, measured by the tests' outcomes
            code = child.EXIT_BUG
            try:
                ours.close()
                code = _keeper_main(theirs, run, fallback, parent)
            finally:
                child.exit_now(code)
        theirs.close()
        self.keeper_pid, self._keeper = pid, ours
        self._keeper.settimeout(REPLY_TIMEOUT)
        child._live.add(pid)  # the worker's own end_orphans leaves it alone
        child._kept.add(ours.fileno())  # a child the worker forks itself closes it
        self.restarts = 0
        self._warned = False
        self._spare: Optional[tuple] = None  # the next job's child, forked while the last one ran
        self._closed = False
        try:
            self._server = self._new_server()
        except ForkServerGone:
            self._end_keeper()
            raise

    def server(self) -> Server:
        """The live server (a new one if it died); ``ForkServerGone`` if there can be none."""
        with self._lock:
            if self._keeper.fileno() < 0:
                raise ForkServerGone("the fork server's keeper is gone")
            if self._server.dead:
                self.restarts += 1
                log.warning("the fork server (pid %d) died; starting a new one", self._server.pid)
                self._server = self._new_server()
            return self._server

    def child(self) -> tuple:
        """A child waiting for its job: (its server, pid, the worker's end of its socket, a pidfd):
        the spare asked for beforehand if it is alive, else a new one (``ForkServerGone`` if no
        server can be had, ``OSError`` if the server could not fork)."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            ready = _ready_child(spare)
            if ready is not None:
                return ready
        for _ in (1, 2):  # a server found dead is replaced once
            spare = self._fresh()
            ready = _ready_child(spare)
            if ready is not None:
                return ready
            if not spare[0].gone():
                raise OSError(errno.EAGAIN, "the fork server could not fork a child")
        raise ForkServerGone("the fork server is gone")

    def refill(self) -> None:
        """Fork the next job's child now (while this job runs), unless a spare waits already."""
        with self._lock:
            if self._spare is not None or self._closed:
                return
        try:
            spare = self._fresh()
        except (ForkServerGone, OSError):
            return  # the next job's fork finds out again
        with self._lock:
            if self._spare is None and not self._closed:
                self._spare = spare
                return
        _discard(spare)

    def _fresh(self) -> tuple:
        """Ask a server for a child, not waiting for it: (the server, the worker's end of its socket)."""
        ours, theirs = socket.socketpair()
        try:
            server = self.fork(theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        fd = ours.detach()
        with child._spawn_lock:
            child._kept.add(fd)
        return server, fd

    def fork(self, channel: int) -> Server:
        """Ask for a new child given ``channel``: the server asked; restarts a dead server once.
        ``ForkServerGone`` if no server can be had (its keeper died)."""
        for attempt in (1, 2):
            server = self.server()
            try:
                server.fork(channel)
                return server
            except ForkServerGone:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def broken(self, exc: Exception) -> None:
        """No server can be had: say so once (the worker forks its children by itself from then on)."""
        with self._lock:
            if not self._warned:
                self._warned = True
                log.error("%s; forking each job from the worker itself from now on", exc)

    def _new_server(self) -> Server:
        try:
            self._keeper.sendall(b"S")
            data, fds = _recv(self._keeper, True)
        except OSError:
            data, fds = b"", []
        if not data or not fds:
            for fd in fds:
                child._close(fd)
            with child._spawn_lock:
                child._kept.discard(self._keeper.fileno())
                self._keeper.close()
            raise ForkServerGone("the fork server's keeper is gone: no new fork server can be started")
        sock = socket.socket(fileno=fds[0])
        child._kept.add(sock.fileno())
        return Server(_PID.unpack(data)[0], sock)

    def close(self) -> None:
        """End the server and the keeper (at the end of ``work()``; no job runs any more)."""
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
            if spare is not None:
                _discard(spare)
            with self._server._lock:
                self._server.close()
            self._end_keeper()

    def _end_keeper(self) -> None:
        with child._spawn_lock:
            child._kept.discard(self._keeper.fileno())
            self._keeper.close()  # end of file: the keeper kills its server and exits
        try:
            os.waitpid(self.keeper_pid, 0)
        except ChildProcessError:
            pass
        child._live.discard(self.keeper_pid)


def _ready_child(spare: tuple) -> Optional[tuple]:
    """The asked-for child once it says it is ready (its pid, on its socket): (server, pid, fd,
    pidfd); None if it came to nothing or died (then it is discarded: it runs no job)."""
    server, fd = spare
    try:
        pid = _read_pid(fd, REPLY_TIMEOUT)
    except TimeoutError:  # its server is alive but stuck: it is replaced
        server.kill()
        pid = None
    pidfd = None if pid is None or server.dead else child._pidfd(pid)  # its server holds it until asked
    if pid is not None and not server.dead and not (child._zombie(pid) if pidfd is None else child._ready(pidfd)):
        with child._spawn_lock:
            child._kept.update(f for f in (pidfd,) if f is not None)
        return server, pid, fd, pidfd
    _discard((server, pid, fd, pidfd))
    return None


def _read_pid(fd: int, timeout: float) -> Optional[int]:
    """The pid a child sends once it is ready; None if it came to nothing, TimeoutError if none came."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(int(timeout * 1000)):
        raise TimeoutError("no child came")
    try:
        data = os.read(fd, _PID.size)  # the child writes it whole, before anything else
    except OSError:
        return None
    return _PID.unpack(data)[0] if len(data) == _PID.size else None


def _discard(spare: tuple) -> None:
    """A child that will run no job: killed, reaped by its server, its descriptors closed."""
    if len(spare) == 4:
        server, pid, fd, pidfd = spare
    else:  # asked for, not known to be ready: it says its pid once it is (or comes to nothing)
        server, fd = spare
        pidfd = None
        try:
            pid = _read_pid(fd, _FORK_GONE)
        except TimeoutError:
            pid = None
    if pidfd is not None:
        child._pidfd_kill(pidfd)
    if pid is not None:
        server.reap(pid, False, wait=False)
    with child._spawn_lock:
        for f in (fd, pidfd):
            if f is not None:
                child._kept.discard(f)
                child._close(f)


def _recv(sock: socket.socket, want_fd: bool) -> tuple:
    """One message and the descriptors passed with it (close-on-exec)."""
    size = socket.CMSG_LEN(struct.calcsize("i"))
    data, ancillary, _, _ = sock.recvmsg(64, size if want_fd else 0, getattr(socket, "MSG_CMSG_CLOEXEC", 0))
    fds: list = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) - len(payload) % 4])
    return data, fds


def _send_fd(sock: socket.socket, data: bytes, fd: Optional[int]) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))] if fd is not None else []
    sock.sendmsg([data], ancillary)


# --- the keeper and the server (in their own processes) ----------------------------------------------
def _become(name: bytes, parent: int) -> bool:
    """Set up a helper process: dies with ``parent``, adopts orphans, its own name, no Ctrl-C."""
    global _WORKER_NAME
    if _WORKER_NAME is None:
        _WORKER_NAME = _name()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    prctl = child._PRCTL
    assert prctl is not None
    prctl(child.PR_SET_PDEATHSIG, signal.SIGKILL)
    prctl(child.PR_SET_CHILD_SUBREAPER, 1)
    _set_name(name)
    return os.getppid() == parent


def _keeper_main(sock: socket.socket, run: Callable[[bytes], bytes], fallback: bytes,
                 parent: int) -> int:  # pragma: no cover - its own process
    """Fork a server whenever the worker asks; reap dead servers and end what they leave."""
    if not _become(KEEPER_NAME, parent):
        return child.EXIT_BUG
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    servers: set = set()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    me = os.getpid()
    try:
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if wake_r in ready:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
            if sock.fileno() in ready:
                message = sock.recv(16)
                if not message:
                    return 0  # the worker closed its end, or died
                if message == b"S":
                    theirs, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                    try:
                        pid = os.fork()
                    except OSError as exc:
                        _send_fd(sock, _PID.pack(-(exc.errno or 1)), None)
                        theirs.close()
                        ours.close()
                        continue
                    if pid == 0:
                        code = child.EXIT_BUG
                        try:
                            signal.set_wakeup_fd(-1)
                            for fd in (sock.fileno(), ours.fileno(), wake_r, wake_w):
                                child._close(fd)
                            code = _server_main(theirs, run, fallback, me)
                        finally:
                            child.exit_now(code)
                    theirs.close()
                    servers.add(pid)
                    _send_fd(sock, _PID.pack(pid), ours.fileno())
                    ours.close()
            servers = {pid for pid in servers if not _exited(pid)}
            child.end_children(frozenset(servers))  # dead servers, and what their children left
    finally:
        for pid in servers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        child.end_children()


def _server_main(sock: socket.socket, run: Callable[[bytes], bytes], fallback: bytes,
                 parent: int) -> int:  # pragma: no cover - its own process
    """Fork a child per request, reap each when asked (or once it exits, when told its outcome
    arrived); on end of file, end them all."""
    if not _become(SERVER_NAME, parent):
        return child.EXIT_BUG
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    child._kept.clear()
    child._kept.add(sock.fileno())  # each child closes the server's control socket
    live: set = set()
    ending: dict = {}  # pidfd -> (pid, orphans, when it is killed if it still runs): outcome sent, exit awaited
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)

    def reap(pid: int, orphans: bool) -> int:
        """End the child's group (while its zombie holds it) and reap it: its wait status, -1 if unknown."""
        status = -1
        if pid in live:
            live.discard(pid)
            child._signal_group(pid)  # what the job left in its group, while the zombie holds it
            try:
                status = os.waitpid(pid, 0)[1]
            except ChildProcessError:
                pass
            if orphans:
                child.end_children(frozenset(live))
        return status

    def ended(pidfd: int) -> None:
        pid, orphans, _ = ending.pop(pidfd)
        poller.unregister(pidfd)
        child._kept.discard(pidfd)
        child._close(pidfd)
        reap(pid, orphans)

    try:
        while True:
            timeout = -1
            if ending:
                timeout = max(0, math.ceil((min(d for _, _, d in ending.values()) - time.monotonic()) * 1000))
            ready = [fd for fd, _ in poller.poll(timeout)]
            for pidfd in [fd for fd in ready if fd in ending]:
                ended(pidfd)  # it exited
            now = time.monotonic()
            for pidfd in [fd for fd, (_, _, d) in ending.items() if d <= now]:
                ended(pidfd)  # sent its outcome but hangs (a stuck flush): killed now, the outcome stands
            if sock.fileno() not in ready:
                continue
            message, fds = _recv(sock, True)
            if not message:
                return 0
            kind = message[:1]
            if kind == b"F" and len(fds) == 1:
                fd = fds[0]

                def job(fd: int = fd) -> bytes:
                    return _job(run, fd)

                try:
                    live.add(child.fork_child(job, fallback, fd, child._kept))
                except OSError:
                    pass  # closing its end tells the worker: it asks again, or says it could not fork
                finally:
                    os.close(fd)
                continue
            for fd in fds:  # not a fork request: nothing should come with it
                os.close(fd)
            if len(message) != _REAP.size:
                continue
            _, pid, orphans = _REAP.unpack(message)
            if kind == b"E" and pid in live and pid not in (p for p, _, _ in ending.values()):
                handle = child._pidfd(pid)
                if handle is not None:
                    ending[handle] = (pid, orphans, time.monotonic() + child.FINISH_GRACE)
                    child._kept.add(handle)  # the children forked meanwhile close it
                    poller.register(handle, select.POLLIN)
                    continue
            if kind in (b"R", b"r", b"E"):
                status = reap(pid, orphans)
                if kind == b"R":
                    sock.sendall(_PID.pack(status))
    finally:
        for pid in live:
            child._signal_group(pid)
        child.end_children()


def _job(run: Callable[[bytes], bytes], fd: int) -> bytes:  # pragma: no cover - in the job's process
    """In a child: wait for the job (as ``nbqueue-spare``), take the worker's process name again, run it."""
    _set_name(SPARE_NAME)
    os.write(fd, _PID.pack(os.getpid()))  # ready: the worker may send its job
    payload = child.receive(fd)
    if _WORKER_NAME:
        _set_name(_WORKER_NAME)
    return run(payload)


def _name() -> bytes:
    try:
        with open("/proc/self/comm", "rb") as f:
            return f.read().strip()[:15]
    except OSError:
        return b""


def _set_name(name: bytes) -> None:
    if child._PRCTL is not None:
        child._PRCTL(PR_SET_NAME, name)


def _exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
