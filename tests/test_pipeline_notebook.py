"""``notebooks/pipeline.ipynb`` runs top to bottom (nbclient) against real workers: a chain, a
fan-out and a fan-in, an async job, as_completed, a schedule, testing mode."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nbqueue import keys

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def value_of(nb, start: str) -> str:
    [cell] = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(start)]
    values = [o.data["text/plain"] for o in cell.outputs if o.output_type == "execute_result"]
    assert values, f"no value in the cell {start!r}: {cell.outputs}"
    return values[0]


def test_pipeline_notebook_runs_against_real_workers(start_worker, redis_client, tmp_path):
    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, work, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints",
                                                                  "pipeline_steps.py", "quick.py"))
    for _ in range(2):  # any workers run the steps
        start_worker("default", cwd=work)
    nb = nbformat.read(str(work / "pipeline.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert value_of(nb, "final = await summary") == "'y = 3.0x + 1.97; 10 scores, max 29.0'"
    assert value_of(nb, "[round(v, 1)") == "[2.0, 5.0, 8.0, 11.0, 14.0, 17.0, 20.0, 23.0, 26.0, 29.0]"
    assert value_of(nb, "fetches =") == "['fetched a', 'fetched b', 'fetched c']"
    assert value_of(nb, "nbqueue.Queue(\"default\").schedule") == "[('hourly-refresh', 'every 1h')]"
    assert value_of(nb, "nbqueue.Queue(\"default\").unschedule") == "True"
    assert "'slope'" in value_of(nb, "with nbqueue.testing.sync()")
    # the chain's cells end as static reports of finished jobs (a saved notebook reads as a report)
    [model_cell] = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("raw =")]
    html = "".join(o.data.get("text/html", "") for o in model_cell.outputs if o.output_type == "display_data")
    assert "nbq-report" in html and "nbq-status-finished" in html and "slope" in html
    assert not redis_client.hlen(keys.SCHEDULE_QUEUES)
