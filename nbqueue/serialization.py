"""How a call travels: the function by import path, its arguments and result by cloudpickle.

The guard refuses, at enqueue time, any callable a worker could not import again by its
path (functions from ``__main__`` such as notebook cells, lambdas, nested functions), and any
whose call would only make a generator (``yield``, ``async`` generators: a generator runs
nothing and can't be sent back), so the mistake shows where it was made instead of as a failure on a worker later.

Wire format of a call, kept in the job hash (see ``job.py``):

- ``func``: ``"module:qualname"`` of the function (for a bound method, of the method);
- ``data``: ``cloudpickle((args, kwargs))``, or ``cloudpickle((instance, args, kwargs))`` when
  ``func`` is a bound method and the instance travels pickled;
- ``code``: a short hash of the function's source, so a worker can tell it runs other code;
- ``sig``: an HMAC over the job id, ``func``, ``code``, the job options and ``data`` (``signing.py``),
  which a worker with a secret checks before ``loads_call`` imports or unpickles anything;
- ``result`` / ``rsig``: the pickled return value and the worker's signature over it, which
  ``Job.result()`` checks before ``loads_result`` unpickles it.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import linecache
import pickle
import sys
from types import MethodType
from typing import Any, Callable, NamedTuple

import cloudpickle

from .errors import CodeMismatchError, EnqueueError, FunctionNotFound, PayloadError

PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL

_TASKS_HINT = (
    "Workers import the function by its module path, so it must live in a module file. "
    "Move it into a module such as tasks.py next to the notebook (or use the "
    "%%nbqueue.module tasks cell magic), import it, and enqueue tasks.{name}; start "
    "workers in that folder."
)


class FunctionRef(NamedTuple):
    """What the worker needs to find the code again."""

    path: str  # "module:qualname"
    bound_to: Any  # the instance of a bound method, else None
    code_hash: str  # "" when the source is not available (C functions, builtins)


def describe(func: Any) -> str:
    """A short human name for a callable, for messages."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module and module != "builtins" else str(name)


_hashes: dict[Any, str] = {}  # function -> source hash, computed once per function object


def _hash_once(func: Any) -> str:
    """``source_hash(func)``, computed the first time a function object is seen (both sides)."""
    key = getattr(func, "__func__", func)  # a classmethod's bound method is new each time
    code_hash = _hashes.get(key)
    if code_hash is None:
        if len(_hashes) > 4096:
            _hashes.clear()
        code_hash = _hashes[key] = source_hash(func)
    return code_hash


def function_ref(func: Callable) -> FunctionRef:
    """Check that a worker can import ``func`` by path, and return that path.

    Raises ``EnqueueError`` naming the function, why a worker can't run it and how to fix it.
    The check re-imports by path each time (a dictionary lookup); the source hash is cached.
    """
    bound_to = None
    target = func
    if isinstance(func, MethodType) and not isinstance(func.__self__, type):
        bound_to, target = func.__self__, func.__func__
        _check_importable(type(bound_to), what=f"the class of {describe(func)}")
    path = _check_importable(target, what=describe(target))
    _check_plain(func)
    return FunctionRef(path, bound_to, _hash_once(target))


_NOT_PLAIN = inspect.CO_ASYNC_GENERATOR | inspect.CO_GENERATOR  # ``async def`` runs: on an event loop


def _check_plain(func: Callable) -> None:
    """Refuse functions whose call only makes a generator: the job would run nothing."""
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    if code is None or not code.co_flags & _NOT_PLAIN:  # the common case, in a fraction of a microsecond
        return
    kind = "an async generator function" if code.co_flags & inspect.CO_ASYNC_GENERATOR else "a generator function"
    raise EnqueueError(
        f"Can't enqueue {describe(func)}: it is {kind}, so calling it only makes a generator "
        f"(it runs nothing and can't be sent back); enqueue a function that returns a list instead. "
        f"Nothing was enqueued.")


def _check_importable(obj: Any, what: str) -> str:
    if not callable(obj):
        raise EnqueueError(f"{obj!r} is not callable: enqueue a function, e.g. q.enqueue(tasks.add, 1, 2).")
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module is None or qualname is None:
        raise EnqueueError(
            f"Can't enqueue {obj!r}: it has no module path a worker could import it by "
            f"(partials and callable instances don't). Wrap the call in a function defined in a module "
            f"such as tasks.py and enqueue that."
        )
    name = qualname.rsplit(".", 1)[-1]
    if not name.isidentifier():  # a lambda: no name to suggest
        name = "my_function"
    if "<lambda>" in qualname:
        raise EnqueueError(
            f"Can't enqueue the lambda {module}.{qualname}: a lambda has no name a worker could import. "
            f"Define it with def in a module such as tasks.py (or in a %%nbqueue.module cell), import it "
            f"and enqueue that function."
        )
    if module in ("__main__", "__mp_main__"):
        raise EnqueueError(
            f"Can't enqueue {qualname}: it is defined in __main__ (a notebook cell or the script "
            f"being run), which a worker cannot import. " + _TASKS_HINT.format(name=name)
        )
    if "<locals>" in qualname:
        raise EnqueueError(
            f"Can't enqueue {module}.{qualname.replace('.<locals>', '')}: it is defined inside another "
            f"function, so a worker cannot import it. Move it to the top level of its module."
        )
    try:
        found = resolve(f"{module}:{qualname}")
    except ImportError as exc:
        raise EnqueueError(
            f"Can't enqueue {module}.{qualname}: importing it by its path failed ({exc}), so a worker "
            f"could not either. " + _TASKS_HINT.format(name=name)
        ) from None
    if found is not obj and getattr(found, "__func__", found) is not getattr(obj, "__func__", obj):
        raise EnqueueError(
            f"Can't enqueue {what}: importing {module}.{qualname} gives a different object "
            f"({found!r}), so a worker would run something else. Enqueue the module-level function "
            f"itself (a decorator must keep __qualname__, e.g. with functools.wraps)."
        )
    return f"{module}:{qualname}"


def resolve(path: str) -> Any:
    """Import ``"module:qualname"`` and return the object; ``FunctionNotFound`` (an ``ImportError``)
    if it isn't there."""
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise FunctionNotFound(f"{path!r} is not a 'module:qualname' path")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FunctionNotFound(f"module {module_name!r} has no attribute {qualname!r}") from None
    return obj


def source_hash(func: Any) -> str:
    """A short hash of the function's source as it is on disk now; "" if there is none."""
    func = inspect.unwrap(getattr(func, "__func__", func))
    try:
        filename = inspect.getsourcefile(func)
        if filename:
            linecache.checkcache(filename)
        source = inspect.getsource(func)
    except (OSError, TypeError):
        return ""
    return hashlib.blake2b(source.encode(), digest_size=8).hexdigest()


_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


def dumps_call(ref: FunctionRef, args: tuple, kwargs: dict) -> bytes:
    """Pickle a call's arguments; ``EnqueueError`` naming the argument that can't be pickled.

    Plain values (numbers, strings, bytes, None) take the standard pickler, five times faster;
    anything else takes cloudpickle, which also carries functions and classes by value.
    """
    if ref.bound_to is None and all(type(a) in _PLAIN for a in args) and all(
            type(v) in _PLAIN for v in kwargs.values()):
        return pickle.dumps((args, kwargs), protocol=PICKLE_PROTOCOL)
    payload = (args, kwargs) if ref.bound_to is None else (ref.bound_to, args, kwargs)
    try:
        return cloudpickle.dumps(payload, protocol=PICKLE_PROTOCOL)
    except Exception as exc:  # pickling can raise nearly anything
        raise EnqueueError(_unpicklable(ref, args, kwargs, exc)) from None


def _unpicklable(ref: FunctionRef, args: tuple, kwargs: dict, exc: Exception) -> str:
    named = [(f"argument {i + 1}", v) for i, v in enumerate(args)]
    named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    if ref.bound_to is not None:
        named.insert(0, ("the instance the method is bound to", ref.bound_to))
    func = ref.path.replace(":", ".")
    for label, value in named:
        try:
            cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
        except Exception as inner:
            return (
                f"Can't enqueue {func}: {label} ({type(value).__name__}) can't be pickled to send to a "
                f"worker: {inner}. Pass something a worker can rebuild instead (a path, a URL, "
                f"plain data) and open the resource inside the job. Nothing was enqueued."
            )
    return f"Can't enqueue {func}: its arguments can't be pickled: {exc}. Nothing was enqueued."


def loads_args(data: bytes, where: str = "here") -> tuple[Any, tuple, dict]:
    """A call's pickled ``data`` as ``(instance or None, args, kwargs)``; ``PayloadError`` if it can't be."""
    try:
        payload = pickle.loads(data)
        if len(payload) == 3:
            instance, args, kwargs = payload
        else:
            instance, (args, kwargs) = None, payload
    except Exception as exc:
        raise PayloadError(f"The job's arguments can't be loaded {where}: {type(exc).__name__}: {exc}") from None
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
        raise PayloadError(f"The job's arguments can't be loaded {where}: they are not (tuple, dict)")
    return instance, args, kwargs


def loads_call(path: str, data: bytes) -> tuple[Callable, tuple, dict]:
    """Rebuild a call on the worker: ``(callable, args, kwargs)``.

    Raises ``PayloadError`` for data that can't be unpickled and ``FunctionNotFound`` (an ``ImportError``, with a hint)
    when the function's module or name is missing here.
    """
    instance, args, kwargs = loads_args(data, "on this worker")
    if instance is not None:
        method = path.rsplit(".", 1)[-1]
        return getattr(instance, method), args, kwargs
    try:
        func = resolve(path)
    except ImportError as exc:
        raise FunctionNotFound(
            f"This worker can't import {path.replace(':', '.')}: {exc}. Start the worker in the folder "
            f"that holds the module (it puts its working folder on sys.path), or install it, and "
            f"requeue the job. (sys.path[0] is {sys.path[0]!r})"
        ) from None
    return func, args, kwargs


def check_code(path: str, func: Callable, expected: str) -> None:
    """Fail when the worker's source for ``func`` differs from the caller's.

    The worker hashes a function's source the first time it runs it: a fork-mode child imports
    afresh for each job, while an inline worker keeps the code it loaded, so a later edit of
    the file makes the caller's new hash differ, and the job fails instead of running old code.
    """
    if not expected:
        return
    here = _hash_once(func)
    if here and here != expected:
        raise CodeMismatchError(
            f"The worker runs different code for {path.replace(':', '.')} than the caller "
            f"(source hash {here} here, {expected} at enqueue): the file changed after one side imported "
            f"it, or the worker runs in another folder. Re-import the module where you enqueue "
            f"(importlib.reload, or restart the kernel), restart an --inline worker, then requeue the job."
        )


def dumps_result(value: Any) -> bytes:
    return cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)


def loads_result(data: bytes) -> Any:
    """Unpickle a result: only after its signature was checked (``Job.result``), as unpickling runs code."""
    return pickle.loads(data)
