"""Browser test harness: a real JupyterLab driven by Playwright in headless Chromium.

Not a test module (``.ci/install-browser`` installs what it needs)::

    write_notebook(tmp_path / "hello.ipynb", ["x = 40 + 2", "print(x)"])
    with JupyterLab(tmp_path) as lab, lab.open("hello.ipynb") as nb:
        nb.run_all()
        nb.wait_for_prompt(1, "[2]:")
        assert "42" in nb.output_text(1)

Waits poll a state against a deadline, never sleep a fixed time. On a failure
the page and the server log are saved into ``artifacts/``.
"""
from __future__ import annotations

import contextlib, json, os, shutil, signal, socket, subprocess, sys, tempfile, time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Union

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

# Lab settings: no news/update fetches (offline); all cells in the DOM (readable).
_LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}
# JavaScript snippets: the current notebook panel, all cells' nodes, cell ``i``'s node.
_PANEL = "window.jupyterapp.shell.currentWidget"
_CELLS = ".jp-NotebookPanel .jp-Notebook .jp-Cell"
_CELL = f"document.querySelectorAll('{_CELLS}')[i]"


def require_browser() -> None:
    """Skip the calling test unless ``/usr/bin/chromium``, Playwright and JupyterLab exist."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: run `bash .ci/install-browser` as root")
    try:
        import jupyterlab, playwright.sync_api  # noqa: F401,E401
    except ImportError as exc:
        pytest.skip(f"{exc.name} is not installed: run `bash .ci/install-browser` in the venv")


def write_notebook(path: Union[str, Path], cells: Sequence[str]) -> Path:
    """Write code ``cells`` as a notebook with a python3 kernelspec (no kernel picker)."""
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells])
    nb.metadata["kernelspec"] = dict(name="python3", display_name="Python 3", language="python")
    nbformat.write(nb, str(path))
    return Path(path)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Yield a headless Playwright ``Browser`` on Debian's Chromium; closed on exit."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class JupyterLab:
    """A JupyterLab server without auth on a free local port, serving ``root_dir``; a
    context manager. Temporary HOME and Jupyter dirs keep the user's settings out."""

    def __init__(self, root_dir: Union[str, Path], timeout: float = 60) -> None:
        self.root_dir, self.timeout = Path(root_dir), timeout
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self._tmp = ""

    def start(self) -> "JupyterLab":
        """Start the server and wait until its REST API answers."""
        tmp = self._tmp = tempfile.mkdtemp(prefix="nbq-lab-")
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERLAB_")}
        env.update(HOME=tmp, IPYTHONDIR=f"{tmp}/ipython", JUPYTER_CONFIG_DIR=f"{tmp}/config",
                   JUPYTER_DATA_DIR=f"{tmp}/data", JUPYTER_RUNTIME_DIR=f"{tmp}/runtime",
                   JUPYTER_PLATFORM_DIRS="0")
        for name, settings in _LAB_SETTINGS.items():
            target = Path(tmp, "config", "lab", "user-settings", name + ".jupyterlab-settings")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(settings))
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
               f"--port={self.port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
               "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
               "--LabApp.expose_app_in_browser=True", "--allow-root",
               f"--ServerApp.root_dir={self.root_dir}", "--LabApp.extension_manager=readonly"]
        with open(f"{tmp}/server.log", "wb") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"JupyterLab did not start: {cmd}\n{tail}")
            time.sleep(0.1)  # poll interval, bounded by the deadline above
        return self

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"{self.url}/api/status", timeout=2) as resp:
            return resp.status == 200
        return False

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log (its stdout and stderr)."""
        path = Path(self._tmp, "server.log")
        return path.read_text(errors="replace")[-chars:] if self._tmp and path.exists() else ""

    def stop(self, keep_log: bool = False) -> None:
        """Stop the server and its kernels (REST shutdown, then signals);
        ``keep_log=True`` copies the server log to ``artifacts/jupyterlab.log``."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:  # psutil is optional: the REST shutdown stops the kernels anyway
                import psutil
                kids = psutil.Process(proc.pid).children(recursive=True)
            except Exception:
                kids = []
            with contextlib.suppress(OSError):
                req = urllib.request.Request(f"{self.url}/api/shutdown", method="POST")
                urllib.request.urlopen(req, timeout=5).close()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    proc.wait(timeout=15)
                    break
                except subprocess.TimeoutExpired:
                    proc.send_signal(sig)
            proc.wait(timeout=15)
            for kid in kids:  # kernels run in sessions of their own: kill any leftover
                with contextlib.suppress(Exception):
                    kid.kill()
        if keep_log and self._tmp:
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "jupyterlab.log").write_text(self.log_tail(10**6))
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = ""

    __enter__ = start

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.stop(keep_log=exc_type is not None)

    @contextlib.contextmanager
    def open(self, notebook: str, timeout: float = 60) -> Iterator["Notebook"]:
        """Open ``notebook`` (relative to root_dir) in a fresh Chromium, wait for an idle
        kernel, and yield a :class:`Notebook`. A failure saves ``artifacts/failed-<name>.png``."""
        with chromium() as browser:
            nb = Notebook(browser.new_page(viewport={"width": 1280, "height": 800}))
            nb.page.set_default_timeout(timeout * 1000)
            try:
                nb.page.goto(f"{self.url}/lab/tree/{notebook}")
                nb.wait_idle(timeout)
                yield nb
            except Exception:
                with contextlib.suppress(Exception):
                    nb.screenshot("failed-" + Path(notebook).stem)
                raise


class Notebook:
    """A JupyterLab notebook open in the Playwright ``page``; cells are 0-based."""

    def __init__(self, page: Any) -> None:
        self.page = page

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait for kernel status ``idle``: for startup only; it can read idle mid-run
        (a comm message from the page flips it), so watch cell prompts instead."""
        self.page.wait_for_function(
            f"() => {_PANEL}?.sessionContext?.session?.kernel?.status === 'idle'",
            timeout=timeout * 1000)

    def run_all(self) -> None:
        """Start "Run All Cells"; return at once, while the cells run."""
        self.page.evaluate("() => void jupyterapp.commands.execute('notebook:run-all-cells')")

    def run_cell(self, i: int) -> None:
        """Select cell ``i`` and start running it; return at once."""
        self.page.evaluate(f"(i) => {{ {_PANEL}.content.activeCellIndex = i;"
                           " window.jupyterapp.commands.execute('notebook:run-cell'); }", i)

    def prompt(self, i: int) -> str:
        """Execution prompt of cell ``i``: ``'[ ]:'``, ``'[*]:'`` while running, ``'[3]:'``."""
        return self.page.evaluate(
            f"(i) => {_CELL}.querySelector('.jp-InputPrompt').textContent.trim()", i)

    def wait_for_prompt(self, i: int, text: str, timeout: float = 60) -> None:
        """Wait until cell ``i``'s execution prompt reads ``text`` (e.g. ``'[*]:'``)."""
        self.page.wait_for_function(
            f"([i, t]) => {_CELL}?.querySelector('.jp-InputPrompt')?.textContent.trim() === t",
            arg=[i, text], timeout=timeout * 1000)

    def output(self, i: int) -> Any:
        """Playwright ``Locator`` of cell ``i``'s output area."""
        return self.page.locator(_CELLS).nth(i).locator(".jp-Cell-outputArea")

    def output_text(self, i: int) -> str:
        """Visible text of cell ``i``'s output area."""
        return self.output(i).inner_text()

    def record(self, selector: str, interval_ms: int = 20) -> None:
        """Record, inside the page, each change of the text of ``selector``: a sample
        holds the time (ms), the text and every cell's prompt at that moment."""
        self.page.evaluate("""([sel, cells, ms]) => {
            const s = window.__nbqSamples = [];
            window.__nbqTimer = setInterval(() => {
                const el = document.querySelector(sel);
                if (!el || (s.length && s[s.length - 1].text === el.innerText)) return;
                const prompts = [...document.querySelectorAll(cells)].map(
                    c => c.querySelector('.jp-InputPrompt')?.textContent.trim());
                s.push({t: performance.now(), text: el.innerText, prompts});
            }, ms);
        }""", [selector, _CELLS, interval_ms])

    def wait_for_samples(self, count: int, cell: int, prompt: str, timeout: float = 30) -> None:
        """Wait until :meth:`record` holds ``count`` samples taken while cell ``cell``'s
        prompt read ``prompt`` (e.g. 3 texts seen while cell 1 shows ``'[*]:'``)."""
        self.page.wait_for_function(
            "([n, i, p]) => (window.__nbqSamples || [])"
            ".filter(s => s.prompts[i] === p).length >= n",
            arg=[count, cell, prompt], timeout=timeout * 1000)

    def samples(self, stop: bool = False) -> List[dict]:
        """The samples :meth:`record` took so far; ``stop=True`` ends the recording."""
        return self.page.evaluate(
            "(stop) => { if (stop) clearInterval(window.__nbqTimer);"
            " return window.__nbqSamples || []; }",
            stop)

    def screenshot(self, name: str) -> Path:
        """Save a PNG of the page as ``artifacts/<name>.png``; return its path."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path
