"""Browser test harness: a real JupyterLab 4 or Notebook 7 driven by Playwright in headless Chromium.

Not a test module (``.ci/install-browser`` installs what it needs)::

    write_notebook(tmp_path / "hello.ipynb", ["x = 40 + 2", "print(x)"])
    with JupyterLab(tmp_path) as lab, lab.open("hello.ipynb") as nb:   # or Notebook7(tmp_path)
        nb.run_all()
        nb.wait_for_prompt(1, "[2]:")
        assert "42" in nb.output_text(1)

Both frontends are JupyterLab applications (``window.jupyterapp``, the same ``.jp-Cell`` DOM,
the same commands), so one :class:`Notebook` drives either; :data:`FRONTENDS` names them for a
parametrized fixture. Waits poll a state against a deadline, never sleep a fixed time. On a
failure the page (PNG and HTML) and the server log are saved into ``artifacts/``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

# Settings of both frontends: no news/update fetches (offline); all cells in the DOM (readable).
_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}
# JavaScript snippets: the current notebook panel (a restored workspace may hold others, hidden),
# the CSS selector of its cells (once :meth:`Notebook.mark` tagged it), cell ``i``'s node.
_PANEL = "window.jupyterapp?.shell?.currentWidget"
_CELLS = "[data-nbq-current] .jp-Notebook .jp-Cell"
_CELL = f"{_PANEL}?.content?.widgets[i]?.node"
_PROMPT = ".jp-InputArea-prompt"  # '[ ]:', '[*]:', '[3]:' in both frontends
EXECUTED = re.compile(r"^\[\d+\]:$")


def require_browser() -> None:
    """Skip the calling test unless ``/usr/bin/chromium``, Playwright, JupyterLab and Notebook 7 exist."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: run `bash .ci/install-browser` as root")
    try:
        import jupyterlab  # noqa: F401
        import notebook  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"{exc.name} is not installed: run `pip install -e '.[test]'` in the venv")


def write_notebook(path: Union[str, Path], cells: Sequence[str]) -> Path:
    """Write code ``cells`` as a notebook with a python3 kernelspec (no kernel picker)."""
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return Path(path)


_open_browsers: list[Any] = []  # the Chromium a chromium() block runs now (Playwright's sync API nests not)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Yield a headless Playwright ``Browser`` on Debian's Chromium; closed on exit. Inside another
    ``chromium()`` block (e.g. the session's ``frontend`` fixture) it yields that block's browser."""
    if _open_browsers:
        yield _open_browsers[-1]
        return
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        _open_browsers.append(browser)
        try:
            yield browser
        finally:
            _open_browsers.pop()
            browser.close()


class JupyterServer:
    """A Jupyter server without auth on a free local port, serving ``root_dir``; a context
    manager. Temporary HOME and Jupyter dirs keep the user's settings out. Subclasses name the
    application (``module``, ``app``) and where a notebook opens (``tree``)."""

    name = "server"
    module = app = tree = ""

    def __init__(self, root_dir: Union[str, Path], timeout: float = 60, browser: Any = None) -> None:
        self.root_dir, self.timeout, self.browser = Path(root_dir), timeout, browser
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self._tmp = ""

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, "--no-browser", "--ip=127.0.0.1",
                f"--port={self.port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
                "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
                f"--{self.app}.expose_app_in_browser=True", "--allow-root",
                f"--ServerApp.root_dir={self.root_dir}", "--LabApp.extension_manager=readonly"]

    def start(self) -> JupyterServer:
        """Start the server and wait until its REST API answers."""
        tmp = self._tmp = tempfile.mkdtemp(prefix=f"nbq-{self.name}-")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERLAB_", "JUPYTER_"))}
        env.update(HOME=tmp, IPYTHONDIR=f"{tmp}/ipython", JUPYTER_CONFIG_DIR=f"{tmp}/config",
                   JUPYTER_DATA_DIR=f"{tmp}/data", JUPYTER_RUNTIME_DIR=f"{tmp}/runtime",
                   JUPYTER_PLATFORM_DIRS="0")
        for name, settings in _SETTINGS.items():
            target = Path(tmp, "config", "lab", "user-settings", name + ".jupyterlab-settings")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(settings))
        cmd = self.command()
        with open(f"{tmp}/server.log", "wb") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"{self.name} did not start: {cmd}\n{tail}")
            time.sleep(0.1)  # poll interval, bounded by the deadline above
        return self

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"{self.url}/api/status", timeout=2) as resp:
            return resp.status == 200
        return False

    def api(self, path: str) -> Any:
        """GET ``/api/<path>`` of the server's REST API, decoded from JSON."""
        with urllib.request.urlopen(f"{self.url}/api/{path}", timeout=10) as resp:
            return json.loads(resp.read())

    def kernel_ids(self) -> list[str]:
        """Ids of the kernels the server runs now."""
        return [k["id"] for k in self.api("kernels")]

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log (its stdout and stderr)."""
        path = Path(self._tmp, "server.log")
        return path.read_text(errors="replace")[-chars:] if self._tmp and path.exists() else ""

    def save_log(self, name: Optional[str] = None) -> Path:
        """Copy the server log to ``artifacts/<name>.log`` (default: the frontend's name)."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name or self.name}.log"
        path.write_text(self.log_tail(10**7))
        return path

    def stop(self, keep_log: bool = False) -> None:
        """Stop the server and its kernels (REST shutdown, then signals);
        ``keep_log=True`` copies the server log into ``artifacts/``."""
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
            self.save_log()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = ""

    __enter__ = start

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.stop(keep_log=exc_type is not None)

    def shutdown_sessions(self, path: str) -> None:
        """Shut down (REST) the sessions, and so the kernels, of the notebook ``path``."""
        for session in self.api("sessions"):
            if session.get("path") == path:
                req = urllib.request.Request(f"{self.url}/api/sessions/{session['id']}", method="DELETE")
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(req, timeout=30).close()

    @contextlib.contextmanager
    def open(self, notebook: str, timeout: float = 60, artifact: Optional[str] = None,
             shutdown: bool = True) -> Iterator[Notebook]:
        """Open ``notebook`` (relative to root_dir) in a fresh page (its own browser context, in
        ``self.browser`` or a new Chromium), wait for an idle kernel, and yield a :class:`Notebook`;
        on exit (``shutdown``) its kernel is shut down. A failure saves
        ``artifacts/failed-<artifact>.png``/``.html`` and the server log."""
        with contextlib.ExitStack() as stack:
            if shutdown:
                stack.callback(lambda: self.proc and self.shutdown_sessions(notebook))
            browser = self.browser or stack.enter_context(chromium())
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            stack.callback(context.close)
            nb = Notebook(context.new_page(), self, notebook)
            nb.page.on("websocket", nb._listen)
            nb.page.set_default_timeout(timeout * 1000)
            try:
                nb.page.goto(f"{self.url}{self.tree}{notebook}?reset")  # ?reset: no restored workspace
                nb.wait_idle(timeout)
                nb.mark()
                yield nb
            except BaseException:
                name = "failed-" + (artifact or f"{self.name}-{Path(notebook).stem}")
                with contextlib.suppress(Exception):
                    nb.screenshot(name)
                with contextlib.suppress(Exception):
                    (ARTIFACTS / f"{name}.html").write_text(nb.page.content())
                with contextlib.suppress(Exception):
                    self.save_log(name + "-server")
                raise


class JupyterLab(JupyterServer):
    """JupyterLab 4 (``/lab/tree/<path>``)."""

    name, module, app, tree = "lab", "jupyterlab", "LabApp", "/lab/tree/"


class Notebook7(JupyterServer):
    """Notebook 7 (``/notebooks/<path>``): one notebook a page, the same cells as JupyterLab."""

    name, module, app, tree = "notebook7", "notebook", "JupyterNotebookApp", "/notebooks/"


FRONTENDS: dict[str, type[JupyterServer]] = {"lab": JupyterLab, "notebook7": Notebook7}


@contextlib.contextmanager
def serve(kind: str, root: Union[str, Path], files: Sequence[Union[str, Path]] = ()) -> Iterator[JupyterServer]:
    """The frontend ``kind`` (a key of :data:`FRONTENDS`) serving ``root`` (holding copies of
    ``files``), with a Chromium of its own; both stopped on exit. Skips the test without a browser."""
    require_browser()
    for file in files:
        shutil.copy(file, Path(root) / Path(file).name)
    with chromium() as browser, FRONTENDS[kind](root, browser=browser) as server:
        yield server


def measured(line: str) -> None:
    """Print a measurement and keep it in ``artifacts/browser-measurements.txt``."""
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "browser-measurements.txt", "a") as out:
        out.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")
    print(line)


class Notebook:
    """A notebook open in the Playwright ``page`` of a JupyterLab or Notebook 7; cells are 0-based."""

    def __init__(self, page: Any, server: Optional[JupyterServer] = None, path: str = "") -> None:
        self.page, self.server, self.path = page, server, path
        self.display_updates: list[tuple] = []  # (time.time(), frame text) of update_display_data received

    def _listen(self, ws: Any) -> None:
        """Keep the ``update_display_data`` messages the page receives from kernels (what reached
        the browser, whether or not the frontend applied it)."""
        def received(payload: Union[str, bytes]) -> None:
            text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
            if "update_display_data" in text:
                self.display_updates.append((time.time(), text))
        ws.on("framereceived", received)

    def wait(self, js: str, arg: Any = None, timeout: float = 30, what: str = "") -> Any:
        """Wait until the JavaScript function ``js`` returns something truthy for ``arg``; return it.
        A timeout is an ``AssertionError`` naming ``what`` and showing every cell's prompt and output."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        try:
            return self.page.wait_for_function(js, arg=arg, timeout=timeout * 1000).json_value()
        except PlaywrightTimeout:
            raise AssertionError(f"{self.server.name if self.server else 'page'}: timed out after {timeout} s "
                                 f"waiting for {what or js}\n{self.describe()}") from None

    def describe(self) -> str:
        """Every cell's prompt and output text, for failure messages."""
        with contextlib.suppress(Exception):
            return "\n".join(f"  cell {i} {self.prompt(i)} {self.output_text(i)[:600]!r}"
                             for i in range(self.cell_count()))
        return "  (the page could not be read)"

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait for kernel status ``idle``: for startup only; it can read idle mid-run
        (a comm message from the page flips it), so watch cell prompts instead."""
        self.wait(f"() => {_PANEL}?.sessionContext?.session?.kernel?.status === 'idle'", timeout=timeout,
                  what="an idle kernel")

    def mark(self) -> None:
        """Tag the current notebook panel's node (``data-nbq-current``) so CSS selectors see its cells only."""
        self.page.evaluate(f"""() => {{
            document.querySelectorAll('[data-nbq-current]').forEach(n => n.removeAttribute('data-nbq-current'));
            {_PANEL}.node.setAttribute('data-nbq-current', '1');
        }}""")

    def kernel_id(self) -> Optional[str]:
        return self.page.evaluate(f"() => {_PANEL}?.sessionContext?.session?.kernel?.id ?? null")

    def run_all(self) -> None:
        """Start "Run All Cells"; return at once, while the cells run."""
        self.page.evaluate("() => void jupyterapp.commands.execute('notebook:run-all-cells')")

    def run_cell(self, i: int) -> None:
        """Select cell ``i`` and start running it; return at once."""
        self.page.evaluate(f"(i) => {{ {_PANEL}.content.activeCellIndex = i;"
                           " window.jupyterapp.commands.execute('notebook:run-cell'); }", i)

    def cell_count(self) -> int:
        return self.page.evaluate(f"() => {_PANEL}.content.widgets.length")

    def prompt(self, i: int) -> str:
        """Execution prompt of cell ``i``: ``'[ ]:'``, ``'[*]:'`` while running, ``'[3]:'``."""
        return self.page.evaluate(f"(i) => {_CELL}.querySelector('{_PROMPT}').textContent.trim()", i)

    def prompts(self) -> list[str]:
        return [self.prompt(i) for i in range(self.cell_count())]

    def wait_for_prompt(self, i: int, text: str, timeout: float = 60) -> None:
        """Wait until cell ``i``'s execution prompt reads ``text`` (e.g. ``'[*]:'``)."""
        self.wait(f"([i, t]) => {_CELL}?.querySelector('{_PROMPT}')?.textContent.trim() === t",
                  [i, text], timeout, f"cell {i}'s prompt {text}")

    def wait_executed(self, i: int, timeout: float = 60) -> None:
        """Wait until cell ``i`` ran to its end (its prompt reads ``[<n>]:``)."""
        self.wait(f"(i) => /^\\[\\d+\\]:$/.test({_CELL}?.querySelector('{_PROMPT}')?.textContent.trim())",
                  i, timeout, f"cell {i} to run to its end")

    def output(self, i: int) -> Any:
        """Playwright ``Locator`` of cell ``i``'s output area."""
        return self.page.locator(_CELLS).nth(i).locator(".jp-Cell-outputArea")

    def output_text(self, i: int) -> str:
        """Visible text of cell ``i``'s output area."""
        return self.output(i).inner_text()

    def outputs(self, i: int) -> list[dict]:
        """Cell ``i``'s outputs as the notebook model holds them (nbformat JSON: what a save writes)."""
        return self.page.evaluate(f"(i) => {_PANEL}.content.widgets[i].model.outputs.toJSON()", i)

    def count(self, i: int, selector: str, shown: bool = False) -> int:
        """How many elements match ``selector`` in cell ``i``'s output area (``shown``: visible ones only)."""
        found = self.output(i).locator(selector)
        return found.locator("visible=true").count() if shown else found.count()

    def text(self, i: int, selector: str = "") -> str:
        """Text of the first shown ``selector`` element in cell ``i``'s output now ('' if none): no wait."""
        return self.page.evaluate(f"""([i, sel]) => [...{_CELL}?.querySelectorAll('.jp-Cell-outputArea ' + sel) ?? []]
            .find(el => el.getClientRects().length)?.innerText ?? ''""", [i, selector])

    def wait_text(self, i: int, selector: str, text: Union[str, Sequence[str]], timeout: float = 30) -> str:
        """Wait until a shown element ``selector`` in cell ``i``'s output shows ``text`` (every one
        of several texts); return that element's text."""
        texts = [text] if isinstance(text, str) else list(text)
        return self.wait(f"""([i, sel, texts]) => {{
            for (const el of {_CELL}?.querySelectorAll('.jp-Cell-outputArea ' + sel) ?? []) {{
                if (!el.getClientRects().length) continue;  // not shown (display: none, or inside such)
                const t = el.innerText;
                if (texts.every(x => t.includes(x))) return t || ' ';
            }}
            return null;
        }}""", [i, selector, texts], timeout, f"cell {i}'s {selector or 'output'} to show {texts}")

    def click(self, i: int, button: str, widget: str = ".nbq-job", timeout: float = 10) -> float:
        """Click the button labelled ``button`` inside the ``widget`` element of cell ``i``'s output;
        return ``time.time()`` just before the click (a button not visible fails)."""
        target = self.output(i).locator(f"{widget} button:has-text('{button}')").first
        target.wait_for(state="visible", timeout=timeout * 1000)
        target.scroll_into_view_if_needed()
        clicked = time.time()
        target.click(timeout=timeout * 1000)
        return clicked

    def save(self, timeout: float = 30) -> None:
        """Save the notebook (the ``docmanager:save`` command, Ctrl+S) and wait until the server has
        written it (its ``last_modified`` moved; the dirty flag is no proof: a live output sets it again)."""
        before = self.last_modified()
        self.page.evaluate("async () => { await jupyterapp.commands.execute('docmanager:save'); }")
        deadline = time.monotonic() + timeout
        while self.last_modified() == before:
            assert time.monotonic() < deadline, f"{self.path} not saved within {timeout} s"
            time.sleep(0.05)  # poll interval, bounded by the deadline above

    def last_modified(self) -> Optional[str]:
        """When the server last wrote the notebook (its contents API), or None."""
        assert self.server is not None
        return self.server.api(f"contents/{self.path}?content=0").get("last_modified")

    def saved(self) -> Any:
        """The notebook as saved on disk (``nbformat``)."""
        import nbformat
        assert self.server is not None
        return nbformat.read(str(self.server.root_dir / self.path), as_version=4)

    def shutdown_kernel(self, timeout: float = 30) -> None:
        """Shut the kernel down (the session's shutdown, as the Kernel menu does) and wait until
        the server runs it no more."""
        kernel = self.kernel_id()
        self.page.evaluate(f"() => {_PANEL}.sessionContext.shutdown()")
        if self.server is not None and kernel:
            deadline = time.monotonic() + timeout
            while kernel in self.server.kernel_ids():
                assert time.monotonic() < deadline, f"kernel {kernel} still runs {timeout} s after its shutdown"
                time.sleep(0.1)  # poll interval, bounded by the deadline above

    def restart_kernel(self, timeout: float = 60) -> None:
        """Restart the kernel (no dialog) and wait until the new one is idle."""
        self.page.evaluate(f"() => {_PANEL}.sessionContext.session.kernel.restart()")
        self.wait_idle(timeout)

    def page_text(self) -> str:
        """All visible text of the page."""
        return self.page.inner_text("body")

    def record(self, selector: str, interval_ms: int = 20) -> None:
        """Record, inside the page, each change of the text of ``selector``: a sample
        holds the time (ms), the text and every cell's prompt at that moment."""
        self.page.evaluate("""([sel, cells, prompt, ms]) => {
            const s = window.__nbqSamples = [];
            window.__nbqTimer = setInterval(() => {
                const el = document.querySelector(sel);
                if (!el || (s.length && s[s.length - 1].text === el.innerText)) return;
                const prompts = [...document.querySelectorAll(cells)].map(
                    c => c.querySelector(prompt)?.textContent.trim());
                s.push({t: performance.now(), wall: Date.now() / 1000, text: el.innerText, prompts});
            }, ms);
        }""", [selector, _CELLS, _PROMPT, interval_ms])

    def wait_for_samples(self, count: int, cell: int, prompt: str, timeout: float = 30) -> None:
        """Wait until :meth:`record` holds ``count`` samples taken while cell ``cell``'s
        prompt read ``prompt`` (e.g. 3 texts seen while cell 1 shows ``'[*]:'``)."""
        self.wait("([n, i, p]) => (window.__nbqSamples || []).filter(s => s.prompts[i] === p).length >= n",
                  [count, cell, prompt], timeout, f"{count} samples while cell {cell} read {prompt}")

    def samples(self, stop: bool = False) -> list[dict]:
        """The samples :meth:`record` took so far; ``stop=True`` ends the recording."""
        return self.page.evaluate(
            "(stop) => { if (stop) clearInterval(window.__nbqTimer);"
            " return window.__nbqSamples || []; }",
            stop)

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        """Save a PNG of the page as ``artifacts/<name>.png``; return its path."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path
