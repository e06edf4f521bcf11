"""Mixing datasets: the target task with a share of replayed tasks (against forgetting), in exact proportions.

Example::

    mixed = mix({"sentiment": data["train"], "qa": qa["train"]}, replay=0.2, seed=0)
    mix_report(mixed)      # rows per task
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Mapping

import datasets
import pandas as pd

from nbft.data._args import _int_arg, _number_arg
from nbft.errors import DataError

# one logger for the whole package, named as before the split (users' logging filters and nbft._quiet name it)
logger = logging.getLogger("nbft.data")

__all__ = ["largest_remainder", "mix", "mix_report"]


def largest_remainder(total: int, ratios: Mapping[str, float]) -> dict[str, int]:
    """Whole counts that sum to ``total`` in the proportions ``ratios`` (which sum to 1): each share rounded down,
    the examples left over going to the largest remainders (ties: the first key). Each count is within one of its
    exact share.

    Example:
        >>> largest_remainder(10, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
        {'a': 4, 'b': 3, 'c': 3}
    """
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
    if not isinstance(parts, Mapping):
        raise DataError(
            "mix() takes a dict {task name: dataset}, e.g. mix({'sentiment': a, 'qa': b}), not a "
            f"{type(parts).__name__}"
        )
    if not parts:
        raise DataError("mix() needs at least one task dataset")
    for key, part in parts.items():
        if not isinstance(part, datasets.Dataset):
            raise DataError(f"mix(): {key!r} is a {type(part).__name__}, not a datasets.Dataset (e.g. data['train'])")
        if part.num_rows == 0:
            raise DataError(f"mix(): the dataset for {key!r} is empty; leave it out or give it examples")
    seed = _int_arg("mix(seed=...)", seed, 0, "e.g. seed=0")
    total = _int_arg("mix(total=...)", total, 1, "e.g. total=1000 (None: as many as the data allows)", optional=True)
    if replay is not None:
        replay = _number_arg("mix(replay=...)", replay, "a share such as replay=0.1")
    if ratios is not None:
        if not isinstance(ratios, Mapping):
            raise DataError("ratios= must be a dict {task name: share}, e.g. {'qa': 0.9, 'sentiment': 0.1}")
        ratios = {k: _number_arg(f"ratios[{k!r}]", v, "e.g. 0.5") for k, v in ratios.items()}
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
    counts = largest_remainder(total, norm)
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
            part = parts[k].select(idx)
            if "task" not in part.column_names:  # the loss per task needs it: the dict key names the task
                part = part.add_column("task", [k] * part.num_rows)
            chosen.append(part)
    _warn_mix_mistakes(parts)
    _check_mix_columns(parts)
    common = [c for c in chosen[0].column_names if all(c in p.column_names for p in chosen)]
    dropped = sorted({c for p in chosen for c in p.column_names} - set(common))
    if dropped:  # concatenating would fill them with None for the datasets that lack them
        logger.warning("mix(): columns %s are not in every dataset and were left out", dropped)
        chosen = [p.select_columns(common) for p in chosen]
    mixed = datasets.concatenate_datasets(chosen).shuffle(seed=seed)
    logger.info(
        "mixture of %d examples: %s",
        total,
        ", ".join(f"{k} {counts[k]} ({counts[k] / max(total, 1):.1%}, asked {norm[k]:.1%})" for k in names),
    )
    return mixed


_TRAINING_COLUMNS = ("prompt", "completion", "input_ids", "labels")


def _check_mix_columns(parts: Mapping[str, datasets.Dataset]) -> None:
    """Refuse parts whose training columns differ: the mixture would lose the ones not in every part (e.g. no
    ``prompt`` when one part calls it ``text``), and could not be trained on."""
    lost = [c for c in _TRAINING_COLUMNS if any(c in p.column_names for p in parts.values())
            and not all(c in p.column_names for p in parts.values())]  # fmt: skip
    if not lost:
        return
    each = "; ".join(f"{k!r} has {p.column_names}" for k, p in parts.items())
    raise DataError(
        f"mix(): the datasets have different columns ({each}), so the mixture would have no {lost} column"
        f"{'s' if len(lost) > 1 else ''}. Give every dataset the same columns: build each with "
        "build_instruction_dataset (prompt/completion), or rename, e.g. data.rename_column('text', 'prompt'); "
        "tokenized parts need input_ids and labels in each"
    )


def _warn_mix_mistakes(parts: Mapping[str, datasets.Dataset]) -> None:
    """Say when the same examples sit under two names, or a name differs from the data's own task column."""
    seen: dict[str, set[str]] = {}
    for key, part in parts.items():
        if "task" in part.column_names:
            tasks = set(part.unique("task"))
            if len(tasks) == 1 and key not in tasks:
                logger.warning("mix(): the data under %r is task %r (its task column); ratios use the name %r",
                               key, next(iter(tasks)), key)  # fmt: skip
        if "example_id" in part.column_names:
            ids = set(part["example_id"])
            for other, other_ids in seen.items():
                if ids & other_ids:
                    logger.warning("mix(): %d examples are both in %r and %r: they would be trained on twice",
                                   len(ids & other_ids), other, key)  # fmt: skip
            seen[key] = ids


def mix_report(dataset: datasets.Dataset) -> pd.DataFrame:
    """Count and share of each task in a (mixed) dataset, from its ``task`` column."""
    counts = Counter(dataset["task"])
    total = sum(counts.values())
    return pd.DataFrame([{"task": k, "n": v, "share": v / total} for k, v in sorted(counts.items())])
