"""Seeds as a dimension of a comparison: the two-level bootstrap (seeds, then examples) on synthetic scores with
known variance components, and several runs of one variant in compare()."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbft.evaluate import stats


def _scores(n_examples=300, n_seeds=5, seed_sd=0.0, example_sd=10.0, gain=5.0, rng=0):
    """Base and per-seed tuned scores: example effects shared by every model, seed effects shared by every example."""
    g = np.random.default_rng(rng)
    example = g.normal(50, example_sd, n_examples)
    z = g.standard_normal(n_seeds)
    if n_seeds > 1:  # exactly mean 0, sd 1: the seed component is seed_sd, nothing else
        z = (z - z.mean()) / z.std()
    noise = g.normal(0, 5, (n_seeds, n_examples))
    base = example + g.normal(0, 5, n_examples)
    tuned = [example + gain + seed_sd * z[s] + noise[s] for s in range(n_seeds)]
    return base, tuned


def test_one_seed_gives_exactly_todays_interval_and_delta():
    base, (tuned,) = _scores(n_seeds=1)
    assert stats.seed_bootstrap_ci([tuned], len(tuned), n_boot=500) == stats.bootstrap_ci(tuned, n_boot=500)
    one = stats.seed_delta(base, [tuned], n_boot=500, seed=3)
    today = stats.delta(base, tuned, n_boot=500, seed=3)
    for key in ("base", "value", "delta", "ci_low", "ci_high", "wins", "ties", "losses", "significant", "n"):
        assert one[key] == today[key], key
    np.testing.assert_array_equal(one["replicates"], today["replicates"])
    assert one["seed_spread"] == 0.0 and (one["example_ci_low"], one["example_ci_high"]) == (
        one["ci_low"],
        one["ci_high"],
    )


def test_one_seed_forgetting_equals_todays_forgetting_with_its_cis():
    base, _ = _scores()
    g = np.random.default_rng(5)
    records = {t: stats.delta(base, base + g.normal(shift, 8, len(base)), n_boot=400)
               for t, shift in (("s", 10.0), ("qa", -6.0), ("ner", 1.0))}  # fmt: skip
    today = stats.forgetting(records, "s", replicates={t: r["replicates"] for t, r in records.items()})
    seeded = stats.forgetting_seeds(
        {t: [r["delta"]] for t, r in records.items()}, "s", records=records,
        replicates={t: r["replicates"][None, :] for t, r in records.items()}, seeds=stats.seed_indices(1, 400, 0),
    )  # fmt: skip
    for key in ("G", "BWT", "AF", "worst_drop", "worst_task", "significant_regressions", "n_other_tasks"):
        assert seeded[key] == today[key], key
    for name in ("G", "BWT", "AF", "worst_drop"):
        assert seeded[f"{name}_ci_low"] == pytest.approx(today[f"{name}_ci_low"], abs=1e-12)
        assert seeded[f"{name}_ci_high"] == pytest.approx(today[f"{name}_ci_high"], abs=1e-12)


def test_the_interval_widens_with_seed_variance_and_matches_the_variance_components():
    widths = []
    for seed_sd in (0.0, 2.0, 5.0, 10.0):
        base, tuned = _scores(seed_sd=seed_sd)
        d = stats.seed_delta(base, tuned, n_boot=2000)
        widths.append(d["ci_high"] - d["ci_low"])
        # the example-level interval holds the seeds fixed: it does not see the seed component
        assert d["example_half_width"] == pytest.approx(widths[0] / 2, rel=0.2)
        # known components: Var(Δ̄) ≈ seed_sd² (S-1)/S / S (the bootstrap's plug-in) + the examples' variance
        s = len(tuned)
        example_var = (d["example_half_width"] / 1.96) ** 2
        expected = 2 * 1.96 * math.sqrt(seed_sd**2 * (s - 1) / s / s + example_var)
        assert widths[-1] == pytest.approx(expected, rel=0.15)
    assert widths == sorted(widths) and widths[-1] > 3 * widths[0]


def test_per_seed_values_range_and_corpus_statistics():
    base = np.array([0, 100, 0, 100, 0, 100.0])
    runs = [np.array([100, 100, 0, 100, 0, 100.0]), np.array([100, 100, 100, 100, 100, 100.0])]
    d = stats.seed_delta(base, runs, n_boot=300)
    assert d["per_seed"] == pytest.approx([100 / 6, 50.0]) and d["delta"] == pytest.approx((100 / 6 + 50) / 2)
    assert (d["seed_min"], d["seed_max"]) == pytest.approx((100 / 6, 50.0))
    assert d["seed_replicates"].shape == (2, 300) and d["n_seeds"] == 2
    assert (d["wins"], d["ties"], d["losses"]) == (3, 3, 0)  # the mean over seeds rose on 3 examples
    # a corpus statistic (a function of resampled indices) goes through the same two levels
    stat = [lambda idx, r=r: float(np.median(r[idx])) for r in runs]
    lo, hi = stats.seed_bootstrap_ci(stat, 6, n_boot=300)
    assert 0 <= lo <= hi <= 100


def test_seed_draws_are_shared_and_cover_every_seed():
    draws = stats.seed_indices(3, 500, 0)
    assert draws.shape == (500, 3) and set(np.unique(draws)) == {0, 1, 2}
    np.testing.assert_array_equal(draws, stats.seed_indices(3, 500, 0))
    with pytest.raises(ValueError, match="at least one"):
        stats.seed_delta(np.zeros(3), [])
