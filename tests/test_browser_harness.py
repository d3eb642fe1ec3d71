"""Proves the browser harness: a widget updated from a background thread shows live while the
next cell is still busy, in JupyterLab and in Notebook 7; and the harness's own steps work there
(a click in a widget, save, kernel shutdown, a fresh page reading the saved outputs)."""
from __future__ import annotations

import time

from browser import write_notebook

WIDGET_CELL = """\
import threading, time
import ipywidgets as widgets

counter = widgets.HTML(value="count: 0")
counter.add_class("nbq-counter")
bar = widgets.IntProgress(min=0, max=50)
display(widgets.VBox([counter, bar]))

def tick():
    for i in range(1, 51):  # ~5 s: outlasts the busy cell below
        time.sleep(0.1)
        counter.value = f"count: {i}"
        bar.value = i

threading.Thread(target=tick, daemon=True).start()
"""
BUSY_CELL = "import time; time.sleep(4)"
COUNTER = ".jp-Cell-outputArea .nbq-counter"


def test_widget_updates_live_while_next_cell_busy(frontend):
    path = f"harness-{frontend.name}.ipynb"
    write_notebook(frontend.root_dir / path, [WIDGET_CELL, BUSY_CELL])
    started = time.monotonic()
    with frontend.open(path) as nb:
        nb.record(COUNTER)
        nb.run_all()
        nb.wait_for_prompt(1, "[*]:", timeout=30)
        # Three distinct texts (two changes) seen while cell 2 is busy.
        nb.wait_for_samples(3, cell=1, prompt="[*]:", timeout=10)
        assert nb.prompt(1) == "[*]:"
        shot = nb.screenshot(f"browser-harness-{frontend.name}")
        nb.wait_for_prompt(1, "[2]:", timeout=30)
        samples = nb.samples(stop=True)
        assert nb.prompt(0) == "[1]:"
        assert "count:" in nb.output_text(0)
    busy = [s for s in samples if s["prompts"][1] == "[*]:"]
    texts = [s["text"] for s in busy]
    assert len(set(texts)) >= 3, f"widget changed <2 times while cell 2 was busy: {texts}"
    span = (busy[-1]["t"] - busy[0]["t"]) / 1000
    print(f"\nbrowser harness ({frontend.name}): {len(busy) - 1} widget updates in {span:.1f} s while cell 2 "
          f"was busy ({texts[0]!r} -> {texts[-1]!r}); screenshot {shot}; "
          f"test took {time.monotonic() - started:.1f} s")


CLICK_CELL = """\
import ipywidgets as widgets
clicks = widgets.HTML(value="clicks: 0")
button = widgets.Button(description="Hit me")
box = widgets.VBox([button, clicks])
box.add_class("nbq-probe")
button.on_click(lambda _: setattr(clicks, "value", f"clicks: {int(clicks.value.split()[1]) + 1}"))
box
"""


def test_click_save_shutdown_and_reopen(frontend):
    path = f"steps-{frontend.name}.ipynb"
    write_notebook(frontend.root_dir / path, [CLICK_CELL, "print('saved ' + 'output')"])
    with frontend.open(path, shutdown=False) as nb:
        nb.run_all()
        nb.wait_executed(1)
        before = time.time()
        clicked = nb.click(0, "Hit me", widget=".nbq-probe")
        nb.wait_text(0, ".nbq-probe", "clicks: 1", timeout=10)
        nb.save()
        kernel = nb.kernel_id()
        nb.shutdown_kernel()
        assert kernel and kernel not in frontend.kernel_ids()
    saved = nb.saved()
    assert saved.cells[1].outputs[0]["text"] == "saved output\n"
    with frontend.open(path) as again:  # a fresh page, a new kernel
        assert again.kernel_id() != kernel
        again.wait_text(1, "", "saved output", timeout=10)
        assert again.prompt(1) == "[2]:"
        shot = again.screenshot(f"browser-steps-{frontend.name}")
    assert before <= clicked <= time.time()
    print(f"\nharness steps ({frontend.name}): click, save, shutdown, reopen; screenshot {shot}")
