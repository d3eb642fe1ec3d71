"""The ``nbqueue`` command: a thin shell over the public API.

Exit codes: 0 done; 1 an error, told in one line on stderr (every nbqueue error and every error of
redis-py, naming the Redis with its password masked; never a traceback); 2 bad usage (click's);
3 ``server status`` when the server is not running.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional
from urllib.parse import urlsplit

import click
import redis

from .errors import InvalidTransition, NbqueueError, NoSuchJob

URL_HELP = ("Redis URL (redis://, rediss://, unix://, redis+sentinel://host:port[,...]/service, or 'embedded'); "
            "default: $NBQUEUE_URL, localhost, else embedded.")


def _logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)


def _first_line(text: str, default: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else default


def _redis_line(exc: redis.RedisError, url: Optional[str]) -> str:
    """One line for an error of redis-py itself, naming the Redis (its password masked)."""
    from .connection import EMBEDDED, mask_url

    given = (url or os.environ.get("NBQUEUE_URL") or "").strip()
    if given == EMBEDDED:
        where = "the embedded Redis"
    elif given:
        where = f"Redis at {mask_url(given)}"
    else:
        where = "Redis (localhost or the embedded one; choose with --url or NBQUEUE_URL)"
    reason = _first_line(str(exc), type(exc).__name__).rstrip(".")
    password = _password(given)
    if password:
        reason = reason.replace(password, "***")
    if isinstance(exc, redis.AuthenticationError):
        return f"{where} refused the credentials: {reason}; check the user and password in the URL"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return f"lost the connection to {where}: {reason}; check that it runs and can be reached"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return f"{where} refused a command: {reason}; give the user the permissions nbqueue needs (see the README)"
    return f"{where} answered with an error: {reason}"


def _password(url: str) -> Optional[str]:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class _Command(click.Command):
    """Turns nbqueue's own errors, and redis-py's, into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NbqueueError as exc:
            raise click.ClickException(_first_line(str(exc), type(exc).__name__)) from None
        except redis.RedisError as exc:
            raise click.ClickException(_redis_line(exc, ctx.params.get("url"))) from None


class _Group(click.Group):
    """A group whose commands (and subgroups) are ``_Command``s."""

    command_class = _Command
    group_class = type  # subgroups are _Groups too


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nbqueue")
def main() -> None:
    """nbqueue: a Redis job queue for Python that is at home in Jupyter."""


@main.command()
@click.argument("queues", nargs=-1)
@click.option("--url", help=URL_HELP)
@click.option("--inline", is_flag=True, help="Run jobs in this process instead of a forked child per job.")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@click.option("-c", "--concurrency", default=1, show_default=True, type=click.IntRange(min=1),
              help="Jobs run at once (a child each in fork mode, a thread each inline).")
@click.option("--name", help="Worker name (default: host.pid.random).")
@click.option("--allow-eviction", is_flag=True,
              help="Run even if Redis's maxmemory-policy evicts keys (which drops jobs silently).")
@click.option("--require-signed", is_flag=True,
              help="Refuse to start without a signing secret ($NBQUEUE_SECRET, $NBQUEUE_SECRET_FILE or the "
                   "embedded server's).")
@click.option("--max-jobs", type=click.IntRange(min=1), help="Stop (warm) after running this many jobs.")
@click.option("--max-idle", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this many seconds with nothing to do.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def worker(queues, url, inline, burst, concurrency, name, allow_eviction, require_signed, max_jobs, max_idle,
           verbose, quiet) -> None:
    """Run jobs from QUEUES (default: default), first = highest priority.

    The current folder is put on sys.path, so a tasks.py beside you imports.
    Ctrl-C (or SIGTERM) finishes the current job, then exits; a second one stops at once.
    Jobs are checked with the signing secret ($NBQUEUE_SECRET, $NBQUEUE_SECRET_FILE, or the embedded
    server's) before anything is imported; without a secret it warns that jobs are unsigned.
    Exit codes: 0 stopped (warm or cold, or --burst found the queues empty), 1 error, 2 usage.
    """
    from .worker import Worker

    _logging(verbose, quiet)
    for stream in (sys.stdout, sys.stderr):  # jobs' prints show as they happen, even in a log file
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    Worker(queues or ("default",), url, name=name, inline=inline, burst=burst, concurrency=concurrency,
           allow_eviction=allow_eviction, require_signed=require_signed, max_jobs=max_jobs, max_idle=max_idle,
           adopt_orphans=True).work()  # this process runs only the worker: it may adopt what jobs leave


@main.command()
@click.argument("queues", nargs=-1)
@click.option("--url", help=URL_HELP)
@click.option("-w", "--watch", is_flag=True, help="Then print every job event as it happens (Ctrl-C to stop).")
def info(queues, url, watch) -> None:
    """Queues with their counts, live workers and what each is running (only QUEUES, if given,
    and the workers that serve them)."""
    from .connection import connect, describe
    from .info import render, snapshot, watch_events
    from .worker import is_suspended

    _logging(verbose=False, quiet=True)  # the first line says which Redis: no announcement on stderr
    conn = connect(url)
    click.echo(f"Redis: {describe(conn)}")
    snap = snapshot(conn)
    if queues:
        wanted = set(queues)
        snap = snap._replace(queues=[q for q in snap.queues if q.name in wanted],
                             workers=[w for w in snap.workers if wanted & set(w.queues)])
    if is_suspended(conn):
        click.echo("workers are SUSPENDED: they take no jobs (nbqueue resume)")
    click.echo(render(snap))
    if watch:
        click.echo("\nevents:")
        try:
            for line in watch_events(conn):
                click.echo(line)
        except KeyboardInterrupt:
            pass


@main.command()
@click.argument("queue")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_failed", is_flag=True, help="Requeue every failed job of QUEUE.")
@click.option("--url", help=URL_HELP)
def requeue(queue, job_ids, all_failed, url) -> None:
    """Put failed jobs of QUEUE back on it: the given JOB_IDS, or --all."""
    from . import Job, Queue
    from .connection import describe

    if all_failed == bool(job_ids):
        raise click.UsageError("give either JOB_IDS or --all")
    _logging(verbose=False, quiet=True)  # the result line says which Redis
    q = Queue(queue, url)
    ids = q.failed_job_ids if all_failed else list(job_ids)
    problems = []
    for job_id in ids:
        try:
            Job(job_id, q.connection, queue=q.name).requeue()
        except (NoSuchJob, InvalidTransition) as exc:
            problems.append(str(exc))
    click.echo(f"requeued {len(ids) - len(problems)} job(s) on {queue} at {describe(q.connection)}")
    if problems:
        raise click.ClickException(f"{len(problems)} of {len(ids)} job(s) not requeued: {' '.join(problems)}")


@main.command()
@click.option("--url", help=URL_HELP)
def suspend(url) -> None:
    """Suspend all workers: they finish what they run and take nothing new (until resume)."""
    from .connection import connect, describe
    from .worker import suspend as suspend_workers

    _logging(verbose=False, quiet=True)
    conn = connect(url)
    suspend_workers(conn)
    click.echo(f"workers suspended at {describe(conn)}; `nbqueue resume` lets them go on")


@main.command()
@click.option("--url", help=URL_HELP)
def resume(url) -> None:
    """Let suspended workers take jobs again."""
    from .connection import connect, describe
    from .worker import resume as resume_workers

    _logging(verbose=False, quiet=True)
    conn = connect(url)
    woken = resume_workers(conn)
    click.echo(f"workers resumed at {describe(conn)} ({woken} live worker(s) woken)")


@main.command()
@click.argument("queue")
@click.option("--url", help=URL_HELP)
def empty(queue, url) -> None:
    """Cancel every job waiting on QUEUE (running ones go on)."""
    from . import Queue
    from .connection import describe

    _logging(verbose=False, quiet=True)
    q = Queue(queue, url)
    click.echo(f"canceled {q.empty()} queued job(s) of {queue} at {describe(q.connection)}")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("queue")
@click.argument("function")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--url", help=URL_HELP)
@click.option("--timeout", type=float, help="Seconds the job may run.")
@click.option("--retries", type=click.IntRange(0, 1000), help="Re-runs after a failure.")
@click.option("--at-front", is_flag=True, help="Run it before the jobs already waiting.")
@click.option("--job-id", help="Your own id for the job (must be new).")
@click.option("--wait", "wait_for", type=float, metavar="SECONDS", help="Wait for the result and print it.")
def enqueue(queue, function, args, url, timeout, retries, at_front, job_id, wait_for) -> None:
    """Enqueue FUNCTION (module:name or module.name, importable here and on the workers) with ARGS
    on QUEUE. Each ARG is a Python literal (42, 'text', [1, 2], {'a': 1}) or else a string;
    NAME=VALUE passes a keyword. Prints the job id (or, with --wait, the result)."""
    from . import Queue

    _logging(verbose=False, quiet=True)
    func, call_args, call_kwargs = call_of(function, args)
    options = {name: value for name, value in (("timeout", timeout), ("retries", retries)) if value is not None}
    job = Queue(queue, url).enqueue_call(func, call_args, call_kwargs, job_id=job_id, at_front=at_front, **options)
    if wait_for is None:
        click.echo(job.id)
    else:
        click.echo(repr(job.result(timeout=wait_for)))


def call_of(function: str, words: tuple) -> tuple:
    """``("tasks:add", ("1", "b=2"))`` -> ``(tasks.add, (1,), {"b": 2})``: the function imported
    here (the current folder first on sys.path), each word a Python literal or else a string."""
    import ast
    import importlib

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, name = function.partition(":") if ":" in function else function.rpartition(".")
    if not module_name or not name:
        raise click.UsageError(f"FUNCTION {function!r}: give module:name or module.name, e.g. tasks:add")
    try:
        target: object = importlib.import_module(module_name)
        for part in name.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise click.UsageError(f"can't import {function}: {exc}") from None

    def value(word: str) -> object:
        try:
            return ast.literal_eval(word)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return word

    args, kwargs = [], {}
    for word in words:
        key, eq, rest = word.partition("=")
        if eq and key.isidentifier():
            kwargs[key] = value(rest)
        elif kwargs:
            raise click.UsageError(f"positional argument {word!r} after keyword arguments")
        else:
            args.append(value(word))
    return target, tuple(args), kwargs


@main.group()
def schedule() -> None:
    """List or remove schedules (made with Queue.schedule; fired by the workers)."""


@schedule.command("list")
@click.option("--url", help=URL_HELP)
def schedule_list(url) -> None:
    """Every schedule: its rule, next run, last job and its status."""
    from .connection import connect, describe
    from .schedule import render, schedules

    _logging(verbose=False, quiet=True)
    conn = connect(url)
    click.echo(f"Redis: {describe(conn)}")
    click.echo(render(schedules(conn)))


@schedule.command("remove")
@click.argument("name")
@click.option("--url", help=URL_HELP)
def schedule_remove(name, url) -> None:
    """Remove the schedule NAME (jobs it already queued go on)."""
    from .connection import connect, describe
    from .schedule import remove

    _logging(verbose=False, quiet=True)
    conn = connect(url)
    if not remove(conn, name):
        raise click.ClickException(f"no schedule named {name!r} at {describe(conn)}; see nbqueue schedule list")
    click.echo(f"removed schedule {name} at {describe(conn)}")


@main.group()
def server() -> None:
    """Manage the embedded Redis server (shared by every notebook and worker of this user)."""


@server.command("start")
def server_start() -> None:
    """Start the embedded server (no-op if it runs)."""
    from .server import EmbeddedServer

    srv = EmbeddedServer()
    was_running = srv.is_running()
    url = srv.start()
    click.echo(f"embedded Redis {'already running' if was_running else 'started'} at {url}")


@server.command("stop")
def server_stop() -> None:
    """Stop the embedded server; queued jobs are kept on disk."""
    from .server import EmbeddedServer

    click.echo("embedded Redis stopped" if EmbeddedServer().stop() else "embedded Redis was not running")


@server.command("status")
def server_status() -> None:
    """Whether the embedded server runs, where, and what it holds."""
    from .server import EmbeddedServer

    status = EmbeddedServer().status()
    width = max(map(len, status))
    for key, value in status.items():
        click.echo(f"{key:<{width}}  {value}")
    if not status.get("running"):
        sys.exit(3)


@main.command()
@click.option("--url", default="embedded", show_default=True, help=URL_HELP)
def demo(url) -> None:
    """Start a worker, enqueue a few jobs, print their results."""
    from .demo import run

    run(url)


if __name__ == "__main__":  # pragma: no cover
    main()
