"""Tasks the browser tests enqueue (tests/test_notebook_browser.py); workers started in this
folder import them, and the notebooks' kernels find a copy in their server's root."""
from __future__ import annotations

import time


def chatter(seconds, every=0.1):
    """A long job with output: print a numbered line every ``every`` s for ``seconds``."""
    deadline = time.monotonic() + seconds
    line = 0
    while time.monotonic() < deadline:
        line += 1
        print(f"chatter line {line}", flush=True)
        time.sleep(every)
    return line


def pause_square(x, seconds=0.0):
    """A short job: sleep ``seconds``, return ``x * x``."""
    time.sleep(seconds)
    return x * x


def nap_square(x):
    """A short job of 0.02 s: ``x * x``."""
    time.sleep(0.02)
    return x * x
