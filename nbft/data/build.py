"""Instruction datasets from raw examples: check them against the templates, render each template into
``prompt`` + ``completion`` rows, and build the train/validation/test splits (:func:`build_instruction_dataset`), from
your data or a built-in task's train split.

Example:
    >>> rows = [{"text": f"review {i}", "label": ["negative", "positive"][i % 2]} for i in range(40)]
    >>> data = build_instruction_dataset(rows, "sentiment", seed=0)
    >>> sorted(data), data["train"].column_names
    (['test', 'train', 'validation'], ['prompt', 'completion', 'task', 'template_id', 'example_id'])
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from nbft.data._args import _int_arg
from nbft.data.loading import _WHERE, Source, _row_name, load_source
from nbft.data.splitting import example_id, split_examples
from nbft.errors import DataError
from nbft.templates import PromptTemplate, TemplateError, phrasings, resolve_templates

__all__ = ["COLUMNS", "build_instruction_dataset", "check_examples", "prepare_source", "render_examples"]


COLUMNS = ["prompt", "completion", "task", "template_id", "example_id"]


def render_examples(
    rows: datasets.Dataset | Sequence[Mapping[str, Any]],
    templates: str | PromptTemplate | Sequence[str | PromptTemplate],
    *,
    task: str | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """Render raw examples into prompt → completion rows, one phrasing per example chosen at random with ``seed``.

    Columns: ``prompt``, ``completion``, ``task``, ``template_id``, ``example_id``. Empty completions are an error.

    Example:
        >>> list(render_examples([{"question": "2+2?", "answer": "4"}], "qa/1")["completion"])
        ['4']
    """
    tmpl = resolve_templates(templates)
    task = task or tmpl[0].task
    fields = sorted({f for t in tmpl for f in (*t.fields, t.target)})
    rows = rows.to_list() if isinstance(rows, datasets.Dataset) else [dict(r) for r in rows]
    rng = random.Random(seed)
    records, empty = [], []
    for row in rows:
        t = tmpl[rng.randrange(len(tmpl))]
        completion = t.completion(row)
        if not completion.strip():
            empty.append({f: row.get(f) for f in fields})
            continue
        records.append(
            {
                "prompt": t.render(row),
                "completion": completion,
                "task": task,
                "template_id": t.id,
                "example_id": example_id(task, row, fields),
            }
        )
    if empty:
        raise DataError(
            f"{len(empty)} of {len(rows)} examples have an empty completion (field {tmpl[0].target!r}), "
            f"e.g. {empty[:3]}; drop or fill them before building (e.g. dataset.filter(lambda x: x[...].strip()))"
        )
    return datasets.Dataset.from_dict({c: [r[c] for r in records] for c in COLUMNS}, features=_features())


def _subsample(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    if n is None or n >= ds.num_rows:
        return ds
    return ds.select(sorted(random.Random(seed).sample(range(ds.num_rows), n)))


def build_instruction_dataset(
    source: Source | None = None,
    templates: str | PromptTemplate | Sequence[str | PromptTemplate] | None = None,
    *,
    task: Any = None,
    n: int | None = None,
    n_validation: int | None = None,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratify: bool | None = None,
    columns: Mapping[str, str] | None = None,
    max_examples: int | None = None,
) -> datasets.DatasetDict:
    """Render labelled examples into prompt → completion pairs, split by :func:`split_examples`.

    **A built-in task** (``source`` left out, ``task="sentiment"``, or a :class:`~nbft.evaluate.Task`): the training
    set comes from the task's own *train* split and the validation set from its *validation* split; its *test* split
    stays with the task, for :func:`nbft.compare`, and is not returned. ``n`` training examples (default: all).

    **Your own data** (``source``: anything :func:`load_source` accepts): the data is split with
    :func:`split_examples` into train/validation/test, exactly as ``Task.from_data(source, ...)`` splits it with the
    same ``split`` and ``seed``, so evaluating on that task never scores a training example.

    Each example gets one phrasing, chosen at random among ``templates`` with ``seed`` (same seed, same dataset).
    Exact duplicate examples are dropped; empty completions are an error. Classification data is split stratified
    by label unless ``stratify=False``.

    Args:
        source: your data, or ``None`` for a built-in task's data.
        templates: a task name (all its phrasings, e.g. ``"summarize"``), template ids, or ``PromptTemplate`` objects.
            Default for a built-in task: all phrasings of its template family.
        task: without ``source``, the built-in task (name or Task) whose splits are used; with ``source``, the task
            name recorded in the ``task`` column (default: the templates' task).
        n: training examples to keep (a seeded sample of the train split); ``None``: all.
        n_validation: validation examples to keep; default for a built-in task: ``max(8, n // 8)`` (all when
            ``n`` is ``None``), for your own data: all of its validation split.
        split: fractions of train, validation and test (your own data only: a task's split is the task's).
        columns: rename data columns to the template's field names, ``{"field": "column"}``.
        max_examples: your own data: keep a seeded share of each split so that the total is about this many.

    Example:
        >>> rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
        >>> build_instruction_dataset(rows, ["qa/1", "qa/2"], split=(0.6, 0.2, 0.2))["test"].num_rows
        2
    """
    seed = _int_arg("seed", seed, 0, "e.g. seed=0 (the same seed gives the same dataset)")
    n = _int_arg("n", n, 1, "the number of training examples to keep, e.g. n=800 (None: all)", optional=True)
    n_validation = _int_arg("n_validation", n_validation, 0, "e.g. n_validation=100 (None: the default)", optional=True)
    max_examples = _int_arg("max_examples", max_examples, 1, "e.g. max_examples=1000 (None: all)", optional=True)
    if columns is not None and not isinstance(columns, Mapping):
        raise DataError(
            f"columns= must be a dict {{template field: your column}}, e.g. {{'text': 'review'}}; got {columns!r}"
        )
    if templates is not None and not isinstance(templates, str | PromptTemplate | list | tuple):
        raise DataError(
            f"templates= must be a template id, a task name, a PromptTemplate or a list of those; got {templates!r}"
        )
    if source is None:
        if task is None:
            raise DataError(
                "give a source (your data) or a built-in task, e.g. build_instruction_dataset(task='sentiment', n=800)"
            )
        return _from_task(task, templates, n=n, n_validation=n_validation, seed=seed)
    if templates is None:
        raise DataError(
            "templates= is needed with your own data, e.g. build_instruction_dataset(rows, 'sentiment') or "
            "['qa/1', 'qa/2']; rows that already hold prompt/completion use 'prompt-completion/1'"
        )
    tmpl = resolve_templates(templates)
    tasks = {t.task for t in tmpl}
    if task is None:
        if len(tasks) > 1:
            raise DataError(f"templates of several tasks {sorted(tasks)} given for one source; pass task=...")
        task = tmpl[0].task
    ds = prepare_source(source, tmpl, columns=columns)
    fields = sorted({f for t in tmpl for f in (*t.fields, t.target)})
    _check_rows(ds, tmpl)
    _check_completions(ds, tmpl, fields)
    classification = all(t.is_classification for t in tmpl)
    do_stratify = classification if stratify is None else stratify
    splits = split_examples(ds, split, seed, key_fields=fields, stratify=tmpl[0].target if do_stratify else None)
    total = sum(s.num_rows for s in splits.values())
    out = {}
    for name, part in splits.items():
        keep = None if max_examples is None or max_examples >= total else round(part.num_rows * max_examples / total)
        if name == "train" and n is not None:
            keep = n if keep is None else min(n, keep)
        if name == "validation" and n_validation is not None:
            keep = n_validation if keep is None else min(n_validation, keep)
        out[name] = render_examples(_subsample(part, keep, seed), tmpl, task=task, seed=seed)
    return datasets.DatasetDict(out)


def _check_rows(ds: datasets.Dataset, templates: Sequence[PromptTemplate]) -> None:
    """Refuse, with the row number, a value a template would print as something other than its text (None, NaN, a
    nested record, a list), a row whose input fields are all empty, and a template that renders an empty prompt."""
    inputs = sorted({f for t in templates for f in t.fields})
    if not inputs:
        return
    rows = ds.select_columns(inputs).to_list()
    for i, row in enumerate(rows):
        for t in templates:
            try:
                t.render(row)
            except TemplateError as exc:
                raise TemplateError(f"{_row_name(ds, i)}: {exc}") from None


def check_examples(ds: datasets.Dataset, templates: Sequence[PromptTemplate]) -> None:
    """Refuse, with the row number, examples a template cannot turn into a proper prompt and completion."""
    _check_rows(ds, templates)
    _check_completions(ds, templates, sorted({f for t in templates for f in (*t.fields, t.target)}))


def _check_completions(ds: datasets.Dataset, templates: Sequence[PromptTemplate], fields: Sequence[str]) -> None:
    """Refuse empty completions over the whole source, before it is split (the count then means the whole data)."""
    by_target = {t.target: t for t in templates}
    rows = ds.select_columns(list(fields)).to_list()
    empty = []
    for i, row in enumerate(rows):
        try:
            if any(not t.completion(row).strip() for t in by_target.values()):
                empty.append(i)
        except TemplateError as exc:
            raise TemplateError(f"{_row_name(ds, i)}: {exc}") from None
    if empty:
        target = next(iter(by_target))
        shown = "rows " + ", ".join(str(i + 1) for i in empty[:5])
        if ds in _WHERE:  # read from a file: the lines the user can open
            shown = ", ".join(_row_name(ds, i) for i in empty[:5])
        shown += " ..." if len(empty) > 5 else ""
        raise DataError(
            f"{len(empty)} of {len(rows)} examples have an empty completion (field {target!r}; {shown}), "
            f"e.g. {[rows[i] for i in empty[:3]]}; drop or fill them before building "
            "(e.g. dataset.filter(lambda x: x[...].strip()))"
        )


def prepare_source(
    source: Source, templates: Sequence[PromptTemplate], *, columns: Mapping[str, str] | None = None
) -> datasets.Dataset:
    """Load ``source`` (:func:`load_source`), rename ``columns``, and check the templates' fields are there."""
    ds = load_source(source)
    if columns:
        missing = [c for c in columns.values() if c not in ds.column_names]
        if missing:
            raise DataError(f"columns= names {missing}, which the data lacks; it has {ds.column_names}")
        where = _WHERE.get(ds)
        ds = ds.rename_columns({col: field for field, col in columns.items() if col != field})
        if where is not None:
            _WHERE[ds] = where
    for t in templates:
        t.check_columns(ds.column_names)
    return ds


def _from_task(
    task: Any,
    templates: Any,
    *,
    n: int | None,
    n_validation: int | None,
    seed: int,
) -> datasets.DatasetDict:
    if isinstance(task, str):
        from nbft import sources

        name, splits = task, sources.load_splits(task)
        family = sources.template_family(task)
    elif hasattr(task, "load") and hasattr(task, "template"):  # a Task object (duck-typed: evaluate sits above data)
        name, splits, family = task.name, task.load(), phrasings(task.template)
    else:
        raise DataError(f"task= must be a built-in task name (e.g. 'sentiment') or an nbft Task, not {task!r}")
    tmpl = resolve_templates(templates if templates is not None else family)
    if "train" not in splits or splits["train"].num_rows == 0:
        raise DataError(f"task {name!r} has no train split to build a training set from")
    train = _subsample(splits["train"], n, seed)
    if n_validation is None:
        n_validation = None if n is None else max(8, n // 8)
    out = {"train": render_examples(train, tmpl, task=name, seed=seed)}
    if "validation" in splits and splits["validation"].num_rows:
        val = _subsample(splits["validation"], n_validation, seed)
        out["validation"] = render_examples(val, tmpl, task=name, seed=seed + 1)
    return datasets.DatasetDict(out)


def _features() -> datasets.Features:
    return datasets.Features({c: datasets.Value("string") for c in COLUMNS})
