"""``nbqueue demo``: a worker in a subprocess, a few jobs, their results. Also the demo's tasks."""
from __future__ import annotations

import subprocess
import sys
import time

import click


def add(a, b):
    return a + b


def slow_square(x, seconds=0.2):
    time.sleep(seconds)  # pretend to work
    return x * x


def divide(a, b):
    return a / b


def run(url: str) -> None:
    from . import JobFailed, Queue, connect
    from .connection import connection_options

    conn = connect(url)
    queue = Queue("demo", conn)
    worker_url = connection_options(conn).get("path")
    worker_url = f"unix://{worker_url}" if worker_url else url
    worker = subprocess.Popen([sys.executable, "-m", "nbqueue.cli", "worker", "demo", "--concurrency", "4",
                               "--url", worker_url])
    try:
        click.echo("\n1. One job: add(20, 40)")
        job = queue.enqueue(add, 20, 40)
        click.echo(f"   {job.id} -> {job.result(timeout=30)}")

        click.echo("\n2. Ten jobs in one round trip: slow_square(0..9), 0.2 s each, 4 at a time")
        jobs = queue.enqueue_many([(slow_square, (i,)) for i in range(10)])
        started = time.perf_counter()
        click.echo(f"   results: {[j.result(timeout=60) for j in jobs]} in {time.perf_counter() - started:.1f} s")

        click.echo("\n3. A failing job: divide(1, 0) -> the worker's traceback comes back")
        try:
            queue.enqueue(divide, 1, 0).result(timeout=30)
        except JobFailed as exc:
            click.echo("   " + str(exc).replace("\n", "\n   "))

        click.echo("\nDone. Run `nbqueue info --url embedded` to see queues and workers.")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
