"""A real browser: JupyterLab on localhost, Debian's chromium driven by Playwright.

1. ``notebooks/01_build_dataset.ipynb``: every cell up to the export runs; the DatasetBuilder's label mask renders
   coloured tokens, and at 800 px with the file browser open every control of the builder stays on screen and
   sliders keep a track. Then the export cell: the builder's live view becomes its static summary; after save, kernel
   shutdown and reopening, that summary is there and no "Error displaying widget".
2. ``notebooks/02_finetune_live.ipynb`` (tiny parameters through the environment): Run All; at 800 px every control
   of the train, compare and try-it panels is on screen; click **Train**, see the live plot change and the run
   complete, click **Compare** and see the table, type a prompt into the try-it panel and see base and tuned
   answer. Every image is shown at most at its natural size and none is broken (a placeholder stands in before the
   first picture). When a panel's work ends, its output becomes the static result. Then **save, shut the kernel
   down and reopen**: the loss curve, the comparison table and the try-it answers are still there, and no "Error
   displaying widget" (the try-it panel stays live for more questions: its view comes back from the widget state
   that JupyterLab saves with the notebook, as Binder's settings ask).
3. ``notebooks/03_compare_forgetting.ipynb``: Run All; figures sharp and unbroken.

In every notebook no cell holds library progress-bar text, a warning twice, or a red (stderr) block with library
text.

Screenshots are kept in ``test-artifacts/browser/`` (ignored by git); the path is printed.

Needs: ``apt-get install chromium`` (``/usr/bin/chromium``; Playwright cannot download browsers here) and
``pip install playwright jupyterlab``. Skipped, with the reason, only when chromium or playwright is missing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOKS = ["01_build_dataset.ipynb", "02_finetune_live.ipynb", "03_compare_forgetting.ipynb"]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# What the libraries print when nobody silences them (tqdm bars and their usual descriptions).
LIBRARY_NOISE = re.compile(
    r"\d+%\||it/s\]|examples/s\]|Loading weights|Writing model shards|Creating json|^Map|Failed to load .*\.so"
    r"|Detected no triton|is an Enum subclass|matplotlib\.font_manager|DeprecationWarning|FutureWarning"
)

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)", allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip("playwright is not installed: pip install playwright", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1, a random port and token, in a folder holding the notebooks."""
    tmp_path = tmp_path_factory.mktemp("lab")
    root = tmp_path / "root"
    root.mkdir()
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / name, root / name)
    config = tmp_path / "config"
    (config / "labconfig").mkdir(parents=True)
    # No "receive Jupyter news?" toast over the page, and no request to the internet for it.
    disabled = {"@jupyterlab/apputils-extension:announcements": True}
    (config / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": disabled}))
    # Save widget state with the notebook (Binder's postBuild sets the same): a panel that stays live for more
    # clicks (the try-it panel) comes back from that state on reopening instead of "model not found"
    widget_settings = tmp_path / "settings" / "@jupyter-widgets" / "jupyterlab-manager"
    widget_settings.mkdir(parents=True)
    (widget_settings / "plugin.jupyterlab-settings").write_text(json.dumps({"saveState": True}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "NBFT_CACHE": str(tmp_path / "cache"),
        "NBFT_NOTEBOOK_MODEL": "tiny",
        "NBFT_NOTEBOOK_N": "120",
        "NBFT_NOTEBOOK_STEPS": "8",
        "NBFT_NOTEBOOK_EVAL_N": "4",
        "NBFT_NOTEBOOK_AUTOTRAIN": "0",  # the browser clicks Train
        "NBFT_NOTEBOOK_OTHER_TASKS": "qa",  # notebook 3: one other task is enough here
        "MPLBACKEND": "Agg",
    }
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands instead of hunting for menus
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
        "--allow-root",  # CI containers often run as root; the server only listens on 127.0.0.1 with a token
    ]  # fmt: skip
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()) from None
                time.sleep(0.3)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        print(f"\nbrowser screenshots: {ARTIFACTS}")
        yield {"base": base, "token": token, "root": root, "log": tmp_path / "lab.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def page(lab, request):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, device_scale_factor=2)
        page.set_default_timeout(60_000)
        try:
            yield page
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                page.screenshot(path=str(ARTIFACTS / f"failure-{request.node.name}.png"), full_page=True)
                print(lab["log"].read_text()[-5000:])
        finally:
            browser.close()


def _open(page, lab, name: str) -> None:
    # ?reset: a fresh workspace holding only this notebook (the server remembers the tabs of earlier tests, whose
    # hidden panels would answer the page-wide queries below)
    page.goto(f"{lab['base']}/lab/tree/{name}?reset&token={lab['token']}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="attached")
    page.wait_for_function(
        "name => window.jupyterapp && window.jupyterapp.shell.currentWidget"
        " && window.jupyterapp.shell.currentWidget.context.path === name",
        arg=name,
    )


def _wait_idle_kernel(page) -> None:
    # the kernel must be up before Run All, or the command is dropped
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return k && k.status === 'idle'; }",
        timeout=90_000,
    )


def _run_all(page) -> None:
    _wait_idle_kernel(page)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def _wait_run_all_done(page, timeout: int = 180_000) -> None:
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " const cells = w.content.widgets.filter(c => c.model.type === 'code');"
        " return cells.every(c => c.model.executionCount !== null)"
        " && w.sessionContext.session.kernel.status === 'idle'; }",
        timeout=timeout,
    )


def _image_report(page) -> list[dict]:
    """Every <img> in the notebook: shown size, natural size, whether it loaded, and whether it is visible."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('.jp-NotebookPanel img')).map(img => {
            const r = img.getBoundingClientRect();
            return {src: (img.currentSrc || img.src || '').slice(0, 60), width: r.width, height: r.height,
                    natural: img.naturalWidth, complete: img.complete,
                    visible: !!img.offsetParent && getComputedStyle(img).display !== 'none',
                    external: /^https?:/.test(img.getAttribute('src') || ''),
                    cls: img.className, static: !!img.closest('.nbft-static')};
        })"""
    )


def _check_images(page, where: str) -> list[dict]:
    images = [i for i in _image_report(page) if i["visible"]]
    # The Colab/Binder badges are images on the internet, which this machine cannot reach: they are links that work
    # for a reader online, and their loading is not nbft's (everything nbft draws is embedded).
    local = [i for i in images if not i["external"]]
    broken = [i for i in local if not (i["complete"] and i["natural"] > 0)]
    assert not broken, f"{where}: broken images {broken}"
    larger = [i for i in local if i["width"] > i["natural"] + 0.5]
    assert not larger, f"{where}: images shown larger than their natural size (stretched, blurry) {larger}"
    return local


def _outputs_text(page) -> list[str]:
    return page.evaluate(
        "() => Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(o => o.innerText || '')"
    )


def _check_cells_quiet(page, where: str) -> None:
    stderr = page.evaluate(
        "() => Array.from(document.querySelectorAll("
        "'.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.stderr\"]')).map(o => o.innerText)"
    )
    noisy = [t[:200] for t in stderr if LIBRARY_NOISE.search(t)]
    assert not noisy, f"{where}: library progress bars in cells: {noisy}"
    for text in stderr:
        lines = [" ".join(ln.split()) for ln in text.splitlines() if ln.strip() and not ln.startswith("  ")]
        messages = [ln.split("Warning: ", 1)[-1] for ln in lines]
        assert len(messages) == len(set(messages)), f"{where}: a warning shown twice: {messages}"
    assert not any(LIBRARY_NOISE.search(t) for t in _outputs_text(page)), f"{where}: progress-bar text in a cell"


def _run_all_but_the_last_cell(page) -> None:
    _wait_idle_kernel(page)
    page.evaluate(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " w.content.activeCellIndex = w.content.widgets.length - 1;"
        " return window.jupyterapp.commands.execute('notebook:run-all-above'); }"
    )


def _run_the_last_cell(page) -> None:
    page.evaluate(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " w.content.activeCellIndex = w.content.widgets.length - 1;"
        " return window.jupyterapp.commands.execute('notebook:run-cell'); }"
    )


def _wait_cells_done(page, but_last: bool = False, timeout: int = 180_000) -> None:
    page.wait_for_function(
        "skip => { const w = window.jupyterapp.shell.currentWidget;"
        " const cells = w.content.widgets.slice(0, w.content.widgets.length - skip)"
        ".filter(c => c.model.type === 'code');"
        " return cells.every(c => c.model.executionCount !== null)"
        " && w.sessionContext.session.kernel.status === 'idle'; }",
        arg=1 if but_last else 0,
        timeout=timeout,
    )


def _narrow(page) -> None:
    """800 px wide with the file browser open, as in a small laptop window."""
    page.set_viewport_size({"width": 800, "height": 1000})
    page.evaluate(
        "() => { const app = window.jupyterapp;"
        " if (app.shell.leftCollapsed) app.commands.execute('filebrowser:toggle-main'); }"
    )
    page.wait_for_timeout(500)


def _check_controls_on_screen(page, panel: str, where: str) -> None:
    """Every visible control of the panels matching ``panel`` lies within the 800 px window; sliders keep a track."""
    controls = page.evaluate(
        """sel => Array.from(document.querySelectorAll(sel)).flatMap(p => Array.from(p.querySelectorAll(
              'button, input, select, textarea, .widget-hslider, .jupyter-widget-hslider')))
            .filter(e => e.offsetParent)
            .map(e => { const r = e.getBoundingClientRect();
                        return {what: e.tagName + ' ' + (e.innerText || e.title || e.className).slice(0, 40),
                                left: r.left, right: r.right, width: r.width,
                                slider: /hslider/.test(e.className)}; })""",
        panel,
    )
    assert controls, f"{where}: the panel's controls are on the page"
    off = [c for c in controls if c["right"] > 800 + 0.5 or c["left"] < 0]
    assert not off, f"{where}: controls pushed off-screen at 800 px: {off}"
    narrow_sliders = [c for c in controls if c["slider"] and c["width"] < 200]
    assert not narrow_sliders, f"{where}: sliders collapsed to a handle: {narrow_sliders}"


def _save_shut_down_reopen(page, lab, name: str) -> dict:
    """Save, shut the kernel down, reopen the notebook (no kernel runs it); returns the saved file's JSON."""
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.sessionContext.session")
    saved = json.loads((lab["root"] / name).read_text())
    _open(page, lab, name)
    return saved


def _check_no_widget_error(page, where: str) -> None:
    page.wait_for_timeout(3000)  # the widget manager gives up on missing models after ~2 s
    text = page.inner_text(".jp-NotebookPanel")
    assert "Error displaying widget" not in text, f"{where}: a panel left a widget error"


def test_dataset_builder_label_mask_narrow_window_and_export_leaves_its_summary(lab, page):
    name = NOTEBOOKS[0]
    _open(page, lab, name)
    _run_all_but_the_last_cell(page)  # the last cell exports, which ends the builder's live view
    mask = page.locator(".nbft-dataset-builder .nbft-label-mask")
    mask.wait_for(state="visible", timeout=180_000)
    colours = page.evaluate(
        """() => { const m = document.querySelector('.nbft-dataset-builder .nbft-label-mask');
            const first = cls => m.querySelector(cls);
            return {prompt: getComputedStyle(first('.nbft-tok-prompt')).backgroundColor,
                    completion: getComputedStyle(first('.nbft-tok-completion')).backgroundColor,
                    n_prompt: m.querySelectorAll('.nbft-tok-prompt').length,
                    n_completion: m.querySelectorAll('.nbft-tok-completion').length}; }"""
    )
    assert colours["prompt"] == "rgb(234, 238, 242)" and colours["completion"] == "rgb(218, 251, 225)", colours
    assert colours["n_prompt"] > 5 and colours["n_completion"] >= 2
    _wait_cells_done(page, but_last=True)
    mask.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "dataset_builder_label_mask.png"))
    _check_images(page, "notebook 1")
    _check_cells_quiet(page, "notebook 1")

    # A narrow window (800 px, the file browser open): every control stays on screen and usable
    _narrow(page)
    page.locator(".nbft-dataset-builder").scroll_into_view_if_needed()
    _check_controls_on_screen(page, ".nbft-dataset-builder", "notebook 1")
    page.screenshot(path=str(ARTIFACTS / "dataset_builder_800px.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})

    # Export ends the builder's work: its live view becomes the static summary, which survives save and reopen
    _run_the_last_cell(page)
    _wait_cells_done(page)
    summary = ".nbft-static-final .nbft-label-mask"
    page.wait_for_selector(summary, state="attached", timeout=60_000)
    assert page.locator(".nbft-dataset-builder").count() == 0, "the live builder was replaced"
    _check_cells_quiet(page, "notebook 1 after Export")
    saved = _save_shut_down_reopen(page, lab, name)
    views = [
        o for c in saved["cells"] for o in c.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]  # fmt: skip
    assert not views, "the saved notebook shows no widget view (the builder left its summary instead)"
    page.locator(summary).first.wait_for(state="attached", timeout=60_000)
    page.locator(summary).first.scroll_into_view_if_needed()
    _check_no_widget_error(page, "notebook 1 reopened")
    assert "Exported to" in page.inner_text(".jp-NotebookPanel")
    page.screenshot(path=str(ARTIFACTS / "dataset_builder_reopened.png"))


def test_train_compare_then_save_shut_down_reopen_keeps_the_results(lab, page):
    name = NOTEBOOKS[1]
    _open(page, lab, name)
    _run_all(page)
    train = page.locator(".nbft-train-panel button", has_text="Train")
    train.wait_for(state="visible", timeout=120_000)
    compare = page.locator(".nbft-compare-panel button", has_text="Compare")
    compare.wait_for(state="visible", timeout=120_000)
    _wait_run_all_done(page)
    # Before any run: placeholders, no broken-image icons under the status or under the Compare button
    assert page.locator(".nbft-train-panel .nbft-placeholder").is_visible()
    _check_images(page, "notebook 2 before training")
    page.locator(".nbft-train-panel").screenshot(path=str(ARTIFACTS / "train_panel_before.png"))
    # 800 px with the file browser open: every control of the three panels stays on screen
    _narrow(page)
    for panel in (".nbft-train-panel", ".nbft-compare-panel", ".nbft-try-panel"):
        page.locator(panel).scroll_into_view_if_needed()
        _check_controls_on_screen(page, panel, f"notebook 2 {panel}")
        page.locator(panel).screenshot(path=str(ARTIFACTS / f"{panel[6:]}_800px.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.locator(".nbft-train-panel").scroll_into_view_if_needed()

    plot = ".nbft-train-panel img.nbft-liveplot"
    train.click()
    page.wait_for_function(
        "sel => { const img = document.querySelector(sel); return img && img.offsetParent && img.naturalWidth > 0; }",
        arg=plot,
    )
    first = page.eval_on_selector(plot, "img => img.currentSrc || img.src")
    assert (
        page.eval_on_selector(plot, "img => Math.abs(img.getBoundingClientRect().width * 2 - img.naturalWidth)") <= 2
    ), "the live plot is a 2x PNG shown at half its pixel width (sharp on HiDPI screens)"
    shown = page.evaluate(
        "() => Array.from(window.jupyterapp.shell.currentWidget.node.querySelectorAll('.nbft-static'))"
        ".filter(e => getComputedStyle(e).display !== 'none').map(e => e.className + ': ' + e.innerText.slice(0, 80))"
    )
    assert not shown, f"while the panels are live, their static copies stay hidden: {shown}"
    page.locator(".nbft-train-panel").screenshot(path=str(ARTIFACTS / "train_panel.png"))
    # the run completes: the panel's output becomes its static result (the final curve, sharp), not a widget
    final_curve = ".nbft-static-final img[alt='training curve']"
    page.wait_for_selector(final_curve, state="visible", timeout=180_000)
    assert page.eval_on_selector(final_curve, "img => img.currentSrc || img.src") != first, "the final curve"
    assert "completed" in page.inner_text(".nbft-static-final .nbft-summary")

    compare.click()
    page.wait_for_selector(".nbft-static-final .nbft-table table", state="visible", timeout=180_000)
    assert "sentiment" in page.locator(".nbft-static-final .nbft-table table").first.inner_text()
    page.wait_for_selector(".nbft-static-final img[alt='Δ heatmap']", timeout=30_000)
    images = _check_images(page, "notebook 2 after Train and Compare")
    figures = [i for i in images if "nbft-figure" in i["cls"]]
    # sharp on HiDPI screens: a 2x PNG is shown at half its pixel width, or narrower where the output area is
    # narrower (it may shrink to fit, never grow past half its pixels)
    assert len(figures) >= 2, figures
    blurry = [{k: i[k] for k in ("width", "natural", "cls")} for i in figures if i["width"] * 2 > i["natural"] + 2]
    assert not blurry, blurry
    assert any(abs(i["width"] * 2 - i["natural"]) <= 2 for i in figures), "no figure at its natural (half) width"
    assert "Error displaying widget" not in page.inner_text(".jp-NotebookPanel")

    # the try-it panel: one prompt, base and tuned answer side by side
    try_panel = page.locator(".nbft-try-panel")
    try_panel.scroll_into_view_if_needed()
    try_panel.locator("textarea").first.fill("The film was a total waste of time.")
    try_panel.locator("button", has_text="Ask").click()
    page.wait_for_function(
        "() => { const p = document.querySelector('.nbft-try-panel');"
        " const names = Array.from(p.querySelectorAll('b')).map(b => b.innerText.trim());"
        " return names.includes('base') && names.includes('tuned')"
        " && p.querySelectorAll('.nbft-answer').length >= 3 && /done/.test(p.innerText); }",
        timeout=120_000,
    )
    try_panel.screenshot(path=str(ARTIFACTS / "try_panel.png"))
    _check_cells_quiet(page, "notebook 2")
    for alt in ("training curve", "Δ heatmap"):
        page.locator(f".nbft-static-final:has(img[alt='{alt}'])").first.screenshot(
            path=str(ARTIFACTS / f"final_{'curve' if alt == 'training curve' else 'compare'}.png")
        )

    # save, shut the kernel down, reopen: the results are plain outputs of the notebook now
    saved = _save_shut_down_reopen(page, lab, name)
    statics = [
        "".join(o["data"]["text/html"])
        for c in saved["cells"]
        for o in c.get("outputs", [])
        if "nbft-static" in "".join(o.get("data", {}).get("text/html", ""))
    ]
    assert any("training curve" in s for s in statics) and any("<table" in s for s in statics), "saved in the file"
    assert any("nbft-answer" in s for s in statics), "the try-it answers are saved in the file too"
    curve = page.locator(".nbft-static img[alt='training curve']")
    curve.wait_for(state="visible", timeout=60_000)
    table = page.locator(".nbft-static .nbft-table table").first
    table.scroll_into_view_if_needed()  # JupyterLab renders cells far off screen lazily (and may redraw them)
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.nbft-static .nbft-table table'))"
        ".some(t => t.offsetParent && t.innerText.includes('sentiment'))"
    )
    _check_images(page, "notebook 2 reopened")
    assert page.eval_on_selector("img[alt='training curve']", "img => img.naturalWidth") > 0
    _check_no_widget_error(page, "notebook 2 reopened")
    page.locator(".nbft-try-panel").scroll_into_view_if_needed()
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.nbft-answer')).some(a => a.offsetParent && a.innerText)"
    )
    page.screenshot(path=str(ARTIFACTS / "reopened_try_panel.png"))
    page.screenshot(path=str(ARTIFACTS / "reopened.png"), full_page=True)
    page.screenshot(path=str(ARTIFACTS / "reopened_table.png"))
    curve.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "reopened_curve.png"))


def test_notebook_3_runs_quiet_with_sharp_figures(lab, page):
    _open(page, lab, NOTEBOOKS[2])
    _run_all(page)
    _wait_run_all_done(page, timeout=300_000)
    page.wait_for_selector(".nbft-static-final img[alt='training curve']", state="attached", timeout=60_000)
    figures = [i for i in _check_images(page, "notebook 3") if "nbft-figure" in i["cls"] or i["static"]]
    assert figures, "notebook 3 shows its figures"
    _check_cells_quiet(page, "notebook 3")
    page.screenshot(path=str(ARTIFACTS / "notebook3.png"), full_page=True)
