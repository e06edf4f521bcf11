"""forgetting_experiment and replay: the structure of the comparison on a tiny model, exact replay mixtures, the same
target examples and base weights for every variant, and replay shares outside [0, 1) refused by name."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch

import nbft
from nbft.forgetting import check_replay, check_replay_from, check_seeds, replay_effect, replay_mixture, variant_label
from nbft.hashes import read_training_hashes
from nbft.models import tiny_random
from nbft.train.variants import fingerprint


def test_forgetting_experiment_structure_on_a_tiny_model(tmp_path):
    model, tok = tiny_random("llama", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = nbft.forgetting_experiment(
        model, target="sentiment", others=["qa", "ner"], replay=(0, 0.25), steps=3, batch_size=4, max_length=96,
        n=6, n_other=4, eval_batch_size=8, tokenizer=tok, out_dir=tmp_path / "exp", monitor=True,
        replay_from=["qa", "ner"],
    )  # fmt: skip
    assert table.columns == ["base", "target-only", "replay 0.25"]
    # the target's out-of-domain probe is scored by default (as nbft.sweep does): a row of its own, outside G and AF
    probe = "sentiment · movie reviews"
    assert table.target == "sentiment" and table.tasks == ["sentiment", probe, "qa", "ner"]
    assert table.results["tasks"][probe]["role"] == "probe"
    assert all([p["task"] for p in f["probes"]] == [probe] for f in table.results["forgetting"])
    f = table.forgetting.set_index("model")
    assert list(f.index) == ["target-only", "replay 0.25"]
    for name in ("G", "BWT", "AF", "worst_drop"):  # every aggregate comes with its 95% CI
        assert {name, f"{name}_ci_low", f"{name}_ci_high"} <= set(f.columns)
    exp = table.results["experiment"]
    variants = {v["model"]: v for v in exp["variants"]}
    # the same 12 target examples for both; replay adds 12 * 0.25 / 0.75 = 4, shared equally, and a step more
    assert variants["target-only"]["examples"] == {"sentiment": 12} and variants["target-only"]["steps"] == 3
    assert variants["replay 0.25"]["examples"] == {"sentiment": 12, "qa": 2, "ner": 2}
    assert variants["replay 0.25"]["steps"] == 4
    only = read_training_hashes(tmp_path / "exp" / "target-only")
    mixed = read_training_hashes(tmp_path / "exp" / "replay-0.25")
    assert only.n_examples == 12 and mixed.n_examples == 16
    assert np.isin(only.examples, mixed.examples).all(), "the replay variant saw every target example too"
    # overlap was checked for every variant, against its own training data
    assert all(table.results["models"][m]["training"]["checked"] for m in ("target-only", "replay 0.25"))
    # each variant ran its monitor; the model comes back with its base weights
    assert variants["replay 0.25"]["monitor_s"] > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert set(exp["timings"]) >= {"eval_base_s", "compare_s", "total_s"}


def test_every_variant_starts_from_the_base_weights_and_buffers(tmp_path, monkeypatch):
    """The first step of each variant sees the base that was evaluated, bit for bit: weights and buffers (RoPE's
    inv_freq, which the state dict leaves out), also after a bf16 variant; the model comes back as it came."""
    import nbft.train as train

    seen = []
    real = train.finetune

    def spy(model, *args, **kwargs):
        seen.append(fingerprint(model))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(train, "finetune", spy)
    model, tok = tiny_random("llama", seed=0)
    base = fingerprint(model)
    nbft.forgetting_experiment(
        model, target="sentiment", others=["qa"], replay=(0, 0.5), steps=2, batch_size=2, max_length=96, n=2,
        n_other=2, eval_batch_size=4, tokenizer=tok, out_dir=tmp_path / "exp", precision="bf16",
    )  # fmt: skip
    assert seen == [base, base]
    assert fingerprint(model) == base


def test_replay_mixture_keeps_every_target_example_and_shares_replay_equally():
    def rows(task, n):
        return datasets.Dataset.from_dict(
            {"prompt": [f"{task} {i}" for i in range(n)], "completion": ["x"] * n, "task": [task] * n}
        )

    target = rows("sentiment", 30)
    mixed, counts = replay_mixture(target, {"qa": rows("qa", 20), "ner": rows("ner", 20)}, 0.25, seed=1)
    assert counts == {"sentiment": 30, "qa": 5, "ner": 5}
    assert sorted(mixed["prompt"][i] for i in range(len(mixed)) if mixed["task"][i] == "sentiment") == sorted(
        target["prompt"]
    )
    assert mixed["task"] != sorted(mixed["task"]), "shuffled"
    same, counts = replay_mixture(target, {}, 0.0)
    assert same is target and counts == {"sentiment": 30}
    with pytest.raises(ValueError, match="more examples than these tasks' train splits hold"):
        replay_mixture(target, {"qa": rows("qa", 2)}, 0.5)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), "0.1", True])
def test_replay_outside_zero_one_is_refused_by_name(bad, tmp_path):
    with pytest.raises(ValueError, match=rf"replay={bad!r} is outside \[0, 1\)"):
        check_replay((0, bad))
    with pytest.raises(ValueError, match="is outside"):  # before any model is loaded or anything written
        nbft.forgetting_experiment(model="tiny", replay=(0, bad), out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="is outside"):
        nbft.run_demo(model="tiny", replay=[bad], out_dir=tmp_path / "y", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_replay_effect_lines():
    results = {"forgetting": [{"model": "target-only", "G": 30.0, "AF": 10.0},
                              {"model": "replay 0.1", "G": 28.5, "AF": 4.0}]}  # fmt: skip
    (e,) = replay_effect(results)
    assert e["AF_cut"] == pytest.approx(0.6) and e["G_kept"] == pytest.approx(0.95)
    assert e["line"] == "replay 0.1 vs target-only: AF 10.0 → 4.0 (-60%), G +30.0 → +28.5 (95% of it kept)"
    assert variant_label(0) == "target-only" and variant_label(0.1) == "replay 0.1"
    assert check_replay(0.3) == (0.3,)
    with pytest.raises(ValueError, match="twice"):
        check_replay((0.1, 0.1))


def test_the_experiment_and_the_demo_load_models_through_one_public_function():
    import inspect

    import nbft.demo
    import nbft.forgetting
    from nbft.models import resolve_model

    source = inspect.getsource(nbft.forgetting)
    assert "from nbft.demo" not in source and "import nbft.demo" not in source  # no demo <-> forgetting circle
    assert not hasattr(nbft.demo, "_load")
    model, tok, label, folder = resolve_model("tiny")
    assert label == "tiny-random-llama" and folder is None
    assert resolve_model((model, tok))[:2] == (model, tok) and resolve_model(model, tok).tokenizer is tok
    with pytest.raises(ValueError, match="needs its tokenizer"):
        resolve_model(model)


def test_seeds_and_held_out_tasks_on_a_tiny_model(tmp_path):
    """Each variant trained once per seed from the same base on the same examples; by default the last other task is
    held out of replay, and forgetting is reported for the replayed and the held-out tasks apart."""
    model, tok = tiny_random("llama", seed=0)
    table = nbft.forgetting_experiment(
        model, target="sentiment", others=["qa", "ner"], replay=(0, 0.25), steps=2, batch_size=4, max_length=96,
        n=4, n_other=4, eval_batch_size=8, tokenizer=tok, out_dir=tmp_path / "exp", seeds=(0, 1), probes=False,
    )  # fmt: skip
    assert table.tasks == ["sentiment", "qa", "ner"], "probes=False: no probe row"
    assert "probes" not in json.loads((tmp_path / "exp" / "sweep.json").read_text())["plan"]["eval"]
    exp = table.results["experiment"]
    assert exp["replayed"] == ["qa"] and exp["held_out"] == ["ner"] and exp["seeds"] == [0, 1]
    assert table.results["task_groups"] == {"replayed": ["qa"], "held-out": ["ner"]}
    runs = {(v["model"], v["seed"]): v for v in exp["variants"]}
    assert set(runs) == {("target-only", 0), ("target-only", 1), ("replay 0.25", 0), ("replay 0.25", 1)}
    assert runs[("replay 0.25", 1)]["examples"] == {"sentiment": 8, "qa": 3}  # nothing of the held-out ner
    a = read_training_hashes(tmp_path / "exp" / "replay-0.25" / "seed-0")
    b = read_training_hashes(tmp_path / "exp" / "replay-0.25" / "seed-1")
    assert np.array_equal(a.examples, b.examples), "the seeds train on the same examples"
    assert table.results["models"]["replay 0.25"]["runs"] == ["seed 0", "seed 1"]
    for f in table.results["forgetting"]:
        assert f["n_seeds"] == 2
        deltas = {d["task"]: d for d in table.results["deltas"] if d["model"] == f["model"] and d["is_headline"]}
        for group, tasks in (("replayed", ["qa"]), ("held-out", ["ner"])):
            g = f["groups"][group]
            # the group's AF is the mean over seeds of each seed's AF over the group's tasks, with its CI
            per_seed_af = [np.mean([max(0.0, -deltas[t]["per_seed"][s]) for t in tasks]) for s in range(2)]
            assert g["AF"] == pytest.approx(np.mean(per_seed_af)) and g["n_other_tasks"] == len(tasks)
            assert g["AF_ci_low"] <= g["AF_ci_high"] and g["worst_task"] == tasks[0]
    text = table.to_text()
    assert "held-out tasks (ner): AF = " in text and "(2 seeds, mean)" in text


def test_bad_seeds_and_replay_from_are_refused_before_anything_is_written(tmp_path):
    for bad, match in (((), "trains nothing"), ((0, 1, 0), "repeats seed 0"), ((0, -1), "not a whole number")):
        with pytest.raises(ValueError, match=match):
            check_seeds(bad)
        with pytest.raises(ValueError, match=match):
            nbft.forgetting_experiment(model="tiny", seeds=bad, out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="Did you mean 'ner'"):
        nbft.forgetting_experiment(model="tiny", others=["qa", "ner"], replay_from=["nerr"], out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="names the target 'sentiment'"):
        nbft.forgetting_experiment(
            model="tiny", others=["qa", "ner"], replay_from=["sentiment"], out_dir=tmp_path / "x"
        )
    with pytest.raises(ValueError, match="replays nothing"):
        nbft.forgetting_experiment(model="tiny", others=["qa", "ner"], replay_from=[], out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert check_replay_from(None, ["qa", "reply", "ner"], "sentiment") == ["qa", "reply"]
    assert check_replay_from(None, ["qa"], "sentiment") == ["qa"]
    assert check_replay_from(["ner", "qa"], ["qa", "reply", "ner"], "sentiment") == ["qa", "ner"]


def test_replay_effect_reports_the_held_out_group_apart():
    def rec(model, g, af, af_replayed, af_held):
        return {
            "model": model,
            "G": g,
            "AF": af,
            "groups": {
                "replayed": {"AF": af_replayed, "AF_ci_low": 0.0, "AF_ci_high": af_replayed + 1, "n_other_tasks": 2},
                "held-out": {"AF": af_held, "AF_ci_low": af_held - 1, "AF_ci_high": af_held + 1, "n_other_tasks": 1},
            },
        }

    (e,) = replay_effect(
        {"forgetting": [rec("target-only", 30.0, 10.0, 9.0, 12.0), rec("replay 0.1", 29.0, 4.0, 0.0, 8.0)]}
    )
    assert e["AF_cut_replayed"] == pytest.approx(1.0) and e["AF_cut_held-out"] == pytest.approx(1 / 3)
    assert "held-out tasks: AF 12.0 → 8.0 [95% CI 7.0, 9.0] (-33%)" in e["line"]


def test_the_demo_keeps_a_task_out_of_its_replay_pool(tmp_path):
    result = nbft.run_demo(model="tiny", tasks=["qa", "ner"], replay=[0.25], out_dir=tmp_path / "demo",
                           progress=False)  # fmt: skip
    table = result["table"]
    assert table.results["task_groups"] == {"replayed": ["qa"], "held-out": ["ner"]}
    replayed = read_training_hashes(tmp_path / "demo" / "replay-0.25" / "seed-0")
    tuned = read_training_hashes(tmp_path / "demo" / "target-only" / "seed-0")
    assert replayed.n_examples > tuned.n_examples  # the target examples plus qa's, none of ner's
    for f in table.results["forgetting"]:
        assert set(f["groups"]) == {"replayed", "held-out"} and f["groups"]["held-out"]["worst_task"] == "ner"
    assert "held-out tasks (ner): AF = " in result["text"]
    with pytest.raises(ValueError, match="Did you mean 'ner'"):
        nbft.run_demo(model="tiny", tasks=["qa", "ner"], replay=[0.25], replay_from=["nr"], out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_demo_with_seeds_shows_the_mean_and_the_seed_range(tmp_path):
    from nbft.cli import main

    out = tmp_path / "demo"
    args = ["demo", "--model", "tiny", "--out", str(out), "--seeds", "2", "--replay", "0.25", "--replay-from", "qa"]
    assert main(args) == 0
    metrics = __import__("json").loads((out / "metrics.json").read_text())
    assert metrics["task_groups"] == {"replayed": ["qa"], "held-out": ["reply", "ner", "summarize-paper"]}
    assert metrics["models"]["tuned"]["runs"] == ["seed 0", "seed 1"]
    assert metrics["models"]["replay 0.25"]["runs"] == ["seed 0", "seed 1"]
    assert (out / "target-only" / "seed-1" / "model").is_dir() and (out / "replay-0.25" / "seed-1" / "model").is_dir()
    f = {x["model"]: x for x in metrics["forgetting"]}
    assert f["tuned"]["n_seeds"] == 2 and len(f["replay 0.25"]["AF_per_seed"]) == 2
    target = next(d for d in metrics["deltas"] if d["model"] == "tuned" and d["role"] == "target" and d["is_headline"])
    assert target["delta"] == pytest.approx(sum(target["per_seed"]) / 2)
    with pytest.raises(SystemExit) as refused:
        main(["demo", "--model", "tiny", "--out", str(tmp_path / "x"), "--seeds", "0"])
    assert refused.value.code == 2
    assert not (tmp_path / "x").exists()
