"""Metrics, each a thin adapter over a well-kept library, plus the bootstrap used for every confidence interval.

All values are reported in **points (0-100)**, so that deltas on different tasks can be averaged in the forgetting
summary: ROUGE and F1 fractions are multiplied by 100, sacrebleu already reports 0-100.

Every metric gives two things:

- ``corpus(preds, refs)``: the corpus-level values (what the table shows);
- ``per_example(preds, refs)``: one score per example (what the per-example view, wins/ties/losses and the fast
  bootstrap use). Keys listed in ``mean_keys`` are exactly the mean of their per-example scores; the other keys
  (macro-F1, BLEU, chrF++, entity F1) are recomputed on each bootstrap resample.

Example::

    from nbft.evaluate.metrics import get_metric
    m = get_metric("rouge")
    m.corpus(["the cat sat"], ["the cat sat down"])   # {'rouge1': 85.7..., 'rouge2': 80.0, ...}
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from nbft._utils import unknown

__all__ = [
    "ClassificationMetric",
    "EntityMetric",
    "Metric",
    "MetricError",
    "RougeMetric",
    "SeqevalMetric",
    "ShortAnswerMetric",
    "TranslationMetric",
    "UserMetric",
    "bootstrap_ci",
    "entities_to_bio",
    "get_metric",
    "list_metrics",
    "paired_bootstrap_ci",
    "parse_choice",
    "parse_entities",
    "parse_entity_list",
    "parse_name_list",
]


class MetricError(RuntimeError):
    """A metric failed; the message names the metric."""


class Metric:
    """Base class: a named metric producing one or more values (``keys``) in points (0-100)."""

    name: str = "metric"
    keys: tuple[str, ...] = ()
    #: the metric needs the examples themselves (e.g. gold BIO tags): it takes an ``examples=`` argument
    needs_examples: bool = False
    mean_keys: frozenset[str] = frozenset()
    #: the per-example score shown in the per-example view (a key in ``keys``)
    example_key: str | None = None

    def corpus(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
        raise NotImplementedError

    def per_example(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-example scores; must include every key in ``mean_keys`` (others optional)."""
        return {}

    def signature(self) -> str | None:
        """A reproducibility signature (sacrebleu's), when the library provides one."""
        return None

    def statistic(self, preds: Sequence[str], refs: Sequence[str], key: str) -> Callable[[np.ndarray], float]:
        """``key``'s corpus value as a function of resampled example indices (for the bootstrap)."""
        preds, refs = list(preds), list(refs)

        def stat(idx: np.ndarray) -> float:
            return self.corpus([preds[i] for i in idx], [refs[i] for i in idx])[key]

        return stat

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, keys={self.keys})"


# --------------------------------------------------------------------------------------------------- ROUGE
_SENT_END = re.compile(r"(?<=[.!?])\s+")


def _sentences_on_lines(text: str) -> str:
    # ROUGE-Lsum treats newlines as sentence boundaries. rouge_score's own splitter needs nltk's punkt data (a
    # download), so split after . ! ? instead, as the HF summarization examples do with nltk.
    return "\n".join(s for s in _SENT_END.split(text.strip()) if s)


class RougeMetric(Metric):
    """ROUGE-1/2/L/Lsum F-measure via ``rouge_score`` with the Porter stemmer; sentences on new lines for Lsum."""

    name = "rouge"
    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    mean_keys = frozenset(keys)
    example_key = "rougeL"

    def __init__(self) -> None:
        import logging

        from rouge_score import rouge_scorer

        # rouge_score logs "Using default tokenizer." at INFO through absl on every scorer: say it never
        logging.getLogger("absl").setLevel(max(logging.getLogger("absl").level, logging.WARNING))
        self._scorer = rouge_scorer.RougeScorer(list(self.keys), use_stemmer=True)

    def per_example(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, list[float]] = {k: [] for k in self.keys}
        for p, r in zip(preds, refs, strict=True):
            # rouge_score.score(target, prediction): the reference comes first.
            s = self._scorer.score(_sentences_on_lines(r), _sentences_on_lines(p))
            for k in self.keys:
                out[k].append(100.0 * s[k].fmeasure)
        return {k: np.asarray(v, dtype=float) for k, v in out.items()}

    def corpus(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
        return {k: float(np.mean(v)) if len(v) else math.nan for k, v in self.per_example(preds, refs).items()}


# --------------------------------------------------------------------------------------------------- classification
_PUNCT = re.compile(r"[^\w\s-]")


def parse_choice(text: str, choices: Sequence[str]) -> str | None:
    """Map generated text to one of ``choices``, or ``None`` when it can't be parsed.

    Case and punctuation are ignored. The text is accepted if it starts with a choice, or else if exactly one
    choice occurs in it as a whole word.

    Example::

        parse_choice(" Positive.", ["negative", "positive"])    # 'positive'
        parse_choice("no idea", ["negative", "positive"])       # None
    """
    norm = _PUNCT.sub(" ", text.lower()).split()
    if not norm:
        return None
    by_norm = {" ".join(_PUNCT.sub(" ", c.lower()).split()): c for c in choices}
    joined = " ".join(norm)
    # Longest choice first, so "very positive" wins over "positive".
    for key in sorted(by_norm, key=len, reverse=True):
        if key and (joined == key or joined.startswith(key + " ")):
            return by_norm[key]
    found = {c for key, c in by_norm.items() if key and re.search(rf"\b{re.escape(key)}\b", joined)}
    return found.pop() if len(found) == 1 else None


class ClassificationMetric(Metric):
    """Accuracy and macro-F1 via scikit-learn after mapping outputs to labels; unparseable outputs are wrong.

    ``prefix`` distinguishes scoring modes: ``""`` for generated text, ``"ll_"`` for log-likelihood choices.
    """

    name = "classification"
    example_key = "accuracy"

    def __init__(self, choices: Sequence[str], prefix: str = "") -> None:
        if not choices:
            raise ValueError("a classification metric needs the task's choices")
        self.choices = tuple(choices)
        self.prefix = prefix
        self.keys = (f"{prefix}accuracy", f"{prefix}macro_f1", f"{prefix}unparseable_rate")
        self.mean_keys = frozenset({f"{prefix}accuracy", f"{prefix}unparseable_rate"})
        self.example_key = f"{prefix}accuracy"
        self.name = f"{prefix}classification"

    def labels(self, preds: Sequence[str]) -> list[str | None]:
        return [parse_choice(p, self.choices) for p in preds]

    def per_example(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, np.ndarray]:
        parsed = self.labels(preds)
        return {
            f"{self.prefix}accuracy": np.array([100.0 * (p == r) for p, r in zip(parsed, refs, strict=True)]),
            f"{self.prefix}unparseable_rate": np.array([100.0 * (p is None) for p in parsed]),
        }

    def statistic(self, preds: Sequence[str], refs: Sequence[str], key: str) -> Callable[[np.ndarray], float]:
        if key != f"{self.prefix}macro_f1":
            return super().statistic(preds, refs, key)
        from sklearn.metrics import f1_score

        # Parse once; each resample then only re-runs scikit-learn's F1 on label arrays.
        y_pred = np.array([p if p is not None else "<unparseable>" for p in self.labels(preds)], dtype=object)
        y_true = np.array(list(refs), dtype=object)
        labels = list(self.choices)
        return lambda idx: 100.0 * f1_score(y_true[idx], y_pred[idx], labels=labels, average="macro", zero_division=0)

    def corpus(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        parsed = self.labels(preds)
        # Unparseable outputs get a label outside `choices`: wrong for accuracy, a false negative for macro-F1,
        # and (since `labels=` lists only the real choices) not a class of its own in the macro average.
        y_pred = [p if p is not None else "<unparseable>" for p in parsed]
        y_true = list(refs)
        if not y_true:
            return dict.fromkeys(self.keys, math.nan)
        return {
            f"{self.prefix}accuracy": 100.0 * accuracy_score(y_true, y_pred),
            f"{self.prefix}macro_f1": 100.0
            * f1_score(y_true, y_pred, labels=list(self.choices), average="macro", zero_division=0),
            f"{self.prefix}unparseable_rate": 100.0 * sum(p is None for p in parsed) / len(parsed),
        }


# --------------------------------------------------------------------------------------------------- translation
class TranslationMetric(Metric):
    """chrF++ (``word_order=2``) and BLEU via sacrebleu, with sacrebleu's signatures."""

    name = "translation"
    keys = ("chrf++", "bleu")
    example_key = "chrf++"

    def __init__(self) -> None:
        from sacrebleu.metrics import BLEU, CHRF

        self._chrf = CHRF(word_order=2)
        self._bleu = BLEU()
        # sentence-level BLEU needs effective order, else most short sentences score 0
        self._sent_bleu = BLEU(effective_order=True)

    def corpus(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
        refs_t = [list(refs)]
        return {
            "chrf++": float(self._chrf.corpus_score(list(preds), refs_t).score),
            "bleu": float(self._bleu.corpus_score(list(preds), refs_t).score),
        }

    def per_example(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, np.ndarray]:
        return {
            "chrf++": np.array([self._chrf.sentence_score(p, [r]).score for p, r in zip(preds, refs, strict=True)]),
            "bleu": np.array([self._sent_bleu.sentence_score(p, [r]).score for p, r in zip(preds, refs, strict=True)]),
        }

    def signature(self) -> str:
        return f"chrF++: {self._chrf.get_signature()} | BLEU: {self._bleu.get_signature()}"


class ChrFMetric(TranslationMetric):
    """chrF++ only (sacrebleu), for open-ended generation such as dialogue replies."""

    name = "chrf"
    keys = ("chrf++",)

    def corpus(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
        return {"chrf++": float(self._chrf.corpus_score(list(preds), [list(refs)]).score)}

    def per_example(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, np.ndarray]:
        return {"chrf++": super().per_example(preds, refs)["chrf++"]}

    def signature(self) -> str:
        return f"chrF++: {self._chrf.get_signature()}"


# --------------------------------------------------------------------------------------------------- entities
_ENT = re.compile(r"^\s*([A-Za-z_]+)\s*:\s*(.+?)\s*$")


def parse_entities(text: str) -> set[tuple[str, str]]:
    """Parse ``"PER: Ana; LOC: Lisbon"`` into ``{("PER", "ana"), ("LOC", "lisbon")}`` (spans lower-cased).

    Items are separated by ``;`` or new lines; anything that isn't ``TYPE: span`` (including ``none``) is ignored.
    """
    out: set[tuple[str, str]] = set()
    for item in re.split(r"[;\n]", text):
        m = _ENT.match(item)
        if m:
            out.add((m.group(1).upper(), " ".join(m.group(2).lower().split()).rstrip(".")))
    return out


class EntityMetric(Metric):
    """Entity-level micro precision, recall and F1 on (type, span) sets, via scikit-learn.

    Each example's gold and predicted sets are binarized over the union of all (type, span) items
    (``MultiLabelBinarizer``), so ``precision_recall_fscore_support(average="micro")`` counts exactly the matched,
    spurious and missed entities.
    """

    name = "entities"
    keys = ("entity_precision", "entity_recall", "entity_f1")
    example_key = "entity_f1"

    def _binarize(self, preds: Sequence[str], refs: Sequence[str]) -> tuple[Any, Any]:
        from sklearn.preprocessing import MultiLabelBinarizer

        gold = [parse_entities(r) for r in refs]
        pred = [parse_entities(p) for p in preds]
        mlb = MultiLabelBinarizer(classes=sorted(set().union(*gold, *pred)))
        return mlb.fit_transform(gold), mlb.transform(pred)

    def corpus(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
        from sklearn.metrics import precision_recall_fscore_support

        y_true, y_pred = self._binarize(preds, refs)
        if y_true.shape[1] == 0:  # no entity anywhere, predicted or gold: nothing to get wrong
            return dict.fromkeys(self.keys, 100.0)
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
        return {"entity_precision": 100.0 * p, "entity_recall": 100.0 * r, "entity_f1": 100.0 * f}

    def statistic(self, preds: Sequence[str], refs: Sequence[str], key: str) -> Callable[[np.ndarray], float]:
        from sklearn.metrics import precision_recall_fscore_support

        y_true, y_pred = self._binarize(preds, refs)  # parse once, resample rows of the binarized matrices
        pos = self.keys.index(key)
        if y_true.shape[1] == 0:
            return lambda idx: 100.0
        return lambda idx: (
            100.0
            * float(precision_recall_fscore_support(y_true[idx], y_pred[idx], average="micro", zero_division=0)[pos])
        )

    def per_example(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, np.ndarray]:
        from sklearn.metrics import f1_score

        y_true, y_pred = self._binarize(preds, refs)
        if y_true.shape[1] == 0:
            return {"entity_f1": np.full(len(preds), 100.0)}
        # An example with no gold and no predicted entity is perfect (sklearn would call it 0/0).
        scores = [
            100.0 if not (t.any() or p.any()) else 100.0 * f1_score(t, p, zero_division=0)
            for t, p in zip(y_true, y_pred, strict=True)
        ]
        return {"entity_f1": np.asarray(scores, dtype=float)}


# --------------------------------------------------------------------------------------------------- seqeval
_TYPE_ALIASES = {
    "PERSON": "PER", "PEOPLE": "PER", "LOCATION": "LOC", "PLACE": "LOC", "ORGANIZATION": "ORG",
    "ORGANISATION": "ORG", "MISCELLANEOUS": "MISC", "OTHER": "MISC",
}  # fmt: skip


def parse_entity_list(text: str) -> list[tuple[str, str]]:
    """Parse ``"PER: Ana; LOC: Lisbon"`` into ``[("PER", "Ana"), ("LOC", "Lisbon")]`` in order (repeats kept).

    Items are separated by ``;`` or new lines; anything that isn't ``TYPE: span`` (including ``none``) is ignored.
    Spelled-out types (``PERSON``, ``LOCATION``, ``ORGANIZATION``...) count as their short names.
    """
    out = []
    for item in re.split(r"[;\n]", text):
        m = _ENT.match(item)
        if m:
            etype = m.group(1).upper()
            out.append((_TYPE_ALIASES.get(etype, etype), " ".join(m.group(2).split())))
    return out


_BULLET = re.compile(r"^\s*(?:[-*•]+|\d+[.)])\s*")
_NONE = {"none", "n/a", "no", "nothing", "none."}


def parse_name_list(text: str) -> list[str]:
    """Parse an untyped list of names (``"Ana; Bo"``, ``"Ana, Bo"``, one per line, bulleted) in order.

    ``none`` (and the like) gives an empty list; quotes and a leading ``Answer:`` are dropped.
    """
    text = re.sub(r"^\s*answer\s*:\s*", "", text.strip(), flags=re.IGNORECASE)
    out = []
    for item in re.split(r"[;,\n]", text):
        name = _BULLET.sub("", item).strip().strip("\"'“”‘’").strip()
        if name and name.lower().rstrip(".") not in _NONE:
            out.append(" ".join(name.split()))
    return out


def entities_to_bio(tokens: Sequence[str], entities: Sequence[tuple[str, str]]) -> tuple[list[str], int]:
    """Tag ``tokens`` with BIO tags for ``entities`` (type, span text), each at its first untagged occurrence.

    Matching ignores case (and a trailing full stop the model may add). Returns the tags and the number of entities
    that occur nowhere in the sentence (each is a spurious prediction; the caller counts it).

    Example::

        entities_to_bio(["Ana", "flew", "to", "New", "York"], [("PER", "Ana"), ("LOC", "New York")])
        # (['B-PER', 'O', 'O', 'B-LOC', 'I-LOC'], 0)
    """
    low = [t.lower() for t in tokens]
    tags = ["O"] * len(tokens)
    missing = 0
    for etype, span in entities:
        candidates = [span.lower().split(), span.rstrip(".").lower().split()]
        placed = False
        for words in (w for w in candidates if w):
            for start in range(len(low) - len(words) + 1):
                window = slice(start, start + len(words))
                if low[window] == words and all(t == "O" for t in tags[window]):
                    tags[start] = f"B-{etype}"
                    for j in range(start + 1, start + len(words)):
                        tags[j] = f"I-{etype}"
                    placed = True
                    break
            if placed:
                break
        if not placed:
            missing += 1
    return tags, missing


class SeqevalMetric(Metric):
    """Entity-level precision, recall and F1 (micro) with ``seqeval``, as in CoNLL evaluations.

    Generated text (``"PER: Ana; LOC: Lisbon"``) is mapped back onto the sentence's tokens as BIO tags (each entity
    at its first free occurrence, ignoring case) and compared with the gold BIO tags of the example (fields
    ``tokens`` and ``tags``). When the example names one ``entity_tag`` (the question asked for one type), the answer
    is a plain list of names and each is tagged with that type. A predicted entity that occurs nowhere in the
    sentence counts as a false positive.
    seqeval gives the corpus values; the same entity counts per example make the bootstrap fast.
    """

    name = "seqeval"
    keys = ("entity_precision", "entity_recall", "entity_f1")
    example_key = "entity_f1"
    needs_examples = True

    def _sequences(
        self, preds: Sequence[str], examples: Sequence[Mapping[str, Any]] | None
    ) -> tuple[list[list[str]], list[list[str]]]:
        if examples is None or len(examples) != len(preds):
            raise MetricError("the seqeval metric needs the examples (with 'tokens' and 'tags' fields)")
        y_true, y_pred = [], []
        for text, ex in zip(preds, examples, strict=True):
            if "tokens" not in ex or "tags" not in ex:
                raise MetricError(
                    f"the seqeval metric needs 'tokens' and 'tags' (BIO) fields in each example; got {sorted(ex)}"
                )
            tokens, gold = list(ex["tokens"]), [str(t) for t in ex["tags"]]
            if ex.get("entity_tag"):  # one entity type asked for: the answer lists names, typed by the question
                entities = [(str(ex["entity_tag"]), name) for name in parse_name_list(text)]
            else:
                entities = parse_entity_list(text)
            tags, missing = entities_to_bio(tokens, entities)
            # a predicted entity absent from the sentence is a false positive: give it a position of its own
            y_true.append(gold + ["O"] * missing)
            y_pred.append(tags + ["B-SPURIOUS"] * missing)
        return y_true, y_pred

    def _counts(self, preds: Sequence[str], refs: Sequence[str], examples: Any) -> np.ndarray:
        from seqeval.metrics.sequence_labeling import get_entities

        y_true, y_pred = self._sequences(preds, examples)
        rows = []
        for t, p in zip(y_true, y_pred, strict=True):
            gold, pred = set(get_entities(t)), set(get_entities(p))
            rows.append((len(gold & pred), len(pred), len(gold)))
        return np.asarray(rows, dtype=float).reshape(-1, 3)

    @staticmethod
    def _prf(counts: np.ndarray) -> tuple[float, float, float]:
        tp, n_pred, n_gold = counts.sum(axis=0) if len(counts) else (0.0, 0.0, 0.0)
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_gold if n_gold else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        if not n_pred and not n_gold:  # nothing to find and nothing claimed: perfect
            return 1.0, 1.0, 1.0
        return p, r, f

    def corpus(self, preds: Sequence[str], refs: Sequence[str], examples: Any = None) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        y_true, y_pred = self._sequences(preds, examples)
        if not any(t != "O" for seq in y_true + y_pred for t in seq):
            return dict.fromkeys(self.keys, 100.0)
        return {
            "entity_precision": 100.0 * float(precision_score(y_true, y_pred, zero_division=0)),
            "entity_recall": 100.0 * float(recall_score(y_true, y_pred, zero_division=0)),
            "entity_f1": 100.0 * float(f1_score(y_true, y_pred, zero_division=0)),
        }

    def per_example(self, preds: Sequence[str], refs: Sequence[str], examples: Any = None) -> dict[str, np.ndarray]:
        counts = self._counts(preds, refs, examples)
        return {"entity_f1": np.array([100.0 * self._prf(c[None, :])[2] for c in counts])}

    def statistic(
        self, preds: Sequence[str], refs: Sequence[str], key: str, examples: Any = None
    ) -> Callable[[np.ndarray], float]:
        counts = self._counts(preds, refs, examples)  # micro averages are sums of counts: resample the rows
        pos = self.keys.index(key)
        return lambda idx: 100.0 * self._prf(counts[idx])[pos]


# --------------------------------------------------------------------------------------------------- short answers
_PUNCT_SET = frozenset(string.punctuation)


def _squad_normalize(text: str) -> list[str]:
    # The SQuAD v1.1 official normalization: lower case, drop punctuation and articles, collapse whitespace.
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT_SET)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


class ShortAnswerMetric(Metric):
    """Normalized exact match and token F1, as in the official SQuAD v1.1 evaluation script.

    No maintained offline library exposes these two functions (``evaluate.load("squad")`` needs the Hub), so this is
    the reference script's logic: normalization, then precision/recall of the token multiset overlap.
    """

    name = "short_answer"
    keys = ("exact_match", "token_f1")
    mean_keys = frozenset(keys)
    example_key = "token_f1"

    @staticmethod
    def _f1(pred: list[str], ref: list[str]) -> float:
        if not pred or not ref:
            return float(pred == ref)
        common = Counter(pred) & Counter(ref)
        same = sum(common.values())
        if same == 0:
            return 0.0
        precision, recall = same / len(pred), same / len(ref)
        return 2 * precision * recall / (precision + recall)

    def per_example(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, np.ndarray]:
        em, f1 = [], []
        for p, r in zip(preds, refs, strict=True):
            pn, rn = _squad_normalize(p), _squad_normalize(r)
            em.append(100.0 * (pn == rn))
            f1.append(100.0 * self._f1(pn, rn))
        return {"exact_match": np.asarray(em, dtype=float), "token_f1": np.asarray(f1, dtype=float)}

    def corpus(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
        return {k: float(np.mean(v)) if len(v) else math.nan for k, v in self.per_example(preds, refs).items()}


# --------------------------------------------------------------------------------------------------- user metrics
class UserMetric(Metric):
    """Adapter for a user's metric: an ``evaluate.EvaluationModule`` or a callable ``fn(predictions, references)``.

    The module's ``compute(predictions=..., references=...)`` result keeps its numeric values; values in [0, 1] are
    NOT rescaled (the module's own scale is kept), so say which scale you use in ``scale``. Errors raised by the
    module are re-raised as :class:`MetricError` naming it.

    Example::

        import evaluate
        acc = evaluate.load("path/to/local/accuracy.py")     # any EvaluationModule
        task = get_task("sentiment").with_metrics(UserMetric(acc, scale=100))
    """

    example_key = None

    def __init__(
        self, module: Any, *, name: str | None = None, keys: Sequence[str] | None = None, scale: float = 1.0
    ) -> None:
        self.module = module
        self.name = name or getattr(module, "name", None) or getattr(module, "__name__", None) or "user_metric"
        self.scale = scale
        self._keys = tuple(keys) if keys else None
        self.keys = self._keys or ()

    def corpus(self, preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
        try:
            if hasattr(self.module, "compute"):
                result = self.module.compute(predictions=list(preds), references=list(refs))
            else:
                result = self.module(list(preds), list(refs))
        except Exception as exc:
            raise MetricError(f"user metric {self.name!r} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(result, (int, float, np.floating, np.integer)):
            result = {self.name: result}
        if not isinstance(result, Mapping):
            raise MetricError(f"user metric {self.name!r} returned {type(result).__name__}, expected a dict of numbers")
        values = {
            k: self.scale * float(v)
            for k, v in result.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
        }
        if not values:
            raise MetricError(f"user metric {self.name!r} returned no numeric value: {result!r}")
        if self._keys:
            missing = [k for k in self._keys if k not in values]
            if missing:
                raise MetricError(f"user metric {self.name!r} did not return {missing}; it returned {sorted(values)}")
            values = {k: values[k] for k in self._keys}
        self.keys = tuple(values)
        return values


# --------------------------------------------------------------------------------------------------- registry
_BUILTIN: dict[str, Callable[..., Metric]] = {
    "rouge": RougeMetric,
    "classification": ClassificationMetric,
    "translation": TranslationMetric,
    "chrf": ChrFMetric,
    "entities": EntityMetric,
    "seqeval": SeqevalMetric,
    "short_answer": ShortAnswerMetric,
}


def list_metrics() -> list[str]:
    """Names accepted by :func:`get_metric`."""
    return sorted(_BUILTIN)


def get_metric(spec: str | Metric | Any, *, choices: Sequence[str] | None = None) -> Metric:
    """Resolve a metric name, a :class:`Metric`, an ``evaluate.EvaluationModule`` or a callable.

    Example::

        get_metric("rouge"); get_metric("classification", choices=["no", "yes"])
        get_metric("rouge2")      # UnknownNameError: unknown metric 'rouge2'. Did you mean 'rouge'? ...
    """
    if isinstance(spec, Metric):
        return spec
    if isinstance(spec, str):
        if spec not in _BUILTIN:
            raise unknown("metric", spec, _BUILTIN)
        if spec == "classification":
            return ClassificationMetric(choices or ())
        return _BUILTIN[spec]()
    if hasattr(spec, "compute") or callable(spec):
        return UserMetric(spec)
    raise TypeError(f"cannot use {spec!r} as a metric: give a name, a Metric, an evaluate module or a callable")


# --------------------------------------------------------------------------------------------------- bootstrap
# The bootstrap lives in nbft.evaluate.stats; these names stay importable from here.
from nbft.evaluate.stats import bootstrap_ci, paired_bootstrap_ci  # noqa: E402
