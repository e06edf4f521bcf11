"""Execute every tutorial notebook with nbclient, with tiny parameters (a random 2-layer model, a few steps).

The notebooks read their parameters from ``NBFT_NOTEBOOK_*`` environment variables, which the kernel inherits, so
the same files that people open run here unchanged.
"""

from __future__ import annotations

import os
import re
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

# What the libraries print when nobody silences them (tqdm bars and their usual descriptions).
LIBRARY_NOISE = re.compile(
    r"\d+%\|| it/s\]|examples/s\]|Loading weights|Writing model shards|Creating json|^Map|Failed to load .*\.so"
    r"|Detected no triton|is an Enum subclass|matplotlib\.font_manager"
)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    # One nbft cache for all notebooks: each offline data wheel is downloaded once, not once per notebook.
    return tmp_path_factory.mktemp("nbft-notebook-cache")


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert {"01_build_dataset.ipynb", "02_finetune_live.ipynb", "03_compare_forgetting.ipynb"} <= set(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_starts_with_badges_a_colab_install_cell_and_parameters(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    top = first.source.splitlines()[0]
    assert f"colab.research.google.com/github/nbft/nbft/blob/main/notebooks/{path.name}" in top
    assert f"mybinder.org/v2/gh/nbft/nbft/HEAD?urlpath=lab/tree/notebooks/{path.name}" in top
    code = _code(nb)
    assert "colab-install" in code[0].metadata.get("tags", [])
    assert 'if "google.colab" in sys.modules:' in code[0].source, "a no-op outside Colab"
    assert "parameters" in code[1].metadata.get("tags", []), "papermill needs the parameters cell tagged"
    assert 'os.environ.get("NBFT_NOTEBOOK_MODEL", "auto")' in code[1].source
    assert any("notebook_model(MODEL)" in c.source and "print(why)" in c.source for c in code), "says which model"
    assert all(not c.get("outputs") for c in code), "commit notebooks without outputs"


def _stderr(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stderr")


@pytest.fixture(scope="module")
def executed(tmp_path_factory, shared_cache):
    """Each notebook executed once (cached for the module's tests): ``{path: (notebook, working folder)}``."""
    done: dict[Path, tuple[object, Path]] = {}
    env = {**TINY, "NBFT_CACHE": str(shared_cache), "MPLBACKEND": "Agg"}

    def run(path: Path):
        if path not in done:
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                workdir = tmp_path_factory.mktemp(path.stem)
                nb = nbformat.read(path, as_version=4)
                client = nbclient.NotebookClient(
                    nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
                )
                client.execute()
                done[path] = (nb, workdir)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        return done[path]

    return run


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_tiny_parameters(path, executed):
    nb, workdir = executed(path)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    code = _code(nb)
    assert any("model: tiny" in "".join(o.get("text", "") for o in c.get("outputs", [])) for c in code)
    if path.name.startswith("02"):
        statics = [
            o["data"]["text/html"]
            for c in code
            for o in c.get("outputs", [])
            if o.get("output_type") == "display_data" and "nbft-static" in o.get("data", {}).get("text/html", "")
        ]
        # the panels' results stay in the saved notebook: the training curve and the comparison table
        assert any("training curve" in s and "data:image/png;base64," in s for s in statics), statics
        assert any("<table" in s and "Δ heatmap" in s for s in statics), statics
        # nbviewer renders with nbconvert: the static copies are in its HTML, with no kernel and no widget manager
        from nbconvert import HTMLExporter

        page, _ = HTMLExporter().from_notebook_node(nb)
        assert 'alt="training curve"' in page and 'alt="Δ heatmap"' in page and "nbft-table" in page
    if path.name.startswith("03"):
        assert (workdir / "report.html").exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_cells_hold_no_library_progress_bars_or_repeated_warnings(path, executed):
    nb, _ = executed(path)
    code = _code(nb)
    noisy = [(c.source.splitlines()[0], _stderr(c)[:300]) for c in code if LIBRARY_NOISE.search(_stderr(c))]
    assert not noisy, f"library progress bars in cells: {noisy}"
    for cell in code:  # a warning shown twice in one cell (warning + log line, or a repeat) is noise too
        # skip the indented source line that follows a warning's location line
        lines = [" ".join(ln.split()) for ln in _stderr(cell).splitlines() if ln.strip() and not ln.startswith("  ")]
        messages = [ln.split("Warning: ", 1)[-1] for ln in lines]
        assert len(messages) == len(set(messages)), messages


def _outputs(nb) -> list[dict]:
    return [
        o for c in _code(nb) for o in c.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_headless_runs_leave_png_figures_and_html_tables(path, executed):
    """nbclient/papermill (CI, documentation sites) have no widget manager: the static results must be there."""
    nb, _ = executed(path)
    outputs = _outputs(nb)
    assert any("image/png" in o.get("data", {}) for o in outputs), "no PNG output at all"
    assert any("<table" in o.get("data", {}).get("text/html", "") for o in outputs), "no HTML table"


def test_notebook_3_figures_are_hidpi_at_their_natural_width(executed):
    import base64

    from nbft.widgets._figures import png_size

    nb, _ = executed(next(p for p in NOTEBOOKS if p.name.startswith("03")))
    images = [o for o in _outputs(nb) if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "loss curve, Δ heatmap, weight-change heatmap"
    for o in images:
        width, _ = png_size(base64.b64decode(o["data"]["image/png"]))
        shown = o.get("metadata", {}).get("image/png", {}).get("width")
        assert shown is not None and abs(int(shown) * 2 - width) <= 1, (width, shown)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# The cells whose panel finishes its work in a headless run (Export, a completed run, a comparison), by notebook
FINISHING_PANELS = {
    "01": ["builder = DatasetBuilder("],
    "02": ["panel = TrainPanel(", "compare_panel = ComparePanel("],
    "03": ["plot = LivePlot()", "compare_panel = ComparePanel("],
}


def _cell_data(cell) -> list[dict]:
    return [o.get("data", {}) for o in cell.get("outputs", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_headless_runs_leave_no_widget_view_without_its_static_result(path, executed):
    """A reader without a kernel (nbviewer, GitHub, a reopened notebook) sees every panel's result: a cell that
    still shows a live view (a panel meant for more clicks, such as the try-it panel) also holds its static copy."""
    nb, _ = executed(path)
    for cell in _code(nb):
        data = _cell_data(cell)
        if any(WIDGET_VIEW in d for d in data):
            statics = [d for d in data if "nbft-static" in d.get("text/html", "")]
            assert statics, f"a widget view with no static result: {cell.source.splitlines()[0]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_panel_whose_work_ended_is_replaced_by_its_static_result(path, executed):
    """Where the work ended, the live view itself became the static result (no widget view is left for a reopened
    notebook to show as "Error displaying widget: model not found"), with its figure as a PNG."""
    nb, _ = executed(path)
    for start in FINISHING_PANELS[path.name[:2]]:
        cell = next(c for c in _code(nb) if start in c.source)
        data = _cell_data(cell)
        assert not any(WIDGET_VIEW in d for d in data), f"{start!r} still shows a widget view"
        final = [d for d in data if "nbft-static-final" in d.get("text/html", "")]
        assert len(final) == 1 and "image/png" in final[0], f"{start!r}: {[sorted(d) for d in data]}"
    if path.name.startswith("01"):  # the builder's summary: the preview, the label mask and the statistics
        builder = next(c for c in _code(nb) if "builder = DatasetBuilder(" in c.source)
        html = next(d["text/html"] for d in _cell_data(builder) if "nbft-static-final" in d.get("text/html", ""))
        assert "Exported to" in html and "nbft-tok-completion" in html and "Token lengths" in html
    if path.name.startswith("02"):  # the try-it panel answered for both models, and its answers are saved
        cell = next(c for c in _code(nb) if "try_panel = TryPanel(" in c.source)
        html = "".join(d.get("text/html", "") for d in _cell_data(cell))
        assert "<b>base</b>" in html and "<b>tuned</b>" in html and "nbft-answer" in html
