"""Building instruction datasets: load -> validate -> dedupe + split (:func:`split_examples`) -> render templates
-> (mix) -> tokenize. A built-in task's training set comes from the task's train split (``task="sentiment"``).

Example:
    >>> rows = [{"text": f"review {i}", "label": ["negative", "positive"][i % 2]} for i in range(40)]
    >>> data = build_instruction_dataset(rows, "sentiment", seed=0)
    >>> sorted(data), data["train"].column_names
    (['test', 'train', 'validation'], ['prompt', 'completion', 'task', 'template_id', 'example_id'])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import datasets
import pandas as pd

from nbft._registry import hub_reachable
from nbft._utils import atomic_path
from nbft.hashes import content_hash, near_duplicate_groups, normalize_text
from nbft.models import tokenizer_kind
from nbft.templates import PromptTemplate, TemplateError, phrasings, resolve_templates

logger = logging.getLogger(__name__)

COLUMNS = ["prompt", "completion", "task", "template_id", "example_id"]
FILE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".pq": "parquet"}

Source = str | os.PathLike[str] | pd.DataFrame | Sequence[Mapping[str, Any]] | datasets.Dataset | datasets.DatasetDict


class DataError(ValueError):
    """The data cannot become an instruction dataset as asked; the message says why and how to fix it."""


class OfflineError(ConnectionError):
    """A Hugging Face Hub resource was asked for while the Hub is unreachable."""


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_source(source: Source, *, split: str | None = None) -> datasets.Dataset:
    """Load labelled examples from a Hub name, a local CSV/JSON/JSONL/Parquet file or saved folder, a DataFrame,
    a list of dicts, or a ``Dataset``/``DatasetDict`` (all splits are used; nbft re-splits).

    Example:
        >>> load_source([{"question": "2+2?", "answer": "4"}]).num_rows
        1
    """
    if isinstance(source, datasets.DatasetDict):
        if not source:
            raise DataError("the DatasetDict has no splits; pass a dataset with at least one example")
        ds = source[split] if split else datasets.concatenate_datasets(list(source.values()))
    elif isinstance(source, datasets.Dataset):
        ds = source
    elif isinstance(source, pd.DataFrame):
        ds = datasets.Dataset.from_pandas(source, preserve_index=False)
    elif isinstance(source, (str, os.PathLike)):
        ds = _load_path_or_hub(str(source), split)
    elif isinstance(source, Sequence):
        rows = list(source)
        if rows and not all(isinstance(r, Mapping) for r in rows):
            raise DataError("a list source must hold dicts (one per example), e.g. [{'text': ..., 'label': ...}]")
        ds = datasets.Dataset.from_list([dict(r) for r in rows]) if rows else datasets.Dataset.from_dict({})
    else:
        raise DataError(
            f"cannot load examples from a {type(source).__name__}; pass a Hub dataset name, a file path "
            f"({', '.join(FILE_FORMATS)}), a pandas DataFrame, a list of dicts or a datasets.Dataset"
        )
    if ds.num_rows == 0:
        raise DataError("the source has no examples; check the file or filter that produced it")
    return ds


def _load_path_or_hub(text: str, split: str | None) -> datasets.Dataset:
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError as exc:
            raise DataError(f"{path} is a folder but not one written by save_to_disk ({exc})") from None
        return load_source(loaded, split=split)
    if path.exists():
        if suffix not in FILE_FORMATS:
            raise DataError(
                f"unsupported file type {suffix or '(none)'!r} for {path}; use one of {', '.join(FILE_FORMATS)}"
            )
        try:
            # load_dataset's packaged builders run offline; keep_in_memory avoids writing a cache per file.
            return datasets.load_dataset(FILE_FORMATS[suffix], data_files=str(path), split="train", keep_in_memory=True)
        except Exception as exc:  # the builders raise many types for a bad file; name the file and the cause
            raise DataError(f"could not read {path} as {FILE_FORMATS[suffix]}: {type(exc).__name__}: {exc}") from None
    if suffix in FILE_FORMATS or text.startswith((".", "/", "~")):
        raise DataError(f"file not found: {path}")
    return load_hub_dataset(text, split=split or "train")


def load_hub_dataset(name: str, *, split: str = "train", config: str | None = None) -> datasets.Dataset:
    """Load a dataset from the Hugging Face Hub (or the local datasets cache).

    Raises :class:`OfflineError` with what to do instead when the Hub cannot be reached.
    """
    try:
        return datasets.load_dataset(name, config, split=split)
    except (ConnectionError, OSError, FileNotFoundError) as exc:
        if hub_reachable():
            raise
        raise OfflineError(
            f"could not load {name!r} from the Hugging Face Hub: this machine cannot reach it ({type(exc).__name__}). "
            "Use local data instead (a CSV/JSON/JSONL/Parquet path, a DataFrame or a list of dicts), one of "
            "nbft.sources' offline datasets, or download it on a connected machine with "
            f"datasets.load_dataset({name!r}).save_to_disk(...) and pass that folder"
        ) from None


# ----------------------------------------------------------------------------------------------------------------
# Splitting: the one place nbft makes a train/validation/test split


def example_id(task: str, example: Mapping[str, Any], fields: Sequence[str]) -> str:
    """A stable id from the task and the example's own values (not its phrasing, not its position)."""
    payload = json.dumps([task, *[example.get(f) for f in fields]], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def split_examples(
    source: datasets.Dataset,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    *,
    key_fields: Sequence[str] | None = None,
    stratify: str | None = None,
) -> datasets.DatasetDict:
    """Split raw examples into disjoint train/validation/test splits: the only split function in nbft.

    Every task's ``load()`` and :func:`build_instruction_dataset` call it, so a task's test split and a training set
    built from the same data with the same ``seed`` and ``fractions`` never share an example. Duplicates (equal
    values of ``key_fields``, default all columns, ignoring case and spacing) are dropped first; near duplicates
    (texts sharing a 13-word window, e.g. a retweet) are kept on the same side of the split. Examples are put in an
    order given by their content, so the split depends on *which* examples there are, not on their order in the
    file. ``stratify`` names a label column whose proportions each split keeps (when every label has enough
    examples). Sizes are exact when there are no near-duplicate groups (a group counts as one).

    Example:
        >>> rows = datasets.Dataset.from_list([{"q": f"q{i}", "a": str(i)} for i in range(10)])
        >>> {k: v.num_rows for k, v in split_examples(rows, (0.6, 0.2, 0.2)).items()}
        {'train': 6, 'validation': 2, 'test': 2}
    """
    from nbft.config import DataConfig

    fractions = DataConfig(split=tuple(fractions)).split  # one place validates split fractions
    fields = list(key_fields or source.column_names)
    missing = [f for f in fields if f not in source.column_names]
    if missing:
        raise DataError(f"split_examples: the data has no field(s) {missing}; it has {source.column_names}")
    rows = source.select_columns(fields).to_list()
    first: dict[str, int] = {}
    raw = [json.dumps([row[f] for f in fields], default=str, ensure_ascii=False) for row in rows]
    for i, row in enumerate(rows):
        # case and spacing do not make a different example; which copy is kept depends on content, not order
        key = json.dumps(
            [normalize_text(row[f]) if isinstance(row[f], str) else row[f] for f in fields],
            default=str,
            ensure_ascii=False,
        )
        if key not in first or raw[i] < raw[first[key]]:
            first[key] = i
    if len(first) < len(rows):
        logger.info("dropped %d exact duplicate examples of %d", len(rows) - len(first), len(rows))
    keys, unique = list(first), list(first.values())
    # near duplicates (a shared 13-word window) stay together: one side of the split, never both
    groups = near_duplicate_groups([[v for v in rows[i].values() if isinstance(v, str)] for i in unique])
    members: dict[int, list[int]] = {}
    for j, g in enumerate(groups):
        members.setdefault(g, []).append(j)
    # content order, not file order: the same examples give the same split however they were loaded
    digest = {g: min(hashlib.sha1(keys[j].encode("utf-8")).hexdigest() for j in js) for g, js in members.items()}
    order = sorted(members, key=digest.__getitem__)
    labels = [str(rows[unique[members[g][0]]][stratify]) for g in order] if stratify else None
    parts = _assign_splits(len(order), fractions, seed, labels)
    return datasets.DatasetDict(
        {name: source.select([unique[j] for k in idx for j in members[order[k]]]) for name, idx in parts.items()}
    )


def _assign_splits(n: int, fractions: Sequence[float], seed: int, labels: list[str] | None) -> dict[str, list[int]]:
    from sklearn.model_selection import train_test_split

    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    if n - n_val - n_test < 1:
        raise DataError(f"only {n} examples: too few to split {tuple(fractions)}; add data or change split")
    if labels is not None:
        counts = Counter(labels)
        rare = {k: v for k, v in counts.items() if v < 2}
        holdout = n_val + n_test
        if rare or (holdout and holdout < len(counts)):
            logger.warning(
                "cannot stratify %d examples over %d labels (rare: %s); splitting at random instead",
                n,
                len(counts),
                rare,
            )
            labels = None
    idx = list(range(n))
    train_idx, hold_idx = (idx, [])
    if n_val + n_test:
        train_idx, hold_idx = train_test_split(
            idx, test_size=n_val + n_test, random_state=seed, shuffle=True, stratify=labels
        )
    val_idx, test_idx = hold_idx, []
    if n_val and n_test:
        hold_labels = [labels[i] for i in hold_idx] if labels is not None else None
        if hold_labels is not None and min(Counter(hold_labels).values()) < 2:
            hold_labels = None
        val_idx, test_idx = train_test_split(
            hold_idx, test_size=n_test, random_state=seed, shuffle=True, stratify=hold_labels
        )
    elif n_test:
        val_idx, test_idx = [], hold_idx
    return {"train": list(train_idx), "validation": list(val_idx), "test": list(test_idx)}


# ----------------------------------------------------------------------------------------------------------------
# Building prompt -> completion pairs


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


def _check_completions(ds: datasets.Dataset, templates: Sequence[PromptTemplate], fields: Sequence[str]) -> None:
    """Refuse empty completions over the whole source, before it is split (the count then means the whole data)."""
    by_target = {t.target: t for t in templates}
    rows = ds.select_columns(list(fields)).to_list()
    empty = [row for row in rows if any(not t.completion(row).strip() for t in by_target.values())]
    if empty:
        target = next(iter(by_target))
        raise DataError(
            f"{len(empty)} of {len(rows)} examples have an empty completion (field {target!r}), "
            f"e.g. {empty[:3]}; drop or fill them before building (e.g. dataset.filter(lambda x: x[...].strip()))"
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
        ds = ds.rename_columns({col: field for field, col in columns.items() if col != field})
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
    else:  # a Task object (duck-typed: evaluate sits above data)
        name, splits, family = task.name, task.load(), phrasings(task.template)
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


# ----------------------------------------------------------------------------------------------------------------
# Mixing tasks


def _largest_remainder(total: int, ratios: Mapping[str, float]) -> dict[str, int]:
    raw = {k: total * r for k, r in ratios.items()}
    counts = {k: math.floor(v) for k, v in raw.items()}
    leftover = total - sum(counts.values())
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[:leftover]:
        counts[k] += 1
    return counts


def mix(
    parts: Mapping[str, datasets.Dataset],
    ratios: Mapping[str, float] | None = None,
    *,
    replay: float | None = None,
    total: int | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """Mix tasks with exact per-task proportions (each within one example), shuffled with ``seed``.

    Either give ``ratios`` (normalised to sum to 1), or give ``replay``: the first task is the target and the
    other tasks share ``replay`` of the mixture equally. This is how forgetting is mitigated: replaying a little
    of the other tasks while tuning the target. ``total`` defaults to the largest mixture the data allows without
    repeating examples. The achieved counts are logged; :func:`mix_report` recomputes them from the data.

    Example:
        >>> a = datasets.Dataset.from_dict({"prompt": ["a"] * 8, "task": ["a"] * 8})
        >>> b = datasets.Dataset.from_dict({"prompt": ["b"] * 8, "task": ["b"] * 8})
        >>> mix({"a": a, "b": b}, replay=0.25, total=8)["task"].count("b")
        2
    """
    if not parts:
        raise DataError("mix() needs at least one task dataset")
    names = list(parts)
    if ratios is not None and replay is not None:
        raise DataError("give either ratios= or replay=, not both")
    if replay is not None:
        if not 0 <= replay < 1 or (replay > 0 and len(names) < 2):
            raise DataError(f"replay must be in [0, 1) and needs at least two tasks; got {replay} for {names}")
        others = names[1:]
        ratios = {names[0]: 1 - replay, **{k: replay / len(others) for k in others}}
    if ratios is None:
        ratios = {k: 1.0 for k in names}
    unknown_tasks = sorted(set(ratios) - set(names))
    if unknown_tasks:
        raise DataError(f"ratios name {unknown_tasks}, which are not among the datasets {names}")
    if any(r < 0 for r in ratios.values()) or sum(ratios.values()) <= 0:
        raise DataError(f"ratios must be non-negative with a positive sum, got {dict(ratios)}")
    norm = {k: ratios.get(k, 0.0) / sum(ratios.values()) for k in names}
    capacity = min(math.floor(parts[k].num_rows / r) for k, r in norm.items() if r > 0)
    total = capacity if total is None else total
    counts = _largest_remainder(total, norm)
    short = {k: (c, parts[k].num_rows) for k, c in counts.items() if c > parts[k].num_rows}
    if short:
        raise DataError(
            f"total={total} needs more examples than some tasks have (needed, available): {short}; "
            f"lower total (at most {capacity} keeps these ratios) or add data"
        )
    rng = random.Random(seed)
    chosen = []
    for k in names:
        if counts[k]:
            idx = sorted(rng.sample(range(parts[k].num_rows), counts[k]))
            chosen.append(parts[k].select(idx))
    mixed = datasets.concatenate_datasets(chosen).shuffle(seed=seed)
    logger.info(
        "mixture of %d examples: %s",
        total,
        ", ".join(f"{k} {counts[k]} ({counts[k] / max(total, 1):.1%}, asked {norm[k]:.1%})" for k in names),
    )
    return mixed


def mix_report(dataset: datasets.Dataset) -> pd.DataFrame:
    """Count and share of each task in a (mixed) dataset, from its ``task`` column."""
    counts = Counter(dataset["task"])
    total = sum(counts.values())
    return pd.DataFrame([{"task": k, "n": v, "share": v / total} for k, v in sorted(counts.items())])


# ----------------------------------------------------------------------------------------------------------------
# Tokenization


@dataclasses.dataclass
class TruncationReport:
    """What tokenize_for_training did with over-long examples."""

    max_length: int
    overflow: str
    n_examples: int
    n_over: int
    over_ids: list[str]
    longest: int
    kept_all_at: int

    def __str__(self) -> str:
        if not self.n_over:
            return f"all {self.n_examples} examples fit in max_length={self.max_length} (longest {self.longest})"
        verb = "truncated" if self.overflow == "truncate" else "dropped"
        ids = ", ".join(self.over_ids[:5]) + (" ..." if len(self.over_ids) > 5 else "")
        return (
            f"{verb} {self.n_over} of {self.n_examples} examples longer than max_length={self.max_length} "
            f"(example_id {ids}); max_length={self.kept_all_at} would keep them all"
        )


def format_prompt(
    tokenizer: Any,
    prompt: str,
    chat_template: bool = False,
    shots: Sequence[tuple[str, str]] = (),
) -> str:
    """The exact text a model sees before its completion, in training and in evaluation alike.

    ``shots`` are solved examples ``(prompt, completion)`` put before the prompt (in-context learning). Plain text:
    each shot is its prompt, its completion and a blank line. With ``chat_template=True`` each shot is a user turn
    and an assistant turn, and the prompt becomes the last user turn followed by the assistant's generation prompt.

    Example:
        >>> format_prompt(None, "Q: 3+3?\\nA:", shots=[("Q: 1+1?\\nA:", " 2")])
        'Q: 1+1?\\nA: 2\\n\\nQ: 3+3?\\nA:'
    """
    if not chat_template:
        return "".join(p + c + "\n\n" for p, c in shots) + prompt
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"chat_template=True but tokenizer {type(tokenizer).__name__} has no chat template; "
            "use chat_template=False or an instruct model's tokenizer"
        )
    messages: list[dict[str, str]] = []
    for p, c in shots:
        messages += [{"role": "user", "content": p.rstrip("\n")}, {"role": "assistant", "content": c}]
    messages.append({"role": "user", "content": prompt.rstrip("\n")})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer: Any, text: str, *, chat: bool = False, seq2seq: bool = False) -> list[int]:
    """Token ids of a formatted prompt (:func:`format_prompt`), the same in training and in evaluation.

    Plain prompts get the tokenizer's special tokens (BOS) but never a trailing EOS; chat-formatted prompts already
    hold their special tokens as text. A seq2seq encoder input ends with EOS.
    """
    if seq2seq:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        eos = tokenizer.eos_token_id
        return ids if (ids and ids[-1] == eos) or eos is None else [*ids, eos]
    if chat:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]  # some tokenizers append EOS to every text; a prompt must not end there
    return ids


def encode_pair(
    tokenizer: Any, prompt: str, completion: str, chat_template: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of a causal prompt and of its completion (ending with EOS), tokenized separately.

    Tokenizing the two parts separately makes the label mask exact: the completion's tokens are exactly the
    labelled ones, whatever the tokenizer would merge across the boundary.
    """
    prompt_text = format_prompt(tokenizer, prompt, chat_template)
    if chat_template:
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.rstrip("\n")}, {"role": "assistant", "content": completion}],
            tokenize=False,
        )
        if not full.startswith(prompt_text):
            raise DataError("the chat template renders the user turn differently with and without an answer")
        completion_text = full[len(prompt_text) :].rstrip("\n")
    else:
        completion_text = completion
    prompt_ids = encode_prompt(tokenizer, prompt_text, chat=chat_template)
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    if not completion_ids or completion_ids[-1] != tokenizer.eos_token_id:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
    return prompt_ids, completion_ids


def _encode_seq2seq(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    eos = tokenizer.eos_token_id
    src = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    tgt = tokenizer(completion, add_special_tokens=True)["input_ids"]
    if not src or src[-1] != eos:
        src = [*src, eos]
    if not tgt or tgt[-1] != eos:
        tgt = [*tgt, eos]
    return src, tgt


def resolve_mode(tokenizer: Any, mode: str | None, model: Any = None) -> Literal["causal", "seq2seq"]:
    """Pick causal or seq2seq tokenization, refusing a mode that contradicts the tokenizer or model."""
    from nbft.models import model_kind

    known = model_kind(model) if model is not None else tokenizer_kind(tokenizer)
    if mode is None:
        return known or "causal"
    if mode not in ("causal", "seq2seq"):
        raise DataError(f"mode must be 'causal', 'seq2seq' or None (auto), not {mode!r}")
    if known is not None and known != mode:
        why = (
            "A seq2seq model reads the prompt in its encoder and writes the completion as labels"
            if known == "seq2seq"
            else "A causal model reads prompt and completion as one sequence"
        )
        raise DataError(
            f"mode={mode!r} but the tokenizer ({type(tokenizer).__name__}) belongs to a {known} model. "
            f"{why}; use mode={known!r} (or leave mode=None)"
        )
    return mode  # type: ignore[return-value]


def tokenize_for_training(
    dataset: datasets.Dataset,
    tokenizer: Any,
    *,
    max_length: int = 1024,
    mode: str | None = None,
    chat_template: bool = False,
    overflow: Literal["truncate", "drop"] = "truncate",
    model: Any = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, TruncationReport]:
    """Tokenize prompt → completion pairs for training with a completion-only loss.

    Causal LMs: ``input_ids = prompt + completion + EOS`` and ``labels`` equal to ``input_ids`` with -100 on
    the prompt (aligned with ``input_ids``; the loss shifts by one). Seq2seq: ``input_ids`` is the prompt and
    ``labels`` the completion. No padding here: the collator pads, with label -100. Over-long examples lose the
    start of their prompt (``overflow="truncate"``; the instruction cue before the completion is kept) or are left
    out (``"drop"``), and the report says which and what ``max_length`` would have kept them.

    Example:
        >>> from nbft.models import tiny_random
        >>> _, tok = tiny_random()
        >>> ds = datasets.Dataset.from_list([{"prompt": "Q: hi\\n", "completion": "yo"}])
        >>> row = tokenize_for_training(ds, tok)[0]
        >>> tok.decode([t for t, l in zip(row["input_ids"], row["labels"]) if l != -100])
        'yo</s>'
    """
    for col in ("prompt", "completion"):
        if col not in dataset.column_names:
            raise DataError(
                f"the dataset has no {col!r} column (columns: {dataset.column_names}); "
                "build it with build_instruction_dataset() first"
            )
    if overflow not in ("truncate", "drop"):
        raise DataError(f"overflow must be 'truncate' or 'drop', not {overflow!r}")
    kind = resolve_mode(tokenizer, mode, model)
    if kind == "seq2seq" and chat_template:
        raise DataError("chat_template=True applies to causal (decoder-only) models; use chat_template=False")
    if dataset.num_rows == 0:
        raise DataError("the dataset is empty; nothing to tokenize")

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "length": [], "full_length": [], "content_hash": []}
        for prompt, completion in zip(batch["prompt"], batch["completion"]):
            # kept with the tokens, so a run can record what it trained on even without the text columns
            out["content_hash"].append(content_hash(prompt, completion))
            if kind == "seq2seq":
                src, tgt = _encode_seq2seq(tokenizer, prompt, completion)
                full = max(len(src), len(tgt))
                src, tgt = src[:max_length], tgt[:max_length]
                if len(src) and src[-1] != tokenizer.eos_token_id:
                    src[-1] = tokenizer.eos_token_id
                ids, labels = src, tgt
            else:
                p, c = encode_pair(tokenizer, prompt, completion, chat_template)
                full = len(p) + len(c)
                if full > max_length:
                    c = c[:max_length]
                    keep = max_length - len(c)
                    # Cut the prompt's start, not its end: the cue right before the answer matters most.
                    p = p[len(p) - keep :] if keep > 0 else []
                ids, labels = p + c, [-100] * len(p) + c
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["length"].append(len(ids))
            out["full_length"].append(full)
        return out

    tokenized = dataset.map(encode, batched=True, desc="tokenize", load_from_cache_file=False)
    full = tokenized["full_length"]
    over = [i for i, n in enumerate(full) if n > max_length]
    ids = tokenized["example_id"] if "example_id" in tokenized.column_names else [str(i) for i in range(len(full))]
    report = TruncationReport(
        max_length=max_length,
        overflow=overflow,
        n_examples=len(full),
        n_over=len(over),
        over_ids=[ids[i] for i in over],
        longest=max(full),
        kept_all_at=max(full),
    )
    if over:
        if overflow == "drop":
            if len(over) == len(full):
                raise DataError(
                    f"every example ({len(full)}) is longer than max_length={max_length} tokens (shortest "
                    f"{min(full)}); raise max_length to at least {min(full)} or use overflow='truncate'"
                )
            over_set = set(over)
            tokenized = tokenized.select([i for i in range(len(full)) if i not in over_set])
        logger.warning("%s", report)
    tokenized = tokenized.remove_columns("full_length")
    return (tokenized, report) if return_report else tokenized


def length_stats(
    data: datasets.Dataset | datasets.DatasetDict, tokenizer: Any, *, chat_template: bool = False
) -> pd.DataFrame:
    """Token-length summary per split and task: count, mean/median/p95/max of prompt, completion and total tokens.

    Example:
        >>> from nbft.models import tiny_random
        >>> _, tok = tiny_random()
        >>> ds = datasets.Dataset.from_list([{"prompt": "ab\\n", "completion": "c", "task": "t"}])
        >>> int(length_stats(ds, tok)["total_max"].iloc[0])
        5
    """
    splits = data.items() if isinstance(data, datasets.DatasetDict) else [("data", data)]
    rows = []
    for split_name, ds in splits:
        tasks = ds["task"] if "task" in ds.column_names else ["-"] * ds.num_rows
        for prompt, completion, task in zip(ds["prompt"], ds["completion"], tasks):
            p, c = encode_pair(tokenizer, prompt, completion, chat_template)
            rows.append(
                {"split": split_name, "task": task, "prompt": len(p), "completion": len(c), "total": len(p) + len(c)}
            )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    agg = frame.groupby(["split", "task"], sort=False)[["prompt", "completion", "total"]].agg(
        ["count", "mean", "median", lambda s: s.quantile(0.95), "max"]
    )
    agg.columns = [f"{col}_{'p95' if stat == '<lambda_0>' else stat}" for col, stat in agg.columns]
    agg = agg.rename(columns={"prompt_count": "n"}).drop(columns=["completion_count", "total_count"])
    return agg.reset_index()


# ----------------------------------------------------------------------------------------------------------------
# Export


def save_dataset(
    data: datasets.Dataset | datasets.DatasetDict, path: str | os.PathLike[str], format: str = "disk"
) -> Path:
    """Write a dataset atomically: ``"disk"`` (save_to_disk folder), ``"jsonl"`` or ``"parquet"``.

    For a DatasetDict and a file format, ``path`` is a folder with one file per split.

    Example:
        >>> save_dataset(datasets.Dataset.from_list([{"a": 1}]), "/tmp/nbft-doc.jsonl", "jsonl").name
        'nbft-doc.jsonl'
    """
    if format not in ("disk", "jsonl", "parquet"):
        raise DataError(f"format must be 'disk', 'jsonl' or 'parquet', not {format!r}")
    path = Path(path)
    with atomic_path(path) as tmp:
        if format == "disk":
            data.save_to_disk(str(tmp))
        elif isinstance(data, datasets.DatasetDict):
            tmp.mkdir()
            for name, ds in data.items():
                _write_file(ds, tmp / f"{name}.{format}", format)
        else:
            _write_file(data, tmp, format)
    return path


def _write_file(ds: datasets.Dataset, path: Path, format: str) -> None:
    if format == "jsonl":
        ds.to_json(str(path), lines=True, force_ascii=False)
    else:
        ds.to_parquet(str(path))


__all__ = [
    "DataError",
    "OfflineError",
    "TemplateError",
    "TruncationReport",
    "build_instruction_dataset",
    "content_hash",
    "encode_pair",
    "encode_prompt",
    "format_prompt",
    "length_stats",
    "load_hub_dataset",
    "load_source",
    "mix",
    "mix_report",
    "prepare_source",
    "render_examples",
    "save_dataset",
    "split_examples",
    "tokenize_for_training",
]
