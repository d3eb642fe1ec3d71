"""``async def`` task functions the tests' workers import (run from ``tests/``)."""
import asyncio
import os
import time

import nbqueue


async def add(a, b):
    await asyncio.sleep(0)
    return a + b


async def whoami():
    job = nbqueue.get_current_job()
    print("async says hello")
    nbqueue.progress(1, 2, "half")
    await asyncio.sleep(0.01)
    nbqueue.progress(2, 2, "done")
    return job.id, os.getpid()


async def barrier(folder, parties, index, timeout=20):
    """Wait (without blocking the loop) until ``parties`` jobs arrived: proves they overlap."""
    open(os.path.join(folder, str(index)), "w").close()
    deadline = time.monotonic() + timeout
    while len(os.listdir(folder)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(folder))} of {parties} jobs ran at once")
        await asyncio.sleep(0.01)
    return index


async def sleep_noting_cancel(seconds, flag):
    """Sleep; on cancel write ``flag`` (what the job saw) before going on being canceled."""
    open(flag + ".started", "w").close()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        with open(flag, "w") as f:
            f.write("CancelledError")
        raise
    finally:
        open(flag + ".finally", "w").close()
    return "slept"


async def refuses_cancel(seconds, flag):
    """Hostile: swallows every CancelledError and keeps sleeping."""
    open(flag + ".started", "w").close()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            open(flag, "w").close()
    return "never canceled"


async def leaves_tasks(flag):
    """Starts a task it never awaits: nbqueue cancels it when the job ends."""
    async def forever():
        try:
            await asyncio.sleep(3600)
        finally:
            open(flag, "w").close()
    asyncio.get_running_loop().create_task(forever())
    await asyncio.sleep(0)
    return "done"


async def fails():
    await asyncio.sleep(0)
    raise ValueError("async boom")


async def returns_coroutine():
    return add(1, 2)  # a coroutine object: not a result
