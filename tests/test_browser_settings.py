"""A real browser (JupyterLab + Debian's chromium through Playwright) on issue 17's "one dataset, one set of settings":

1. the DatasetBuilder's label mask, as drawn, is training's cut for a long completion (its prompt and completion
   token counts equal ``tokenize_for_training``'s, computed in the kernel);
2. switching the task in the drop-down never leaves the previous task's example on screen;
3. the builder's settings (chat format, max_length) reach the run: click Train on a ``TrainPanel`` over
   ``builder.dataset`` and read ``run.json``.

The notebook is written by the test (tiny model, tiny data). Screenshots go to ``test-artifacts/browser/``.
Needs what ``tests/test_browser.py`` needs; skipped, with the reason, only when chromium or playwright is missing.
"""

from __future__ import annotations

import json

import pytest

# the JupyterLab server and Playwright page fixtures (and the module-level skip when chromium/playwright is missing)
from test_browser import ARTIFACTS, _open, _run_all, _wait_run_all_done, lab, page  # noqa: F401

pytestmark = pytest.mark.browser

NAME = "settings.ipynb"
CELLS = [
    """import json, datasets
from nbft.models import tiny_random
from nbft.widgets import DatasetBuilder, TrainPanel
from nbft.config import TrainConfig
from nbft.data import tokenize_for_training
model, tok = tiny_random("llama")
rows = [{"question": f"what is {i} plus {i}?", "answer": " ".join(f"w{i}x{j}" for j in range(120))} for i in range(40)]
builder = DatasetBuilder(rows, task="qa", tokenizer=tok, n=0, max_length=68, chat_template=True, debounce=0)
builder""",
    """ex = builder._preview_data["train"][0]
row = tokenize_for_training(datasets.Dataset.from_list([ex]), tok, max_length=68, chat_template=True)[0]
prompt = sum(1 for lab in row["labels"] if lab == -100)
print("TRAINING-CUT " + json.dumps({"prompt": prompt, "completion": len(row["labels"]) - prompt}))""",
    """data = builder.build()
panel = TrainPanel(model, tok, data, config=TrainConfig(max_steps=1, batch_size=4, precision="fp32"),
                   run_dir="runs/settings")
panel""",
    """switcher = DatasetBuilder(task="sentiment", tokenizer=tok, n=0, debounce=0.3)
switcher.add_class("nbft-switcher")
switcher.build()
switcher""",
]


def _notebook() -> dict:
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": []}
    return {
        "cells": [{**cell, "source": src} for src in CELLS],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def test_mask_is_the_training_cut_no_stale_task_example_and_settings_reach_run_json(lab, page):  # noqa: F811
    (lab["root"] / NAME).write_text(json.dumps(_notebook()))
    # every cell in the page (JupyterLab 4 leaves cells far off screen out of the DOM by default)
    tracker = lab["root"].parent / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    _open(page, lab, NAME)
    _run_all(page)
    mask = page.locator(".nbft-dataset-builder:not(.nbft-switcher) .nbft-label-mask").first
    mask.wait_for(state="visible", timeout=180_000)
    _wait_run_all_done(page, timeout=300_000)

    # 1. the mask as drawn = training's cut (the kernel printed tokenize_for_training's counts)
    printed = page.evaluate(
        "() => JSON.stringify(window.jupyterapp.shell.currentWidget.content.widgets[1].model.outputs.toJSON())"
    )
    text = "".join(o.get("text", "") for o in json.loads(printed))
    trained = json.loads(text.split("TRAINING-CUT", 1)[1].strip())
    shown = mask.evaluate(
        "m => ({prompt: m.querySelectorAll('.nbft-tok-prompt').length,"
        " completion: m.querySelectorAll('.nbft-tok-completion').length,"
        " cut: m.querySelectorAll('.nbft-tok-cut').length})"
    )
    assert (shown["prompt"], shown["completion"]) == (trained["prompt"], trained["completion"]), (shown, trained)
    assert shown["prompt"] + shown["completion"] == 68 and shown["cut"] > 0
    mask.scroll_into_view_if_needed()
    mask.screenshot(path=str(ARTIFACTS / "settings_mask_is_training_cut.png"))

    # 3. the builder's settings reach the run: click Train, read run.json
    page.locator(".nbft-train-panel button", has_text="Train").click()
    page.wait_for_selector(".nbft-static-final .nbft-summary", state="visible", timeout=180_000)
    meta = json.loads((lab["root"] / "runs" / "settings" / "run.json").read_text())
    assert (meta["data"]["chat_template"], meta["data"]["max_length"], meta["data"]["task"]) == (True, 68, "qa")

    # 2. switch the task: the sentiment example never stays on screen as current
    switcher = page.locator(".nbft-switcher")
    switcher.locator(".nbft-label-mask").wait_for(state="visible", timeout=120_000)
    assert "sentiment/" in switcher.locator(".nbft-label-mask").inner_text() or "sentiment/" in switcher.inner_text()
    switcher.scroll_into_view_if_needed()
    # every state the page shows from now on: the qa templates must never sit beside the sentiment example
    page.evaluate(
        """() => { const b = document.querySelector('.nbft-switcher'); window.nbftSeen = [];
            const look = () => { const t = b.innerText; window.nbftSeen.push(
                {qa: t.includes('qa/1'), sentiment: t.includes('template sentiment/')}); };
            new MutationObserver(look).observe(b, {subtree: true, childList: true, characterData: true,
                                                   attributes: true}); }"""
    )
    switcher.locator("select").first.select_option("qa")
    page.wait_for_function(
        "() => { const m = document.querySelector('.nbft-switcher .nbft-label-mask');"
        " return m && m.closest('.nbft-switcher').innerText.includes('template qa/'); }",
        timeout=120_000,
    )
    page.wait_for_timeout(1000)
    seen = page.evaluate("() => window.nbftSeen")
    assert any(s["qa"] for s in seen), "the task switch reached the page"
    both = [i for i, s in enumerate(seen) if s["qa"] and s["sentiment"]]
    assert not both, f"the qa task's templates were shown beside the sentiment example ({len(both)} of {len(seen)})"
    assert "template sentiment/" not in switcher.inner_text()
    switcher.screenshot(path=str(ARTIFACTS / "settings_task_switch.png"))
