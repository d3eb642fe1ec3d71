"""The notebook face as a frontend sees it, speaking the Jupyter protocol to a real kernel
(jupyter_client): what each magic displays, button clicks while a cell runs, the static report a
job's output becomes when it ends, and the 'detached' report at shutdown."""
from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import ipykernel
import pytest

from nbqueue import Job

jupyter_client = pytest.importorskip("jupyter_client")

TESTS = Path(__file__).resolve().parent
WIDGET = "application/vnd.jupyter.widget-view+json"


class Frontend:
    """A kernel and what it published on IOPub, as a notebook frontend would see it."""

    def __init__(self) -> None:
        self.km, self.kc = jupyter_client.manager.start_new_kernel(kernel_name="python3", cwd=str(TESTS))
        self.messages: list[dict] = []

    def run(self, code: str, timeout: float = 60) -> str:
        """Run ``code`` and wait for its reply; its messages are kept. Returns the msg id."""
        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=self.messages.append)
        assert reply["content"]["status"] == "ok", f"{code!r}: {reply['content']}; {self.errors()}"
        return reply["parent_header"]["msg_id"]

    def start(self, code: str) -> str:
        """Start running ``code``; its messages are read by :meth:`pump`."""
        return self.kc.execute(code)

    def pump(self, timeout: float = 0.05) -> None:
        try:
            while True:
                self.messages.append(self.kc.get_iopub_msg(timeout=timeout))
                timeout = 0
        except queue.Empty:
            pass

    def of(self, msg_id: str, *kinds: str) -> list[dict]:
        return [m for m in self.messages if m["parent_header"].get("msg_id") == msg_id
                and m["msg_type"] in kinds]

    def errors(self) -> list:
        return [m["content"] for m in self.messages if m["msg_type"] == "error"]

    def updates(self, display_id: str) -> list[dict]:
        return [m["content"]["data"] for m in self.messages if m["msg_type"] == "update_display_data"
                and m["content"].get("transient", {}).get("display_id") == display_id]

    def wait(self, predicate: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            value = predicate()
            if value:
                return value
        raise AssertionError(f"timed out waiting for {what or predicate}")

    def click(self, comm_id: str) -> None:
        """What a browser sends when a widget Button is clicked."""
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {
            "method": "custom", "content": {"event": "click"}}})
        self.kc.shell_channel.send(msg)

    def comm_of(self, name: str) -> str:
        """The comm id of the kernel variable ``name`` (a widget), printed by the kernel."""
        msg_id = self.run(f"print({name}.comm.comm_id)")
        return "".join(m["content"]["text"] for m in self.of(msg_id, "stream")).strip()

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


# a click acts while a cell runs only through ipykernel 7's subshells (7 needs Python 3.11+); in
# older kernels the buttons say they wait (test_buttons_say_when_clicks_wait_for_an_idle_kernel)
SUBSHELLS = pytest.mark.skipif(int(ipykernel.__version__.split(".")[0]) < 7,
                               reason=f"ipykernel {ipykernel.__version__} has no subshells (7+ has them)")


@pytest.fixture
def frontend(redis_url: str) -> Iterator[Frontend]:
    fe = Frontend()
    try:
        fe.run("%load_ext nbqueue\nimport nbq_tasks, time, nbqueue")
        yield fe
    finally:
        fe.close()


def displays(fe: Frontend, msg_id: str) -> list[dict]:
    return [m["content"] for m in fe.of(msg_id, "display_data", "execute_result")]


def display_id(shown: dict) -> str:
    return shown["transient"]["display_id"]


@pytest.mark.parametrize("line", [
    "job = %enqueue showq nbq_tasks.add(1, 2)",
    "%enqueue showq nbq_tasks.add(1, 2)",
    "job = %enqueue showq nbq_tasks.add(1, 2)\njob",
    "group = %map showq nbq_tasks.echo range(3)",
    "%map showq nbq_tasks.echo range(3)",
])
def test_each_magic_shows_its_live_widget_exactly_once(frontend, line):
    shown = displays(frontend, frontend.run(line))
    assert len(shown) == 1, shown
    assert WIDGET in shown[0]["data"] and "nbq-" in shown[0]["data"]["text/html"]
    assert shown[0]["transient"]["display_id"]


def test_a_job_as_a_later_cells_value_is_shown_again_once(frontend):
    frontend.run("job = %enqueue showq nbq_tasks.add(1, 2)")
    shown = displays(frontend, frontend.run("job"))
    assert len(shown) == 1 and WIDGET in shown[0]["data"], shown
    shown = displays(frontend, frontend.run("d = %nbqueue"))
    assert len(shown) == 1 and WIDGET in shown[0]["data"], shown
    shown = displays(frontend, frontend.run("%nbqueue"))
    assert len(shown) == 1, shown


def test_a_finished_job_becomes_a_static_report_in_the_same_cell(frontend, start_worker):
    start_worker("reportq")
    msg_id = frontend.run("job = %enqueue reportq nbq_tasks.add(20, 22)\njob.result(timeout=30)")
    shown = displays(frontend, msg_id)
    did = display_id([s for s in shown if "transient" in s][0])
    frontend.wait(lambda: frontend.updates(did), what="the final report")
    final = frontend.updates(did)[-1]
    assert WIDGET not in final, "the saved output must not need a widget manager"
    assert "nbq-report" in final["text/html"] and "nbq-status-finished" in final["text/html"]
    assert "42" in final["text/html"] and "finished" in final["text/plain"]
    # within the cell that ran (a headless run keeps only what comes while a cell runs)
    assert any(m["msg_type"] == "update_display_data" for m in frontend.of(msg_id, "update_display_data"))


def test_a_job_that_ends_between_cells_is_reported_again_in_the_next_cell(frontend, start_worker):
    msg_id = frontend.run("job = %enqueue latereport nbq_tasks.fail('nope')")
    did = display_id(displays(frontend, msg_id)[0])
    start_worker("latereport")
    frontend.wait(lambda: frontend.updates(did), what="the report, sent while no cell runs")
    later = frontend.run("1 + 1")
    assert [m for m in frontend.of(later, "update_display_data")
            if m["content"]["transient"]["display_id"] == did], "sent again within the next cell"
    final = frontend.updates(did)[-1]
    assert "nbq-status-failed" in final["text/html"] and "nope" in final["text/html"]


def test_an_ended_job_shown_later_is_a_report_not_a_widget(frontend, start_worker):
    start_worker("endedq")
    frontend.run("job = nbqueue.Queue('endedq').enqueue(nbq_tasks.add, 1, 1)\njob.result(timeout=30)")
    shown = displays(frontend, frontend.run("job"))
    assert len(shown) == 1 and WIDGET not in shown[0]["data"]
    assert "nbq-report" in shown[0]["data"]["text/html"]


@SUBSHELLS
def test_cancel_clicked_while_a_cell_sleeps_stops_the_job_within_a_second(frontend, start_worker, redis_client):
    start_worker("clickq")
    frontend.run("job = %enqueue clickq nbq_tasks.sleep_then(60)\n"
                 "t0 = time.time()\n"
                 "while job.status != 'started' and time.time() - t0 < 30: time.sleep(0.05)")
    msg_id = frontend.run("from nbqueue.notebook import widgets\n"
                          "view = [v for v in widgets._shown if getattr(v, 'job', None) is not None][-1]\n"
                          "print(view.job.id)")
    job_id = "".join(m["content"]["text"] for m in frontend.of(msg_id, "stream")).strip()
    comm = frontend.comm_of("view.cancel_button")
    busy = frontend.start("time.sleep(30)")
    frontend.wait(lambda: frontend.of(busy, "execute_input"), what="the busy cell to start")
    clicked = time.time()
    frontend.click(comm)
    deadline = clicked + 1.0
    while time.time() < deadline and Job.fetch(job_id).status != "canceled":
        time.sleep(0.01)
    took = time.time() - clicked
    assert Job.fetch(job_id).status == "canceled", f"still {Job.fetch(job_id).status} {took:.2f} s after the click"
    assert not frontend.of(busy, "execute_reply"), "the click waited for the busy cell"
    frontend.km.interrupt_kernel()


@SUBSHELLS
def test_cancel_all_clicked_while_result_waits(frontend, start_worker):
    start_worker("clickall")
    frontend.run("group = %map clickall nbq_tasks.sleep_then [60, 60, 60]\n"
                 "from nbqueue.notebook import widgets\n"
                 "view = [v for v in widgets._shown if getattr(v, 'group', None) is not None][-1]")
    comm = frontend.comm_of("view.cancel_button")
    busy = frontend.start("group.results(timeout=40)")
    frontend.wait(lambda: frontend.of(busy, "execute_input"), what="the waiting cell to start")
    clicked = time.time()
    frontend.click(comm)
    # the waiting cell ends with the canceled jobs' error, well before its timeout
    frontend.wait(lambda: frontend.of(busy, "error"), timeout=5, what="result() to end by the cancel")
    assert time.time() - clicked < 5
    assert "cancel" in json.dumps(frontend.of(busy, "error")[0]["content"]).lower()


def test_shutdown_turns_live_views_into_detached_reports(frontend, start_worker):
    start_worker("detachq")
    msg_id = frontend.run("job = %enqueue detachq nbq_tasks.sleep_then(60)\n"
                          "t0 = time.time()\n"
                          "while job.status != 'started' and time.time() - t0 < 30: time.sleep(0.05)")
    did = display_id(displays(frontend, msg_id)[0])
    frontend.km.restart_kernel(now=False)
    frontend.wait(lambda: frontend.updates(did), timeout=15, what="the detached report")
    final = frontend.updates(did)[-1]
    assert "nbq-detached" in final["text/html"] and "nbq-status-started" in final["text/html"]
    assert "Job.fetch(" in final["text/html"] and WIDGET not in final


def test_buttons_say_when_clicks_wait_for_an_idle_kernel(redis_client):
    """Outside a kernel with subshells (here: no kernel at all) a button can't act at once."""
    import nbq_tasks
    from nbqueue import Queue
    from nbqueue.notebook.widgets import IDLE_ONLY, JobWidget

    view = JobWidget(Queue("idleq").enqueue(nbq_tasks.add, 1, 2))
    try:
        assert view.cancel_button.description.endswith(IDLE_ONLY)
        assert "between cells" in view.cancel_button.tooltip
    finally:
        view.stop()


def test_a_job_enqueued_from_python_shows_its_call(frontend):
    shown = displays(frontend, frontend.run("job = nbqueue.Queue('showq').enqueue(nbq_tasks.add, 1, 2)\njob"))
    assert len(shown) == 1 and "nbq_tasks.add(1, 2)" in shown[0]["data"]["text/html"]


def test_a_requeued_job_shows_its_widget_again_then_its_new_end(frontend, start_worker, tmp_path):
    worker = start_worker("requeueq", "--inline")
    counter = str(tmp_path / "calls")
    msg_id = frontend.run(f"job = %enqueue requeueq nbq_tasks.flaky({counter!r}, 1)")
    did = display_id(displays(frontend, msg_id)[0])
    frontend.wait(lambda: any("nbq-status-failed" in u.get("text/html", "") for u in frontend.updates(did)),
                  what="the failed report")
    worker.stop()  # so the requeued job waits, queued, where it can be seen
    frontend.run("job.requeue()")
    frontend.wait(lambda: WIDGET in frontend.updates(did)[-1], what="the live widget again")
    assert "nbq-status-queued" in frontend.updates(did)[-1]["text/html"]
    start_worker("requeueq", "--inline")
    frontend.wait(lambda: "nbq-status-finished" in frontend.updates(did)[-1].get("text/html", ""),
                  what="the report of the run after the requeue")
    assert WIDGET not in frontend.updates(did)[-1]
