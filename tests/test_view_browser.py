"""In JupyterLab (headless Chromium): what the widgets show while jobs run and another cell is
busy — the notice that no worker serves the queue, then a group of 200 with %, rate and ETA, a
job's bar with its ETA, and its output tail scrolled to the newest line (CSS only, no script)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from browser import JupyterLab, require_browser, write_notebook

TASKS = Path(__file__).resolve().parent / "view_tasks.py"
CELLS = [
    "%load_ext nbqueue\nimport view_tasks\nfrom nbqueue import Queue",
    "job = %enqueue vbrowser view_tasks.chatty(300, 0.02)\njob",
    "group = Queue('vbrowser').map(view_tasks.nap, [0.04] * 200)\ngroup",
    "import time\ntime.sleep(90)  # busy while the jobs run",
]
NOTICE = "no live worker serves queue 'vbrowser' — start one: nbqueue worker vbrowser"
TAIL_AT_BOTTOM = """() => {
  const box = document.querySelector('.nbq-job .nbq-output-scroll');
  const pre = box && box.querySelector('pre.nbq-output');
  if (!pre || box.scrollHeight <= box.clientHeight + 20) return false;  // not overflowing yet
  const b = box.getBoundingClientRect(), p = pre.getBoundingClientRect();
  return p.top < b.top - 10 && Math.abs(p.bottom - b.bottom) < 3;  // its bottom shows, its top is cut
}"""


def test_waiting_notice_group_rate_eta_and_output_tail_live(tmp_path, start_worker):
    require_browser()
    shutil.copy(TASKS, tmp_path / "view_tasks.py")
    write_notebook(tmp_path / "view.ipynb", CELLS)
    started = time.monotonic()
    with JupyterLab(tmp_path) as lab, lab.open("view.ipynb") as nb:
        nb.run_all()
        nb.wait_for_prompt(3, "[*]:", timeout=60)
        for sel in (".nbq-job-header", ".nbq-group-header"):
            nb.page.wait_for_function("([sel, text]) => document.querySelector(sel)?.innerText.includes(text)",
                                      arg=[sel, NOTICE], timeout=20_000)
        start_worker("vbrowser", "--inline", "-c", "2", cwd=tmp_path)
        nb.page.wait_for_function(
            "() => /\\d+\\/300 \\(\\d+%\\) · [\\d.]+\\/s · ETA [\\d.]+ s/.test("
            "document.querySelector('.nbq-job-progress')?.innerText || '')", timeout=30_000)
        try:
            nb.page.wait_for_function(TAIL_AT_BOTTOM, timeout=30_000)
        except Exception:
            print(nb.page.evaluate("""() => { const box = document.querySelector('.nbq-job .nbq-output-scroll');
              const pre = box.querySelector('pre'); const cs = getComputedStyle(box);
              return [box.outerHTML.slice(0, 400), cs.display, cs.flexDirection, cs.overflow, box.scrollTop,
                      box.scrollHeight, box.clientHeight, JSON.stringify(box.getBoundingClientRect()),
                      JSON.stringify(pre.getBoundingClientRect())]; }"""))
            raise
        job_text = nb.page.inner_text(".nbq-job-progress")
        tail = nb.page.inner_text(".nbq-job .nbq-output")
        nb.page.wait_for_function(
            "() => /\\d+\\/200 done \\(\\d+%\\) · [\\d.]+ jobs\\/s · ETA [\\d.]+ s · [\\d.]+ s/.test("
            "document.querySelector('.nbq-group-progress')?.innerText || '')", timeout=60_000)
        group_text = nb.page.inner_text(".nbq-group-progress")
        headers = nb.page.inner_text(".nbq-job-header") + nb.page.inner_text(".nbq-group-header")
        shot = nb.screenshot("view-running")
        nb.page.wait_for_function(
            "() => document.querySelector('.nbq-group-progress')?.innerText.startsWith('200/200 done (100%)')",
            timeout=60_000)
        nb.page.wait_for_function(TAIL_AT_BOTTOM, timeout=10_000)  # still at the bottom when it ended
        last = nb.page.inner_text(".nbq-job .nbq-output").strip().splitlines()[-1]
        busy = nb.prompt(3)
        done_shot = nb.screenshot("view-done")
    assert busy == "[*]:", "the jobs ended while the next cell was still busy"
    assert "no live worker" not in headers, headers
    assert tail.strip().splitlines()[-1].startswith("line ") and len(tail.strip().splitlines()) <= 30
    assert last == "line 300"
    print(f"\njob {job_text!r}, group {group_text!r}; screenshots {shot} {done_shot}; "
          f"took {time.monotonic() - started:.1f} s")
