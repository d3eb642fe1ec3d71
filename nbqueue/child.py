"""A forked child: its whole life inside one guard, and how the worker waits for it and ends it.

``Forked(run)`` forks from one place, under a process-wide lock: the pipe is made, the child
forked and the parent's write end closed before any other slot can fork, and each new child
closes the worker's ends of its siblings' pipes, so no child holds another's pipe open. The child
makes its own process group, adopts (as subreaper) whatever the job leaves behind, runs
``run()``, writes what it returns to the pipe (length-prefixed, before touching any stream), ends
every process the job left, and leaves by ``os._exit`` whatever the job did to its streams,
signals or file descriptors. The parent waits on the pipe and a pidfd, so a child that stops
talking is still stopped at its deadline or on ``kill()``; it always reaps the child, kills the
child's process group and closes its descriptors.

Given a fork server (``forkserver.py``), ``Forked`` has the server fork the child (``fork_child``,
the same child) and sends it its job on a socket; it waits on that socket and a pidfd the same
way, kills the child's group itself, and has the server (which holds the zombie until then) kill
the group again and reap it. Once a served child's outcome has arrived whole, the wait returns:
its server reaps it when it exits, and kills it (with its group) if it is still there
``FINISH_GRACE`` seconds later.
"""
from __future__ import annotations

import ctypes
import gc
import math
import os
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional

from .errors import ForkServerGone

exit_now = os._exit  # kept here: a job may replace os._exit, the child must still end
_HEADER = struct.Struct("!Q")
READ_SIZE = 1 << 16
FINISH_GRACE = 5.0  # seconds a child may take to exit after it sent its outcome
POLL = 0.05  # seconds between exit checks where there is no pidfd
MAX_WAIT = 60.0  # one select call at most (keeps huge timeouts within select's range)
EXIT_BUG = 70  # the child failed before or while sending (a bug, or no memory left)
EXIT_NO_PIPE = 75  # the child could not write to its pipe (the job closed or broke it)
try:  # the C module: plain ints, without the enum conversions that cost ~0.3 ms per child
    import _signal as _sig  # type: ignore[import-not-found]  # no stub: the same names as signal
except ImportError:  # pragma: no cover - not CPython
    _sig = signal
_CATCHABLE = (frozenset(map(int, signal.valid_signals()))
              - {getattr(signal, "SIGKILL", 0), getattr(signal, "SIGSTOP", 0)})

if TYPE_CHECKING:  # pragma: no cover
    from .forkserver import ForkServer, Server

_spawn_lock = threading.Lock()
_kept: set = set()  # this process's ends of its children's pipes and their pidfds: a new child closes them
_live: set = set()  # pids of the children forked here and not yet reaped
_adopting = False  # this process is a subreaper (``adopt_orphans``)
_in_child = False  # this process is a child forked here (``settle`` mutes its signals)


class Ended(NamedTuple):
    """How a child ended: what it sent (None: nothing complete), its wait status, and whether
    it was killed at its deadline."""

    data: Optional[bytes]
    status: Optional[int]  # None: not known (the fork server that forked it died first)
    timed_out: bool


class Forked:
    """A child running ``run()`` (bytes to send back, ``fallback`` if it raises); ``wait()`` says how it ended."""

    def __init__(self, run: Callable[[], bytes], fallback: bytes = b"", forks: Optional[ForkServer] = None,
                 payload: bytes = b""):
        """Forked here, or by the fork server ``forks``: its child is sent ``payload`` and runs the
        server's own function on it (``run`` and ``fallback`` serve if it is gone)."""
        self._lock = threading.Lock()
        self._reaped = False
        self.killed = False
        self._server: Optional[Server] = None
        if forks is not None:
            try:
                self._server, self.pid, self._pipe, self._pidfd = forks.child()
            except ForkServerGone as exc:  # its keeper died: this worker forks by itself from now on
                forks.broken(exc)
            else:
                with _spawn_lock:
                    _kept.update(fd for fd in (self._pipe, self._pidfd) if fd is not None)
                    _live.add(self.pid)
                _send(self._pipe, payload, close=False)  # a child that died before reading it all: its wait says so
                forks.refill()  # the next job's child is forked while this one runs
                return
        with _spawn_lock:
            read_fd, write_fd = os.pipe()
            try:
                pid = fork_child(run, fallback, write_fd, (*_kept, read_fd))
            except BaseException:
                os.close(read_fd)
                os.close(write_fd)
                raise
            os.close(write_fd)
            self.pid, self._pipe, self._pidfd = pid, read_fd, _pidfd(pid)
            _kept.update(fd for fd in (read_fd, self._pidfd) if fd is not None)
            _live.add(pid)

    def kill(self) -> None:
        """SIGKILL the child and its process group, from any thread; nothing once it is reaped."""
        with self._lock:
            if not self._reaped:
                self.killed = True
                if self._server is not None and self._server.dead and self._pidfd is not None:
                    _pidfd_kill(self._pidfd)  # its server is gone, and the zombie with it: the pid may be reused
                else:
                    _signal_group(self.pid)

    def wait(self, timeout: Optional[float] = None) -> Ended:
        """Read what the child sends until it exits, killing it ``timeout`` seconds after now."""
        if timeout is not None and not timeout < float("inf"):
            timeout = None  # NaN or infinity: no limit
        deadline = None if timeout is None else time.monotonic() + timeout
        message = _Message()
        timed_out = False
        sent_at: Optional[float] = None
        poller = select.poll()  # not select(): no limit on descriptor numbers
        for fd in (self._pipe, self._pidfd):
            if fd is not None:
                poller.register(fd, select.POLLIN)
        try:
            while not self._exited():
                if self._server is not None and message.complete:
                    break  # its server waits for its exit (and ends it if it hangs): not on the job's way
                now = time.monotonic()
                if sent_at is None and message.complete:
                    sent_at = now
                if deadline is not None and now >= deadline and sent_at is None and not timed_out:
                    timed_out = True
                    self.kill()
                if sent_at is not None and now >= sent_at + FINISH_GRACE:
                    self.kill()  # sent its outcome but hangs (a stuck flush): the outcome stands
                waits = [MAX_WAIT]
                if deadline is not None and sent_at is None and not timed_out:
                    waits.append(deadline - now)
                if sent_at is not None:
                    waits.append(sent_at + FINISH_GRACE - now)
                if self._pidfd is None:
                    waits.append(POLL)
                pipe = self._pipe
                ready = {fd for fd, _ in poller.poll(math.ceil(max(0.0, min(waits)) * 1000))}
                if pipe is not None and pipe in ready:
                    self._read(message)
                    if self._pipe is None:
                        poller.unregister(pipe)
            self._drain(message)
            return Ended(message.data(), self._reap(not message.complete), timed_out)
        finally:
            self._release()

    # --- the parent's side, in steps ------------------------------------------------------------
    def _exited(self) -> bool:
        """The child has exited (a zombie, not reaped yet: its pid and group can't be reused)."""
        if self._server is not None:  # not our child: its pidfd is readable once it exited
            return _ready(self._pidfd) if self._pidfd is not None else _zombie(self.pid)
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _read(self, message: _Message) -> None:
        pipe = self._pipe
        if pipe is None:  # closed already
            return
        try:
            chunk = os.read(pipe, READ_SIZE)
        except BlockingIOError:
            return
        if chunk:
            message.feed(chunk)
        else:  # end of file: the child closed its end (it goes on until it exits)
            self._close_pipe()

    def _drain(self, message: _Message) -> None:
        """Read what the exited child left in the pipe (a process it left may hold the pipe open)."""
        if self._pipe is None:
            return
        os.set_blocking(self._pipe, False)
        while self._pipe is not None and not message.complete:
            try:
                chunk = os.read(self._pipe, READ_SIZE)
            except BlockingIOError:
                return
            if not chunk:
                return
            message.feed(chunk)

    def _reap(self, orphans: bool = False) -> Optional[int]:
        with self._lock:
            if self._reaped:
                return 0
            if self._server is not None:  # its server ends its group and reaps it (None: the server died)
                self._reaped = True
                orphans = orphans or self.killed
                if not orphans:  # it sent its outcome: it ended well, its server reaps it when it exits
                    self._server.end(self.pid, False)
                    return 0
                return self._server.reap(self.pid, orphans)
            try:
                os.killpg(self.pid, signal.SIGKILL)  # what the job left in its group, while the zombie holds it
            except OSError:
                pass
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                status = 0
            self._reaped = True
            return status

    def _release(self) -> None:
        if not self._reaped:  # an error while waiting: never leave the child running or a zombie
            self.kill()
            self._reap()
        self._close_pipe()
        with _spawn_lock:
            if self._pidfd is not None:
                _kept.discard(self._pidfd)
                _close(self._pidfd)
                self._pidfd = None
            _live.discard(self.pid)

    def _close_pipe(self) -> None:
        with _spawn_lock:  # under the lock: a child forked meanwhile must not close a reused number
            if self._pipe is not None:
                _kept.discard(self._pipe)
                _close(self._pipe)
                self._pipe = None


class _Message:
    """A length-prefixed message arriving in chunks."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._size: Optional[int] = None

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        if self._size is None and len(self._buf) >= _HEADER.size:
            self._size = _HEADER.unpack_from(self._buf)[0]

    @property
    def complete(self) -> bool:
        return self._size is not None and len(self._buf) >= _HEADER.size + self._size

    def data(self) -> Optional[bytes]:
        if not self.complete or self._size is None:
            return None
        return bytes(memoryview(self._buf)[_HEADER.size:_HEADER.size + self._size])


# --- the child's side ---------------------------------------------------------------------------
def fork_child(run: Callable[[], bytes], fallback: bytes, write_fd: int, close: Iterable[int]) -> int:
    """Fork a child that closes ``close``, runs ``run()`` and sends what it returns (``fallback`` if
    it raises) on ``write_fd``, then exits; returns its pid, in its own process group. The caller
    holds whatever lock keeps other threads from forking meanwhile."""
    parent = os.getpid()
    gc.freeze()  # the child's collector leaves the parent's objects alone: no copy-on-write storm
    try:
        pid = os.fork()
    except BaseException:
        gc.unfreeze()
        raise
    if pid == 0:  # pragma: no cover - the child, measured by the tests' outcomes
        code = EXIT_BUG
        try:
            for fd in close:
                _close(fd)
            code = _child_main(write_fd, run, fallback, parent)
        finally:
            exit_now(code)
    gc.unfreeze()  # the parent's own garbage is collected as before
    try:
        os.setpgid(pid, pid)  # as the child does: whoever runs first, the group exists
    except OSError:
        pass
    return pid


def _child_main(write_fd: int, run: Callable[[], bytes], fallback: bytes, parent: int) -> int:  # pragma: no cover
    """Run in the child: prepare, run, send, clean up. The caller ``os._exit``\\ s with the code."""
    global _in_child
    _in_child = True
    me = os.getpid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker to decide
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        os.setpgid(0, 0)  # its own group: the worker kills the job's subprocesses with it
    except OSError:
        pass
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)  # the job stops when its worker dies
        _PRCTL(PR_SET_CHILD_SUBREAPER, 1)  # what the job leaves (even after setsid) comes back here
    if os.getppid() != parent:  # the worker died before that took effect
        return EXIT_BUG
    if os.isatty(0):  # in its own group it could not read the terminal (SIGTTIN would stop it)
        _to_devnull(0)
    data = fallback
    try:
        try:
            data = run()
        finally:  # first a C call: no handler of the job's can run between the job and the mask
            _sig.pthread_sigmask(_sig.SIG_BLOCK, _CATCHABLE)
    except BaseException:  # raised past run() (a handler of the job's, for a signal that came before the mask)
        pass
    if os.getpid() != me:  # a process the job forked came back here: it ends now, silently
        exit_now(0)
    _mute_signals()
    code = _send(write_fd, data)
    end_children()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:  # after the outcome is sent: a closed, replaced or full stream can't lose it
            if stream is not None:
                stream.flush()
        except BaseException:
            pass
    return code


def settle() -> None:
    """Call when the job's own code has returned: in a forked child, no signal can interrupt what
    follows (a handler of the job's that raises, a timer it left running); elsewhere nothing."""
    if _in_child:
        _mute_signals()


def _mute_signals() -> None:
    for _ in range(100):  # a handler of the job's may raise (once per signal) before the mask holds
        try:
            _sig.pthread_sigmask(_sig.SIG_BLOCK, _CATCHABLE)
            for signum in _CATCHABLE:
                if callable(_sig.getsignal(signum)):
                    _sig.signal(signum, _sig.SIG_IGN)
            return
        except BaseException:
            continue


def _send(fd: int, data: bytes, close: bool = True) -> int:
    try:
        os.set_blocking(fd, True)  # in case the job changed it
        for piece in (_HEADER.pack(len(data)), data):
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view):]
        if close:
            os.close(fd)
    except OSError:
        return EXIT_NO_PIPE
    return 0


def receive(fd: int) -> bytes:
    """Read one length-prefixed message (as ``_send`` writes it) from ``fd``; EOFError if it ends first."""
    message = _Message()
    while not message.complete:
        chunk = os.read(fd, READ_SIZE)
        if not chunk:
            raise EOFError("the sender closed its end before the whole message")
        message.feed(chunk)
    data = message.data()
    assert data is not None
    return data


def _to_devnull(fd: int) -> None:
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass


# --- processes left behind ------------------------------------------------------------------------
def end_children(keep: frozenset = frozenset()) -> int:
    """SIGKILL and reap this process's children but ``keep`` (and theirs, as they are adopted).

    Returns how many were ended. Costs one system call when there are none.
    """
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return 0  # the usual case: no children at all
    except (AttributeError, OSError):
        pass
    ended = 0
    for _ in range(100):  # each round ends a generation; their children come to us (subreaper)
        kids = _children() - keep
        if not kids:
            break
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in kids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        ended += len(kids)
    return ended


def end_orphans() -> int:
    """In a process that adopts orphans: end those that dead children left (kept: live children)."""
    if not _adopting:
        return 0
    with _spawn_lock:
        return end_children(frozenset(_live))


def _children() -> set:
    """Pids of this process's children (Linux /proc; an empty set elsewhere)."""
    kids: set = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                kids.update(int(pid) for pid in f.read().split())
        except (OSError, ValueError):
            pass
    return kids


def adopt_orphans() -> Callable[[], None]:
    """Linux: become a subreaper, so what dead children leave (even after ``setsid``) is adopted
    here and ended by ``end_orphans()``; returns the undo. For a process that runs only a worker."""
    global _adopting
    if _PRCTL is None:
        return lambda: None
    before = ctypes.c_int(0)
    _PRCTL(PR_GET_CHILD_SUBREAPER, ctypes.byref(before))
    _PRCTL(PR_SET_CHILD_SUBREAPER, 1)
    _adopting = True

    def undo() -> None:
        global _adopting
        _adopting = False
        _PRCTL(PR_SET_CHILD_SUBREAPER, before.value)
    return undo


# --- small helpers ----------------------------------------------------------------------------------
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 1, 36, 37


def _find_prctl() -> Optional[Callable]:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()  # looked up once, not in every child


def _pidfd(pid: int) -> Optional[int]:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # not Linux 5.3+: the wait polls


def _signal_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):  # the group; the child itself, in case it had none yet
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _ready(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _zombie(pid: int) -> bool:
    """Whether a process (not ours: its server holds it as a zombie until asked) has exited."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _pidfd_kill(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except (AttributeError, OSError):
        pass


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
