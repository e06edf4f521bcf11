"""forgetting_experiment and replay: the structure of the comparison on a tiny model, exact replay mixtures, the same
target examples and base weights for every variant, and replay shares outside [0, 1) refused by name."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

import nbft
from nbft.forgetting import check_replay, replay_effect, replay_mixture, variant_label
from nbft.hashes import read_training_hashes
from nbft.models import tiny_random
from nbft.train.variants import fingerprint


def test_forgetting_experiment_structure_on_a_tiny_model(tmp_path):
    model, tok = tiny_random("llama", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = nbft.forgetting_experiment(
        model, target="sentiment", others=["qa", "ner"], replay=(0, 0.25), steps=3, batch_size=4, max_length=96,
        n=6, n_other=4, eval_batch_size=8, tokenizer=tok, out_dir=tmp_path / "exp", monitor=True,
    )  # fmt: skip
    assert table.columns == ["base", "target-only", "replay 0.25"]
    assert table.target == "sentiment" and table.tasks == ["sentiment", "qa", "ner"]
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
