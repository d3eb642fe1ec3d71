"""The magics in a real IPython ``InteractiveShell``, against the test Redis and real workers."""
from __future__ import annotations

import os
import threading

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import nbq_tasks
from conftest import TESTS_DIR
from nbqueue import Group, Job, Queue, keys


@pytest.fixture
def ip(redis_client, tmp_path, monkeypatch):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbqueue")
    monkeypatch.chdir(tmp_path)
    shell.user_ns.update(nbq_tasks=nbq_tasks, x=42, extra=(3, 4), more={"k2": "v2"})
    return shell


def queued_jobs(redis_client) -> list:
    return redis_client.keys("nbq:{*}:job:*")


def test_enqueue_keeps_the_call_verbatim_and_evaluates_each_part(ip, start_worker):
    start_worker("default", "--inline")
    job = ip.run_line_magic(
        "enqueue",
        'nbq_tasks.echo("a  b", "{x}", "$x", x, *extra, k="--timeout 5", **more) --timeout 600 --result-ttl 60')
    assert isinstance(job, Job)
    args, kwargs = job.result(timeout=10)
    assert args == ("a  b", "{x}", "$x", 42, 3, 4)
    assert kwargs == {"k": "--timeout 5", "k2": "v2"}
    assert job.queue == "default"
    assert job.connection.hmget(keys.job(job.id), "timeout", "result_ttl") == [b"600", b"60"]


def test_run_cell_assigns_the_job_and_the_queue_name_is_optional(ip, redis_client):
    result = ip.run_cell("job = %enqueue low nbq_tasks.add(x, 1) --at-front --job-id mine")
    assert result.success
    job = ip.user_ns["job"]
    assert isinstance(job, Job) and job.id == "mine" and job.queue == "low"
    assert Queue("low").job_ids == ["mine"]
    assert ip.run_line_magic("enqueue", "nbq_tasks.add(1, 2) --job-id 2024").id == "2024"  # ids stay text
    ip.user_ns["q"] = Queue("high")
    assert ip.run_line_magic("enqueue", "q nbq_tasks.add(1, 2)").queue == "high"  # a Queue variable


def test_the_callee_is_never_called_in_the_kernel(ip, tmp_path, redis_client):
    flag = tmp_path / "called"
    ip.user_ns["flag"] = str(flag)
    job = ip.run_line_magic("enqueue", "nbq_tasks.sleep_then(0, flag=flag)")
    assert job.status == "queued" and not flag.exists()


@pytest.mark.parametrize("line, expected", [
    ("nbq_tasks.add(1,", "is not a call"),
    ("nbq_tasks.add", "is not a call"),
    ("1 + 2", "is not a call"),
    ("local_function()", "defined in __main__"),
    ("local_function()", "%%nbqueue.module tasks"),
    ("nbq_tasks.echo(threading.Lock())", "can't be pickled"),
    ("nbq_tasks.add(undefined_name, 1)", "NameError"),
    ("nbq_tasks.add(1, 2) --retries-forever", "unknown option '--retries-forever'"),
    ("nbq_tasks.add(1, 2) --timeout", "needs a value"),
    ("nbq_tasks.add(1, 2) --timeout -5", "not valid"),
    ("bad/queue nbq_tasks.add(1, 2)", "Invalid queue name 'bad/queue'"),
    ("nbq_tasks.add(1, 2, a=1, **{'a': 2})", "twice"),
])
def test_errors_are_one_short_message_and_nothing_is_enqueued(ip, redis_client, capsys, line, expected):
    ip.run_cell("def local_function():\n    pass")
    ip.user_ns["threading"] = threading
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("enqueue", line)
    assert expected in str(info.value)
    capsys.readouterr()
    result = ip.run_cell(f"%enqueue {line}")
    err = capsys.readouterr().err
    assert not result.success and err.startswith("UsageError: ")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert queued_jobs(redis_client) == []


def test_map_magic_makes_a_group(ip, start_worker):
    start_worker("sq", "--inline")
    group = ip.run_line_magic("map", "sq nbq_tasks.add [1, 2, 3] --result-ttl 60")
    assert isinstance(group, Group) and len(group) == 3 and group[0].queue == "sq"
    assert len(ip.run_line_magic("map", "nbq_tasks.add  list(range(3)) + [4]")) == 4  # default queue
    with pytest.raises(UsageError, match="unknown option"):
        ip.run_line_magic("map", "nbq_tasks.add [1] --bogus")
    # builtin-map semantics: each item is one argument; add(item) misses b and fails
    from nbqueue import JobFailed
    with pytest.raises(JobFailed, match="missing 1 required positional argument"):
        group.results(timeout=10)
    ip.user_ns["pairs"] = [(1, 2), (3, 4)]
    group = Queue("sq").map(nbq_tasks.echo, [1, 2])
    assert group.results(timeout=10) == [((1,), {}), ((2,), {})]


def test_module_cell_magic_saves_imports_and_reloads(ip, tmp_path, start_worker):
    result = ip.run_cell("%%nbqueue.module nbq_cell_tasks\ndef triple(v):\n    return 3 * v\n")
    assert result.success
    assert (tmp_path / "nbq_cell_tasks.py").read_text().startswith("def triple")
    start_worker("cells", "--inline", cwd=tmp_path)
    job = ip.run_line_magic("enqueue", "cells nbq_cell_tasks.triple(5)")
    assert job.result(timeout=10) == 15
    ip.run_cell("%%nbqueue.module nbq_cell_tasks\ndef triple(v):\n    return 4 * v\n")  # same size, same second
    assert ip.user_ns["nbq_cell_tasks"].triple(5) == 20
    bad = ip.run_cell("%%nbqueue.module nbq_cell_tasks\ndef broken(:\n")
    assert not bad.success and ip.user_ns["nbq_cell_tasks"].triple(5) == 20
    assert not ip.run_cell("%%nbqueue.module not-a-name\nx = 1\n").success


def test_display_outside_a_kernel_is_readable_text(ip, start_worker):
    start_worker("txt", "--inline")
    job = ip.run_line_magic("enqueue", "txt nbq_tasks.add(20,  22)")
    job.result(timeout=10)
    data, _ = ip.display_formatter.format(job)
    assert "application/vnd.jupyter.widget-view+json" not in data  # no widget frontend here
    assert data["text/plain"].startswith(f"Job {job.id} nbq_tasks.add(20,  22) on txt: finished")
    assert data["text/plain"].endswith("→ 42")
    group = Queue("txt").map(nbq_tasks.echo, [1, 2])
    group.results(timeout=10)
    assert "2/2 done (2 finished)" in ip.display_formatter.format(group)[0]["text/plain"]
    assert os.getcwd() != str(TESTS_DIR)


def test_enqueue_workflow_options_name_objects_of_the_namespace(ip, start_worker, redis_client):
    start_worker("wf", "--inline")
    first = ip.run_line_magic("enqueue", "wf nbq_tasks.add(1, 2)")
    ip.user_ns["first"] = first
    job = ip.run_line_magic("enqueue", "wf nbq_tasks.add(first, 10) --on-success nbq_tasks.on_ok "
                                       "--depends-on [first] --meta '{\"run\": 3}'")
    assert job.result(timeout=20) == 13  # first's result came in as the argument
    assert job.meta == {"run": 3} and job.dependencies == (first.id,)
    assert redis_client.hget(keys.job(job.id), "on_success") == b"nbq_tasks:on_ok"
    with pytest.raises(UsageError, match="--on-success"):
        ip.run_line_magic("enqueue", "wf nbq_tasks.add(1, 2) --on-success no_such_name")
    with pytest.raises(UsageError, match="callable|on_success"):
        ip.run_line_magic("enqueue", "wf nbq_tasks.add(1, 2) --on-success 42")
    unique = ip.run_line_magic("enqueue", "wf nbq_tasks.sleep_then(0.5, 'u') --unique-key wf-key")
    assert ip.run_line_magic("enqueue", "wf nbq_tasks.add(1, 1) --unique-key wf-key") == unique
