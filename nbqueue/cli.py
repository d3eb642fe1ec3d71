"""The ``nbqueue`` command: a thin shell over the public API."""
from __future__ import annotations

import logging
import sys

import click

from .errors import NbqueueError

URL_HELP = "Redis URL (redis://, rediss://, unix://, or 'embedded'); default: $NBQUEUE_URL, localhost, else embedded."


def _logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)


class _Group(click.Group):
    """Turns nbqueue's own errors into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NbqueueError as exc:
            raise click.ClickException(str(exc)) from None


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
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def worker(queues, url, inline, burst, concurrency, name, verbose, quiet) -> None:
    """Run jobs from QUEUES (default: default), first = highest priority.

    The current folder is put on sys.path, so a tasks.py beside you imports.
    Ctrl-C (or SIGTERM) finishes the current job, then exits; a second one stops at once.
    Exit codes: 0 stopped (warm or cold, or --burst found the queues empty), 1 error, 2 usage.
    """
    from .worker import Worker

    _logging(verbose, quiet)
    for stream in (sys.stdout, sys.stderr):  # jobs' prints show as they happen, even in a log file
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    Worker(queues or ("default",), url, name=name, inline=inline, burst=burst, concurrency=concurrency,
           adopt_orphans=True).work()  # this process runs only the worker: it may adopt what jobs leave


@main.command()
@click.option("--url", help=URL_HELP)
@click.option("-w", "--watch", is_flag=True, help="Then print every job event as it happens (Ctrl-C to stop).")
def info(url, watch) -> None:
    """Queues with their counts, live workers and what each is running."""
    from .connection import connect, describe
    from .info import render, snapshot, watch_events

    conn = connect(url)
    click.echo(f"Redis: {describe(conn)}")
    click.echo(render(snapshot(conn)))
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

    q = Queue(queue, url)
    if all_failed == bool(job_ids):
        raise click.UsageError("give either JOB_IDS or --all")
    ids = q.failed_job_ids if all_failed else list(job_ids)
    for job_id in ids:
        Job(job_id, q.connection).requeue()
    click.echo(f"requeued {len(ids)} job(s) on {queue}")


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
