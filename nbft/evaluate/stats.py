"""Δ and forgetting, on plain numbers: the statistics behind every comparison table.

Everything here takes plain data (floats, per-example score arrays, dicts keyed by task) and returns plain dicts, so
a training-time monitor or a forgetting experiment can reuse it without a comparison table.

- :func:`bootstrap_ci` / :func:`paired_bootstrap_ci`: percentile bootstrap CIs of a score and of a paired Δ;
- :func:`delta_replicates`: the bootstrap replicates of Δ (to carry a CI into aggregates such as AF);
- :func:`delta`: Δ = other − base with its paired CI, wins/ties/losses, significant, regression;
- :func:`forgetting`: G (gain on the target), BWT′ (mean Δ on the other tasks), AF (mean drop, counting only drops),
  the worst drop and the number of significant regressions, each aggregate with a CI when replicates are given;
- :func:`seed_delta` / :func:`seed_bootstrap_ci` / :func:`forgetting_seeds`: the same for a variant trained with
  several seeds: means over seeds with a two-level bootstrap CI (seeds, then examples), per-seed values kept.

All scores are points (0-100). Resampling uses one fixed index matrix per (n, seed, key): every model scored on the
same task (``key`` = the task's name) shares it, which is what makes the intervals *paired*; different tasks are
independent samples, so each gets its own resamples (one matrix for all would couple them: the CI of BWT′ over two
tasks whose changes cancel example by example would shrink to a point).

Example:
    >>> import numpy as np
    >>> d = delta(np.array([0, 0, 100, 100.0]), np.array([100, 0, 100, 100.0]), n_boot=200)
    >>> d["delta"], d["wins"], d["ties"], d["losses"]
    (25.0, 1, 3, 0)
    >>> forgetting({"sentiment": 30.0, "qa": -10.0, "reply": 2.0}, target="sentiment")["AF"]
    5.0
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Scores",
    "bootstrap_ci",
    "delta",
    "delta_replicates",
    "forgetting",
    "forgetting_seeds",
    "paired_bootstrap_ci",
    "resample_indices",
    "seed_bootstrap_ci",
    "seed_delta",
    "seed_indices",
    "seed_replicates",
    "two_level",
]

Scores = np.ndarray | Callable[[np.ndarray], float]
"""Per-example scores (their mean is the statistic) or a function of resampled example indices (corpus metrics
such as macro-F1 or chrF++)."""


def resample_indices(n: int, n_boot: int, seed: int, key: str | None = None) -> np.ndarray:
    """The bootstrap's index matrix (``n_boot`` × ``n``): the same for every model scored on the task ``key``, so Δ
    intervals are paired; another ``key`` (another task, an independent sample) gets independent indices.

    Example:
        >>> a, b = resample_indices(5, 3, 0, key="qa"), resample_indices(5, 3, 0, key="ner")
        >>> bool((a == resample_indices(5, 3, 0, key="qa")).all()), bool((a == b).all())
        (True, False)
    """
    entropy = [seed] if key is None else [seed, zlib.crc32(key.encode())]  # crc32: the same in every process
    return np.random.default_rng(np.random.SeedSequence(entropy)).integers(0, n, size=(n_boot, n))


def _replicates(values: Scores, n: int, n_boot: int, seed: int, key: str | None = None) -> np.ndarray:
    idx = resample_indices(n, n_boot, seed, key)
    if callable(values):
        return np.array([values(row) for row in idx], dtype=float)
    return np.asarray(values, dtype=float)[idx].mean(axis=1)


def _interval(reps: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    finite = reps[np.isfinite(reps)]
    if not len(finite):
        return (math.nan, math.nan)
    lo, hi = np.quantile(finite, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Scores,
    n: int | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    key: str | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean (``values`` = per-example scores) or of any statistic.

    For a corpus-level statistic pass ``values`` as a function of a resampled index array, and ``n``. ``key``: the
    task's name (its resamples, see :func:`resample_indices`).

    Example:
        >>> lo, hi = bootstrap_ci(np.array([100, 0, 100, 100.0]), n_boot=200)
        >>> 0 <= lo <= 75 <= hi <= 100
        True
    """
    n = len(values) if n is None else n  # type: ignore[arg-type]
    if n == 0:
        return (math.nan, math.nan)
    return _interval(_replicates(values, n, n_boot, seed, key), level)


def delta_replicates(
    base: Scores, other: Scores, n: int | None = None, *, n_boot: int = 1000, seed: int = 0, key: str | None = None
) -> np.ndarray:
    """Bootstrap replicates of Δ = statistic(other) − statistic(base), both on the same resampled examples (those
    of the task ``key``: pass each task's name, so that independent tasks get independent resamples)."""
    if n is None:
        n = len(base)  # type: ignore[arg-type]
    if n == 0:
        return np.full(n_boot, math.nan)
    return _replicates(other, n, n_boot, seed, key) - _replicates(base, n, n_boot, seed, key)


def paired_bootstrap_ci(
    base: Scores,
    other: Scores,
    n: int | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    key: str | None = None,
) -> tuple[float, float]:
    """Paired percentile bootstrap CI of Δ = statistic(other) − statistic(base), resampling examples jointly
    (``key``: the task's name, see :func:`resample_indices`).

    Example:
        >>> paired_bootstrap_ci(np.zeros(5), np.full(5, 10.0), n_boot=100)
        (10.0, 10.0)
    """
    if n is None:
        n = len(base)  # type: ignore[arg-type]
    if n == 0:
        return (math.nan, math.nan)
    return _interval(delta_replicates(base, other, n, n_boot=n_boot, seed=seed, key=key), level)


def _value(scores: Scores, n: int) -> float:
    return float(scores(np.arange(n))) if callable(scores) else float(np.mean(np.asarray(scores, dtype=float)))


def delta(
    base: Scores,
    other: Scores,
    n: int | None = None,
    *,
    base_per_example: np.ndarray | None = None,
    other_per_example: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    key: str | None = None,
) -> dict[str, Any]:
    """Δ = other − base on the same ``n`` examples, with its paired bootstrap CI.

    ``base``/``other`` are per-example scores or statistics of resampled indices (see :data:`Scores`). Wins, ties
    and losses count examples whose per-example score rose, stayed or fell (from the arrays themselves, or from
    ``*_per_example`` when the statistic is a corpus metric). ``significant``: the CI excludes 0; ``regression``:
    it lies wholly below 0. ``replicates`` holds the bootstrap Δs (for CIs of aggregates, see :func:`forgetting`).
    ``key``: the task's name; each task gets its own resamples (see :func:`resample_indices`), so the aggregates'
    CIs treat tasks as the independent samples they are.

    Example:
        >>> delta(np.array([0.0, 100.0]), np.array([100.0, 100.0]), n_boot=100)["delta"]
        50.0
    """
    if n is None:
        n = len(base)  # type: ignore[arg-type]
    reps = delta_replicates(base, other, n, n_boot=n_boot, seed=seed, key=key)
    lo, hi = _interval(reps, level) if n else (math.nan, math.nan)
    b, o = _value(base, n) if n else math.nan, _value(other, n) if n else math.nan
    pb = base_per_example if base_per_example is not None else (None if callable(base) else np.asarray(base, float))
    po = other_per_example if other_per_example is not None else (None if callable(other) else np.asarray(other, float))
    wins = ties = losses = 0
    if pb is not None and po is not None and len(pb) == len(po):
        diff = np.asarray(po, dtype=float) - np.asarray(pb, dtype=float)
        wins, ties, losses = int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum())
    return {
        "base": b,
        "value": o,
        "delta": o - b,
        "ci_low": lo,
        "ci_high": hi,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "significant": bool(lo > 0 or hi < 0),
        "regression": bool(hi < 0),
        "n": int(n),
        "replicates": reps,
    }


def forgetting(
    deltas: Mapping[str, float | Mapping[str, Any]],
    target: str | None = None,
    *,
    replicates: Mapping[str, np.ndarray] | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """Gain and forgetting from per-task Δ (points): G, BWT′, AF, worst drop, significant regressions.

    Args:
        deltas: ``{task: Δ}``, or ``{task: {"delta": Δ, "ci_high": ...}}`` (a :func:`delta` result works), for the
            target and every other task.
        target: the task trained on; its Δ is G. The other tasks measure forgetting.
        replicates: ``{task: bootstrap Δ replicates}`` (same length for every task, from :func:`delta` or
            :func:`delta_replicates`, each with ``key=task``): adds a CI for G, BWT′, AF and the worst drop, as
            ``<name>_ci_low/_ci_high``.

    Definitions over the other tasks t: BWT′ = mean Δ_t (negative = forgetting; the prime says it is measured against
    the base model, not after each task of a sequence); AF = mean max(0, −Δ_t); worst drop = min Δ_t.

    Example:
        >>> f = forgetting({"s": 20.0, "qa": -8.0, "reply": 4.0}, target="s")
        >>> f["G"], f["BWT"], f["AF"], f["worst_drop"], f["worst_task"]
        (20.0, -2.0, 4.0, -8.0, 'qa')
    """

    def value(v: float | Mapping[str, Any]) -> float:
        return float(v["delta"]) if isinstance(v, Mapping) else float(v)

    others = {t: value(v) for t, v in deltas.items() if t != target}
    g = value(deltas[target]) if target is not None and target in deltas else math.nan
    worst_task = min(others, key=others.get) if others else None  # type: ignore[arg-type]
    out: dict[str, Any] = {
        "target": target,
        "G": g,
        "BWT": float(np.mean(list(others.values()))) if others else math.nan,
        "AF": float(np.mean([max(0.0, -d) for d in others.values()])) if others else math.nan,
        "worst_drop": others[worst_task] if worst_task is not None else math.nan,
        "worst_task": worst_task,
        "significant_regressions": sum(
            1 for t, v in deltas.items() if t != target and isinstance(v, Mapping) and float(v.get("ci_high", 0)) < 0
        ),
        "n_other_tasks": len(others),
    }
    if replicates:
        other_reps = np.array([np.asarray(replicates[t], dtype=float) for t in others if t in replicates])
        if target is not None and target in replicates:
            out["G_ci_low"], out["G_ci_high"] = _interval(np.asarray(replicates[target], dtype=float), level)
        if len(other_reps):
            aggregates = {
                "BWT": other_reps.mean(axis=0),
                "AF": np.maximum(0.0, -other_reps).mean(axis=0),
                "worst_drop": other_reps.min(axis=0),
            }
            for name, reps in aggregates.items():
                out[f"{name}_ci_low"], out[f"{name}_ci_high"] = _interval(reps, level)
    return out


# --------------------------------------------------------------------------------------------------- seeds
# Several runs of one variant (the same data and settings, trained with different seeds) make training noise a
# second source of error beside the test examples. The two-level bootstrap draws, per replicate b, the seeds with
# replacement (level 1) and then evaluates every drawn seed on the example resample b (level 2). The test examples
# are the same for every seed, so one example resample per replicate serves all of them: the example-level error
# does not shrink with more seeds (it is one test set), while the seed-level error does. With one seed, level 1
# always draws that seed and the replicates are exactly those of :func:`bootstrap_ci` / :func:`delta`.


def seed_indices(n_seeds: int, n_boot: int, seed: int) -> np.ndarray:
    """The seeds drawn per replicate (``n_boot`` × ``n_seeds``, with replacement): the same for every task and model
    of a table, since a seed's model is one model on every task (aggregates such as AF stay paired across tasks).

    Example:
        >>> seed_indices(1, 3, 0).tolist()
        [[0], [0], [0]]
    """
    if n_seeds < 1:
        raise ValueError("seed_indices needs at least one seed")
    if n_seeds == 1:
        return np.zeros((n_boot, 1), dtype=np.int64)
    return np.random.default_rng([seed, 0x5EED]).integers(0, n_seeds, size=(n_boot, n_seeds))


def seed_replicates(
    per_seed: Sequence[Scores], n: int, *, n_boot: int = 1000, seed: int = 0, key: str | None = None
) -> np.ndarray:
    """Bootstrap replicates of each seed's statistic on the shared example resamples (``n_seeds`` × ``n_boot``;
    ``key``: the task's name, see :func:`resample_indices`)."""
    return np.stack([_replicates(v, n, n_boot, seed, key) for v in per_seed])


def two_level(reps: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Two-level replicates from per-seed replicates ``reps`` (``n_seeds`` × ``n_boot``) and the seed draws
    ``seeds`` (``n_boot`` × ``n_seeds``, :func:`seed_indices`): replicate b is the mean over the drawn seeds of their
    statistic on example resample b.

    Example:
        >>> two_level(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0, 0], [1, 0]])).tolist()
        [1.0, 3.0]
    """
    reps = np.asarray(reps, dtype=float)
    return reps[seeds, np.arange(reps.shape[1])[:, None]].mean(axis=1)


def seed_bootstrap_ci(
    per_seed: Sequence[Scores],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    seed_draws: np.ndarray | None = None,
    key: str | None = None,
) -> tuple[float, float]:
    """Two-level percentile bootstrap CI of the mean over seeds of a statistic (seeds, then examples).

    With one seed it equals :func:`bootstrap_ci` exactly (the same example resamples).

    Example:
        >>> s = np.array([100, 0, 100, 100.0])
        >>> seed_bootstrap_ci([s], 4, n_boot=200) == bootstrap_ci(s, n_boot=200)
        True
    """
    if n == 0:
        return (math.nan, math.nan)
    reps = seed_replicates(per_seed, n, n_boot=n_boot, seed=seed, key=key)
    draws = seed_indices(len(per_seed), n_boot, seed) if seed_draws is None else seed_draws
    return _interval(two_level(reps, draws), level)


def seed_delta(
    base: Scores,
    others: Sequence[Scores],
    n: int | None = None,
    *,
    base_per_example: np.ndarray | None = None,
    others_per_example: Sequence[np.ndarray | None] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    seed_draws: np.ndarray | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Δ = mean over seeds of statistic(other_s) − statistic(base), with a two-level bootstrap CI.

    ``others`` holds one entry per seed (the runs of one variant), each like ``other`` of :func:`delta`. The record
    has the fields of :func:`delta` (with one seed, the same values) and: ``n_seeds``, ``per_seed`` (each seed's Δ),
    ``seed_min``/``seed_max``/``seed_spread`` (range of the per-seed Δs), ``example_ci_low``/``example_ci_high``
    (the CI from the examples alone, the seeds held fixed) and ``example_half_width``; ``seed_replicates`` holds
    the per-seed bootstrap Δs (``n_seeds`` × ``n_boot``) for CIs of aggregates (see :func:`forgetting_seeds`).
    Wins, ties and losses compare the base with each example's mean score over the seeds. ``seed`` draws the example
    resamples; ``seed_draws`` (default ``seed_indices(len(others), n_boot, seed)``) the seeds: pass one matrix for
    every task of a table, so that aggregates over tasks stay paired.

    Example:
        >>> d = seed_delta(np.zeros(4), [np.full(4, 10.0), np.full(4, 30.0)], n_boot=200)
        >>> d["delta"], d["per_seed"], d["seed_spread"], d["example_half_width"]
        (20.0, [10.0, 30.0], 20.0, 0.0)
    """
    if not others:
        raise ValueError("seed_delta needs at least one run of the variant")
    if n is None:
        n = len(base)  # type: ignore[arg-type]
    s = len(others)
    b = _value(base, n) if n else math.nan
    values = [_value(o, n) if n else math.nan for o in others]
    per_seed = [v - b for v in values]
    if n:
        base_reps = _replicates(base, n, n_boot, seed, key)
        reps = seed_replicates(others, n, n_boot=n_boot, seed=seed, key=key) - base_reps
        two = two_level(reps, seed_indices(s, n_boot, seed) if seed_draws is None else seed_draws)
        lo, hi = _interval(two, level)
        elo, ehi = _interval(reps.mean(axis=0), level)
    else:
        reps, two = np.full((s, n_boot), math.nan), np.full(n_boot, math.nan)
        lo = hi = elo = ehi = math.nan
    pb = base_per_example if base_per_example is not None else (None if callable(base) else np.asarray(base, float))
    given = list(others_per_example) if others_per_example is not None else [None] * s
    po = [
        g if g is not None else (None if callable(o) else np.asarray(o, float))
        for g, o in zip(given, others, strict=True)
    ]
    wins = ties = losses = 0
    if pb is not None and all(p is not None and len(p) == len(pb) for p in po):
        diff = np.mean([np.asarray(p, dtype=float) for p in po], axis=0) - np.asarray(pb, dtype=float)
        wins, ties, losses = int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum())
    value = float(np.mean(values))
    return {
        "base": b,
        "value": value,
        "delta": value - b,
        "ci_low": lo,
        "ci_high": hi,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "significant": bool(lo > 0 or hi < 0),
        "regression": bool(hi < 0),
        "n": int(n),
        "n_seeds": s,
        "per_seed": [float(x) for x in per_seed],
        "seed_min": float(min(per_seed)),
        "seed_max": float(max(per_seed)),
        "seed_spread": float(max(per_seed) - min(per_seed)),
        "example_ci_low": elo,
        "example_ci_high": ehi,
        "example_half_width": (ehi - elo) / 2,
        "replicates": two,
        "seed_replicates": reps,
    }


def forgetting_seeds(
    per_seed: Mapping[str, Sequence[float]],
    target: str | None = None,
    *,
    records: Mapping[str, Mapping[str, Any]] | None = None,
    replicates: Mapping[str, np.ndarray] | None = None,
    seeds: np.ndarray | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """:func:`forgetting` for a variant trained with several seeds: each aggregate is the mean over seeds of its
    per-seed value, with a two-level bootstrap CI; the per-seed values stay (``<name>_per_seed``).

    Args:
        per_seed: ``{task: [Δ for each seed]}`` (:func:`seed_delta`'s ``per_seed``), the same seeds in the same
            order for every task.
        records: ``{task: a seed_delta record}``: significant regressions count the tasks whose two-level CI lies
            below 0.
        replicates: ``{task: per-seed bootstrap Δs (n_seeds × n_boot)}`` and ``seeds`` (:func:`seed_indices`): the
            CIs, as ``<name>_ci_low/_ci_high``.

    With one seed, every value and CI equals :func:`forgetting`'s. The worst drop is the mean over seeds of each
    seed's worst drop; ``worst_task`` is the task with the lowest mean Δ.

    Example:
        >>> f = forgetting_seeds({"s": [20.0, 30.0], "qa": [-8.0, 0.0]}, target="s")
        >>> f["G"], f["AF"], f["AF_per_seed"], f["n_seeds"]
        (25.0, 4.0, [8.0, 0.0], 2)
    """
    lengths = {len(v) for v in per_seed.values()}
    if len(lengths) > 1:
        raise ValueError(f"every task needs one Δ per seed; got {lengths} values")
    s = lengths.pop() if lengths else 0
    runs = [forgetting({t: float(v[i]) for t, v in per_seed.items()}, target) for i in range(s)]
    names = ("G", "BWT", "AF", "worst_drop")
    out: dict[str, Any] = {"target": target}
    for name in names:
        vals = [r[name] for r in runs]
        out[name] = float(np.mean(vals)) if vals and not all(math.isnan(v) for v in vals) else math.nan
        out[f"{name}_per_seed"] = [float(v) for v in vals]
        out[f"{name}_seed_min"] = float(min(vals)) if vals else math.nan
        out[f"{name}_seed_max"] = float(max(vals)) if vals else math.nan
    others = {t: float(np.mean(v)) for t, v in per_seed.items() if t != target}
    out["worst_task"] = min(others, key=others.get) if others else None  # type: ignore[arg-type]
    out["significant_regressions"] = sum(
        1 for t, r in (records or {}).items() if t != target and float(r.get("ci_high", 0)) < 0
    )
    out["n_other_tasks"] = len(others)
    out["n_seeds"] = s
    if replicates and seeds is not None:
        if target is not None and target in replicates:
            g = two_level(np.asarray(replicates[target], dtype=float), seeds)
            out["G_ci_low"], out["G_ci_high"] = _interval(g, level)
        other = [np.asarray(replicates[t], dtype=float) for t in others if t in replicates]
        if other:
            stacked = np.stack(other)  # tasks × seeds × replicates
            aggregates = {
                "BWT": stacked.mean(axis=0),
                "AF": np.maximum(0.0, -stacked).mean(axis=0),
                "worst_drop": stacked.min(axis=0),
            }
            for name, reps in aggregates.items():
                out[f"{name}_ci_low"], out[f"{name}_ci_high"] = _interval(two_level(reps, seeds), level)
    return out
