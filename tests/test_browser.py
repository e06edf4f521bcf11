"""A real browser: JupyterLab on localhost, Debian's chromium driven by Playwright.

It opens ``notebooks/02_finetune_live.ipynb`` (tiny parameters through the environment), runs all cells, clicks
**Train**, sees the live plot image change and the run complete, clicks **Compare** and sees the table appear.

Needs: ``apt-get install chromium`` (``/usr/bin/chromium``; Playwright cannot download browsers here) and
``pip install playwright jupyterlab``. Skipped, with the reason, only when chromium or playwright is missing.
"""

from __future__ import annotations

import json
import os
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

CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "02_finetune_live.ipynb"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

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


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1, a random port and token, in a folder holding the notebook."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    config = tmp_path / "config"
    (config / "labconfig").mkdir(parents=True)
    # No "receive Jupyter news?" toast over the page, and no request to the internet for it.
    disabled = {"@jupyterlab/apputils-extension:announcements": True}
    (config / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": disabled}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "NBFT_NOTEBOOK_MODEL": "tiny",
        "NBFT_NOTEBOOK_N": "120",
        "NBFT_NOTEBOOK_STEPS": "8",
        "NBFT_NOTEBOOK_EVAL_N": "4",
        "NBFT_NOTEBOOK_AUTOTRAIN": "0",  # the browser clicks Train
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
        yield {"url": f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", "root": root, "log": tmp_path / "lab.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _image_src(page, selector: str) -> str:
    return page.eval_on_selector(selector, "img => img.currentSrc || img.src || ''")


def test_jupyterlab_train_click_updates_the_plot_and_compare_shows_a_table(lab):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(lab["url"])
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="attached")
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget")
            # the kernel must be up before Run All, or the command is dropped
            page.wait_for_function(
                "() => { const w = window.jupyterapp.shell.currentWidget;"
                " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
                " return k && k.status === 'idle'; }",
                timeout=90_000,
            )
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            train = page.locator(".nbft-train-panel button", has_text="Train")
            train.wait_for(state="visible", timeout=90_000)
            plot = ".nbft-train-panel img"
            before = _image_src(page, plot)
            train.click()
            # The plot's PNG changes while training runs (a new blob URL for each new image).
            page.wait_for_function(
                "([sel, before]) => { const img = document.querySelector(sel);"
                " return img && img.src && img.src !== before && img.naturalWidth > 0; }",
                arg=[plot, before],
            )
            first = _image_src(page, plot)
            page.wait_for_selector('.nbft-train-panel .nbft-status[data-status="completed"]', timeout=120_000)
            assert _image_src(page, plot) != first, "the final redraw must replace the first live image"

            page.locator(".nbft-compare-panel button", has_text="Compare").click()
            page.wait_for_selector(
                '.nbft-compare-panel .nbft-status[data-status="done"], '
                '.nbft-compare-panel .nbft-status[data-status="failed"]',
                timeout=120_000,
            )
            status = page.inner_text(".nbft-compare-panel .nbft-status")
            assert status == "done", page.inner_text(".nbft-compare-panel")
            table = page.locator(".nbft-compare-panel table").first
            assert "sentiment" in table.inner_text()
            for name in ("train", "compare"):  # kept in the test's tmp folder, for a look by hand
                panel = page.locator(f".nbft-{name}-panel")
                panel.screenshot(path=str(lab["root"].parent / f"{name}_panel.png"))
        except Exception:
            page.screenshot(path=str(lab["root"].parent / "failure.png"))
            print(lab["log"].read_text()[-5000:])
            raise
        finally:
            browser.close()
