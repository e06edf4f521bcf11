"""Tasks: your own data through Task.from_data, the fast score() entry point, fair budgets, the no-label share and the
format-vs-skill note, the stats module on plain numbers, and the new offline tasks' metrics."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest
from _train_data import spread

import nbft
from nbft._utils import UnknownNameError
from nbft.config import EvalConfig
from nbft.data import OfflineError, build_instruction_dataset
from nbft.evaluate import Task, TaskError, compare_models, generate, score, stats
from nbft.evaluate.metrics import SeqevalMetric, entities_to_bio, parse_entity_list
from nbft.models import tiny_random
from nbft.templates import TemplateError

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_random("llama", seed=0)
    return spread(model), tok


def _rows(n=40):
    return [{"text": f"review {i} was {'fine' if i % 2 else 'awful'}", "label": LABELS[i % 3]} for i in range(n)]


# --------------------------------------------------------------------------------------------------- from_data
@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet", "dataframe", "list", "dataset"])
def test_from_data_accepts_every_source_build_instruction_dataset_accepts(kind, tmp_path, tiny):
    model, tok = tiny
    frame = pd.DataFrame(_rows())
    source = {
        "csv": lambda: (frame.to_csv(tmp_path / "d.csv", index=False), str(tmp_path / "d.csv"))[1],
        "jsonl": lambda: (frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True), tmp_path / "d.jsonl")[1],
        "parquet": lambda: (frame.to_parquet(tmp_path / "d.parquet"), str(tmp_path / "d.parquet"))[1],
        "dataframe": lambda: frame,
        "list": lambda: _rows(),
        "dataset": lambda: datasets.Dataset.from_list(_rows()),
    }[kind]()
    task = Task.from_data(source, template="sentiment/1", name="mine")
    assert task.is_classification and task.metrics == ("classification",) and task.max_new_tokens == 16
    splits = task.load()
    assert {k: v.num_rows for k, v in splits.items()} == {"train": 32, "validation": 4, "test": 4}
    # the same split as the training set build_instruction_dataset makes from the same source
    built = build_instruction_dataset(source, "sentiment/1", seed=0)
    assert sorted(built["test"]["prompt"]) == sorted(task.template.render(ex) for ex in splits["test"])
    table = nbft.compare({"base": (model, tok)}, [task], n=4, progress=False, n_boot=100)
    assert table.summary.query("metric == 'accuracy'")["n"].iloc[0] == 4


def test_from_data_with_prompt_completion_rows_uses_prompts_verbatim(tiny):
    model, tok = tiny
    rows = [{"prompt": f"{i} + {i} =", "completion": str(2 * i)} for i in range(30)]
    task = Task.from_data(rows, metric="short_answer", name="sums")
    ex = task.sample(1)[0]
    assert task.prompt(ex) == ex["prompt"]  # no newline or instruction added: exactly what training saw
    results = compare_models({"base": (model, tok)}, [task], n=None, progress=False, n_boot=100)
    assert results["scores"]["sums"]["base"]["headline"] == "token_f1"
    assert results["examples"]["sums"]["prompt"][0] == task.load()["test"][0]["prompt"]


def test_from_data_with_own_splits_and_a_user_metric(tiny):
    model, tok = tiny
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"question": f"q{i}?", "answer": f"a{i}"} for i in range(6)]),
        "test": datasets.Dataset.from_list([{"question": f"t{i}?", "answer": f"b{i}"} for i in range(5)]),
    })  # fmt: skip

    def length_ratio(predictions, references):
        return {"length_ratio": 100.0 * sum(map(len, predictions)) / max(1, sum(map(len, references)))}

    task = Task.from_data(dd, template="qa/1", metric=["short_answer", length_ratio], name="own-split")
    assert task.load()["test"]["question"] == [f"t{i}?" for i in range(5)]
    results = compare_models({"base": (model, tok)}, [task], n=None, progress=False, n_boot=100)
    assert "length_ratio" in results["scores"]["own-split"]["base"]["metrics"]


def test_from_data_bad_input_names_the_fix(tmp_path):
    with pytest.raises(TaskError, match="pass template=.*columns \\['text', 'label'\\].*sentiment/1"):
        Task.from_data(_rows())
    with pytest.raises(UnknownNameError, match="unknown metric 'rouge2'.*Did you mean 'rouge'"):
        Task.from_data(_rows(), template="sentiment/1", metric="rouge2")
    with pytest.raises(TemplateError, match="needs the field 'text'.*columns=\\{'text': 'your_column'\\}"):
        Task.from_data([{"body": "x", "label": "positive"}] * 10, template="sentiment/1")
    with pytest.raises(TaskError, match="file not found"):
        Task.from_data(str(tmp_path / "missing.csv"), template="sentiment/1")


def test_offline_hub_errors_show_the_call_to_make(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"nbft\.Task\.from_data\('path/to/data\.csv', template='summarize/1', "
                                           r"metric='rouge'\)"):  # fmt: skip
        Task.from_data("knkarthick/dialogsum", template="summarize/1", metric="rouge")
    from nbft.sources import SourceUnavailableError

    with pytest.raises(SourceUnavailableError, match=r"Task\.from_data\('path/to/data\.csv', template='summarize/1', "
                                                     r"metric='rouge'\)"):  # fmt: skip
        nbft.get_task("summarize").load()


# --------------------------------------------------------------------------------------------------- score()
def test_score_is_a_plain_fast_entry_point_with_fixed_examples(tiny):
    model, tok = tiny
    task = Task.from_data(_rows(60), template="sentiment/1", name="fixed")
    fixed = task.sample(6)
    assert fixed == task.sample(6)  # the same examples on every call
    cfg = EvalConfig(batch_size=4, progress=False)
    a, b = score(model, tok, task, fixed, cfg), score(model, tok, task, fixed, cfg)
    assert a["outputs"] == b["outputs"] and a["value"] == b["value"]  # greedy: same prompts, same answers
    assert a["headline"] == "accuracy" and a["n"] == 6 and "ci" not in a
    assert a["no_label_rate"] == a["metrics"]["unparseable_rate"]
    import json

    json.dumps(a)  # plain data
    with_ci = score(model, tok, task, fixed, cfg, ci=True)
    lo, hi = with_ci["ci"]["accuracy"]
    assert lo <= with_ci["value"] <= hi


# --------------------------------------------------------------------------------------------------- budgets
def test_generation_halts_at_a_label_and_keeps_it(tiny):
    model, tok = tiny
    prompts = [f"Prompt {i}\n" for i in range(5)]
    full = generate(model, tok, prompts, max_new_tokens=16, progress=False)
    label = full[0][2:4]  # a string the model writes early in its first answer
    halted = generate(model, tok, prompts, max_new_tokens=16, halt=(label,), progress=False)
    assert halted[0].endswith(label) and len(halted[0]) < len(full[0])  # stopped there, label kept
    for h, f in zip(halted, full, strict=True):
        assert f.startswith(h) and (label in h or h == f)


@pytest.mark.slow
def test_sentiment_budget_lets_the_real_base_model_reach_a_label(default_model):
    """Issue 7: 17% of the base model's answers were cut by the 4-token limit before any label."""
    import dataclasses

    model, tok = default_model
    task = nbft.get_task("sentiment")
    assert {"negative", "Neutral", "POSITIVE"} <= set(task.halt)
    fixed = task.sample(40)
    cfg = EvalConfig(batch_size=20, chat_template=True, progress=False, scoring="generate")
    old = score(model, tok, dataclasses.replace(task, max_new_tokens=4, stop_at_choice=False), fixed, cfg)
    new = score(model, tok, task, fixed, cfg)
    assert new["no_label_rate"] < old["no_label_rate"], (old["outputs"][:5], new["outputs"][:5])
    assert new["no_label_rate"] <= 10
    labelled = [o for o in new["outputs"] if any(c in o.lower() for c in task.choices)]
    assert all(o.lower().endswith(task.choices) for o in labelled)  # halted at the label


def test_no_label_share_and_format_vs_skill_note(tiny):
    from nbft.evaluate.results import _format_notes

    model, tok = tiny
    table = nbft.compare({"base": model, "tuned": model}, [Task.from_data(_rows(), template="sentiment/1", name="s")],
                         target="s", n=4, tokenizer=tok, progress=False, n_boot=100)  # fmt: skip
    frame = nbft.report.table_frame(table)
    assert ("s", "no label (%)") in frame.index and frame.loc[("s", "no label (%)"), "base"] >= 0
    deltas = [
        {"task": "s", "model": "tuned", "metric": "accuracy", "delta": 30.0, "ci_low": 20.0, "ci_high": 40.0,
         "significant": True},
        {"task": "s", "model": "tuned", "metric": "ll_accuracy", "delta": 1.0, "ci_low": -4.0, "ci_high": 6.0,
         "significant": False},
    ]  # fmt: skip
    scores = {"s": {"base": {"no_label_rate": 17.0}, "tuned": {"no_label_rate": 0.0}}}
    notes: list[str] = []
    _format_notes(deltas, scores, [table_task := nbft.get_task("sentiment")], "base", notes)
    assert not notes  # another task's name: nothing to say
    _format_notes(deltas, scores, [Task("s", _rows(), "sentiment/1")], "base", notes)
    assert len(notes) == 1 and "answer format rather than skill" in notes[0] and "base 17%" in notes[0]
    agree = [dict(deltas[0]), {**deltas[1], "delta": 25.0, "ci_low": 15.0, "ci_high": 35.0, "significant": True}]
    notes.clear()
    _format_notes(agree, scores, [Task("s", _rows(), "sentiment/1")], "base", notes)
    assert not notes and table_task.name == "sentiment"


# --------------------------------------------------------------------------------------------------- stats
def test_stats_on_plain_numbers():
    base = np.array([0.0, 0.0, 100.0, 100.0, 0.0])
    other = np.array([100.0, 0.0, 100.0, 0.0, 100.0])
    d = stats.delta(base, other, n_boot=500)
    assert d["delta"] == pytest.approx(20.0) and (d["wins"], d["ties"], d["losses"]) == (2, 2, 1)
    assert d["ci_low"] < 0 < d["ci_high"] and not d["significant"] and len(d["replicates"]) == 500
    f = stats.forgetting({"t": 30.0, "a": -10.0, "b": 2.0, "c": -4.0}, target="t")
    assert (f["G"], f["BWT"], f["AF"], f["worst_drop"], f["worst_task"]) == (
        30.0,
        -4.0,
        pytest.approx(14 / 3),
        -10.0,
        "a",
    )
    reps = {"t": np.full(100, 30.0), "a": np.linspace(-20, 0, 100), "b": np.full(100, 2.0), "c": np.full(100, -4.0)}
    f = stats.forgetting({"t": 30.0, "a": -10.0, "b": 2.0, "c": -4.0}, target="t", replicates=reps)
    assert f["G_ci_low"] == f["G_ci_high"] == 30.0
    assert f["AF_ci_low"] < f["AF"] < f["AF_ci_high"] and f["worst_drop_ci_low"] <= -19
    rows = {
        "t": {"delta": 5.0, "ci_high": 9.0},
        "a": {"delta": -3.0, "ci_high": -1.0},
        "b": {"delta": -1, "ci_high": 2},
    }
    assert stats.forgetting(rows, target="t")["significant_regressions"] == 1


def test_synthetic_tasks_never_count_as_forgetting(tiny):
    model, tok = tiny
    real = Task.from_data(_rows(), template="sentiment/1", name="real")
    fake = Task("fake", datasets.Dataset.from_list([{"question": f"q{i}", "answer": "a"} for i in range(6)]), "qa/1",
                synthetic=True, max_new_tokens=2)  # fmt: skip
    results = compare_models({"base": model, "tuned": spread(tiny_random("llama", seed=1)[0], 1)}, [real, fake],
                             target="real", n=4, tokenizer=tok, progress=False, n_boot=100)  # fmt: skip
    assert results["forgetting"][0]["n_other_tasks"] == 0
    assert any("synthetic" in n for n in results["notes"])


# --------------------------------------------------------------------------------------------------- seqeval
def test_entities_map_back_to_tokens_for_seqeval():
    tokens = ["U.S.", "envoy", "Bill", "Clinton", "met", "EU", "officials", "in", "Brussels", "."]
    tags, missing = entities_to_bio(
        tokens, parse_entity_list("PERSON: Bill Clinton; LOC: brussels.; ORG: EU; LOC: U.S.")
    )
    assert tags == ["B-LOC", "O", "B-PER", "I-PER", "O", "B-ORG", "O", "O", "B-LOC", "O"] and missing == 0
    assert entities_to_bio(tokens, [("ORG", "NATO")]) == (["O"] * 10, 1)


def test_seqeval_metric_matches_seqeval_and_counts_invented_entities():
    from seqeval.metrics import f1_score

    ex = [
        {"tokens": ["Ana", "lives", "in", "Lisbon"], "tags": ["B-PER", "O", "O", "B-LOC"]},
        {"tokens": ["Acme", "Corp", "hired", "Bo"], "tags": ["B-ORG", "I-ORG", "O", "B-PER"]},
    ]
    preds = ["PER: Ana; LOC: Lisbon", "ORG: Acme; PER: Bo; LOC: Paris"]  # a partial span and an invented entity
    m = SeqevalMetric()
    values = m.corpus(preds, ["", ""], examples=ex)
    y_true = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "B-PER", "O"]]
    y_pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O", "O", "B-PER", "B-SPURIOUS"]]
    assert values["entity_f1"] == pytest.approx(100 * f1_score(y_true, y_pred))
    assert values["entity_precision"] == pytest.approx(60.0) and values["entity_recall"] == pytest.approx(75.0)
    stat = m.statistic(preds, ["", ""], "entity_f1", examples=ex)
    assert stat(np.array([0, 1])) == pytest.approx(values["entity_f1"]) and stat(np.array([0, 0])) == 100.0
    with pytest.raises(Exception, match="needs 'tokens' and 'tags'"):
        m.corpus(preds, ["", ""], examples=[{"text": "x"}, {"text": "y"}])
