"""Out-of-domain probes of a task's skill: other sources of the same skill, scored with the task's own template.

A fine-tune can raise accuracy on its own test split while the skill does not carry over to another domain (a model
tuned on tweets that answers "neutral" to most film reviews). A task names its probes (``Task(..., probes=[...])``,
:meth:`~nbft.evaluate.Task.with_probes`); ``compare(..., probes=True)`` (an :class:`~nbft.config.EvalConfig` field)
adds each probe as a row of its own, named ``"<task> · <probe>"``, right after its task: the same template, prompt
format, decoding, paired 95% CIs and label diagnostics as every row. Probe rows are never "other tasks": they measure
how the skill generalises, not what was forgotten, so G, BWT′ and AF leave them out and the forgetting record lists
their Δ apart (``probes``).

A probe may hold fewer labels than its template offers (2-class reviews against the 3-label sentiment template):
``Task.from_data(..., choices=["negative", "positive"])``, or ``label_map={"pos": "positive", "neg": "negative"}``
for data whose labels are spelled otherwise. Generated answers are still read against every label of the template,
so an answer outside the probe's labels ("neutral") counts as wrong and shows in the label diagnostics; the
log-likelihood column chooses among the probe's labels only.

Example::

    reviews = nbft.Task.from_data("reviews.csv", template="sentiment/1", name="my reviews",
                                  label_map={"pos": "positive", "neg": "negative"})
    task = nbft.get_task("sentiment").with_probes(reviews)
    table = nbft.compare({"base": base, "tuned": run}, [task, "qa"], target="sentiment", probes=True)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nbft.evaluate.metrics import ClassificationMetric, parse_choice

if TYPE_CHECKING:
    from nbft.templates import PromptTemplate

# This module sits below nbft.evaluate.tasks (which imports it): tasks are duck-typed here (Any), and its errors
# are LabelError, which Task raises as TaskError.

__all__ = [
    "SEPARATOR",
    "LabelError",
    "SubsetClassificationMetric",
    "check_labels",
    "check_probe",
    "fit_labels",
    "probe_records",
    "suggest_label_map",
]

SEPARATOR = " · "
"""Between a task's name and its probe's name in a row's name: ``"sentiment · movie reviews"``."""


class LabelError(ValueError):
    """Data labels, ``choices`` or a probe do not fit a template's labels (``Task`` raises it as ``TaskError``)."""


class SubsetClassificationMetric(ClassificationMetric):
    """Classification where the data holds some of the template's labels: answers are read against all of
    ``answers`` (the template's labels), so one outside ``choices`` is a wrong label, not a missing one; accuracy
    and macro-F1 are over ``choices``.

    Example:
        >>> m = SubsetClassificationMetric(["negative", "positive"], ["negative", "neutral", "positive"])
        >>> m.labels(["Neutral.", "positive"]), m.corpus(["Neutral.", "positive"], ["negative", "positive"])["accuracy"]
        (['neutral', 'positive'], 50.0)
    """

    def __init__(self, choices: Sequence[str], answers: Sequence[str], prefix: str = "") -> None:
        super().__init__(choices, prefix)
        self.answers = tuple(answers)

    def labels(self, preds: Sequence[str]) -> list[str | None]:
        return [parse_choice(p, self.answers) for p in preds]


# --------------------------------------------------------------------------------------------------- labels
def suggest_label_map(labels: Iterable[Any], choices: Sequence[str]) -> dict[Any, str]:
    """A guess at ``label_map`` (data label -> template label) for an error message; ``"..."`` where no guess.

    Example:
        >>> suggest_label_map(["pos", "neg", 3], ["negative", "neutral", "positive"])
        {'pos': 'positive', 'neg': 'negative', 3: '...'}
    """
    lowered = {c.lower(): c for c in choices}
    out: dict[Any, str] = {}
    for label in labels:
        s = str(label).strip().lower()
        hits = [c for low, c in lowered.items() if s and (low == s or low.startswith(s) or s.startswith(low[:3]))]
        if len(hits) != 1:
            hits = [lowered[m] for m in difflib.get_close_matches(s, list(lowered), n=1, cutoff=0.6)]
        out[label] = hits[0] if hits and not isinstance(label, (int, float)) else "..."
    return out


def _map_text(labels: Iterable[Any], choices: Sequence[str]) -> str:
    guess = suggest_label_map(labels, choices)
    return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in guess.items()) + "}"


def fit_labels(
    template: PromptTemplate, choices: Sequence[str] | None, label_map: Mapping[Any, str] | None, *, where: str
) -> tuple[PromptTemplate, tuple[str, ...] | None]:
    """The template (with ``label_map``) and the set's labels for ``Task.from_data(choices=..., label_map=...)``.

    The template keeps its own choices (what an answer is read against); ``choices`` (default: the values of
    ``label_map``, in the template's order) names the labels the data holds, which must be among them.
    """
    import dataclasses as dc

    options = tuple(template.choices or ())
    if label_map is not None:
        if not isinstance(label_map, Mapping) or not label_map:
            raise LabelError(f"{where}: label_map must be a dict of data label -> template label, e.g. {{'pos': "
                            f"'positive'}}, not {label_map!r}")  # fmt: skip
        bad = sorted({str(v) for v in label_map.values()} - set(options)) if options else []
        if bad:
            raise LabelError(
                f"{where}: label_map maps to {bad}, which are not among template {template.id!r}'s choices "
                f"{list(options)}; map each data label to one of them"
            )
        template = template.with_labels(label_map, choices=options or None)
        if choices is None and options:
            values = set(label_map.values())
            choices = tuple(c for c in options if c in values)
    if choices is None:
        return template, None
    if isinstance(choices, str):
        raise LabelError(f"{where}: choices must be a list of labels, e.g. choices=[{choices!r}], not one text")
    choices = tuple(dict.fromkeys(str(c) for c in choices))
    if not options:  # a template without labels: the choices become its labels
        return dc.replace(template, choices=choices), choices
    outside = [c for c in choices if c not in options]
    if outside:
        raise LabelError(
            f"{where}: choices {outside} are not among template {template.id!r}'s choices {list(options)}. choices "
            f"name the template's labels that the data holds; map your labels onto them with label_map="
            f"{_map_text(outside, options)} (choices are then the mapped labels)"
        )
    return template, choices


def check_labels(
    values: Iterable[Any], template: PromptTemplate, choices: Sequence[str] | None, *, where: str, field: str
) -> None:
    """Refuse data labels that are not among the template's labels (naming them and the ``label_map`` to pass), and
    labels outside ``choices`` (which the log-likelihood column could never pick)."""
    options = tuple(template.choices or ())
    if not options:
        return
    seen = list(dict.fromkeys(v for v in values if v is not None))
    mapping = template.label_map or {}
    unmapped = [v for v in seen if (v not in mapping if mapping else v not in options)]
    if unmapped:
        fix = "add them to label_map" if mapping else "pass the mapping"
        raise LabelError(
            f"{where}: the labels {unmapped[:10]}{' ...' if len(unmapped) > 10 else ''} of field {field!r} are not "
            f"among template {template.id!r}'s choices {list(options)}; {fix}: label_map="
            f"{_map_text(unmapped[:10], options)} (choices are then the mapped labels)"
        )
    held = {mapping.get(v, v) if mapping else v for v in seen}
    extra = sorted(str(v) for v in held - set(choices or options))
    if extra:
        raise LabelError(
            f"{where}: the data holds labels {extra}, which are not among choices {list(choices or ())}; add them "
            "to choices (the log-likelihood column picks among choices only) or drop those examples"
        )


# --------------------------------------------------------------------------------------------------- probes
def check_probe(task: Any, probe: Any) -> None:
    """A probe measures its task's skill: a classification task probes with the same template (prompt format and
    answer labels), and its labels are among the task's."""
    where = f"task {task.name!r}: probe {probe.name!r}"
    if probe.template.instruction != task.template.instruction or probe.template.fields != task.template.fields:
        raise LabelError(
            f"{where} uses template {probe.template.id!r}, not its task's {task.template.id!r}; a probe is scored "
            f"with its task's template (the same prompt): build it with nbft.Task.from_data(data, "
            f"template={task.template.id!r}, ...)"
        )
    options = tuple(task.template.choices or task.choices or ())
    if options and probe.choices:
        outside = [c for c in probe.choices if c not in options]
        if outside:
            raise LabelError(
                f"{where}: its labels {outside} are not among template {task.template.id!r}'s choices "
                f"{list(options)}; build it with nbft.Task.from_data(data, template={task.template.id!r}, "
                f"label_map={_map_text(outside, options)})"
            )


def probe_records(deltas: Sequence[Mapping[str, Any]], column: str, probes: Mapping[str, str]) -> list[dict[str, Any]]:
    """The headline Δ of each probe row for ``column`` (``probes``: row name -> the task it probes), for the
    forgetting record: shown beside G, never counted in it."""
    out = []
    for d in deltas:
        if d["model"] == column and d["is_headline"] and d["task"] in probes:
            rec = {"task": d["task"], "of": probes[d["task"]], "metric": d["metric"]}
            rec.update({k: d[k] for k in ("delta", "ci_low", "ci_high", "significant") if k in d})
            rec.update({k: d[k] for k in ("seed_min", "seed_max", "n_seeds") if k in d})
            out.append({k: (float(v) if isinstance(v, np.floating) else v) for k, v in rec.items()})
    return out


def probe_note(tasks: Sequence[Any], target: str | None) -> str | None:
    """One note naming the probe rows and saying why they are outside G, BWT′ and AF."""
    probes = [t for t in tasks if t.probe_of]
    if not probes:
        return None
    parts = []
    for p in probes:
        labels = ""
        if p.answer_choices and p.choices and tuple(p.choices) != tuple(p.answer_choices):
            held = ", ".join(p.choices)
            labels = (
                f"; it holds {len(p.choices)} of the template's {len(p.answer_choices)} labels ({held}): an answer "
                "outside them counts as wrong, and log-likelihood picks among them only"
            )
        parts.append(f"{p.name} probes {p.probe_of!r} on other data{labels}")  # its source: task_info description
    skill = "the target skill" if target and any(p.probe_of == target for p in probes) else "a task's skill"
    return (
        "out-of-domain probes: " + "; ".join(parts) + f". Probe rows measure how {skill} generalises, so they are "
        "shown with their own Δ and left out of G, BWT′ and AF"
    )
