"""``notebooks/quickstart.ipynb`` runs top to bottom in a real kernel (nbclient) against a real worker."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def outputs_of(nb, source_start: str) -> list:
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(source_start)]
    assert len(cells) == 1, f"one cell starts with {source_start!r}"
    return cells[0].outputs


def result_text(nb, source_start: str) -> str:
    results = [o for o in outputs_of(nb, source_start) if o.output_type == "execute_result"]
    assert results, f"no result in the cell {source_start!r}: {outputs_of(nb, source_start)}"
    return results[0].data["text/plain"]


def widget_states(nb) -> list:
    return list(nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"].values())


def test_quickstart_notebook_runs_against_a_real_worker(start_worker, redis_client, tmp_path):
    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, work, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "quick.py"))
    start_worker("default", cwd=work)
    nb = nbformat.read(str(work / "quickstart.ipynb"), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    started = time.monotonic()
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}}).execute()
    took = time.monotonic() - started

    assert result_text(nb, "job.result") == "42"
    said = [(o.name, o.text) for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "stream" and "nbqueue: using" in o.text]
    assert len(said) == 1 and said[0][0] == "stdout", said  # once per kernel, not as an error (stderr)
    assert result_text(nb, "doubled =") == "42"
    assert (work / "quick.py").read_text().startswith("def double")
    crunch = result_text(nb, "crunch.result")
    assert "9455" in crunch and "'done': 30, 'total': 30, 'message': 'step 30'" in crunch
    assert crunch.index("'20 steps done, total so far 2870'") < crunch.index("'INFO tasks: crunched 30 steps'")
    assert result_text(nb, "sum(squares") == "328350"
    assert result_text(nb, "mail.result") == "('sent to ada@example.com', 'Report  ready')"
    assert result_text(nb, "slow.cancel") == "'canceled'"
    assert result_text(nb, "len(blob") == "5000000"
    assert result_text(nb, "orphan.status") == "('queued', 'canceled')"  # nobody serves 'nobody'
    missing = [o.text for o in outputs_of(nb, "from nbqueue import JobFailed") if o.output_type == "stream"]
    assert missing and "FileNotFoundError" in missing[0], missing
    assert result_text(nb, 'Path("notes.txt").write_text') == "10"  # requeued once the input was there

    # the failure shows the worker's traceback, not local frames
    errors = [o for o in outputs_of(nb, "bad.result") if o.output_type == "error"]
    assert errors and errors[0].ename == "JobFailed"
    trace = "\n".join(errors[0].traceback)
    assert "ZeroDivisionError: division by zero" in trace and "tasks.py" in trace
    assert "job.py" not in trace

    # each job cell showed a live widget; a job that ended is saved as its static final report
    shown = [o for o in outputs_of(nb, "job = %enqueue") if o.output_type == "display_data"]
    assert len(shown) == 1, "shown once"
    assert WIDGET_VIEW not in shown[0].data, "the saved output needs no widget manager"
    assert "nbq-report" in shown[0].data["text/html"] and "tasks.add(20, 22)" in shown[0].data["text/html"]
    assert "nbq-status-finished" in shown[0].data["text/html"] and "42" in shown[0].data["text/html"]
    assert shown[0].data["text/plain"].startswith("Job ")
    nbformat.write(nb, str(tmp_path / "executed.ipynb"))  # kept for a look when this test fails
    reports = [o.data["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if o.output_type == "display_data" and "nbq-report" in o.data.get("text/html", "")]
    assert any("tasks.divide(1, 0)" in r and "nbq-status-failed" in r and "ZeroDivisionError" in r for r in reports)
    assert any("30 steps done" in r for r in reports), "the output tail is in the report"
    assert any("nbq-group" in r and "100/100" in r for r in reports), "the group's report: 100 of 100"
    assert any("tasks.blob(5)" in r and "bytes, 5.0 MB" in r for r in reports), "a big result by its summary"
    assert any("tasks.add(1, 1)" in r and "nbq-status-canceled" in r for r in reports), "the orphan, canceled"
    states = widget_states(nb)
    dashboards = [s["state"]["value"] for s in states if "nbq-dashboard" in s["state"].get("_dom_classes", ())]
    assert dashboards and "default" in dashboards[0]
    print(f"\nquickstart.ipynb ran in {took:.1f} s")


def test_job_widget_buttons_cancel_and_requeue_through_the_watcher(start_worker, redis_client, tmp_path):
    """The widget outside a browser: buttons act on the job; only the watcher thread renders."""
    import nbq_tasks
    from conftest import wait_for
    from nbqueue import Queue
    from nbqueue.notebook.widgets import JobWidget

    flag = tmp_path / "started"
    job = Queue("buttons", redis_client).enqueue(nbq_tasks.sleep_then, 30, "late", str(flag))
    widget = JobWidget(job)
    assert "nbq-status-queued" in widget.header.value and widget.cancel_button.layout.display is None
    bundle = widget._repr_mimebundle_()
    assert WIDGET_VIEW in bundle and "nbq-status-queued" in bundle["text/html"]
    assert bundle["text/plain"].startswith(f"Job {job.id} nbq_tasks.sleep_then(30, 'late', ")
    assert "on buttons: queued" in bundle["text/plain"]
    start_worker("buttons")
    wait_for(lambda: "nbq-status-started" in widget.header.value, 10, message="the widget to show started")
    widget.cancel_button.click()  # a running job: the worker is asked to stop it
    wait_for(lambda: "nbq-status-canceled" in widget.header.value, 10, message="the widget to show canceled")
    assert widget.live, "a canceled job may be requeued: its view keeps listening"
    assert widget.requeue_button.layout.display is None and widget.cancel_button.layout.display == "none"
    widget.requeue_button.click()  # watches again and shows the new attempt
    wait_for(lambda: "attempt 2" in widget.header.value, 10, message="the widget to show the second attempt")
    job.cancel(wait=0)
    wait_for(lambda: "nbq-status-canceled" in widget.header.value, 10, message="canceled again")
    assert widget.live
    widget.cancel_button.click()  # a stale click on an ended job: one short note, no exception
    wait_for(lambda: "t cancel: job" in widget.note.value, 5, message="a note saying why")
    widget.stop()
