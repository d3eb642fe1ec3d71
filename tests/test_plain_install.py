"""A plain install is a notebook tool: a fresh venv holding only ``pip install <repo>`` (not
editable, no extras) and ``ipykernel`` runs ``%load_ext nbqueue``, ``job = %enqueue``, ``%map``
and the quickstart in a real kernel (nbclient) against a real worker from that venv, and the
saved notebook holds each job's final state in a non-widget mime type.

The venv is built once per session under the pytest tmp dir (the local PyPI mirror makes it work
offline); if it can't be built here the tests fail saying so (they never skip).
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbclient  # the test extra: missing, this module fails to import (never a silent skip)
import nbformat
import pytest

from conftest import WorkerProcess
from nbqueue import keys

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
KERNEL = "nbqueue-plain"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
NOT_SHIPPED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                     "artifacts", ".pytest_cache", ".ipynb_checkpoints", "node_modules")
BUILD_TIMEOUT = 600

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 300)  # the first test also waits for the venv


@dataclass
class PlainVenv:
    root: Path
    python: Path
    bin: Path
    jupyter_path: Path  # holds kernels/nbqueue-plain/kernel.json: this venv's python
    build_seconds: float

    @property
    def site_packages(self) -> Path:
        out = subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, env=clean_env())
        return Path(out.stdout.strip())


def clean_env(**extra: str) -> dict:
    """The environment for the plain venv's processes: nothing that points into the test venv or
    the repository (so ``import nbqueue`` finds only the installed copy)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(extra)
    return env


def pip(python: Path) -> list:
    """The test venv's pip, acting on the environment of ``python``."""
    return [sys.executable, "-m", "pip", "--python", str(python)]


def _pip_noise(text: str) -> str:
    """pip's output without the mirror's 'Location … is ignored' lines."""
    return "\n".join(line for line in text.splitlines() if "is ignored: it is neither" not in line)[-3000:]


@pytest.fixture(scope="session")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> PlainVenv:
    """A venv with only ``pip install <copy of the repo>`` and ``ipykernel`` (built once a session).

    The repo is copied first: pip builds a local directory in place, which would leave ``build/``
    and ``*.egg-info`` in the working tree.
    """
    root = tmp_path_factory.mktemp("plain")
    src, venv = root / "src", root / "venv"
    started = time.monotonic()
    shutil.copytree(REPO, src, ignore=NOT_SHIPPED)
    python = venv / "bin" / "python"
    steps = [  # the venv gets no pip of its own (ensurepip costs seconds): the test venv's pip installs into it
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        [*pip(python), "install", "--no-input", "--quiet", str(src), "ipykernel"],
    ]
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=clean_env())
        except subprocess.TimeoutExpired:
            pytest.fail(f"a plain venv could not be built here: {' '.join(cmd)} took over {BUILD_TIMEOUT} s")
        if done.returncode != 0:
            pytest.fail(f"a plain venv could not be built here: {' '.join(cmd)} exited {done.returncode}\n"
                        f"{_pip_noise(done.stdout + done.stderr)}")
    spec = root / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (plain nbqueue install)", "language": "python"}))
    took = time.monotonic() - started
    print(f"\nplain venv built in {took:.1f} s")
    return PlainVenv(root, python, venv / "bin", root / "jupyter", took)


class PlainWorker(WorkerProcess):
    """``nbqueue worker`` run by the plain venv's console script."""

    def __init__(self, venv: PlainVenv, args: list, cwd: Path, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([str(venv.bin / "nbqueue"), "worker", *args], cwd=str(cwd), env=clean_env(),
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid


@pytest.fixture
def plain_worker(plain_venv: PlainVenv, private_redis, tmp_path: Path) -> Iterator:
    """Start workers from the plain venv on this test's private Redis: ``plain_worker(cwd, "default")``."""
    started: list = []

    def start(cwd: Path, *queues: str) -> PlainWorker:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = PlainWorker(plain_venv, [*queues, "--url", private_redis.url], cwd, log)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()


def copy_notebooks(tmp_path: Path) -> Path:
    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, work, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "quick.py",
                                                                    "notes.txt", "plain_extra.py"))
    return work


def run_in_plain_kernel(nb, venv: PlainVenv, cwd: Path, url: str, monkeypatch: pytest.MonkeyPatch,
                        timeout: int = 120) -> float:
    """Execute ``nb`` in a kernel of the plain venv (its kernelspec found through JUPYTER_PATH);
    the kernel gets the private Redis in NBQUEUE_URL, as a user's kernel gets it from its
    environment. Returns the seconds it took."""
    monkeypatch.setenv("JUPYTER_PATH", str(venv.jupyter_path))
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python (plain nbqueue install)", "language": "python"}
    started = time.monotonic()
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute(env=clean_env(NBQUEUE_URL=url))
    return time.monotonic() - started


# --- reading the executed notebook -----------------------------------------------------------------
def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def cell(nb, source_start: str):
    found = [c for c in code_cells(nb) if c.source.startswith(source_start)]
    assert len(found) == 1, f"one cell starts with {source_start!r}"
    return found[0]


def result_text(nb, source_start: str) -> str:
    results = [o for o in cell(nb, source_start).outputs if o.output_type == "execute_result"]
    assert results, f"no result in the cell {source_start!r}: {cell(nb, source_start).outputs}"
    return results[0].data["text/plain"]


def shown(c) -> list:
    """The rich outputs of a cell (display_data and execute_result)."""
    return [o for o in c.outputs if o.output_type in ("display_data", "execute_result")]


def reports(c) -> list:
    return [o for o in shown(c) if 'class="nbq-report' in o.data.get("text/html", "")]


def final_report(c) -> tuple:
    """(text/plain, the text of the text/html) of the one final-state report of a job cell, which
    replaced its live widget."""
    found = reports(c)
    assert found, (f"the cell {c.source!r} saved no final-state report (a non-widget output with "
                   f'<div class="nbq-report">); it saved: {[dict(o.data) for o in shown(c)]}')
    assert len(found) == 1, f"the cell {c.source!r} shows its job more than once: {[dict(o.data) for o in found]}"
    data = found[0].data
    assert WIDGET_VIEW not in data, f"the final report of {c.source!r} still carries the widget view: {dict(data)}"
    assert "text/plain" in data, f"the final report of {c.source!r} has no text/plain: {dict(data)}"
    page = data["text/html"]
    for live in ("nbq-status-queued", "nbq-status-started", "nbq-status-scheduled"):
        assert live not in page, f"the final report of {c.source!r} shows a live status ({live}): {page}"
    return data["text/plain"], html.unescape(re.sub(r"<[^>]+>", " ", page))


def cell_html(c) -> str:
    return "".join(o.data.get("text/html", "") for o in reports(c))


def check_clean(nb, allowed_errors: tuple = ()) -> None:
    """No error outputs (but in ``allowed_errors`` cells), no stderr at all, the 'which Redis' line
    once on stdout, and no job or group widget left without its final report."""
    for c in code_cells(nb):
        errors = [o for o in c.outputs if o.output_type == "error"]
        if not any(c.source.startswith(s) for s in allowed_errors):
            assert not errors, f"the cell {c.source!r} raised: {[(e.ename, e.evalue) for e in errors]}"
        stderr = [o.text for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
        assert not stderr, f"the cell {c.source!r} wrote to stderr (a pink box in Jupyter): {stderr}"
        for o in shown(c):
            if WIDGET_VIEW in o.data and "nbq-dashboard" not in o.data.get("text/html", ""):
                raise AssertionError(f"the cell {c.source!r} kept a live widget without its final report "
                                     f"(reopened without a kernel it says 'model not found'): {dict(o.data)}")
    said = [o.text for c in code_cells(nb) for o in c.outputs
            if o.output_type == "stream" and "nbqueue: using" in o.text]
    assert len(said) == 1, f"the 'which Redis' line once per kernel, on stdout: {said}"


# --- the tests -----------------------------------------------------------------------------------
def test_plain_install_ships_the_whole_package(plain_venv: PlainVenv):
    """Every file of the package (modules, the notebook subpackage, the Lua scripts) is installed,
    from site-packages, and the notebook face imports with no extra."""
    installed = plain_venv.site_packages / "nbqueue"
    source = REPO / "nbqueue"
    wanted = sorted(str(p.relative_to(source)) for p in source.rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    missing = [p for p in wanted if not (installed / p).is_file()]
    assert not missing, f"pip install . does not ship: {missing}"
    assert any(p.startswith("scripts/") and p.endswith(".lua") for p in wanted) and "notebook/widgets.py" in wanted
    probe = ("import nbqueue, nbqueue.notebook.magics, nbqueue.notebook.widgets, nbqueue.notebook.dashboard, "
             "ipywidgets, IPython; print(nbqueue.__file__)")
    out = subprocess.run([str(plain_venv.python), "-c", probe], capture_output=True, text=True,
                         cwd=str(plain_venv.root), env=clean_env())
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == (installed / "__init__.py").resolve()
    others = subprocess.run([str(plain_venv.python), "-c", "import nbclient"], capture_output=True, env=clean_env())
    assert others.returncode != 0, "the plain venv sees the test venv's packages: it is not plain"
    check = subprocess.run([*pip(plain_venv.python), "check"], capture_output=True, text=True, env=clean_env())
    assert check.returncode == 0, f"pip check in the plain venv: {check.stdout}{check.stderr}"


def test_plain_install_runs_a_job(plain_venv: PlainVenv, plain_worker, private_redis, tmp_path: Path):
    """A script in the plain venv enqueues a job that a worker of the plain venv runs (the Lua
    scripts, the signing, the console script: all from the installed copy)."""
    work = copy_notebooks(tmp_path)
    plain_worker(work, "plain")
    script = ("import nbqueue, tasks; job = nbqueue.Queue('plain').enqueue(tasks.add, 20, 22); "
              "print(job.result(timeout=60), job.refresh().status, nbqueue.__file__)")
    out = subprocess.run([str(plain_venv.python), "-c", script], capture_output=True, text=True, cwd=str(work),
                         timeout=120, env=clean_env(NBQUEUE_URL=private_redis.url))
    assert out.returncode == 0, out.stderr
    value, status, where = out.stdout.split()
    assert (value, status) == ("42", "finished")
    assert Path(where).resolve().is_relative_to(plain_venv.site_packages.resolve())


PLAIN_CELLS = [
    "%load_ext nbqueue\nimport sys, nbqueue, tasks\nprint(sys.prefix)\nprint(nbqueue.__file__)",
    'job = %enqueue tasks.add("plain ", "install")',
    "squares = %map tasks.square range(12)",
    "bad = %enqueue tasks.divide(1, 0)",
    "job.result(timeout=60)",
    "sum(squares.results(timeout=60))",
    "try:\n    bad.result(timeout=60)\n"
    "except nbqueue.JobFailed as exc:\n    print('failed as expected:', type(exc).__name__)",
    # hostile: a job that floods its output, a 20 MB result, an empty group: the saved notebook stays small
    "%%nbqueue.module plain_extra\ndef flood(n):\n    for i in range(n):\n        print('line', i, 'x' * 100)\n"
    "    return n\n\ndef huge():\n    return b'x' * 20_000_000",
    "flood = %enqueue plain_extra.flood(50_000)",
    "big = %enqueue plain_extra.huge()",
    "nothing = %map tasks.square []",
    "flood.result(timeout=120), len(big.result(timeout=120)), nothing.results(timeout=10)",
]


def test_plain_install_notebook_saves_final_states(plain_venv: PlainVenv, plain_worker, private_redis,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    work = copy_notebooks(tmp_path)
    plain_worker(work, "default")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in PLAIN_CELLS])
    try:
        took = run_in_plain_kernel(nb, plain_venv, work, private_redis.url, monkeypatch)
    finally:
        nbformat.write(nb, str(tmp_path / "executed.ipynb"))  # kept for a look when this test fails
    print(f"\nthe plain notebook ran in {took:.1f} s")

    printed = [line for o in cell(nb, "%load_ext").outputs if o.output_type == "stream"
               for line in o.text.splitlines() if line.strip() and "nbqueue: using" not in line]
    prefix, where = printed[-2:]
    assert Path(prefix).resolve() == (plain_venv.root / "venv").resolve(), "the kernel runs the plain venv's python"
    assert Path(where).resolve().is_relative_to(plain_venv.site_packages.resolve()), where
    check_clean(nb)
    assert result_text(nb, "job.result") == "'plain install'"
    assert result_text(nb, "sum(squares") == str(sum(i * i for i in range(12)))

    plain, page = final_report(cell(nb, "job = %enqueue"))
    for text in (plain, page):
        assert "finished" in text and "'plain install'" in text, (plain, page)
    plain, page = final_report(cell(nb, "squares = %map"))
    for text in (plain, page):
        assert "finished" in text and "12" in text, (plain, page)
    plain, page = final_report(cell(nb, "bad = %enqueue"))
    for text in (plain, page):
        assert "failed" in text and "ZeroDivisionError" in text, (plain, page)

    assert result_text(nb, "flood.result") == "(50000, 20000000, [])"
    plain, page = final_report(cell(nb, "flood = %enqueue"))
    assert "finished" in plain and "50000" in plain and "line 49999" in page, (plain, page)
    plain, page = final_report(cell(nb, "big = %enqueue"))
    assert "finished" in plain, plain
    final_report(cell(nb, "nothing = %map"))
    saved = len(nbformat.writes(nb))
    assert saved < 300_000, f"the saved notebook holds {saved} characters after a flood and a 20 MB result"


def test_plain_install_runs_the_quickstart(plain_venv: PlainVenv, plain_worker, private_redis, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch):
    """The quickstart as a newcomer gets it with a plain install: every job cell ends with its
    final state in the saved notebook; errors only where a cell is meant to raise."""
    work = copy_notebooks(tmp_path)
    plain_worker(work, "default")
    nb = nbformat.read(str(work / "quickstart.ipynb"), as_version=4)
    try:
        took = run_in_plain_kernel(nb, plain_venv, work, private_redis.url, monkeypatch)
    finally:
        nbformat.write(nb, str(tmp_path / "executed.ipynb"))
    print(f"\nquickstart.ipynb ran in the plain venv in {took:.1f} s")
    meant = tuple(c.source for c in code_cells(nb) if "raises-exception" in c.metadata.get("tags", ()))
    check_clean(nb, allowed_errors=meant)
    job_cells = [c for c in code_cells(nb) if re.search(r"^\s*\w+\s*=\s*%(enqueue|map)\b", c.source, re.M)]
    assert len(job_cells) >= 4, [c.source for c in job_cells]
    client = private_redis.client()
    for c in job_cells:
        plain, page = final_report(c)
        assert re.search(r"\b(finished|failed|canceled)\b", plain), (c.source, plain)
        job_id = re.match(r"Job ([0-9a-f]+) ", plain)
        if job_id:  # the report tells the job's last state, e.g. after a requeue
            status = (client.hget(keys.job(job_id.group(1)), "status") or b"?").decode()
            assert re.search(rf": {status}\b", plain) and f"nbq-status-{status}" in cell_html(c), (
                f"the saved report of {c.source!r} is not the job's final state ({status}): {plain}")
    client.close()


def test_binder_installs_what_the_quickstart_needs(plain_venv: PlainVenv):
    """binder/requirements.txt installs the repo (which brings IPython and ipywidgets) and an
    ipykernel whose clicks work while a cell runs; it resolves (pip --dry-run); binder/start runs a
    worker for the quickstart's queue in notebooks/."""
    lines = [line.split("#")[0].strip() for line in (REPO / "binder" / "requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line]
    assert "-e ." in lines or "." in lines, lines
    assert any(re.fullmatch(r"ipykernel\s*>=\s*7(\.\d+)*", line) for line in lines), lines
    src = plain_venv.root / "src"
    dry = subprocess.run([*pip(plain_venv.python), "install", "--dry-run", "--quiet", "--no-input",
                          "-r", "binder/requirements.txt"], capture_output=True, text=True, cwd=str(src),
                         timeout=300, env=clean_env())
    assert dry.returncode == 0, _pip_noise(dry.stdout + dry.stderr)
    start = (REPO / "binder" / "start").read_text()
    assert re.search(r"cd notebooks && nohup nbqueue worker\s*>", start), start  # the default queue
    assert 'exec "$@"' in start
