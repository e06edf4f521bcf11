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


# --------------------------------------------------------------------------------------------------- compare()
import json  # noqa: E402

import datasets  # noqa: E402
from _train_data import spread  # noqa: E402

from nbft import compare  # noqa: E402
from nbft.evaluate import Task  # noqa: E402
from nbft.hashes import write_training_hashes  # noqa: E402
from nbft.models import tiny_random  # noqa: E402


def _sentiment_task():
    labels = ["negative", "neutral", "positive"]
    rows = [{"text": f"tweet number {i} {'!' * (i % 5)}", "label": labels[i % 3]} for i in range(32)]
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:20]), "test": datasets.Dataset.from_list(rows[20:])}
    )
    return Task("toy-sentiment", splits, "sentiment/1", max_new_tokens=3)


def _qa_task():
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(20)]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:10]),
                                   "test": datasets.Dataset.from_list(rows[10:])})  # fmt: skip
    return Task("toy-qa", splits, "qa/1", max_new_tokens=4)


def test_compare_with_several_runs_of_a_variant_shows_the_mean_per_seed_values_and_range():
    base, tok = tiny_random("llama", seed=0)
    runs = [spread(tiny_random("llama", seed=s)[0], seed=s) for s in (1, 2, 3)]
    sent, qa = _sentiment_task(), _qa_task()
    table = compare({"base": spread(base), "tuned": runs, "one": runs[0]}, [sent, qa], target="toy-sentiment",
                    n=10, tokenizer=tok, progress=False, n_boot=200)  # fmt: skip
    r = table.results
    assert r["models"]["tuned"]["runs"] == ["run 1", "run 2", "run 3"]
    s = r["scores"]["toy-sentiment"]["tuned"]
    per_run = s["seeds"]["metrics"]["accuracy"]
    assert len(per_run) == 3 and s["value"] == pytest.approx(np.mean(per_run))
    # the first run alone, as its own column, is today's single-model comparison
    assert r["scores"]["toy-sentiment"]["one"]["value"] == per_run[0]
    d = {(x["task"], x["model"], x["metric"]): x for x in r["deltas"]}
    dt = d[("toy-sentiment", "tuned", "accuracy")]
    assert dt["n_seeds"] == 3 and len(dt["per_seed"]) == 3
    assert dt["per_seed"][0] == pytest.approx(d[("toy-sentiment", "one", "accuracy")]["delta"])
    assert dt["delta"] == pytest.approx(np.mean(dt["per_seed"]))
    assert (dt["seed_min"], dt["seed_max"]) == (min(dt["per_seed"]), max(dt["per_seed"]))
    f = {x["model"]: x for x in r["forgetting"]}["tuned"]
    assert f["n_seeds"] == 3 and len(f["AF_per_seed"]) == 3 and f["AF"] == pytest.approx(np.mean(f["AF_per_seed"]))
    assert f["AF_ci_low"] <= f["AF_ci_high"]
    json.dumps(r, default=float)  # plain data
    # the table shows the seed range beside the CI; the notes say the runs' settings were not checked
    frame = __import__("nbft").report.table_frame(table)
    cell = frame.loc[("toy-sentiment", "accuracy"), "seeds tuned"]
    assert cell == f"{dt['seed_min']:+.1f} to {dt['seed_max']:+.1f}"
    assert "seeds one" not in frame.columns and frame.loc[("toy-qa", "token_f1"), "seeds tuned"] != "–"
    assert "(3 seeds" in table.to_text() and any("could not check" in n for n in table.notes)
    spread_note = [n for n in table.notes if "seeds spread wider" in n]
    assert bool(spread_note) == any(
        x["seed_spread"] > x["example_half_width"] for x in r["deltas"] if x["model"] == "tuned" and x["is_headline"]
    )


def _fake_run(folder, *, seed=0, lr=1e-4, data=("a", "b")):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"base_model": "tiny", "config": {"seed": seed, "learning_rate": lr}}))
    write_training_hashes(folder / "data", [{"prompt": p, "completion": "x"} for p in data])
    return folder


def test_runs_of_a_variant_that_differ_in_settings_or_data_are_refused_by_field(tmp_path):
    base, tok = tiny_random("llama", seed=0)
    a = _fake_run(tmp_path / "a", seed=0)
    tasks = [_sentiment_task()]
    with pytest.raises(ValueError, match=r"differ in 'learning_rate' \(seed 0: 0.0001, seed 1: 0.0002\)"):
        compare({"base": base, "tuned": [a, _fake_run(tmp_path / "b", seed=1, lr=2e-4)]}, tasks, tokenizer=tok)
    with pytest.raises(ValueError, match="trained on different data"):
        compare({"base": base, "tuned": [a, _fake_run(tmp_path / "c", seed=1, data=("a", "z"))]}, tasks, tokenizer=tok)
    with pytest.raises(ValueError, match="same seed"):
        compare({"base": base, "tuned": [a, _fake_run(tmp_path / "d", seed=0)]}, tasks, tokenizer=tok)
    with pytest.raises(ValueError, match="twice"):
        compare({"base": base, "tuned": [a, a]}, tasks, tokenizer=tok)
    with pytest.raises(ValueError, match="empty list"):
        compare({"base": base, "tuned": []}, tasks, tokenizer=tok)
    with pytest.raises(ValueError, match="reference column"):
        compare({"base": [base, base], "tuned": base}, tasks, tokenizer=tok)
