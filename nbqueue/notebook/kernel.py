"""What nbqueue asks of the Jupyter kernel (ipykernel): button clicks off the main thread, a
word before the kernel shuts down.

**Clicks while a cell runs.** A widget's button click is a ``comm_msg`` on the shell channel, and
the kernel's main thread handles shell messages only between cells: behind ``time.sleep(60)`` or
a ``job.result()`` that waits, Cancel would do nothing for a minute. ipykernel 7 reads the shell
channel on its own thread and routes each comm message to a *subshell* (a thread with its own
loop) named by the comm's ``_reply_subshell_for``. nbqueue starts one subshell per kernel and
routes its buttons' comms there, so a click runs within milliseconds whatever the main thread
does. On a kernel without subshells the buttons still work, only when the kernel is idle, and
say so (:data:`CLICKS_WHILE_BUSY`).

**Shutdown.** A restart or shutdown request runs the hooks given to :func:`before_shutdown` first
(the widgets replace themselves by a static "detached" report while the frontend still listens).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

log = logging.getLogger("nbqueue.notebook")

_subshell: dict = {}  # kernel id -> the subshell id nbqueue's buttons use ("" if none)
_shutdown_hooks: list[Callable[[], None]] = []
_lock = threading.Lock()


def kernel() -> Any:
    """The running ipykernel kernel, or None (terminal IPython, no kernel)."""
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None)


def button_subshell(timeout: float = 5.0) -> Optional[str]:
    """The id of the subshell that handles nbqueue's button clicks, started on first use; None
    where the kernel has no subshells (ipykernel < 7, or a kernel started without them)."""
    k = kernel()
    thread = getattr(k, "shell_channel_thread", None)
    if thread is None or not _routes_comms():
        return None
    with _lock:
        if id(k) not in _subshell:
            _subshell[id(k)] = _start_subshell(thread, timeout) or ""
        return _subshell[id(k)] or None


def _routes_comms() -> bool:
    """Whether this ipykernel routes a comm's messages by its ``_reply_subshell_for``."""
    try:
        from ipykernel.comm.comm import BaseComm
    except ImportError:
        return False
    return hasattr(BaseComm, "_reply_subshell_for")


def _start_subshell(thread: Any, timeout: float) -> Optional[str]:
    """Create a subshell on the shell channel thread (where ipykernel creates them) and wait."""
    made: dict = {}
    done = threading.Event()

    def create() -> None:
        try:
            made["id"] = thread.manager._create_subshell()
        except Exception as exc:  # an ipykernel whose internals moved: fall back to the main thread
            made["error"] = exc
        finally:
            done.set()

    try:
        _ = thread.manager  # created lazily, on the thread that started the kernel (this one)
        thread.io_loop.add_callback(create)
    except Exception as exc:
        log.debug("nbqueue: no subshell for buttons: %r", exc)
        return None
    if not done.wait(timeout) or "error" in made:
        log.debug("nbqueue: no subshell for buttons: %r", made.get("error", "timed out"))
        return None
    return made["id"]


def route_clicks(widget: Any) -> bool:
    """Have ``widget``'s messages (its clicks) handled on nbqueue's subshell; whether they are."""
    subshell = button_subshell()
    comm = getattr(widget, "comm", None)
    if subshell is None or comm is None:
        return False
    comm._reply_subshell_for = lambda data, default: subshell
    return True


def clicks_while_busy() -> bool:
    """Whether button clicks take effect while a cell runs (ipykernel 7 subshells)."""
    return button_subshell() is not None


def before_shutdown(hook: Callable[[], None]) -> None:
    """Run ``hook`` when the kernel is asked to restart or shut down, before it does."""
    k = kernel()
    if k is None:
        return
    with _lock:
        if hook not in _shutdown_hooks:
            _shutdown_hooks.append(hook)
        if getattr(k.do_shutdown, "_nbqueue", False):
            return
        original = k.do_shutdown

        async def do_shutdown(restart: bool) -> Any:
            for each in list(_shutdown_hooks):
                try:
                    each()
                except Exception:
                    log.exception("nbqueue shutdown hook failed")
            result = original(restart)
            if hasattr(result, "__await__"):
                result = await result
            return result

        do_shutdown._nbqueue = True  # type: ignore[attr-defined]
        k.do_shutdown = do_shutdown
