"""Rendering: the styled table, figures, weight change (streaming), per-example diffs, exports, model card."""

from __future__ import annotations

import base64
import re

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from nbft import compare, report
from nbft.evaluate import Task
from nbft.models import tiny_random


def _spread(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3, generator=g)
    return model


@pytest.fixture(scope="module")
def table():
    labels = ["negative", "neutral", "positive"]
    rows = [{"text": f"text {i}", "label": labels[i % 3]} for i in range(24)]
    sent = Task("s", datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:12]),
                                           "test": datasets.Dataset.from_list(rows[12:])}),
                "sentiment/1", max_new_tokens=3)  # fmt: skip
    qa_rows = [{"question": f"q {i}?", "answer": f"a {i}"} for i in range(16)]
    qa = Task("q", datasets.DatasetDict({"train": datasets.Dataset.from_list(qa_rows[:8]),
                                         "test": datasets.Dataset.from_list(qa_rows[8:])}),
              "qa/1", max_new_tokens=4)  # fmt: skip
    base, tok = tiny_random("llama", seed=0)
    tuned, _ = tiny_random("llama", seed=1)
    return compare({"base": _spread(base, 0), "tuned": _spread(tuned, 1)}, [sent, qa], target="s", n=8,
                   icl_shots=(0, 2), tokenizer=tok, progress=False, n_boot=200)  # fmt: skip


def test_side_by_side_styler_has_columns_colours_and_forgetting(table):
    df = report.table_frame(table)
    assert list(df.index) == [("s", "accuracy"), ("s", "ll_accuracy"), ("s", "no label (%)"), ("q", "token_f1")]
    for col in ("base", "base 2-shot", "tuned", "Δ tuned", "Δ CI tuned", "W/T/L tuned", "flag tuned"):
        assert col in df.columns
    html = report.side_by_side(table).to_html()
    assert "G (s)" in html and "BWT′" in html
    d = df["Δ tuned"].dropna()
    if (d != 0).any():
        assert "#1a7f37" in html or "#cf222e" in html


def _with_last_delta(table, **values):
    deltas = [dict(d) for d in table.results["deltas"]]
    deltas[-1].update(values)
    return report.ComparisonTable({**table.results, "deltas": deltas})


def test_regression_is_flagged(table):
    t = _with_last_delta(table, delta=-10.0, ci_low=-15.0, ci_high=-5.0, regression=True, significant=True)
    flagged = report.table_frame(t)
    assert flagged.iloc[-1]["flag tuned"] == "▼ regression"
    html = report.side_by_side(t).to_html()
    assert "#ffebe9" in html and report.RED in html


def test_delta_is_coloured_only_when_its_ci_excludes_zero(table):
    """Issue 10 item 8: qa −1.3 [−6.3, 3.7] was red although its CI crosses 0."""
    crossing = _with_last_delta(table, delta=-1.3, ci_low=-6.3, ci_high=3.7, regression=False, significant=False)
    html = report.side_by_side(crossing).to_html()
    cell = re.search(r'<td id="(T_\w+_row3_col\d+)"[^>]*>-1\.3</td>', html)
    assert cell, html
    rule = re.search(r"#" + cell.group(1) + r"[^{]*\{([^}]*)\}", html)
    assert rule and report.GREY in rule.group(1) and report.RED not in rule.group(1)
    significant = _with_last_delta(table, delta=-1.3, ci_low=-2.0, ci_high=-0.5, regression=True, significant=True)
    html = report.side_by_side(significant).to_html()
    cell = re.search(r'<td id="(T_\w+_row3_col\d+)"[^>]*>-1\.3</td>', html)
    rule = re.search(r"#" + cell.group(1) + r"[^{]*\{([^}]*)\}", html)
    assert rule and report.RED in rule.group(1)


def test_rendered_numbers_are_rounded_data_is_not(table):
    """Issue 10 item 8: prompt_tokens_frame printed 186.333333 and NaN; table.delta had 6 decimals."""
    tokens = report.prompt_tokens_frame(table)
    cells = tokens.to_numpy().ravel().tolist()
    assert all(isinstance(v, int) or v == "–" for v in cells) and "–" in cells
    assert "nan" not in tokens.to_string().lower() and "." not in tokens.to_string()
    text = report.to_text(table)
    numbers = re.findall(r"[-+]?\d+\.\d+", text)
    assert numbers and all(len(x.split(".")[1]) == 1 for x in numbers)
    # the data keeps full precision
    raw = table.delta["delta"].to_numpy()
    assert np.allclose(raw, [d["delta"] for d in table.results["deltas"]])


def test_task_and_model_names_are_escaped_in_html(tmp_path):
    """Issue 9 item 8: task and model names went unescaped into report.html."""
    rows = [{"question": f"q {i}?", "answer": f"a {i}"} for i in range(12)]
    evil_task = "<script>alert('task')</script>"
    evil_model = "<img src=x onerror=alert(1)>"
    task = Task(evil_task, datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:6]),
                                                 "test": datasets.Dataset.from_list(rows[6:])}),
                "qa/1", max_new_tokens=3)  # fmt: skip
    model, tok = tiny_random("llama", seed=0)
    t = compare({"base": model, evil_model: model}, [task], n=4, tokenizer=tok, progress=False, n_boot=100)
    path = report.export_html(t, tmp_path / "r.html")
    page = path.read_text()
    for text in (page, report.side_by_side(t).to_html(), t._repr_html_(), report.example_view(t, as_html=True)):
        assert "<script>alert" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert" in page and "&lt;img src=x" in page


def test_text_markdown_csv_exports(table, tmp_path):
    text = report.to_text(table)
    assert "Mean prompt tokens" in text and "Forgetting" in text
    md = report.export_markdown(table, tmp_path / "t.md")
    assert md.startswith("|") and (tmp_path / "t.md").read_text().strip() == md.strip()
    paths = report.export_csv(table, tmp_path / "csv")
    assert {p.name for p in paths} == {"summary.csv", "delta.csv", "forgetting.csv", "examples.csv"}
    assert len(pd.read_csv(tmp_path / "csv" / "summary.csv")) == len(table.summary)
    card = report.model_card_section(table)
    assert card.startswith("|") and "paired bootstrap" in card
    assert report.model_card_section(table, heading="Evaluation").startswith("## Evaluation\n")


def test_html_export_is_self_contained(table, tmp_path):
    history = [{"kind": "train", "step": i, "loss": 2.0 / i} for i in range(1, 30)] + [
        {"kind": "eval", "step": 29, "val_loss": 0.2}
    ]
    path = report.export_html(table, tmp_path / "r.html", history=history)
    html = path.read_text()
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) >= 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<link" not in html and "<script" not in html
    assert "Worst regressions" in html


def test_figures_render(table):
    for fig in (report.delta_heatmap(table), report.loss_curve([{"step": 1, "loss": 1.0}]), report.loss_curve([])):
        assert report.figure_to_png(fig)[:4] == b"\x89PNG"


def test_weight_change_zero_for_identical_and_matches_direct(tmp_path):
    base, _ = tiny_random("llama", seed=0)
    same = report.weight_change(base, base)
    assert (same["rel_change"] == 0).all()
    assert set(same["module"]) == {"attention", "mlp", "embeddings", "norms"}
    assert set(same["layer"]) == {-1, 0, 1}
    tuned, _ = tiny_random("llama", seed=0)
    with torch.no_grad():
        tuned.model.layers[1].mlp.up_proj.weight.mul_(1.5)
    wc = report.weight_change(base, tuned, chunk_rows=7)  # tiny chunks: the streaming path is exercised
    row = wc[(wc.layer == 1) & (wc.module == "mlp")].iloc[0]
    mlp = [f"model.layers.1.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")]
    sd_b, sd_t = base.state_dict(), tuned.state_dict()
    num = sum(float(((sd_t[k] - sd_b[k]) ** 2).sum()) for k in mlp)
    den = sum(float((sd_b[k] ** 2).sum()) for k in mlp)
    assert row["rel_change"] == pytest.approx(np.sqrt(num / den), rel=1e-5)
    assert (wc[~((wc.layer == 1) & (wc.module == "mlp"))]["rel_change"] == 0).all()
    # the base read from disk, one tensor at a time, gives the same numbers
    base.save_pretrained(tmp_path / "base")
    from_disk = report.weight_change(tmp_path / "base", tuned)
    pd.testing.assert_frame_equal(from_disk.reset_index(drop=True), wc.reset_index(drop=True), atol=1e-6)
    assert report.figure_to_png(report.weight_change_heatmap(wc))[:4] == b"\x89PNG"


def test_word_diff_and_example_view(table):
    html = report.word_diff_html("the cat sat", "the dog sat")
    assert "<del" in html and "cat" in html and "<ins" in html and "dog" in html
    view = report.example_view(table, task="q", n=5)
    assert len(view) == 5 and "diff" in view.columns
    deltas = view["delta:tuned"].tolist()
    assert deltas == sorted(deltas)  # worst regression first
    assert "<table" in report.example_view(table, as_html=True)


def test_cells_a_k_shot_column_does_not_cover_read_as_not_run(table):
    """k-shot columns cover the target task only; the other tasks' cells say "–", never "nan"."""
    frame = report.table_frame(table)
    others = frame[frame["role"] == "other"]
    shot_cols = [c for c in frame.columns if "-shot" in c and c.startswith(("Δ CI", "W/T/L"))]
    assert len(others) and shot_cols
    assert (others[shot_cols] == "–").all().all()
    text = report.to_text(table)
    assert "nan" not in text.lower()
    assert "NaN" not in report.side_by_side(table).to_html()
