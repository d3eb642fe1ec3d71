"""One error tree: every exception nbqueue defines is an ``NbqueueError`` drawn in errors' docstring."""
from __future__ import annotations

import importlib
import pkgutil
import re

import pytest
import redis

import nbqueue
from nbqueue import errors


def _modules() -> list:
    names = [m.name for m in pkgutil.walk_packages(nbqueue.__path__, "nbqueue.")]
    return [importlib.import_module(name) for name in names]


def _exception_classes() -> set:
    found = set()
    for module in _modules():
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Exception) and value.__module__.startswith("nbqueue"):
                found.add(value)
    return found


def test_every_exception_nbqueue_defines_is_in_the_tree():
    classes = _exception_classes()
    assert errors.ServerError in classes and errors.EnqueueError in classes
    drawn = set(re.findall(r"[├└]── (\w+)", errors.__doc__)) | {"NbqueueError"}
    for cls in classes:
        assert issubclass(cls, errors.NbqueueError), f"{cls.__module__}.{cls.__name__} is no NbqueueError"
        assert cls.__module__ == "nbqueue.errors", f"{cls.__name__} is defined outside errors.py"
        assert cls.__name__ in drawn, f"{cls.__name__} is missing from the tree in errors.py's docstring"
    assert drawn == {c.__name__ for c in classes}, "the tree names a class errors.py does not define"


def test_old_homes_and_builtin_bases_still_work():
    from nbqueue.connection import ConnectionFailed, InvalidURL
    from nbqueue.server import ServerError

    assert ServerError is errors.ServerError and InvalidURL is errors.InvalidURL
    assert ConnectionFailed is errors.ConnectionFailed
    assert issubclass(ServerError, RuntimeError) and issubclass(InvalidURL, ValueError)
    assert issubclass(ConnectionFailed, redis.ConnectionError)
    assert issubclass(errors.EnqueueError, ValueError) and issubclass(errors.NoSuchJob, LookupError)


def test_a_wrong_connection_type_is_an_nbqueue_error_and_a_type_error():
    with pytest.raises(errors.InvalidConnection, match="connection must be a redis.Redis, a URL or None, not int"):
        nbqueue.Queue("q", 42).connection
    assert issubclass(errors.InvalidConnection, TypeError)


@pytest.mark.parametrize("done, total", [(float("nan"), None), (1, float("inf")), ("1", None), (True, None)])
def test_progress_refuses_what_is_no_finite_number(done, total):
    with pytest.raises(errors.InvalidProgress, match="give a finite number"):
        nbqueue.progress(done, total)
