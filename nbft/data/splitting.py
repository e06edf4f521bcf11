"""The one split of raw examples into train/validation/test: deduplicated (exact and near duplicates stay on one
side), seeded, stratified by label, with stable example ids.

Example:
    >>> rows = datasets.Dataset.from_list([{"q": f"q{i}", "a": str(i)} for i in range(10)])
    >>> {k: v.num_rows for k, v in split_examples(rows, (0.6, 0.2, 0.2), seed=0).items()}
    {'train': 6, 'validation': 2, 'test': 2}
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from nbft.errors import DataError
from nbft.hashes import near_duplicate_groups, normalize_text

# one logger for the whole package, named as before the split (users' logging filters and nbft._quiet name it)
logger = logging.getLogger("nbft.data")

__all__ = ["example_id", "split_examples"]


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
    dropped = len(rows) - len(first)
    if dropped:
        # a large share of copies usually means a broken export or join: say so; a few retweets are routine
        log = logger.warning if dropped * 10 >= len(rows) else logger.info
        log(
            "dropped %d exact duplicate examples of %d (equal %s, ignoring case and spacing): %d distinct remain",
            dropped, len(rows), ", ".join(fields), len(first),
        )  # fmt: skip
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
    _warn_empty_splits(parts, fractions, len(rows), len(first))
    return datasets.DatasetDict(
        {name: source.select([unique[j] for k in idx for j in members[order[k]]]) for name, idx in parts.items()}
    )


def _warn_empty_splits(
    parts: Mapping[str, list[int]], fractions: Sequence[float], n_rows: int, n_distinct: int
) -> None:
    """Say so when a split that was asked for (a fraction above 0) came out empty: too few distinct examples."""
    empty = [name for (name, idx), share in zip(parts.items(), fractions, strict=True) if share > 0 and not idx]
    if not empty:
        return
    smallest = min(f for f in fractions if f > 0)
    enough = next(n for n in range(1, 10_000) if round(n * smallest) >= 1)
    sizes = ", ".join(f"{name} {len(idx)}" for name, idx in parts.items())
    copies = f" ({n_rows} before dropping duplicates)" if n_rows != n_distinct else ""
    logger.warning(
        "only %d distinct example%s%s: the split %s gives %s, so %s %s empty (no validation loss, nothing to "
        "evaluate on). Add data (at least %d distinct examples), or set split= with 0 for the splits you do not need",
        n_distinct, "" if n_distinct == 1 else "s", copies, tuple(fractions), sizes, " and ".join(empty),
        "is" if len(empty) == 1 else "are", enough,
    )  # fmt: skip


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
