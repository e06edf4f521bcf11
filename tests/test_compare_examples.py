"""ComparePanel's per-example view and in-context token cost, without a browser."""

from __future__ import annotations

import html

import datasets
import pytest

pytest.importorskip("ipywidgets")

from nbft.evaluate import Task
from nbft.models import tiny_random
from nbft.report import prompt_tokens_frame
from nbft.widgets import ComparePanel


def _tasks() -> list[Task]:
    sent = [{"text": f"review number {i} <b>", "label": ["negative", "positive"][i % 2]} for i in range(30)]
    qa = [{"question": f"what is {i}?", "answer": str(i)} for i in range(30)]

    def splits(rows):
        return datasets.DatasetDict(
            {"train": datasets.Dataset.from_list(rows[:20]), "test": datasets.Dataset.from_list(rows[20:])}
        )

    return [
        Task("toy-sentiment", splits(sent), "sentiment/1", max_new_tokens=3),
        Task("toy-qa", splits(qa), "qa/1", max_new_tokens=3),
    ]


def _scrambled(seed: int):
    """A tiny model with large random weights: it answers with characters (a plain tiny model repeats the prompt's
    last newline, which reads as an empty answer), so base and "tuned" outputs differ word by word."""
    import torch

    model, tok = tiny_random("llama", seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model, tok


@pytest.fixture(scope="module")
def panel():
    base, tok = tiny_random("llama", seed=0)
    tuned, _ = _scrambled(3)
    p = ComparePanel({"base": (base, tok), "tuned": (tuned, tok)}, _tasks(), target="toy-sentiment", n=6,
                     icl_shots=(0, 1), n_boot=100)  # fmt: skip
    assert p.examples.widget.layout.display == "none", "no empty view before a comparison"
    p.compare()
    p.wait(300)
    return p


def test_examples_show_prompt_text_references_and_outputs(panel):
    view = panel.examples
    assert view.widget.layout.display != "none"
    assert list(view.task.options) == ["toy-sentiment", "toy-qa"] and view.task.value == "toy-sentiment"
    assert list(view.model.options) == ["tuned", "base 1-shot"], "the tuned model first, k-shot columns after"
    ex = panel.table.examples
    ex = ex[ex["task"] == "toy-sentiment"]
    rows = view.rows.value
    for prompt, ref in zip(ex["prompt"], ex["reference"], strict=True):
        assert html.escape(prompt) in rows, "the prompt's text, escaped, not only its hash"
        assert f"<td>{html.escape(ref)}</td>" in rows
    for out in ex["output:tuned"]:
        assert html.escape(out) in rows
    assert "<b>" not in rows and "&lt;b&gt;" in rows, "data text is escaped"
    assert "<ins" in rows or "<del" in rows, "a word diff of base vs tuned"
    assert rows.count("<tr>") == 1 + len(ex), "every example of 6 (the view shows up to 10)"


def test_order_and_count(panel):
    view = panel.examples
    deltas = view.frame()["delta:tuned"].tolist()
    assert deltas == sorted(deltas), "worst regressions first"
    view.order.value = "biggest gains first"
    assert view.frame()["delta:tuned"].tolist() == sorted(deltas, reverse=True)
    view.order.value = "test order"
    assert view.frame()["example"].tolist() == sorted(view.frame()["example"].tolist())
    view.n.value = 3
    assert view.rows.value.count("<tr>") == 4 and len(view.frame()) == 3
    view.task.value = "toy-qa"
    assert "what is" in view.rows.value
    view.model.value = "base 1-shot"
    assert "base 1-shot" in view.rows.value


def test_in_context_token_cost_beside_the_k_shot_column(panel):
    tokens = prompt_tokens_frame(panel.table)
    base, shot = tokens.loc["toy-sentiment", "base"], tokens.loc["toy-sentiment", "base 1-shot"]
    assert shot > base
    assert f"{shot} (+{shot - base})" in panel.examples.tokens.value
    assert "in-context" in panel.examples.tokens.value
    static = panel.static_html()
    assert "nbft-tokens" in static and "nbft-examples-table" in static, "the saved notebook keeps both"
