"""Bootstrap resamples: paired within a task (every model scored on it shares them), independent between tasks, so
the intervals of BWT′, AF and the worst drop treat the tasks as the independent samples they are."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import nbft
from nbft.evaluate import Task, evaluate_model, stats
from nbft.models import tiny_random

N = 40
HALF = np.random.default_rng(1).permutation(N) < N // 2  # which examples task "a" keeps; task "b" keeps the others


def test_tasks_whose_changes_cancel_example_by_example_keep_the_spread_of_their_mean():
    base = np.full(N, 100.0)
    a, b = np.where(HALF, 100.0, 0.0), np.where(HALF, 0.0, 100.0)  # each loses half its examples: the other half
    deltas = {t: stats.delta(base, o, key=t) for t, o in (("a", a), ("b", b))}
    f = stats.forgetting(deltas, replicates={t: d["replicates"] for t, d in deltas.items()})
    assert f["BWT"] == -50 and f["AF"] == 50
    # two independent tasks: the mean's CI is about 1/√2 of each task's (≈ ±11 here), never a point
    assert f["BWT_ci_low"] < -58 and f["BWT_ci_high"] > -42 and f["AF_ci_high"] - f["AF_ci_low"] > 16
    # one index matrix for both tasks (no key) couples them: each replicate's mean is exactly -50
    coupled = {t: stats.delta(base, o)["replicates"] for t, o in (("a", a), ("b", b))}
    g = stats.forgetting({"a": -50.0, "b": -50.0}, replicates=coupled)
    assert g["BWT_ci_low"] == g["BWT_ci_high"] == -50


def test_models_scored_on_the_same_task_share_its_resamples():
    rng = np.random.default_rng(0)
    base, one, two = (rng.integers(0, 2, N) * 100.0 for _ in range(3))
    # paired: Δ(two − base) − Δ(one − base) replicate by replicate is Δ(two − one)
    d1 = stats.delta_replicates(base, one, key="qa")
    d2 = stats.delta_replicates(base, two, key="qa")
    np.testing.assert_allclose(d2 - d1, stats.delta_replicates(one, two, key="qa"))
    assert stats.paired_bootstrap_ci(base, base + 10, key="qa") == pytest.approx((10.0, 10.0))
    assert not np.array_equal(stats.resample_indices(N, 50, 0, key="qa"), stats.resample_indices(N, 50, 0, key="ner"))
    assert np.array_equal(stats.resample_indices(N, 50, 0), np.random.default_rng(0).integers(0, N, (50, N)))


def test_a_comparison_table_gives_each_task_its_own_resamples():
    """Through compare(): task a loses the examples task b keeps (same n); BWT′ and AF keep a real interval."""
    rows = [{"text": f"review number {i}", "label": ["negative", "positive"][i % 2]} for i in range(10 * N)]
    tasks = [Task.from_data(rows, template="sentiment/1", name=name) for name in ("t", "a", "b")]
    model, tok = tiny_random("llama", seed=0)
    cfg = nbft.EvalConfig(n=N, icl_shots=(0,), progress=False, n_boot=1000)
    base = evaluate_model(model, tasks, tokenizer=tok, target="t", config=cfg)
    tuned = copy.deepcopy(base)
    tuned.update(name="tuned", fingerprint="another model")
    wrong = {"positive": "negative", "negative": "positive"}
    for rb, rt in zip(base["results"], tuned["results"], strict=True):
        assert rb["n"] == N
        rb["outputs"] = list(rb["references"])  # the base answers everything right
        right = {"t": np.ones(N, bool), "a": HALF, "b": ~HALF}[rt["task"]]
        rt["outputs"] = [ref if ok else wrong[ref] for ref, ok in zip(rt["references"], right, strict=True)]
    table = nbft.compare({"base": base, "tuned": tuned}, tasks, target="t", config=cfg, tokenizer=tok)
    f = table.forgetting.set_index("model").loc["tuned"]
    assert f["BWT"] == -50 and f["AF"] == 50
    assert f["BWT_ci_low"] < -58 and f["BWT_ci_high"] > -42  # one index matrix for all tasks gave [-50, -50]
    assert f["AF_ci_high"] - f["AF_ci_low"] > 16
