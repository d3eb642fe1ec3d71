"""Issue 9 in the browser, in JupyterLab 4 and Notebook 7 (headless Chromium): widgets from
``job = %enqueue``, Cancel while the kernel is busy, saved notebooks that read as a report, a
group's progress, and an old widget after a kernel restart.

Each test runs once per frontend (``frontend`` in conftest.py: one server and one Chromium per
frontend for the session),
against a Redis of its own (``private_redis``, its URL set in the notebook's first cell) and
real ``nbqueue worker`` processes. Screenshots go to ``artifacts/<test>-<frontend>.png``.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from browser import JupyterServer, Notebook, measured, write_notebook
from conftest import wait_for
from nbqueue import keys

TESTS = Path(__file__).resolve().parent
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
REPORT = ".nbq-report"




@pytest.fixture
def redis_server(private_redis: Any) -> Iterator[redis.Redis]:
    """A client of this test's own Redis (``.url`` on it too)."""
    client = redis.Redis.from_url(private_redis.url)
    client.url = private_redis.url  # type: ignore[attr-defined]
    yield client
    client.close()


def notebook(server: JupyterServer, name: str, url: str, cells: list[str]) -> str:
    """Write a notebook whose first cell points nbqueue at ``url``; return its path."""
    path = f"{name}-{server.name}.ipynb"
    head = f"%env NBQUEUE_URL={url}\n%load_ext nbqueue\nimport nbq_tasks, browser_tasks"
    write_notebook(server.root_dir / path, [head, *cells])
    return path


def worker(spawn_worker: Any, client: Any, *args: str) -> Any:
    """A real ``nbqueue worker`` on the test's Redis, ready."""
    return spawn_worker(*args, "--url", client.url, cwd=TESTS).wait_ready()


def jobs(client: redis.Redis, **match: str) -> dict[str, dict[str, str]]:
    """Job id -> job hash (decoded, without the pickled call) of the jobs whose fields match."""
    found = {}
    for key in client.scan_iter(match="nbq:{*}:job:*"):
        fields = {k.decode(): v.decode(errors="replace") for k, v in client.hgetall(key).items()
                  if k not in (b"data", b"code", b"result", b"sig", b"rsig")}
        if all(fields.get(k) == v for k, v in match.items()):
            found[key.decode().split(":", 3)[3]] = fields
    return found


def one_job(client: redis.Redis, **match: str) -> str:
    found = wait_for(lambda: list(jobs(client, **match)), 10, message=f"a job with {match}")
    assert len(found) == 1, found
    return found[0]


def status(client: redis.Redis, job_id: str) -> str:
    return (client.hget(keys.job(job_id), "status") or b"").decode()


def nbq_outputs(nb: Notebook, i: int) -> list[dict]:
    """Cell ``i``'s outputs that are nbqueue's (a widget view or nbqueue HTML), as the model holds them."""
    return [o for o in nb.outputs(i) if WIDGET_MIME in o.get("data", {})
            or "nbq-" in "".join(o.get("data", {}).get("text/html", ""))]


def ended(client: redis.Redis, ids: list[str]) -> int:
    """How many of the jobs ``ids`` ended (finished or failed)."""
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(keys.job(job_id), "status")
    return sum(s in (b"finished", b"failed") for s in pipe.execute())


def shot(nb: Notebook, test: str, server: JupyterServer, step: str = "") -> Path:
    return nb.screenshot(f"{test}-{server.name}" + (f"-{step}" if step else ""))


# --- a: widgets from every form --------------------------------------------------------------
def test_assigned_and_bare_enqueue_show_one_widget_each(frontend, redis_server, spawn_worker):
    path = notebook(frontend, "forms", redis_server.url, [
        "job = %enqueue qa nbq_tasks.add(2, 3)",
        "%enqueue qa nbq_tasks.add(4, 5)",
        "squares = %map qa browser_tasks.pause_square range(3)",
        "job",
    ])
    with frontend.open(path) as nb:
        nb.run_all()
        nb.wait_executed(4, timeout=60)
        for i, widget in ((1, ".nbq-job"), (2, ".nbq-job"), (3, ".nbq-group"), (4, ".nbq-job")):
            nb.wait_text(i, widget, "", timeout=20)
        queued = shot(nb, "forms", frontend, "queued")
        counts = {i: (nb.count(i, ".nbq-job"), nb.count(i, ".nbq-group"), len(nbq_outputs(nb, i))) for i in range(1, 5)}
        stderr = [(i, o) for i in range(5) for o in nb.outputs(i) if o.get("name") == "stderr"]
        assert counts == {1: (1, 0, 1), 2: (1, 0, 1), 3: (0, 1, 1), 4: (1, 0, 1)}, \
            f"(.nbq-job, .nbq-group, nbqueue outputs) per cell: {counts}; screenshot {queued}"
        assert not stderr, f"no red stderr box (the 'which Redis' line is quiet): {stderr}"
        assert "queued" in nb.output_text(1)
        nobody = nb.wait_text(1, ".nbq-job", "no live worker serves queue", timeout=15)
        waited = re.search(r"waiting ([\d.]+) s", nobody)
        assert waited and "nbqueue worker qa" in nobody, f"the notice names the command: {nobody!r}"
        nb.wait(f"""() => {{  // the waiting clock ticks (while no cell runs)
            const t = window.jupyterapp.shell.currentWidget.content.widgets[1].node.innerText;
            const m = t.match(/waiting ([\\d.]+) s/);
            return m && parseFloat(m[1]) >= {float(waited.group(1))} + 1;
        }}""", timeout=10, what="the waiting clock to advance by 1 s")

        worker(spawn_worker, redis_server, "qa")  # now the jobs run: each cell ends as one report
        nb.wait_text(1, REPORT, ["finished", "5"], timeout=30)
        nb.wait_text(2, REPORT, ["finished", "9"], timeout=30)
        nb.wait_text(3, REPORT, "3/3", timeout=30)
        done = shot(nb, "forms", frontend, "finished")
        for i in (1, 2, 3):
            assert len(nbq_outputs(nb, i)) == 1, f"cell {i}: {nb.outputs(i)}; screenshot {done}"


# --- b: Cancel while the kernel is busy ------------------------------------------------------
def test_cancel_and_cancel_all_stop_running_jobs_within_1s_while_a_cell_sleeps(
        frontend, redis_server, spawn_worker):
    path = notebook(frontend, "cancel", redis_server.url, [
        "job = %enqueue qb browser_tasks.chatter(60, every=0.005)  # floods: 200 lines/s",
        "group = %map qg browser_tasks.chatter [60, 60, 60]",
        "import time\ntime.sleep(30)  # the kernel is busy while the buttons are clicked",
    ])
    one = worker(spawn_worker, redis_server, "qb")
    many = worker(spawn_worker, redis_server, "qg")
    with frontend.open(path) as nb:
        nb.run_all()
        nb.wait_text(1, ".nbq-job", "started", timeout=30)
        job_id = one_job(redis_server, queue="qb")
        group_ids = wait_for(lambda: len(jobs(redis_server, queue="qg")) == 3 and jobs(redis_server, queue="qg"),
                             10, message="the group's 3 jobs")
        running = wait_for(lambda: [j for j in group_ids if status(redis_server, j) == "started"], 20,
                           message="the group's first job running")
        nb.wait_for_prompt(3, "[*]:", timeout=30)
        nb.wait_text(1, ".nbq-job-output", "chatter line 300", timeout=20)  # its output streams in
        tail = nb.page.evaluate("""() => {  // the output tail shows its newest line (scrolled to the bottom)
            const out = window.jupyterapp.shell.currentWidget.content.widgets[1].node.querySelector('.nbq-job-output');
            const boxes = [out, ...out.querySelectorAll('*')].filter(e => e.scrollHeight > e.clientHeight + 2);
            return boxes.map(box => {  // px from the box's visible bottom to the newest line's bottom
                const walk = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
                let last = null;
                while (walk.nextNode()) if (walk.currentNode.textContent.trim()) last = walk.currentNode;
                const end = last.textContent.trimEnd().length, range = document.createRange();
                range.setStart(last, end - 1); range.setEnd(last, end);
                return Math.round(range.getBoundingClientRect().bottom - box.getBoundingClientRect().bottom);
            });
        }""")
        shot(nb, "cancel", frontend, "busy")

        clicked = nb.click(1, "Cancel")
        wait_for(lambda: status(redis_server, job_id) == "canceled", 1.0 - (time.time() - clicked),
                 message="the job canceled within 1 s of the click")
        ended = float(redis_server.hget(keys.job(job_id), "ended_at"))
        job_latency = ended - clicked

        clicked_all = nb.click(2, "Cancel all", widget=".nbq-group")
        wait_for(lambda: all(status(redis_server, j) == "canceled" for j in group_ids),
                 1.0 - (time.time() - clicked_all), message="all the group's jobs canceled within 1 s of the click")
        group_latency = float(redis_server.hget(keys.job(running[0]), "ended_at")) - clicked_all
        busy = nb.prompt(3)
        nb.wait_text(1, "", "canceled", timeout=10)
        shot(nb, "cancel", frontend, "canceled")
    assert busy == "[*]:", "the sleeping cell was still running after both clicks"
    assert all(gap <= 2 for gap in tail), f"the output tail shows its newest line: it is {tail} px below the view"
    assert 0 <= job_latency <= 1.0, f"the worker ended the job {job_latency:.3f} s after the click"
    assert 0 <= group_latency <= 1.0, f"the worker ended the group's job {group_latency:.3f} s after the click"
    wait_for(lambda: re.search(rf"{job_id} browser_tasks.chatter qb .* canceled", one.log()), 5,
             message=f"the worker's log saying it canceled {job_id}")
    wait_for(lambda: re.search(rf"{running[0]} browser_tasks.chatter qg .* canceled", many.log()), 5,
             message=f"the worker's log saying it canceled {running[0]}")
    measured(f"{frontend.name}: Cancel click -> the worker ended the job {job_latency * 1000:.0f} ms later; "
             f"'Cancel all' click -> the group's running job ended {group_latency * 1000:.0f} ms later "
             "(a cell sleeping all along)")


# --- c: a saved notebook reads as a report ---------------------------------------------------
def test_saved_notebook_reopened_without_its_kernel_reads_as_a_report(frontend, redis_server, spawn_worker):
    path = notebook(frontend, "report", redis_server.url, [
        "ok = %enqueue qc nbq_tasks.add(20, 22)",
        "bad = %enqueue qc nbq_tasks.fail('kaboom')",
        "squares = %map qc browser_tasks.pause_square range(5)",
    ])
    worker(spawn_worker, redis_server, "qc")
    with frontend.open(path, shutdown=False) as nb:
        nb.run_all()
        nb.wait_executed(3, timeout=60)
        nb.wait_text(1, REPORT, ["finished", "42"], timeout=30)
        nb.wait_text(2, REPORT, ["failed", "kaboom"], timeout=30)
        nb.wait_text(3, REPORT, "5/5", timeout=30)
        shot(nb, "report", frontend, "live")
        nb.save()
        nb.shutdown_kernel()
    saved = Notebook(None, frontend, path).saved()
    widget_cells = [i for i, cell in enumerate(saved.cells) for o in cell.get("outputs", [])
                    if WIDGET_MIME in o.get("data", {})]
    with frontend.open(path) as nb:  # a fresh page; a new kernel that knows none of the old widgets
        texts = {i: nb.wait_text(i, REPORT, text, timeout=20) for i, text in
                 ((1, ["finished", "42"]), (2, ["failed", "ValueError", "kaboom"]), (3, ["5/5"]))}
        nb.wait(f"() => document.querySelectorAll('[data-nbq-current] .jp-OutputArea-output').length >= "
                f"{sum(len(c.get('outputs', [])) for c in saved.cells)}", timeout=20, what="every saved output shown")
        reopened = shot(nb, "report", frontend, "reopened")
        page = nb.page_text()
    assert "model not found" not in page, f"screenshot {reopened}"
    assert not widget_cells, f"cells {widget_cells} were saved as widget views (model not found once reopened)"
    assert "Traceback" in texts[2] or "ValueError" in texts[2], texts[2]
    for i, cell in enumerate(saved.cells[1:], 1):  # without any frontend: text/plain says it too
        plain = " ".join("".join(o.get("data", {}).get("text/plain", "")) for o in cell.outputs)
        assert ("failed" if i == 2 else "finished") in plain, (i, plain)


# --- d: a group's progress -------------------------------------------------------------------
PROGRESS = re.compile(r"(\d+)/200")


def test_group_of_200_shows_percent_rate_and_eta_while_it_runs(frontend, redis_server, spawn_worker):
    path = notebook(frontend, "group200", redis_server.url,
                    ["squares = %map qd browser_tasks.nap_square range(200)"])
    with frontend.open(path) as nb:
        nb.run_all()
        nb.wait_executed(1, timeout=60)
        ids = wait_for(lambda: len(jobs(redis_server, queue="qd")) == 200 and list(jobs(redis_server, queue="qd")),
                       20, message="200 jobs enqueued")
        worker(spawn_worker, redis_server, "qd", "--inline")  # 0.02 s a job: ~5 s in all
        seen: list[str] = []  # the progress lines of the running group (done < 200)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (len(seen) >= 2 and seen[-1] != seen[0]):
            text = nb.text(1, ".nbq-group-progress")
            done = PROGRESS.search(text)
            if done and int(done.group(1)) == 200 or ended(redis_server, ids) == 200:
                break  # over: what was seen while it ran must do
            if done and 0 < int(done.group(1)) and text not in seen:
                seen.append(text)
            time.sleep(0.05)  # poll interval, bounded by the deadline
        running = shot(nb, "group200", frontend, "running")
        nb.wait_text(1, "", "200/200", timeout=60)
        shot(nb, "group200", frontend, "done")
    assert len(seen) >= 2, f"the progress of the running group changed while it ran: {seen}; {running}"
    for text in seen:
        assert re.search(r"\d+(\.\d+)?\s*%", text) and "/s" in text and "ETA" in text, (text, running)


# --- e: an old widget after a kernel restart -------------------------------------------------
def test_widget_of_a_running_job_says_detached_after_a_kernel_restart(frontend, redis_server, spawn_worker):
    path = notebook(frontend, "restart", redis_server.url, ["job = %enqueue qe browser_tasks.chatter(60)"])
    worker(spawn_worker, redis_server, "qe")
    with frontend.open(path) as nb:
        nb.run_all()
        nb.wait_text(1, ".nbq-job", "started", timeout=30)
        job_id = one_job(redis_server, queue="qe")
        nb.wait_text(1, ".nbq-job-output", "chatter line", timeout=20)
        restarted = time.time()
        nb.restart_kernel()
        try:
            text = nb.wait_text(1, ".nbq-detached", "started", timeout=15)
        except AssertionError as exc:
            sent = [round(t - restarted, 2) for t, frame in nb.display_updates
                    if "nbq-detached" in frame and t >= restarted]
            raise AssertionError(f"{exc}\nupdate_display_data with the detached report received by the page "
                                 f"{sent} s after the restart (received but not shown if any)") from None
        shot(nb, "restart", frontend)
        live_buttons = nb.count(1, "button", shown=True)
        still = status(redis_server, job_id)
    assert "detached" in text.lower(), f"the old widget says it is detached: {text!r}"
    assert live_buttons == 0, "no live-looking (shown) Cancel button is left in the detached cell"
    assert still == "started", "a kernel restart does not stop the job"


# --- f: a page reopened while the kernel runs --------------------------------------------------
def test_page_reopened_while_the_kernel_runs_shows_the_live_widget_again(frontend, redis_server, spawn_worker):
    path = notebook(frontend, "reload", redis_server.url, ["job = %enqueue qf browser_tasks.chatter(60)"])
    worker(spawn_worker, redis_server, "qf")
    with frontend.open(path, shutdown=False) as nb:
        nb.run_all()
        nb.wait_text(1, ".nbq-job", "started", timeout=30)
        job_id = one_job(redis_server, queue="qf")
        nb.save()
        kernel = nb.kernel_id()
    with frontend.open(path) as nb:  # a fresh page on the same, still running kernel
        assert nb.kernel_id() == kernel
        first = nb.wait_text(1, ".nbq-job", "started", timeout=30)
        lines = [int(n) for n in re.findall(r"chatter line (\d+)", first)] or [0]
        nb.wait_text(1, ".nbq-job-output", f"chatter line {max(lines) + 10}", timeout=20)  # live: it moves on
        reopened = shot(nb, "reload", frontend)
        page = nb.page_text()
        clicked = nb.click(1, "Cancel")
        wait_for(lambda: status(redis_server, job_id) == "canceled", 1.0 - (time.time() - clicked),
                 message="the job canceled within 1 s of a click in the reopened page")
    assert "model not found" not in page, f"screenshot {reopened}"
