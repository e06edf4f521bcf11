"""Training data: token lists in, deterministic step plans, and padding-free packed micro-batches out.

* :func:`as_examples` accepts a ``datasets.Dataset`` (tokenized, or with prompt/completion columns), a list of dicts,
  or a dict of lists, and returns :class:`Examples` (token tensors). ``datasets`` is only imported when the input
  is a Dataset, so a benchmark can feed plain lists.
* :class:`StepPlan` decides which examples form each optimizer step and micro-batch. It is a pure function of the
  seed and the epoch, so a resumed run sees exactly the batches the uninterrupted run would have seen.
* :func:`collate_causal` packs a micro-batch into rows and builds an additive float block-diagonal causal mask, so
  examples that share a row never attend to each other, with any attention implementation; :func:`collate_varlen`
  makes one unpadded row for per-example attention. Which one a run uses is decided once, in
  :mod:`nbft.train.layout`. Examples keep their task name (the data's ``task`` column) for a loss per task.

Example:
    >>> ex = as_examples([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}], kind="causal")
    >>> ex.lengths
    [3]
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("nbft.train")

IGNORE = -100

Rule = tuple[str, int] | None
"""How a layer attends: ``None`` (full causal), ``("window", W)`` (the last W tokens) or ``("chunk", C)``."""


@dataclasses.dataclass
class Examples:
    """Tokenized examples: ``labels`` aligned with ``input_ids`` (-100 = no loss) for causal models; for seq2seq
    models ``input_ids`` is the encoder input and ``labels`` the target."""

    input_ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    tasks: list[str] | None = None
    """The task of each example (the data's ``task`` column), or ``None`` when the data has no such column."""

    def __len__(self) -> int:
        return len(self.input_ids)

    def task_index(self) -> tuple[list[str], list[int]] | None:
        """``(names, index per example)`` when the examples come from more than one task, else ``None``.

        Example:
            >>> Examples([torch.ones(2)] * 3, [torch.ones(2)] * 3, tasks=["qa", "sentiment", "qa"]).task_index()
            (['qa', 'sentiment'], [0, 1, 0])
        """
        if self.tasks is None or len(set(self.tasks)) < 2:
            return None
        names = sorted(set(self.tasks))
        position = {name: i for i, name in enumerate(names)}
        return names, [position[t] for t in self.tasks]

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]

    def label_counts(self, kind: str) -> list[int]:
        """Tokens that carry a loss in each example (for causal models: label positions after the first)."""
        if kind == "causal":
            return [int((lab[1:] != IGNORE).sum()) for lab in self.labels]
        return [int((lab != IGNORE).sum()) for lab in self.labels]

    def save(self, path: Path) -> None:
        """Write as one safetensors file (flat token arrays + offsets), so resume needs no other library."""
        from safetensors.torch import save_file

        offsets = torch.tensor([0, *torch.tensor(self.lengths).cumsum(0).tolist()], dtype=torch.int64)
        label_lens = torch.tensor([0, *torch.tensor([len(x) for x in self.labels]).cumsum(0).tolist()])
        tensors = {
            "input_ids": torch.cat(self.input_ids).to(torch.int32) if len(self) else torch.zeros(0, dtype=torch.int32),
            "labels": torch.cat(self.labels).to(torch.int32) if len(self) else torch.zeros(0, dtype=torch.int32),
            "offsets": offsets,
            "label_offsets": label_lens.to(torch.int64),
        }
        metadata = {"summary": json.dumps(self.summary)}
        if self.tasks is not None:  # per-example task names, so a resumed run still reports the loss per task
            metadata["tasks"] = json.dumps(self.tasks)
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: Path) -> Examples:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            summary = json.loads(metadata.get("summary", "{}"))
            tasks = json.loads(metadata["tasks"]) if "tasks" in metadata else None
            ids, labels = f.get_tensor("input_ids").long(), f.get_tensor("labels").long()
            off, loff = f.get_tensor("offsets").tolist(), f.get_tensor("label_offsets").tolist()
        return cls(
            [ids[a:b] for a, b in itertools.pairwise(off)],
            [labels[a:b] for a, b in itertools.pairwise(loff)],
            summary,
            tasks,
        )


def as_examples(
    data: Any,
    *,
    kind: str,
    tokenizer: Any = None,
    max_length: int = 1024,
    name: str = "train",
    vocab_size: int | None = None,
    chat_template: bool = False,
    overflow: str = "truncate",
) -> Examples:
    """Normalise training data to :class:`Examples`.

    Accepts a ``datasets.Dataset`` or list/dict of records with ``input_ids`` + ``labels`` (already tokenized), or
    with ``prompt`` + ``completion`` (then tokenized with ``nbft.data.tokenize_for_training``, with ``max_length``,
    ``chat_template`` and ``overflow``). Token ids are
    checked against ``vocab_size`` when given, and data with no labelled token at all is refused (its loss would
    be 0 and nothing would be learnt).
    """
    if type(data).__name__ == "DatasetDict":
        raise ValueError(f"{name} data is a DatasetDict: pass one split, e.g. data['train'] (splits: {list(data)})")
    if type(data).__name__ == "DataFrame":
        import datasets

        data = datasets.Dataset.from_pandas(data, preserve_index=False)
    if (isinstance(data, list | tuple | dict) and len(data) == 0) or (hasattr(data, "num_rows") and data.num_rows == 0):
        raise ValueError(f"{name} data is empty" + _empty_hint(name))
    columns = _columns(data)
    if not {"input_ids", "labels"} <= columns:
        if {"prompt", "completion"} <= columns:
            if tokenizer is None:
                raise ValueError(f"{name} data has prompt/completion text: pass the tokenizer to tokenize it")
            from nbft.data import tokenize_for_training

            data = tokenize_for_training(
                _as_dataset(data), tokenizer, max_length=max_length, mode=kind, chat_template=chat_template,
                overflow=overflow,  # type: ignore[arg-type]
            )  # fmt: skip
        else:
            raise ValueError(
                f"{name} data needs columns input_ids + labels (tokenized) or prompt + completion (text); it has "
                f"{sorted(columns)}. Build it with nbft.build_instruction_dataset(...) or tokenize_for_training(...)."
            )
    input_ids, labels = _column(data, "input_ids"), _column(data, "labels")
    if len(input_ids) == 0:
        raise ValueError(f"{name} data is empty" + _empty_hint(name))
    ids_t, lab_t = [], []
    for i, (ids, lab) in enumerate(zip(input_ids, labels, strict=True)):
        if kind == "causal" and len(ids) != len(lab):
            raise ValueError(
                f"{name} example {i}: labels ({len(lab)}) must be aligned with input_ids ({len(ids)}) for a causal "
                "model, with -100 on prompt tokens (tokenize_for_training does this)"
            )
        try:
            ids_t.append(torch.as_tensor(ids, dtype=torch.long))
            lab_t.append(torch.as_tensor(lab, dtype=torch.long))
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"{name} example {i}: input_ids and labels must be lists of token ids (ints), got {ids!r:.60} and "
                f"{lab!r:.60}"
            ) from None
        if ids_t[-1].ndim != 1 or len(ids_t[-1]) == 0:
            raise ValueError(f"{name} example {i}: input_ids must be a non-empty list of token ids, got {ids!r:.60}")
    _check_token_ids(ids_t, lab_t, vocab_size, name)
    longer = sum(len(x) > max_length for x in ids_t)
    if longer:  # already tokenized: the caller chose the lengths, so only say so (tokenize_for_training truncates)
        logger.warning("%s: %d tokenized examples are longer than max_length=%d", name, longer, max_length)
    tasks = [str(t) for t in _column(data, "task")] if "task" in columns else None
    examples = Examples(ids_t, lab_t, tasks=tasks)
    examples.summary = _summary(data, examples, kind, columns)
    return examples


def _empty_hint(name: str) -> str:
    return "; leave val out (val=None) to train without a validation loss" if name == "validation" else ""


def _check_token_ids(ids: list[torch.Tensor], labels: list[torch.Tensor], vocab_size: int | None, name: str) -> None:
    """Ids the model's embedding does not have fail deep inside torch: name the example instead. Data without a
    single labelled token trains on nothing (loss 0): refuse it."""
    flat_ids, flat_labels = torch.cat(ids), torch.cat(labels)
    labelled = flat_labels[flat_labels != -100]
    if labelled.numel() == 0:
        raise ValueError(
            f"{name} data has no labelled token: every label is -100, so the loss would be 0 and nothing would be "
            "learnt. Labels must hold the completion's token ids (tokenize_for_training(...) makes them)"
        )
    bad_low = (flat_ids < 0).any() or (labelled < 0).any()
    bad_high = vocab_size is not None and (
        int(flat_ids.max()) >= vocab_size or (labelled.numel() and int(labelled.max()) >= vocab_size)
    )
    if bad_low or bad_high:
        for i, (x, y) in enumerate(zip(ids, labels, strict=True)):
            y = y[y != -100]
            values = torch.cat([x, y])
            if (values < 0).any() or (vocab_size is not None and (values >= vocab_size).any()):
                bad = [int(v) for v in values if v < 0 or (vocab_size is not None and v >= vocab_size)][:3]
                top = vocab_size - 1 if vocab_size else "?"
                raise ValueError(
                    f"{name} example {i} holds token ids {bad} outside the model's vocabulary (0..{top}; labels may "
                    "also be -100): tokenize with the model's own tokenizer"
                )


def _columns(data: Any) -> set[str]:
    if hasattr(data, "column_names"):  # datasets.Dataset
        return set(data.column_names)
    if isinstance(data, dict):
        return set(data)
    if isinstance(data, list | tuple) and data and isinstance(data[0], dict):
        return set(data[0])
    raise TypeError(
        f"unsupported training data type {type(data).__name__}: pass a datasets.Dataset, a list of dicts or a "
        "dict of lists"
    )


def _column(data: Any, name: str) -> list[Any]:
    if isinstance(data, list | tuple):
        return [row[name] for row in data]
    return list(data[name])


def _as_dataset(data: Any) -> Any:
    if hasattr(data, "column_names"):
        return data
    import datasets

    if isinstance(data, dict):
        return datasets.Dataset.from_dict(data)
    return datasets.Dataset.from_list(list(data))


def _summary(data: Any, examples: Examples, kind: str, columns: set[str]) -> dict[str, Any]:
    """Facts for the model card: counts, tokens, and tasks/templates when the data carries them."""
    summary: dict[str, Any] = {
        "examples": len(examples),
        "tokens": int(sum(examples.lengths)),
        "label_tokens": int(sum(examples.label_counts(kind))),
        "max_length": max(examples.lengths),
    }
    for col in ("task", "template_id"):
        if col in columns:
            summary[col + "s"] = dict(Counter(str(v) for v in _column(data, col)).most_common())
    return summary


# --------------------------------------------------------------------------------------------------------------
# Step plans


class StepPlan:
    """Which examples make each optimizer step, and how a step splits into micro-batches.

    Each epoch shuffles with ``torch.Generator(seed + epoch)``: the plan for any step can be recomputed from the
    seed alone, which is what makes resume exact. A step holds ``batch_size * grad_accum * world`` examples, or
    examples up to ``tokens_per_step`` real tokens. Every example is seen exactly once per epoch; with a token
    budget, epochs may differ by a step or two, and steps are counted across epochs as they really are. Inside a
    step, examples are sorted by length and split into ``grad_accum * world`` micro-batches (the sum over the step
    is the same whatever the split, so this only saves padding); a process whose micro-batch is empty contributes
    nothing to that step.
    """

    def __init__(
        self,
        lengths: list[int],
        *,
        seed: int,
        batch_size: int,
        grad_accum: int,
        world_size: int = 1,
        tokens_per_step: int | None = None,
        epochs: float = 1.0,
        max_steps: int | None = None,
    ) -> None:
        self.lengths = lengths
        self.seed = seed
        self.batch_size = batch_size
        self.micro_batches = grad_accum * world_size
        self.tokens_per_step = tokens_per_step
        self._epochs: dict[int, list[list[int]]] = {}
        self._starts = [0]  # _starts[e] = global index of epoch e's first step (filled as epochs are planned)
        self.steps_per_epoch = len(self._epoch(0))
        """Steps in the first epoch (later epochs of a token-budget plan may differ by a step or two)."""
        if max_steps is not None:
            self.total_steps = max_steps
        else:
            whole, part = int(epochs), epochs - int(epochs)
            total = self._start(whole) + (round(part * len(self._epoch(whole))) if part else 0)
            self.total_steps = max(1, total)

    def _epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(len(self.lengths), generator=gen).tolist()
            steps: list[list[int]] = []
            if self.tokens_per_step is None:
                size = self.batch_size * self.micro_batches
                steps = [order[i : i + size] for i in range(0, len(order), size)]
            else:
                current: list[int] = []
                tokens = 0
                for i in order:
                    if current and tokens + self.lengths[i] > self.tokens_per_step:
                        steps.append(current)
                        current, tokens = [], 0
                    current.append(i)
                    tokens += self.lengths[i]
                if current:
                    steps.append(current)
            self._epochs[epoch] = steps
        return self._epochs[epoch]

    def _start(self, epoch: int) -> int:
        """Global index of the first step of ``epoch``."""
        while len(self._starts) <= epoch:
            e = len(self._starts) - 1
            self._starts.append(self._starts[e] + len(self._epoch(e)))
        return self._starts[epoch]

    def step(self, index: int) -> tuple[float, list[list[int]]]:
        """Epoch progress after this step, and the step's micro-batches (lists of example indices)."""
        epoch = 0
        while self._start(epoch + 1) <= index:
            epoch += 1
        steps = self._epoch(epoch)
        within = index - self._start(epoch)
        ordered = sorted(steps[within], key=lambda i: -self.lengths[i])
        n = min(self.micro_batches, len(ordered))
        bounds = [round(k * len(ordered) / n) for k in range(n + 1)]
        micro = [ordered[a:b] for a, b in itertools.pairwise(bounds)]
        # Pad the list of micro-batches so every process gets one (an empty one contributes nothing).
        micro += [[] for _ in range(self.micro_batches - len(micro))]
        return epoch + (within + 1) / len(steps), micro

    def epoch_at(self, index: int) -> float:
        """Epoch progress before step ``index`` (0.0 at the start; used when a run resumes)."""
        return self.step(index - 1)[0] if index > 0 else 0.0


def eval_batches(lengths: list[int], tokens_per_batch: int) -> list[list[int]]:
    """Validation micro-batches: sorted by length, filled up to a token budget (no shuffling needed)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Padded size of the batch if i joins: rows * longest (the first example is the longest).
        if current and (len(current) + 1) * lengths[current[0]] > tokens_per_batch:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


# --------------------------------------------------------------------------------------------------------------
# Collation


def _pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: few rows, each no longer than the longest example, so attention cost stays O(len²)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def collate_causal(
    input_ids: list[torch.Tensor],
    labels: list[torch.Tensor],
    *,
    pad_id: int,
    pack: bool,
    mask_dtype: torch.dtype = torch.float32,
    groups: list[int] | None = None,
    pattern: dict[str, Rule] | None = None,
) -> dict[str, Any]:
    """Build one causal micro-batch in rows (several examples per row when ``pack``, else one per row).

    Returns ``input_ids``, ``position_ids`` (restarting at 0 for each example), ``targets`` (the next token's
    label, already shifted inside each example, so no example predicts its neighbour's first token),
    ``attention_mask`` and ``spans`` (``(row, start)`` of each example). The mask is a ``[rows, 1, L, L]``
    block-diagonal causal mask, **additive** (0 where a token may attend, the dtype's minimum where not) in
    ``mask_dtype``, the model's compute dtype: every attention implementation adds a float mask to its scores,
    while eager attention adds a boolean mask as 0/1, which masks nothing. It is ``None`` when every row is a single
    unpadded example (the kernel's own causal path is then used). ``pattern`` maps the model's layer types to their
    attention rule (``None`` = full causal, ``("window", W)``, ``("chunk", C)``; see
    :func:`nbft.train.layout.attention_pattern`): with one type the mask follows its rule, with several the mask is
    a dict of masks per layer type, which transformers' models with mixed layers (Gemma 2/3, Qwen) take as given.
    ``groups`` (one int per example, e.g. its task)
    adds a ``groups`` tensor aligned with ``targets`` (-1 elsewhere), for a loss per group.
    """
    lengths = [len(x) for x in input_ids]
    capacity = max(lengths)
    rows = _pack_rows(lengths, capacity) if pack else [[i] for i in range(len(lengths))]
    width = max(sum(lengths[i] for i in row) for row in rows)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, IGNORE, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)  # -1 = padding
    group_ids = torch.full(shape, -1, dtype=torch.long)
    spans: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    for r, row in enumerate(rows):
        start = 0
        for seg, i in enumerate(row):
            n = lengths[i]
            ids[r, start : start + n] = input_ids[i]
            targets[r, start : start + n - 1] = labels[i][1:]
            positions[r, start : start + n] = torch.arange(n)
            segments[r, start : start + n] = seg
            if groups is not None:
                group_ids[r, start : start + n - 1] = groups[i]
            spans[i] = (r, start)
            start += n
    mask: torch.Tensor | dict[str, torch.Tensor] | None = None
    if any(len(row) > 1 for row in rows) or bool((segments < 0).any()):
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        # Padding positions form their own block (they attend to earlier padding), so no row is fully masked:
        # a fully masked row gives NaN in SDPA, and NaN * 0 would still poison the weight gradients.
        same = (segments[:, :, None] == segments[:, None, :]) & causal
        masks = {
            kind: _additive(_restrict(same, positions, rule), mask_dtype)
            for kind, rule in (pattern or {"full_attention": None}).items()
        }
        mask = next(iter(masks.values())) if len(masks) == 1 else masks
    batch: dict[str, Any] = {
        "input_ids": ids,
        "position_ids": positions,
        "targets": targets,
        "attention_mask": mask,
        "spans": spans,
    }
    if groups is not None:
        batch["groups"] = group_ids
    return batch


def _restrict(allowed: torch.Tensor, positions: torch.Tensor, rule: Rule) -> torch.Tensor:
    """``allowed`` (same example, causal) narrowed to a layer's rule: the last ``W`` tokens of a sliding window
    (``q - k < W``, as transformers defines it), or the same ``C``-token chunk of the example."""
    if rule is None:
        return allowed
    kind, size = rule
    q, k = positions[:, :, None], positions[:, None, :]
    if kind == "window":
        return allowed & (q - k < size)
    if kind == "chunk":
        return allowed & (q // size == k // size)
    raise ValueError(f"unknown attention rule {rule!r}")


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[rows, 1, L, L]`` additive float mask: 0 where allowed, the dtype's minimum elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def collate_varlen(
    input_ids: list[torch.Tensor], labels: list[torch.Tensor], groups: list[int] | None = None
) -> dict[str, Any]:
    """Concatenate a micro-batch into one row with no padding at all; ``bounds`` marks where examples start.

    The model then runs attention per example (``nbft.train.loss.varlen_attention``). ``targets`` are shifted
    inside each example, as in :func:`collate_causal`; ``spans`` and ``groups`` as there.
    """
    targets = [torch.cat([lab[1:], lab.new_full((1,), IGNORE)]) for lab in labels]
    positions = [torch.arange(len(x)) for x in input_ids]
    bounds = [0, *itertools.accumulate(len(x) for x in input_ids)]
    batch: dict[str, Any] = {
        "input_ids": torch.cat(input_ids)[None],
        "position_ids": torch.cat(positions)[None],
        "targets": torch.cat(targets)[None],
        "bounds": bounds,
        "spans": [(0, b) for b in bounds[:-1]],
    }
    if groups is not None:
        parts = [torch.full((len(x),), g, dtype=torch.long) for x, g in zip(input_ids, groups, strict=True)]
        for part in parts:
            part[-1] = -1  # the last position has no target
        batch["groups"] = torch.cat(parts)[None]
    return batch


def collate_seq2seq(
    input_ids: list[torch.Tensor], labels: list[torch.Tensor], *, pad_id: int, groups: list[int] | None = None
) -> dict[str, torch.Tensor]:
    """Pad an encoder-decoder micro-batch: encoder inputs with ``pad_id``, labels with -100."""
    src = max(len(x) for x in input_ids)
    tgt = max(len(y) for y in labels)
    ids = torch.full((len(input_ids), src), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), src), dtype=torch.long)
    lab = torch.full((len(labels), tgt), IGNORE, dtype=torch.long)
    for r, (x, y) in enumerate(zip(input_ids, labels, strict=True)):
        ids[r, : len(x)] = x
        mask[r, : len(x)] = 1
        lab[r, : len(y)] = y
    batch = {"input_ids": ids, "attention_mask": mask, "labels": lab}
    if groups is not None:
        batch["groups"] = torch.tensor(groups, dtype=torch.long)[:, None].expand_as(lab).masked_fill(lab == IGNORE, -1)
    return batch
