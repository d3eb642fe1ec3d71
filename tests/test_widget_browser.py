"""In JupyterLab (headless Chromium), a job's widget goes from queued to finished while the
next cell is still busy: the watcher thread updates it, not the cell."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from browser import JupyterLab, require_browser, write_notebook

TASKS = Path(__file__).resolve().parent.parent / "notebooks" / "tasks.py"
CELLS = [
    "%load_ext nbqueue\nimport tasks",
    "job = %enqueue browser tasks.crunch(20, 0.1)\njob",
    "import time\ntime.sleep(60)  # busy while the job runs",
]
HEADER = ".jp-Cell-outputArea .nbq-job-header"


def test_job_widget_goes_live_from_queued_to_finished_while_next_cell_is_busy(tmp_path, start_worker):
    require_browser()
    shutil.copy(TASKS, tmp_path / "tasks.py")
    write_notebook(tmp_path / "widget.ipynb", CELLS)
    started = time.monotonic()
    with JupyterLab(tmp_path) as lab, lab.open("widget.ipynb") as nb:
        nb.record(HEADER)
        nb.run_all()
        nb.wait_for_prompt(2, "[*]:", timeout=60)
        nb.page.wait_for_function(
            "(sel) => document.querySelector(sel)?.innerText.includes('queued')", arg=HEADER, timeout=20_000)
        start_worker("browser", cwd=tmp_path)  # only now can the job start
        nb.page.wait_for_function(
            "(sel) => document.querySelector(sel)?.innerText.includes('finished')", arg=HEADER, timeout=30_000)
        nb.page.wait_for_function(  # the tail of the output and the result are shown too
            "() => document.querySelector('.nbq-job-outcome')?.innerText.includes('2870')", timeout=10_000)
        busy_prompt = nb.prompt(2)
        nb.page.locator(".nbq-job").first.scroll_into_view_if_needed()
        shot = nb.screenshot("job-widget")
        samples = nb.samples(stop=True)
        progress_text = nb.page.inner_text(".nbq-job-progress")
        output_text = nb.page.inner_text(".nbq-job-output")
    assert busy_prompt == "[*]:", "the next cell was still busy when the job finished"
    busy = [s for s in samples if s["prompts"][2] == "[*]:"]
    statuses = [s["text"].split()[0] for s in busy]
    assert statuses[0] == "queued" and statuses[-1] == "finished", statuses
    assert "started" in statuses and statuses.index("started") < statuses.index("finished")
    assert len(busy) >= 5, "the clock and status changed several times while the cell was busy"
    assert "20/20 (100%) step 20" in progress_text
    assert "20 steps done, total so far 2870" in output_text and "INFO tasks: crunched 20 steps" in output_text
    print(f"\nwidget: {len(busy)} header texts while cell 3 was busy ({statuses[0]} -> {statuses[-1]}); "
          f"screenshot {shot}; test took {time.monotonic() - started:.1f} s")


GROUP_CELLS = [
    "%load_ext nbqueue\nimport tasks\nfrom nbqueue import Queue",
    "squares = Queue('browser').map(tasks.square, range(100))\nsquares",
    "bad = %enqueue browser tasks.divide(1, 0)\nbad",
    "%nbqueue",
]


def test_group_failure_and_dashboard_render_live(tmp_path, start_worker):
    require_browser()
    shutil.copy(TASKS, tmp_path / "tasks.py")
    write_notebook(tmp_path / "group.ipynb", GROUP_CELLS)
    start_worker("browser", cwd=tmp_path)
    with JupyterLab(tmp_path) as lab, lab.open("group.ipynb") as nb:
        nb.run_all()
        nb.wait_for_prompt(3, "[4]:", timeout=60)
        nb.page.wait_for_function(
            "() => document.querySelector('.nbq-group-header')?.innerText.includes('100/100 done')", timeout=30_000)
        nb.page.wait_for_function(
            "() => document.querySelector('.nbq-job .nbq-traceback')?.innerText.includes('ZeroDivisionError')",
            timeout=30_000)
        nb.page.wait_for_function(  # the dashboard lists the failed job among the recent ones
            "() => document.querySelector('.nbq-dashboard')?.innerText.includes('tasks.divide')", timeout=30_000)
        group_text = nb.page.inner_text(".nbq-group-header")
        failed_report = nb.page.inner_text(".nbq-report .nbq-job")  # ended: a static report, no widget
        shot = nb.screenshot("group-widget")
        nb.page.locator(".nbq-dashboard").scroll_into_view_if_needed()
        dash = nb.screenshot("dashboard")
        dashboard_text = nb.page.inner_text(".nbq-dashboard")
    assert "finished 100" in group_text and "jobs/s" in group_text
    assert "failed" in failed_report and "ZeroDivisionError" in failed_report
    assert "browser" in dashboard_text and "Workers (1)" in dashboard_text
    print(f"\nscreenshots {shot} {dash}")
