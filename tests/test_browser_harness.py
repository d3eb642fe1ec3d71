"""Proves the browser harness: a widget updated from a background thread shows
live in JupyterLab while the next cell is still busy."""
from __future__ import annotations

import time

from browser import JupyterLab, require_browser, write_notebook

WIDGET_CELL = """\
import threading, time
import ipywidgets as widgets

counter = widgets.HTML(value="count: 0")
counter.add_class("nbq-counter")
bar = widgets.IntProgress(min=0, max=80)
display(widgets.VBox([counter, bar]))

def tick():
    for i in range(1, 81):  # ~8 s: outlasts the busy cell below
        time.sleep(0.1)
        counter.value = f"count: {i}"
        bar.value = i

threading.Thread(target=tick, daemon=True).start()
"""
BUSY_CELL = "import time; time.sleep(6)"
COUNTER = ".jp-Cell-outputArea .nbq-counter"


def test_widget_updates_live_while_next_cell_busy(tmp_path):
    require_browser()
    write_notebook(tmp_path / "harness.ipynb", [WIDGET_CELL, BUSY_CELL])
    started = time.monotonic()
    with JupyterLab(tmp_path) as lab, lab.open("harness.ipynb") as nb:
        nb.record(COUNTER)
        nb.run_all()
        nb.wait_for_prompt(1, "[*]:", timeout=30)
        # Three distinct texts (two changes) seen while cell 2 is busy.
        nb.wait_for_samples(3, cell=1, prompt="[*]:", timeout=10)
        assert nb.prompt(1) == "[*]:"
        shot = nb.screenshot("browser-harness")
        nb.wait_for_prompt(1, "[2]:", timeout=30)
        samples = nb.samples(stop=True)
        assert nb.prompt(0) == "[1]:"
        assert "count:" in nb.output_text(0)
    busy = [s for s in samples if s["prompts"][1] == "[*]:"]
    texts = [s["text"] for s in busy]
    assert len(set(texts)) >= 3, f"widget changed <2 times while cell 2 was busy: {texts}"
    span = (busy[-1]["t"] - busy[0]["t"]) / 1000
    print(f"\nbrowser harness: {len(busy) - 1} widget updates in {span:.1f} s while cell 2 "
          f"was busy ({texts[0]!r} -> {texts[-1]!r}); screenshot {shot}; "
          f"test took {time.monotonic() - started:.1f} s")
