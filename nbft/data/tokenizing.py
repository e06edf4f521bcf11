"""Tokenizing instruction data for training: ``input_ids`` and ``labels`` with the prompt masked (the loss covers
the completion only), over-long examples truncated or dropped with a :class:`TruncationReport`, and token-length
statistics. Prompts are encoded by :mod:`nbft.prompting`, as evaluation encodes them.

Example::

    tokenized = tokenize_for_training(data["train"], tokenizer, max_length=512)
    length_stats(data["train"], tokenizer)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import datasets
import pandas as pd

from nbft.data._args import _int_arg
from nbft.errors import DataError
from nbft.hashes import content_hash
from nbft.prompting import _encode_seq2seq, _truncate_pair, encode_pair, resolve_mode

# one logger for the whole package, named as before the split (users' logging filters and nbft._quiet name it)
logger = logging.getLogger("nbft.data")

__all__ = ["TruncationReport", "length_stats", "tokenize_for_training"]


@dataclasses.dataclass
class TruncationReport:
    """What tokenize_for_training did with over-long examples, overall and per task (the data's ``task`` column).

    ``n_no_answer``: examples left with no supervised token of their answer (only the EOS is learned) after the cut.
    ``per_task``: ``{task: {"examples", "over", "no_answer"}}`` (one entry, ``"-"``, without a task column).
    """

    max_length: int
    overflow: str
    n_examples: int
    n_over: int
    over_ids: list[str]
    longest: int
    kept_all_at: int
    n_no_answer: int = 0
    per_task: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        if not self.n_over:
            text = f"all {self.n_examples} examples fit in max_length={self.max_length} (longest {self.longest})"
        else:
            verb = "truncated" if self.overflow == "truncate" else "dropped"
            ids = ", ".join(self.over_ids[:5]) + (" ..." if len(self.over_ids) > 5 else "")
            text = (
                f"{verb} {self.n_over} of {self.n_examples} examples longer than max_length={self.max_length} "
                f"(example_id {ids}); max_length={self.kept_all_at} would keep them all"
            )
        if self.n_no_answer:
            text += f"; {self.n_no_answer} left with no answer token to learn (only the EOS)"
        if len(self.per_task) > 1:
            text += "; per task: " + ", ".join(f"{task} {self.task_line(task)}" for task in self.per_task)
        return text

    def task_line(self, task: str) -> str:
        """``3/28 truncated, 0 with no answer token`` for one task."""
        counts = self.per_task[task]
        verb = "truncated" if self.overflow == "truncate" else "dropped"
        return f"{counts['over']}/{counts['examples']} {verb}, {counts['no_answer']} with no answer token"


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
    dataset = _as_dataset(dataset)
    for col in ("prompt", "completion"):
        if col not in dataset.column_names:
            raise DataError(
                f"the dataset has no {col!r} column (columns: {dataset.column_names}); "
                "build it with build_instruction_dataset() first"
            )
    max_length = _int_arg(
        "max_length", max_length, 2, "it must leave room for the end of the prompt and the EOS, e.g. max_length=512"
    )
    if overflow not in ("truncate", "drop"):
        raise DataError(f"overflow must be 'truncate' or 'drop', not {overflow!r}")
    _check_tokenizer(tokenizer)
    kind = resolve_mode(tokenizer, mode, model)
    if kind == "seq2seq" and chat_template:
        raise DataError("chat_template=True applies to causal (decoder-only) models; use chat_template=False")
    if dataset.num_rows == 0:
        raise DataError("the dataset is empty; nothing to tokenize")
    _check_texts(dataset)

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {
            "input_ids": [], "labels": [], "length": [], "full_length": [], "content_hash": [], "answer_tokens": [],
        }  # fmt: skip
        for prompt, completion in zip(batch["prompt"], batch["completion"]):
            # kept with the tokens, so a run can record what it trained on even without the text columns
            out["content_hash"].append(content_hash(prompt, completion))
            if kind == "seq2seq":
                src, tgt = _encode_seq2seq(tokenizer, prompt, completion)
                full = max(len(src), len(tgt))
                src, tgt = src[:max_length], tgt[:max_length]
                eos = tokenizer.eos_token_id
                if src[-1] != eos:
                    src[-1] = eos
                if tgt[-1] != eos:  # a cut target still ends: the model must learn where an answer stops
                    tgt[-1] = eos
                ids, labels = src, tgt
            else:
                p, c = encode_pair(tokenizer, prompt, completion, chat_template)
                full = len(p) + len(c)
                if full > max_length:
                    p, c = _truncate_pair(p, c, max_length)
                ids, labels = p + c, [-100] * len(p) + c
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["length"].append(len(ids))
            out["full_length"].append(full)
            out["answer_tokens"].append(len(labels if kind == "seq2seq" else c) - 1)  # without the EOS
        return out

    tokenized = dataset.map(encode, batched=True, desc="tokenize", load_from_cache_file=False)
    full = tokenized["full_length"]
    over = [i for i, n in enumerate(full) if n > max_length]
    ids = tokenized["example_id"] if "example_id" in tokenized.column_names else [str(i) for i in range(len(full))]
    answers = tokenized["answer_tokens"]
    over_set = set(over)
    # a dropped example is left out, not "left with no answer": only kept examples can be left with none
    no_answer = [i for i, n in enumerate(answers) if n <= 0 and not (overflow == "drop" and i in over_set)]
    tasks = [str(t) for t in tokenized["task"]] if "task" in tokenized.column_names else ["-"] * len(full)
    per_task: dict[str, dict[str, int]] = {}
    for task in tasks:
        per_task.setdefault(task, {"examples": 0, "over": 0, "no_answer": 0})["examples"] += 1
    for i in over:
        per_task[tasks[i]]["over"] += 1
    for i in no_answer:
        per_task[tasks[i]]["no_answer"] += 1
    report = TruncationReport(
        max_length=max_length,
        overflow=overflow,
        n_examples=len(full),
        n_over=len(over),
        over_ids=[ids[i] for i in over],
        longest=max(full),
        kept_all_at=max(full),
        n_no_answer=len(no_answer),
        per_task=per_task,
    )
    if over:
        if overflow == "drop":
            if len(over) == len(full):
                raise DataError(
                    f"every example ({len(full)}) is longer than max_length={max_length} tokens (shortest "
                    f"{min(full)}); raise max_length to at least {min(full)} or use overflow='truncate'"
                )
            tokenized = tokenized.select([i for i in range(len(full)) if i not in over_set])
        logger.warning("%s", report)
    tokenized = tokenized.remove_columns(["full_length", "answer_tokens"])
    from nbft.dataset_settings import mark_tokenized

    tokenized = mark_tokenized(tokenized, dataset, max_length, chat_template, overflow)  # finetune records them
    return (tokenized, report) if return_report else tokenized


def _as_dataset(data: Any) -> datasets.Dataset:
    if isinstance(data, datasets.DatasetDict):
        raise DataError(f"pass one split, e.g. data['train'], not the whole DatasetDict (splits: {list(data)})")
    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, pd.DataFrame):
        return datasets.Dataset.from_pandas(data, preserve_index=False)
    if isinstance(data, Sequence) and not isinstance(data, str | bytes) and all(isinstance(r, Mapping) for r in data):
        if not data:
            raise DataError("the dataset is empty; nothing to tokenize")
        return datasets.Dataset.from_list([dict(r) for r in data])
    raise DataError(
        f"expected a datasets.Dataset with prompt and completion columns (or a list of such dicts), got "
        f"{type(data).__name__}; build one with build_instruction_dataset()"
    )


def _check_tokenizer(tokenizer: Any) -> None:
    if tokenizer is None or isinstance(tokenizer, str) or not callable(tokenizer):
        raise DataError(f"tokenizer must be a loaded tokenizer (model, tok = nbft.load_model(...)), not {tokenizer!r}")
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise DataError(
            f"the tokenizer ({type(tokenizer).__name__}) has no end-of-sequence token, so a completion could not "
            "end; set one first, e.g. tokenizer.eos_token = '</s>' (a token the model knows as its end)"
        )


def _check_texts(dataset: datasets.Dataset) -> None:
    """Every prompt and completion is text, and neither is empty (an empty one would train on nothing but EOS)."""
    for col in ("prompt", "completion"):
        for i, value in enumerate(dataset[col]):
            if not isinstance(value, str):
                raise DataError(
                    f"row {i + 1}: {col} is {value!r} ({type(value).__name__}), not text; fill or drop such rows, "
                    f"e.g. dataset.filter(lambda x: isinstance(x[{col!r}], str) and x[{col!r}].strip())"
                )
            if not value.strip():
                raise DataError(
                    f"row {i + 1}: the {col} is empty, so the example would teach nothing but "
                    f"{'the answer without a question' if col == 'prompt' else 'to stop'}; fill or drop such rows, "
                    f"e.g. dataset.filter(lambda x: x[{col!r}].strip())"
                )


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
    splits = data.items() if isinstance(data, datasets.DatasetDict) else [("data", _as_dataset(data))]
    for _, ds in splits:
        if not {"prompt", "completion"} <= set(ds.column_names):
            raise DataError(
                f"length_stats needs prompt and completion columns (it has {ds.column_names}); "
                "build the data with build_instruction_dataset() first"
            )
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
