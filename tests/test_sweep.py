"""nbft.sweep: the grid × seeds on a tiny model (structure, one bar, the figure), resume of an interrupted sweep (only
the rest is trained, a half-written run is redone keeping the user's file, the result equals an uninterrupted sweep),
the Pareto front and the goals check (each goal, n/a, the recommendation, the figure's markers) on synthetic points,
label-balanced sampling, and bad inputs refused before anything is written."""

from __future__ import annotations

import collections
import json
import math

import pytest

import nbft
from nbft.models import tiny_random
from nbft.sweeps import (
    SweepInterrupted,
    check_goals,
    check_grid,
    goals_text,
    load_sweep,
    pareto_front,
    sweep_figure,
    variant_names,
)

SMALL = dict(target="sentiment", others=["qa", "ner"], replay_from=["qa"], steps=2, batch_size=2, max_length=96, n=4,
             n_other=2, eval_batch_size=8)  # fmt: skip


def _sweep(out, seeds=(0, 1), **kwargs):
    model, tok = tiny_random("llama", seed=0)
    return nbft.sweep({"replay": [0, 0.5]}, model=model, tokenizer=tok, seeds=seeds, out_dir=out,
                      **{**SMALL, "progress": False, **kwargs})  # fmt: skip


def _numbers(result):
    """Every variant's G and AF (mean and per seed), overall and per group: what a resumed sweep must reproduce."""
    out = {}
    for f in result.table.results["forgetting"]:
        out[f["model"]] = {k: f[k] for k in ("G", "AF", "G_per_seed", "AF_per_seed")}
        out[f["model"]]["held-out"] = f["groups"]["held-out"]["AF_per_seed"]
    return out


def test_pareto_front_on_synthetic_points():
    # (gain, forgetting): more gain and less forgetting are better
    pts = [(30.0, 10.0), (25.0, 2.0), (20.0, 5.0), (10.0, 0.0), (30.0, 12.0), (25.0, 2.0), (math.nan, 0.0)]
    assert pareto_front(pts) == [True, True, False, True, False, True, False]
    assert pareto_front([(1.0, 1.0)]) == [True]
    assert pareto_front([]) == []


def test_sweep_structure_one_bar_figure_and_reload(tmp_path, capfd):
    from matplotlib.figure import Figure

    result = _sweep(tmp_path / "sw", progress=True)
    err = capfd.readouterr().err
    assert "sweep" in err and "4/4" in err, "one bar over variants × seeds"
    assert "nbft train" not in err and "Map" not in err, "no per-run or library bars"
    table = result.table
    assert table.columns == ["base", "target-only", "replay 0.5"]
    assert table.results["task_groups"] == {"replayed": ["qa"], "held-out": ["ner"]}
    assert table.results["models"]["replay 0.5"]["runs"] == ["seed 0", "seed 1"]  # seeds as a dimension
    for v in ("target-only", "replay-0.5"):
        for s in (0, 1):
            assert (tmp_path / "sw" / v / f"seed-{s}" / "model" / "config.json").is_file()
            assert (tmp_path / "sw" / v / f"seed-{s}.evaluation.json").is_file()
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert len(saved["runs"]) == 4 and saved["grid"] == {"replay": [0.0, 0.5]} and saved["seeds"] == [0, 1]
    assert saved["runs"]["replay-0.5/seed-1"]["examples"] == {"sentiment": 4, "qa": 4}  # nothing of held-out ner
    pts = result.points.set_index("variant")
    assert list(pts.index) == ["target-only", "replay 0.5"] and pts.loc["replay 0.5", "replay"] == 0.5
    f = {x["model"]: x for x in table.results["forgetting"]}
    assert pts.loc["replay 0.5", "AF_held_out"] == pytest.approx(f["replay 0.5"]["groups"]["held-out"]["AF"])
    assert (pts["forgetting_of"] == "held-out").all() and pts["pareto"].any()
    assert pts.loc["replay 0.5", "Δ sentiment"] == pytest.approx(pts.loc["replay 0.5", "G"])  # G is the target's Δ
    shares = table.results["diagnostics"]["sentiment"]["models"]["replay 0.5"]["generate"]
    worst = max(
        shares["predicted_share"][c] - shares["reference_share"][c] for c in ("negative", "neutral", "positive")
    )
    assert pts.loc["replay 0.5", "prior_shift"] == pytest.approx(worst)
    # the target's out-of-domain probe is scored by default: its row, its Δ and its own label-prior shift
    probe = "sentiment · movie reviews"
    assert table.results["tasks"][probe]["role"] == "probe"
    pshares = table.results["diagnostics"][probe]["models"]["replay 0.5"]["generate"]
    labels = table.results["diagnostics"][probe]["labels"]
    pworst = max(pshares["predicted_share"][c] - pshares["reference_share"][c] for c in labels)
    assert pts.loc["replay 0.5", f"prior_shift {probe}"] == pytest.approx(pworst)
    assert not math.isnan(pts.loc["replay 0.5", f"Δ {probe} ci_low"])
    assert saved["plan"]["eval"]["probes"] is True and saved["plan"]["eval"]["n_per_task"] == {"qa": 2, "ner": 60}
    fig = result.figure()
    assert isinstance(fig, Figure) and "held-out" in fig.axes[0].get_xlabel()
    import matplotlib.pyplot as plt

    assert not plt.get_fignums(), "no pyplot state"
    again = load_sweep(tmp_path / "sw")  # after a restart: from sweep.json alone
    assert again.points.equals(result.points)
    assert "variants (G and forgetting" in again.to_text()
    # the goals: one row per variant, the probe checked, a one-line recommendation after the points table
    goals = result.goals()
    assert list(goals["variant"]) == ["target-only", "replay 0.5"]
    assert (goals["ood_worst"] == probe).all() and (goals["goal ood"] != "n/a").all()
    assert goals["recommended"].sum() + goals["closest"].sum() == 1
    text = again.to_text()
    assert (
        text.index("variants (G and forgetting")
        < text.index("goals (2 seeds")
        < text.index(goals.attrs["recommendation"][:40])
    )
    assert max(len(line) for line in text.splitlines()) <= 120


def test_an_interrupted_sweep_resumes_and_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    import nbft.train as train

    whole = _sweep(tmp_path / "whole")
    real = train.finetune
    calls = []

    class StopAtFirstStep:
        def on_step(self, state):
            raise nbft.StopTraining

    def interrupted(model, tok, data, *args, observers=(), **kwargs):
        calls.append(kwargs["run_dir"])
        if len(calls) == 3:  # the first run of the second variant: Stop pressed after its first step
            observers = [*observers, StopAtFirstStep()]
        return real(model, tok, data, *args, observers=observers, **kwargs)

    monkeypatch.setattr(train, "finetune", interrupted)
    out = tmp_path / "cut"
    with pytest.raises(SweepInterrupted, match="resume"):
        _sweep(out)
    half = out / "replay-0.5" / "seed-0"
    assert (half / "run.json").is_file() and not (half / "model").exists()
    (half / "notes.txt").write_text("mine")  # a file of the user's, beside the half-written run
    calls.clear()
    resumed = _sweep(out)
    assert [c.relative_to(out).as_posix() for c in calls] == ["replay-0.5/seed-0", "replay-0.5/seed-1"]
    assert (half / "notes.txt").read_text() == "mine" and (half / "model" / "config.json").is_file()
    assert _numbers(resumed) == _numbers(whole)
    assert resumed.points.equals(whole.points)
    calls.clear()
    (out / "target-only" / "seed-1.evaluation.json").unlink()  # killed between the run's end and its evaluation
    again = _sweep(out)  # nothing is trained again; the run whose evaluation was lost is evaluated from its model
    assert calls == [] and (out / "target-only" / "seed-1.evaluation.json").is_file()
    assert _numbers(again) == _numbers(whole)


def test_balanced_sampling_counts():
    task = nbft.get_task("sentiment")
    data = task.train(n=10, templates=task.template, balance=True)
    assert collections.Counter(data["completion"]) == {"negative": 4, "neutral": 3, "positive": 3}  # largest remainder
    train = task.load()["train"]
    counts = collections.Counter(train[task.target])  # one raw value per label
    every = task.train(templates=task.template, balance=True)
    assert set(collections.Counter(every["completion"]).values()) == {min(counts.values())}
    with pytest.raises(ValueError, match="has no labels"):
        nbft.get_task("qa").train(n=4, balance=True)
    with pytest.raises(ValueError, match="ask for at most"):
        task.train(n=10**6, balance=True)


def test_variant_names_come_from_the_grid_settings():
    settings = {"learning_rate": 3e-4, "steps": 20, "replay": 0.0, "balance": True}
    assert variant_names(settings, ["replay"]) == ("target-only", "target-only")
    assert variant_names(settings, ["learning_rate", "steps", "balance"]) == (
        "lr-0.0003_steps-20_balanced", "lr 0.0003 · 20 steps · balanced",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ({}, "the grid is empty"),
        ({"lr": [1e-4]}, "Did you mean 'learning_rate'"),
        ({"replya": [0]}, "Did you mean 'replay'"),
        ({"replay": []}, r"grid\['replay'\] is empty"),
        ({"replay": [0.1, 0.1]}, "lists a value twice"),
        ({"replay": [1.0]}, "is outside"),
        ({"learning_rate": [-1]}, "not a positive number"),
        ({"steps": [0]}, "whole number >= 1"),
        ({"balance": ["yes"]}, "True or False"),
    ],
)
def test_bad_grids_are_refused_before_anything_is_written(grid, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        check_grid(grid)
    with pytest.raises(ValueError, match=match):
        nbft.sweep(grid, model="tiny", out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_bad_seeds_tasks_and_folders_are_refused_before_anything_is_written(tmp_path):
    grid = {"replay": [0, 0.1]}
    for seeds, match in (((), "trains nothing"), ((0, 1, 0), "repeats seed 0")):
        with pytest.raises(ValueError, match=match):
            nbft.sweep(grid, model="tiny", seeds=seeds, out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="Did you mean 'ner'"):
        nbft.sweep(grid, model="tiny", others=["qa", "ner"], replay_from=["nerr"], out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="names the target 'sentiment'"):
        nbft.sweep(grid, model="tiny", others=["qa", "ner"], replay_from=["sentiment"], out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="has no labels"):
        nbft.sweep({"balance": [False, True]}, model="tiny", target="qa", others=["ner"], out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no sweep.json"):
        nbft.sweep(grid, model="tiny", out_dir=mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_resumed_sweep_with_other_fixed_settings_is_refused(tmp_path):
    out = tmp_path / "sw"
    _sweep(out, seeds=(0,), steps=1)
    with pytest.raises(ValueError, match="other fixed settings.*batch_size"):
        _sweep(out, seeds=(0,), steps=1, batch_size=4)
    for changed, field in (({"n_validation": 4}, "validation"), ({"monitor": 3}, "monitor"),
                           ({"replay_max_length": 128}, "replay_max_length")):  # fmt: skip
        with pytest.raises(ValueError, match=f"other fixed settings.*{field}"):
            _sweep(out, seeds=(0,), steps=1, **changed)
    with pytest.raises(ValueError, match="another base model"):
        model, tok = tiny_random("llama", seed=1)
        nbft.sweep({"replay": [0, 0.5]}, model=model, tokenizer=tok, seeds=(0,), out_dir=out,
                   **{**SMALL, "steps": 1, "progress": False})  # fmt: skip


def test_a_variant_whose_runs_differ_is_refused_by_compare(tmp_path):
    """compare() with a list of runs per variant refuses runs that differ in anything but the seed, naming it."""
    out = tmp_path / "sw"
    _sweep(out, seeds=(0,), steps=1)
    _sweep(tmp_path / "other", seeds=(1,), steps=2)
    model, tok = tiny_random("llama", seed=0)
    runs = [out / "target-only" / "seed-0", tmp_path / "other" / "target-only" / "seed-1"]
    with pytest.raises(ValueError, match="differ in 'max_steps'"):
        nbft.compare({"base": (model, tok), "tuned": runs}, ["sentiment"], target="sentiment", n=2)


def test_sweep_figure_without_seeds_has_no_error_bars():
    import pandas as pd

    pts = pd.DataFrame({"variant": ["a", "b"], "G": [10.0, 5.0], "AF_held_out": [3.0, 1.0],
                        "forgetting_of": ["held-out"] * 2, "n_seeds": [1, 1], "pareto": [True, True]})  # fmt: skip
    fig = sweep_figure(pts)
    assert fig.axes[0].get_ylabel().startswith("in-domain gain G")


def test_the_cli_runs_a_sweep_and_writes_its_figure(tmp_path, capsys):
    from nbft.cli import main

    out = tmp_path / "sw"
    args = ["sweep", "--model", "tiny", "--replay", "0", "0.5", "--steps", "1", "--seeds", "1", "--tasks", "qa", "ner",
            "--replay-from", "qa", "--n", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "variants (G and forgetting" in text and (out / "sweep.png").stat().st_size > 0
    assert "goals (1 seed;" in text and ("recommended: " in text or "no variant meets every goal" in text)
    assert load_sweep(out).table.columns == ["base", "1 steps · target-only", "1 steps · replay 0.5"]
    assert main(["sweep", "--model", "tiny", "--lr", "-1", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_the_demo_keywords_are_checked_before_anything_is_written(tmp_path):
    """n_validation, eval_every, monitor, replay_max_length, labels and a caller's base evaluation: bad values and a
    base evaluation made with other settings are refused before any training, naming what differs."""
    from nbft.evaluate import evaluate_model

    for bad, match in (({"n_validation": -1}, "n_validation"), ({"eval_every": 0}, "eval_every"),
                       ({"monitor": 0}, "monitor"), ({"replay_max_length": 0}, "replay_max_length"),
                       ({"labels": {"replay-0.3": "x"}}, "not among this sweep's"),
                       ({"labels": {"target-only": "base"}}, "none may be 'base'")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            _sweep(tmp_path / "x", **bad)
    model, tok = tiny_random("llama", seed=0)
    base = evaluate_model(model, ["sentiment", "qa", "ner"], tokenizer=tok, target="sentiment", n=3,
                          n_per_task={"qa": 2, "ner": 2}, batch_size=8, chat_template=True, probes=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"base_evaluation was made with other settings.*'n': \(3, 4\)"):
        _sweep(tmp_path / "x", base_evaluation=base)
    with pytest.raises(TypeError, match="evaluate_model"):
        _sweep(tmp_path / "x", base_evaluation={"tasks": {}})
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------- goals
PROBE = "sentiment · movie reviews"


def _points(**changes):
    """Three variants that meet every goal; ``changes`` = {column: {row: value}}."""
    import pandas as pd

    pts = pd.DataFrame({
        "variant": ["a", "b", "c"], "G": [20.0, 15.0, 12.0], "G_ci_low": [5.0, 3.0, 1.0],
        "G_seed_min": [18.0, 14.0, 10.0], "G_seed_max": [22.0, 16.0, 13.0],
        "AF_held_out": [4.0, 1.0, 2.0], "AF_held_out_ci_low": [2.0, 0.0, 0.5], "AF_held_out_ci_high": [6.0, 2.5, 3.0],
        "AF_held_out_seed_min": [3.0, 0.5, 1.0], "AF_held_out_seed_max": [5.0, 1.5, 3.0],
        "forgetting_of": ["held-out"] * 3, "n_seeds": [3] * 3, "pareto": [True, True, False],
        "prior_shift": [10.0, 10.0, 5.0], f"prior_shift {PROBE}": [12.0, 12.0, 14.0],
        "Δ qa": [-5.0, -1.0, 0.0], "Δ qa ci_low": [-9.0, -3.0, -2.0],  # another task: forgetting, never a goal
        f"Δ {PROBE}": [-1.0, -1.0, 0.0], f"Δ {PROBE} ci_low": [-1.5, -1.5, -1.9],
    })  # fmt: skip
    for col, values in changes.items():
        for row, value in values.items():
            pts.loc[row, col] = value
    return pts


@pytest.mark.parametrize(
    ("change", "goal"),
    [
        ({"G_ci_low": {1: 0.0}}, "gain"),  # the CI touches 0: not a gain
        ({"G_ci_low": {1: math.nan}}, "gain"),  # no CI: no evidence of a gain
        ({f"Δ {PROBE} ci_low": {1: -2.1}}, "ood"),
        ({"prior_shift": {1: 15.5}}, "prior"),  # the target's shift
        ({f"prior_shift {PROBE}": {1: 16.0}}, "prior"),  # a probe's shift counts too
    ],
)
def test_each_goal_missed_alone_flips_only_its_flag(change, goal):
    base = check_goals(_points())
    assert (base[["goal gain", "goal ood", "goal prior"]] == "met").all().all() and base["meets_all"].all()
    goals = check_goals(_points(**change)).set_index("variant")
    assert goals.loc["b", f"goal {goal}"] == "missed"
    assert all(goals.loc["b", f"goal {g}"] == "met" for g in ("gain", "ood", "prior") if g != goal)
    assert goals.loc["b", "goals_missed"] == 1 and not goals.loc["b", "meets_all"]
    assert goals.drop(index="b")["meets_all"].all(), "the other variants are untouched"
    # at the thresholds themselves: Δ CI low == ood_low and shift == max_prior_shift still meet them
    edge = check_goals(_points(**{f"Δ {PROBE} ci_low": {0: -2.0}, "prior_shift": {0: 15.0}}))
    assert edge.loc[0, "meets_all"]


def test_goals_measure_the_worst_probe_and_the_largest_shift():
    pts = _points(**{f"prior_shift {PROBE}": {0: 30.0}})
    pts["prior_shift other · probe"] = [1.0, 40.0, 2.0]
    pts["Δ other · probe ci_low"] = [-10.0, 0.0, 0.0]
    goals = check_goals(pts).set_index("variant")
    assert goals.loc["a", "ood_worst"] == "other · probe" and goals.loc["a", "ood_ci_low"] == -10.0
    assert goals.loc["a", "prior_shift_of"] == PROBE and goals.loc["a", "prior_shift_max"] == 30.0
    assert goals.loc["b", "prior_shift_of"] == "other · probe" and goals.loc["b", "goal prior"] == "missed"
    assert goals.loc["c", "prior_shift_of"] == PROBE and goals.loc["c", "prior_shift_max"] == 14.0
    # probes= names the rows to check; thresholds are the caller's
    only = check_goals(pts, probes=[PROBE], ood_low=-1.0, max_prior_shift=50.0).set_index("variant")
    assert only.loc["a", "ood_worst"] == PROBE and only.loc["c", "goal ood"] == "missed"
    assert (only["goal prior"] == "met").all()
    assert only.attrs["thresholds"] == {"g_low": 0.0, "ood_low": -1.0, "max_prior_shift": 50.0}


def test_a_target_without_labels_and_a_sweep_without_probes_are_na_not_missed():
    pts = _points().drop(columns=[c for c in _points().columns if PROBE in c])
    pts["prior_shift"] = math.nan  # not classification: no label prior to shift
    goals = check_goals(pts)
    assert (goals["goal ood"] == "n/a").all() and (goals["goal prior"] == "n/a").all()
    assert goals["ood_worst"].isna().all() and goals["prior_shift_max"].isna().all()
    assert goals["meets_all"].all() and goals.loc[goals["recommended"], "variant"].tolist() == ["b"]
    assert goals.attrs["recommendation"].startswith("recommended: b: meets every goal (in-domain gain);")
    # a probe with labels but one NaN bound: the others still count
    pts = _points(**{f"Δ {PROBE} ci_low": {0: math.nan}})
    assert check_goals(pts).loc[0, "goal ood"] == "n/a"


def test_the_recommendation_is_the_least_held_out_forgetting_among_those_that_meet_every_goal():
    goals = check_goals(_points())
    assert goals.loc[goals["recommended"], "variant"].tolist() == ["b"] and not goals["closest"].any()
    line = goals.attrs["recommendation"]
    assert line.startswith("recommended: b: meets every goal") and "held-out AF 1.0 [0.0, 2.5]" in line
    assert "2 other variant(s) meet them too" in line
    tie = check_goals(_points(AF_held_out={2: 1.0}))  # b and c forget as little: the higher G wins
    assert tie.loc[tie["recommended"], "variant"].tolist() == ["b"]
    tie = check_goals(_points(AF_held_out={2: 1.0}, G={2: 16.0}))
    assert tie.loc[tie["recommended"], "variant"].tolist() == ["c"]
    # b has the least AF but misses a goal: c (AF 2.0) is recommended, not a (AF 4.0)
    goals = check_goals(_points(G_ci_low={1: -1.0}))
    assert goals.loc[goals["recommended"], "variant"].tolist() == ["c"]


def test_when_no_variant_meets_every_goal_the_closest_and_the_trade_off_are_named():
    pts = _points(G_ci_low={1: -1.0}, prior_shift={0: 20.0, 2: 30.0}, **{f"Δ {PROBE} ci_low": {0: -5.0}})
    goals = check_goals(pts).set_index("variant")
    assert not goals["meets_all"].any() and not goals["recommended"].any()
    assert goals["goals_missed"].tolist() == [2, 1, 1]
    assert goals.index[goals["closest"]].tolist() == ["b"], "the fewest missed, then the least AF (b 1.0 < c 2.0)"
    line = goals.attrs["recommendation"]
    assert line.startswith("no variant meets every goal (in-domain gain, out-of-domain probes, label-prior shift)")
    assert "closest: b, missing 1: in-domain gain (G CI low -1.0, needs > 0)" in line
    assert "the most gain is a's, missing 2" in line
    text = goals_text(check_goals(pts))
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "← closest" in text and "← recommended" not in text and "✗" in text and "✓" in text


def test_goals_text_fits_120_columns_with_long_variant_names():
    pts = _points(variant={0: "lr 0.0001 · 40 steps · replay 0.1 · balanced" * 2})
    text = goals_text(check_goals(pts))
    assert max(len(line) for line in text.splitlines()) <= 120 and "← recommended" in text
    assert check_goals(_points().iloc[:0]).attrs["recommendation"] == "no variants to recommend"
    with pytest.raises(ValueError, match=r"needs a sweep's points .*'G_ci_low'.*result.points"):
        check_goals(_points().drop(columns=["G_ci_low"]))


def test_the_figure_fills_the_variants_that_meet_every_goal():
    from matplotlib.colors import to_rgba

    pts = _points(G_ci_low={1: -1.0})  # b misses the gain goal

    def faces(fig):
        ax = fig.axes[0]
        marks = [ln for ln in ax.lines if ln.get_marker() in ("o", "s") and len(ln.get_xdata()) == 1]
        return [to_rgba(ln.get_markerfacecolor()) == to_rgba("white") for ln in marks]  # hollow?

    fig = sweep_figure(pts)  # the default goals, checked on the points
    assert faces(fig) == [False, True, False]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "meets every goal (filled)" in labels and "misses a goal (hollow)" in labels
    strict = check_goals(pts, max_prior_shift=11.0)  # a's and c's probe shifts (12, 14) miss this one
    assert faces(sweep_figure(pts, goals=strict)) == [True, True, True]
    plain = sweep_figure(pts, goals=False)
    assert faces(plain) == [False, False, False]
    assert "meets every goal (filled)" not in [t.get_text() for t in plain.axes[0].get_legend().get_texts()]
