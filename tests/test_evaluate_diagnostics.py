"""Classification diagnostics: predicted-label shares beside the references', the confusion matrix (scikit-learn),
the label-prior-shift note, and where they are shown (text, HTML export, ComparePanel)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from _train_data import spread

from nbft import compare, report
from nbft.evaluate import Task
from nbft.evaluate.diagnostics import NO_LABEL, label_diagnostics, pool, prior_shift
from nbft.evaluate.results import _diagnostics
from nbft.models import tiny_random

LABELS = ["negative", "neutral", "positive"]


def test_confusion_matrix_and_shares_on_known_predictions():
    refs = ["negative", "negative", "neutral", "positive", "positive", "positive"]
    preds = ["negative", "neutral", "neutral", "neutral", None, "positive"]
    d = label_diagnostics(preds, refs, LABELS)
    assert d["predicted_labels"] == [*LABELS, NO_LABEL]
    assert d["confusion"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1]]  # rows: references; last column: no label
    assert d["predicted_share"] == pytest.approx({"negative": 100 / 6, "neutral": 50.0, "positive": 100 / 6,
                                                  NO_LABEL: 100 / 6})  # fmt: skip
    assert d["reference_share"] == pytest.approx({"negative": 100 / 3, "neutral": 100 / 6, "positive": 50.0})
    (shift,) = prior_shift(d)
    assert shift["label"] == "neutral" and shift["shift"] == pytest.approx(100 / 3)
    # two runs on the same examples pool their counts
    both = pool([d, label_diagnostics(refs, refs, LABELS)])
    assert both["n"] == 12 and both["confusion"][2] == [0, 1, 4, 1]
    assert both["predicted_share"]["neutral"] == pytest.approx(100 * 4 / 12)


def test_prior_shift_is_more_than_15_points_not_15():
    refs = ["negative"] * 10 + ["neutral"] * 10 + ["positive"] * 10 + ["neutral"] * 10  # neutral: 50% of 40
    at = ["neutral"] * 26 + ["negative"] * 14  # 65%: exactly 15 points more
    over = ["neutral"] * 27 + ["negative"] * 13  # 67.5%
    assert prior_shift(label_diagnostics(at, refs, LABELS)) == []
    assert [s["label"] for s in prior_shift(label_diagnostics(over, refs, LABELS))] == ["neutral"]


def _task():
    rows = [{"text": f"tweet {i}", "label": LABELS[i % 3]} for i in range(24)]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:12]),
                                   "test": datasets.Dataset.from_list(rows[12:])})  # fmt: skip
    return Task("toy-sentiment", splits, "sentiment/1", max_new_tokens=3)


def test_the_results_note_a_label_prior_shift_per_model_and_source():
    """Synthetic results: the base answers like the references, the tuned model says "neutral" to most examples."""
    task = _task()
    refs = [LABELS[i % 3] for i in range(12)]
    tuned = ["Neutral."] * 9 + ["positive", "nothing", "negative"]
    scores = {task.name: {
        "base": {"outputs": refs, "ll_choices": refs, "references": refs},
        "tuned": {"outputs": tuned, "ll_choices": refs, "references": refs},
    }}  # fmt: skip
    notes: list[str] = []
    diag = _diagnostics(scores, [task], ["base", "tuned"], {}, notes)
    gen = diag[task.name]["models"]["tuned"]["generate"]
    assert gen["predicted_share"]["neutral"] == 75.0 and gen["predicted_share"][NO_LABEL] == pytest.approx(100 / 12)
    assert np.array(gen["confusion"]).sum() == 12 and gen["confusion"][1] == [0, 3, 0, 1]
    assert notes == [
        "toy-sentiment, tuned (generated answers): label-prior shift: predicts 'neutral' for 75% of examples where "
        "the references hold 33% (+42 points, more than 15)"
    ]
    # several runs of a column: counts pooled over the runs
    runs = [{"outputs": tuned, "ll_choices": refs, "references": refs}, {"outputs": refs, "ll_choices": refs,
                                                                          "references": refs}]  # fmt: skip
    pooled = _diagnostics(scores, [task], ["base", "tuned"], {(task.name, "tuned"): runs}, [])
    assert pooled[task.name]["models"]["tuned"]["generate"]["n"] == 24


@pytest.fixture(scope="module")
def table():
    base, tok = tiny_random("llama", seed=0)
    tuned, _ = tiny_random("llama", seed=1)
    return compare({"base": spread(base), "tuned": spread(tuned, seed=1)}, [_task()], target="toy-sentiment", n=12,
                   tokenizer=tok, progress=False, n_boot=100)  # fmt: skip


def test_label_shares_and_confusion_matrix_are_rendered(table, tmp_path):
    shares = report.label_frame(table)
    assert list(shares.columns) == ["references", "base", "tuned"]
    for col in ("base", "tuned"):  # every example is predicted as one label or as no label
        assert shares[col].sum() == pytest.approx(100.0)
    assert shares["references"].dropna().to_dict() == pytest.approx({("toy-sentiment", lab): 100 / 3 for lab in LABELS})
    cm = report.confusion_frame(table, "toy-sentiment", "tuned")
    assert list(cm.index) == LABELS and list(cm.columns) == [*LABELS, NO_LABEL] and cm.to_numpy().sum() == 12
    loglik = report.confusion_frame(table, "toy-sentiment", "tuned", source="loglik")
    assert loglik[NO_LABEL].sum() == 0, "a log-likelihood choice is always a label"
    with pytest.raises(ValueError, match="Did you mean 'tuned'"):
        report.confusion_frame(table, "toy-sentiment", "tuend")
    assert "Predicted labels (% of examples)" in table.to_text()
    page = report.export_html(table, tmp_path / "r.html").read_text()
    assert "Confusion matrix · toy-sentiment" in page and "Predicted labels" in page


def test_compare_panel_shows_the_label_diagnostics():
    from nbft.widgets import ComparePanel

    base, tok = tiny_random("llama", seed=0)
    panel = ComparePanel({"base": spread(base), "tuned": spread(tiny_random("llama", seed=1)[0], seed=1)}, [_task()],
                         target="toy-sentiment", tokenizer=tok, n=6, n_boot=100)  # fmt: skip
    panel.compare()
    panel.wait(300)
    assert "Confusion matrix · toy-sentiment" in panel.labels.value
    assert "Confusion matrix" in panel.static_html()
