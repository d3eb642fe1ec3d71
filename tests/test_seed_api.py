"""The seed's RQ-style example runs with only ``rq`` replaced by ``nbqueue``; ``use_redis``,
``return_value``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbq_tasks
from nbqueue import Queue, connection as connection_module, keys, use_redis

TESTS = Path(__file__).resolve().parent

SEED = """
from nbqueue import use_redis, Queue
from nbq_tasks import multiply
use_redis()
q = Queue()
result = q.enqueue(multiply, 20, 40)
print(result.return_value)
import time
deadline = time.monotonic() + 30
while result.return_value is None and time.monotonic() < deadline:
    time.sleep(0.05)
print(result.return_value)
"""


def test_the_seed_example_verbatim(redis_url, start_worker):
    start_worker("default")
    out = subprocess.run([sys.executable, "-c", SEED], cwd=TESTS, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "800"], out.stdout


def test_use_redis_sets_the_process_default_and_can_switch(redis_client, private_redis):
    try:
        chosen = use_redis(private_redis.url)
        assert Queue().connection is chosen
        job = Queue("seed").enqueue(nbq_tasks.add, 1, 2)
        assert private_redis.client().exists(keys.job(job.id)) and not redis_client.exists(keys.job(job.id))
        assert job.return_value is None  # queued: never waits
        back = use_redis(redis_client)
        assert back is redis_client and Queue().connection is redis_client
    finally:
        connection_module._chosen.clear()
