"""Metric values agree with direct library calls; bootstrap CIs behave; user metrics plug in and fail by name."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbft._utils import UnknownNameError
from nbft.evaluate.metrics import (
    ClassificationMetric,
    EntityMetric,
    MetricError,
    RougeMetric,
    ShortAnswerMetric,
    TranslationMetric,
    UserMetric,
    bootstrap_ci,
    get_metric,
    paired_bootstrap_ci,
    parse_choice,
    parse_entities,
)

PREDS = ["The cat sat on the mat. It was happy.", "a dog barked loudly", "", "Paris is the capital of France"]
REFS = ["The cat was sitting on the mat. It looked happy.", "the dog barked", "nothing here", "Paris"]


def test_rouge_matches_rouge_score_with_stemming_and_newline_sentences():
    from rouge_score import rouge_scorer

    ours = RougeMetric().corpus(PREDS, REFS)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    direct = {k: [] for k in ours}
    for p, r in zip(PREDS, REFS, strict=True):
        # Lsum needs one sentence per line: that is what nbft feeds it
        s = scorer.score(r.replace(". ", ".\n"), p.replace(". ", ".\n"))
        for k in direct:
            direct[k].append(s[k].fmeasure)
    for k in ours:
        assert ours[k] == pytest.approx(100 * np.mean(direct[k]))
    # stemming is on: "cats running" matches "cat run"
    assert RougeMetric().corpus(["cats running"], ["cat run"])["rouge1"] == pytest.approx(100.0)


def test_rouge_lsum_uses_sentence_lines():
    m = RougeMetric()
    got = m.corpus(["c d. a b."], ["a b. c d."])
    # Lsum matches sentence by sentence (both found whole); rougeL sees one sequence with the order swapped
    assert got["rougeLsum"] == pytest.approx(100.0)
    assert got["rougeL"] == pytest.approx(50.0)


def test_classification_matches_sklearn_and_reports_unparseable():
    from sklearn.metrics import accuracy_score, f1_score

    choices = ["negative", "neutral", "positive"]
    preds = ["Positive.", "negative", "I think it is neutral", "banana", "", "positive"]
    refs = ["positive", "negative", "neutral", "neutral", "negative", "negative"]
    got = ClassificationMetric(choices).corpus(preds, refs)
    parsed = ["positive", "negative", "neutral", "<unparseable>", "<unparseable>", "positive"]
    assert got["accuracy"] == pytest.approx(100 * accuracy_score(refs, parsed))
    assert got["macro_f1"] == pytest.approx(100 * f1_score(refs, parsed, labels=choices, average="macro"))
    assert got["unparseable_rate"] == pytest.approx(100 * 2 / 6)


def test_parse_choice_rules():
    c = ["negative", "neutral", "positive"]
    assert parse_choice(" Positive!", c) == "positive"
    assert parse_choice("The sentiment is negative.", c) == "negative"
    assert parse_choice("negative or positive", c) == "negative"  # starts with a choice
    assert parse_choice("both positive and negative", c) is None  # ambiguous
    assert parse_choice("", c) is None


def test_translation_matches_sacrebleu_and_has_signature():
    import sacrebleu

    m = TranslationMetric()
    got = m.corpus(PREDS, REFS)
    assert got["chrf++"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS], word_order=2).score)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)
    sig = m.signature()
    assert "chrF2++" in sig or "nw:2" in sig
    assert "BLEU" in sig


def test_entities_set_prf_matches_sklearn_on_binarized_sets():
    preds = ["PER: Ana; LOC: Lisbon", "ORG: Acme Corp", "none", "PER: Bo; PER: Cy; LOC: Oslo"]
    refs = ["PER: Ana; LOC: Porto", "ORG: acme corp", "LOC: Riga", "PER: Bo; LOC: Oslo"]
    got = EntityMetric().corpus(preds, refs)
    # by hand: tp = Ana, Acme, Bo, Oslo = 4; fp = Lisbon, Cy = 2; fn = Porto, Riga = 2
    assert got["entity_precision"] == pytest.approx(100 * 4 / 6)
    assert got["entity_recall"] == pytest.approx(100 * 4 / 6)
    assert got["entity_f1"] == pytest.approx(100 * 4 / 6)
    assert parse_entities("PER: Ana; LOC: Lisbon.") == {("PER", "ana"), ("LOC", "lisbon")}


def test_short_answer_em_and_f1():
    m = ShortAnswerMetric()
    got = m.per_example(["The Dakota Building", "in Paris, France", ""], ["Dakota building", "Paris", "x"])
    assert got["exact_match"].tolist() == [100.0, 0.0, 0.0]
    assert got["token_f1"][0] == 100.0
    assert got["token_f1"][1] == pytest.approx(100 * 2 * (1 / 3) * 1 / (1 / 3 + 1))


def test_unknown_metric_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean 'rouge'"):
        get_metric("rouge2")


def test_user_metric_plugs_in_and_errors_are_named():
    def exact(predictions, references):
        return {"exact": float(np.mean([p == r for p, r in zip(predictions, references, strict=True)]))}

    m = UserMetric(exact, name="my_exact", scale=100)
    assert m.corpus(["a", "b"], ["a", "c"]) == {"exact": 50.0}

    class Broken:
        name = "broken_module"

        def compute(self, predictions, references):
            raise ZeroDivisionError("boom")

    with pytest.raises(MetricError, match="broken_module.*ZeroDivisionError: boom"):
        get_metric(Broken()).corpus(["a"], ["a"])


def test_evaluate_module_adapter():
    evaluate = pytest.importorskip("evaluate")

    class Acc(evaluate.Metric):
        def _info(self):
            import datasets

            return evaluate.MetricInfo(
                description="acc",
                citation="",
                inputs_description="",
                features=datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
            )

        def _compute(self, predictions, references):
            return {"acc": sum(p == r for p, r in zip(predictions, references, strict=True)) / len(predictions)}

    m = UserMetric(Acc(), scale=100)
    assert m.corpus(["x", "y"], ["x", "x"]) == {"acc": 50.0}


def test_bootstrap_ci_contains_mean_and_is_degenerate_for_constants():
    x = np.array([100.0] * 30 + [0.0] * 70)
    lo, hi = bootstrap_ci(x, n_boot=500)
    assert lo < 30 < hi
    assert bootstrap_ci(np.full(20, 50.0)) == (50.0, 50.0)


def test_paired_ci_identical_is_zero_and_shift_is_detected():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 100, 200)
    assert paired_bootstrap_ci(a, a.copy()) == (0.0, 0.0)
    lo, hi = paired_bootstrap_ci(a, a + 5 + rng.normal(0, 1, 200))
    assert 3 < lo < 5 < hi < 7


def test_corpus_statistic_bootstrap_matches_full_sample():
    m = ClassificationMetric(["no", "yes"])
    preds, refs = ["yes", "no", "yes", "no"] * 10, ["yes", "yes", "yes", "no"] * 10
    stat = m.statistic(preds, refs, "macro_f1")
    assert stat(np.arange(40)) == pytest.approx(m.corpus(preds, refs)["macro_f1"])
    lo, hi = bootstrap_ci(stat, n=40, n_boot=200)
    assert lo <= m.corpus(preds, refs)["macro_f1"] <= hi
    assert not math.isnan(lo)
