"""One error tree: every exception nbqueue defines is an ``NbqueueError`` drawn in errors' docstring."""
from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import typing
from pathlib import Path
from typing import Any

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
    with pytest.raises(errors.InvalidConnection,
                       match="connection must be a redis.Redis, a redis.cluster.RedisCluster, a URL or None, not int"):
        _ = nbqueue.Queue("q", 42).connection
    assert issubclass(errors.InvalidConnection, TypeError)


@pytest.mark.parametrize("done, total", [(float("nan"), None), (1, float("inf")), ("1", None), (True, None)])
def test_progress_refuses_what_is_no_finite_number(done, total):
    with pytest.raises(errors.InvalidProgress, match="give a finite number"):
        nbqueue.progress(done, total)


# --- every raise in the package raises a class of the tree, or one of these on purpose ---
def _outside_the_tree() -> tuple:
    import click
    import redis
    from IPython.core.error import UsageError

    from nbqueue import stopping

    # a bug (a broken invariant); each framework's one-line message; the worker's own control flow;
    # Redis's own errors, passed on as redis-py raises them (a cluster not ready for a slot is said as
    # redis-py says an unreachable server: a ConnectionError, which every caller already waits out);
    # the I/O of the pipes between a worker and its fork server (caught where they are read)
    return AssertionError, click.ClickException, UsageError, stopping._Stop, redis.RedisError, OSError, EOFError


def _sources() -> dict:
    return {m.__name__: (m, ast.parse(Path(m.__file__).read_text())) for m in _modules() if m.__file__}


def _returned(name: str, module: Any, sources: dict) -> list:
    """The classes the functions named ``name`` (methods and nested ones too) say they return."""
    found = []
    for other, tree in sources.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                hint = ast.unparse(node.returns).strip("'\"") if node.returns else "None"
                found.append(eval(hint, vars(other)))
    return found


def _offences(module: Any, tree: ast.AST, sources: dict) -> list:
    allowed = _outside_the_tree()
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        branches = [node.exc.body, node.exc.orelse] if isinstance(node.exc, ast.IfExp) else [node.exc]
        for exc in branches:
            target = exc.func if isinstance(exc, ast.Call) else exc
            where = f"{module.__name__}:{node.lineno} raise {ast.unparse(target)}"
            try:
                classes = [eval(ast.unparse(target), vars(module))]
            except (NameError, AttributeError, TypeError):
                if isinstance(target, ast.Attribute):
                    classes = _returned(target.attr, module, sources)
                elif isinstance(target, ast.Name):
                    classes = _returned(target.id, module, sources)
                else:  # raise box["error"], errors[0]: an exception caught earlier, raised again
                    continue
                if not classes and not isinstance(exc, ast.Call):
                    continue  # raise exc: a variable holding a caught exception
            if not classes:
                bad.append(f"{where}: can't tell what it raises")
            for cls in classes:
                if callable(cls) and not isinstance(cls, type):
                    cls = typing.get_type_hints(cls).get("return")
                if not (isinstance(cls, type) and issubclass(cls, (errors.NbqueueError, *allowed))):
                    bad.append(f"{where}: {getattr(cls, '__name__', cls)} is no NbqueueError")
    return bad


def test_every_raise_in_the_package_raises_an_error_of_the_tree():
    sources = _sources()
    assert len(sources) > 20
    bad = [line for module, tree in sources.values() for line in _offences(module, tree, sources)]
    assert not bad, "\n".join(bad)


def test_the_raise_check_finds_a_builtin_raised_on_purpose():
    from nbqueue import job

    sources = _sources()
    hostile = ast.parse("def f(x):\n    if x:\n        raise ValueError('no')\n"
                        "    raise (self._missing() if x else TypeError)\n"
                        "def g():\n    raise NoSuchJob('fine')\n")
    bad = _offences(job, hostile, sources)
    assert sorted(bad) == ["nbqueue.job:3 raise ValueError: ValueError is no NbqueueError",
                           "nbqueue.job:4 raise TypeError: TypeError is no NbqueueError"], bad


_DRAWN = re.compile(r"^ *(?P<indent>[│ ]*)[├└]── (?P<name>\w+)(?: \((?P<bases>[\w., ]+)\))?", re.M)


def test_the_tree_in_the_docstring_draws_each_class_under_its_parent_with_its_builtin_bases():
    parents = [errors.NbqueueError]
    for line in _DRAWN.finditer(errors.__doc__):
        depth = len(line["indent"]) // 4
        cls = getattr(errors, line["name"])
        del parents[depth + 1:]
        assert cls.__bases__[0] is parents[depth], f"{cls.__name__} is drawn under {parents[depth].__name__}"
        others = {b.__name__ for b in cls.__bases__[1:]}
        drawn = {b.strip().rsplit(".", 1)[-1] for b in (line["bases"] or "").split(",") if b.strip()}
        assert others == drawn, f"{cls.__name__}: drawn with ({', '.join(drawn)}), its bases are {others}"
        parents.append(cls)


@pytest.mark.parametrize("cls, builtin", [(errors.FunctionNotFound, ImportError), (errors.InvalidOption, ValueError),
                                          (errors.UnpicklableHandle, TypeError), (errors.Contention, RuntimeError),
                                          (errors.MalformedData, ValueError)])
def test_the_new_errors_keep_the_builtin_callers_catch(cls, builtin):
    assert issubclass(cls, errors.NbqueueError) and issubclass(cls, builtin)


def test_a_function_that_is_not_there_is_function_not_found_and_an_import_error():
    from nbqueue.serialization import resolve

    with pytest.raises(errors.FunctionNotFound, match="has no attribute 'no_such_name'"):
        resolve("nbqueue.errors:no_such_name")
    with pytest.raises(ImportError):  # the module itself missing: Python's own error, as before
        resolve("no_such_module_xyz:f")


def test_wait_refuses_an_unknown_return_when_and_a_job_handle_refuses_pickling():
    import pickle

    with pytest.raises(errors.InvalidOption, match="return_when='SOME'"):
        nbqueue.wait([], return_when="SOME")
    with pytest.raises(errors.UnpicklableHandle, match="can't be pickled"):
        pickle.dumps(nbqueue.Job("f" * 32, redis.Redis(port=1)))  # no command is sent
