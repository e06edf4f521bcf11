"""Building instruction datasets: load -> validate -> render templates -> dedupe -> split -> (mix) -> tokenize.

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
from nbft.models import tokenizer_kind
from nbft.templates import PromptTemplate, TemplateError, resolve_templates

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
# Building prompt -> completion pairs


def example_id(task: str, example: Mapping[str, Any], fields: Sequence[str]) -> str:
    """A stable id from the task and the example's own values (not its phrasing, not its position)."""
    payload = json.dumps([task, *[example.get(f) for f in fields]], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def build_instruction_dataset(
    source: Source,
    templates: str | PromptTemplate | Sequence[str | PromptTemplate],
    *,
    task: str | None = None,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratify: bool | None = None,
    columns: Mapping[str, str] | None = None,
    max_examples: int | None = None,
) -> datasets.DatasetDict:
    """Render labelled examples into a train/validation/test ``DatasetDict`` of prompt → completion pairs.

    Each example gets one phrasing, chosen at random among ``templates`` with ``seed`` (same seed, same dataset).
    Exact duplicate examples are dropped; empty completions are an error. Classification data is split stratified
    by label unless ``stratify=False``.

    Args:
        source: anything :func:`load_source` accepts.
        templates: a task name (all its phrasings, e.g. ``"summarize"``), template ids, or ``PromptTemplate`` objects.
        task: the task name recorded in the ``task`` column (default: the templates' task).
        split: fractions of train, validation and test.
        columns: rename data columns to the template's field names, ``{"field": "column"}``.
        max_examples: keep a seeded random subset of this many unique examples.

    Example:
        >>> rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
        >>> build_instruction_dataset(rows, ["qa/1", "qa/2"], split=(0.6, 0.2, 0.2))["test"].num_rows
        2
    """
    from nbft.config import DataConfig

    split = DataConfig(split=tuple(split)).split  # one place validates split fractions
    tmpl = resolve_templates(templates)
    tasks = {t.task for t in tmpl}
    if task is None:
        if len(tasks) > 1:
            raise DataError(f"templates of several tasks {sorted(tasks)} given for one source; pass task=...")
        task = tmpl[0].task
    ds = load_source(source)
    if columns:
        missing = [c for c in columns.values() if c not in ds.column_names]
        if missing:
            raise DataError(f"columns= names {missing}, which the data lacks; it has {ds.column_names}")
        ds = ds.rename_columns({col: field for field, col in columns.items() if col != field})
    for t in tmpl:
        t.check_columns(ds.column_names)
    fields = sorted({f for t in tmpl for f in (*t.fields, t.target)})
    rows = ds.select_columns(fields).to_list()

    # Drop exact duplicates of the source example before phrasing, so one example can never be in two splits.
    seen: set[str] = set()
    unique: list[tuple[str, dict[str, Any]]] = []
    for row in rows:
        eid = example_id(task, row, fields)
        if eid not in seen:
            seen.add(eid)
            unique.append((eid, row))
    if len(unique) < len(rows):
        logger.info("dropped %d exact duplicate examples of %d", len(rows) - len(unique), len(rows))
    rng = random.Random(seed)
    if max_examples is not None and max_examples < len(unique):
        unique = rng.sample(unique, max_examples)

    records, empty = [], []
    for eid, row in unique:
        t = tmpl[rng.randrange(len(tmpl))]
        completion = t.completion(row)
        if not completion.strip():
            empty.append(row)
            continue
        records.append(
            {"prompt": t.render(row), "completion": completion, "task": task, "template_id": t.id, "example_id": eid}
        )
    if empty:
        raise DataError(
            f"{len(empty)} of {len(unique)} examples have an empty completion (field {tmpl[0].target!r}), "
            f"e.g. {empty[:3]}; drop or fill them before building (e.g. dataset.filter(lambda x: x[...].strip()))"
        )
    classification = all(t.is_classification for t in tmpl)
    do_stratify = classification if stratify is None else stratify
    parts = _split(records, split, seed, do_stratify)
    return datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict({c: [r[c] for r in part] for c in COLUMNS}, features=_features())
            for name, part in parts.items()
        }
    )


def _features() -> datasets.Features:
    return datasets.Features({c: datasets.Value("string") for c in COLUMNS})


def _split(
    records: list[dict[str, Any]], fractions: Sequence[float], seed: int, stratify: bool
) -> dict[str, list[dict[str, Any]]]:
    from sklearn.model_selection import train_test_split

    n = len(records)
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    if n - n_val - n_test < 1:
        raise DataError(f"only {n} examples: too few to split {tuple(fractions)}; add data or change split")
    labels = [r["completion"] for r in records] if stratify else None
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
    return {
        "train": [records[i] for i in train_idx],
        "validation": [records[i] for i in val_idx],
        "test": [records[i] for i in test_idx],
    }


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


def format_prompt(tokenizer: Any, prompt: str, chat_template: bool = False) -> str:
    """The exact text a model sees before its completion, in training and in evaluation alike.

    With ``chat_template=True`` the prompt becomes a user turn followed by the assistant's generation prompt.
    """
    if not chat_template:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"chat_template=True but tokenizer {type(tokenizer).__name__} has no chat template; "
            "use chat_template=False or an instruct model's tokenizer"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt.rstrip("\n")}], add_generation_prompt=True, tokenize=False
    )


def encode_pair(
    tokenizer: Any, prompt: str, completion: str, chat_template: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of a causal prompt and of its completion (ending with EOS), tokenized separately.

    Tokenizing the two parts separately makes the label mask exact: the completion's tokens are exactly the
    labelled ones, whatever the tokenizer would merge across the boundary.
    """
    if chat_template:
        prompt_text = format_prompt(tokenizer, prompt, True)
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.rstrip("\n")}, {"role": "assistant", "content": completion}],
            tokenize=False,
        )
        if not full.startswith(prompt_text):
            raise DataError("the chat template renders the user turn differently with and without an answer")
        completion_text = full[len(prompt_text) :].rstrip("\n")
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    else:
        completion_text = completion
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if prompt_ids and tokenizer.eos_token_id is not None and prompt_ids[-1] == tokenizer.eos_token_id:
            prompt_ids = prompt_ids[:-1]  # some tokenizers append EOS to every text; a prompt must not end there
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
        out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "length": [], "full_length": []}
        for prompt, completion in zip(batch["prompt"], batch["completion"]):
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
    "encode_pair",
    "format_prompt",
    "length_stats",
    "load_hub_dataset",
    "load_source",
    "mix",
    "mix_report",
    "save_dataset",
    "tokenize_for_training",
]
