"""Mixed precision casts parameters, never buffers: after a bf16/fp16 run the in-memory model equals the model saved
in ``<run>/model`` bit for bit (parameters, buffers such as RoPE's ``inv_freq``, and logits), and a snapshot of a
base model (:class:`nbft.train.variants.BaseSnapshot`) gives back its weights and buffers exactly."""

from __future__ import annotations

import pytest
import torch
from _train_data import records

from nbft.config import TrainConfig
from nbft.models import load_model, tiny_random
from nbft.train import finetune
from nbft.train.sync import MasterWeights
from nbft.train.variants import BaseSnapshot, fingerprint


def _tensors(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (non-persistent ones too: RoPE's inv_freq is not in the state dict)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _assert_same_model(a, b, batch: dict[str, torch.Tensor]) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert set(ta) == set(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype == torch.float32 or not ta[name].is_floating_point(), name
        assert torch.equal(ta[name], tb[name]), f"{name}: max diff {(ta[name] - tb[name]).abs().max():.3g}"
    a.eval(), b.eval()
    with torch.no_grad():
        la, lb = a(**batch).logits, b(**batch).logits
    assert torch.equal(la, lb), f"logits max diff {(la - lb).abs().max():.3g}"


@pytest.mark.parametrize(("arch", "precision"), [("llama", "bf16"), ("llama", "fp16"), ("t5", "bf16")])
def test_after_mixed_precision_training_the_model_equals_the_saved_one(arch, precision, tmp_path):
    model, tok = tiny_random(arch, seed=0)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    cfg = TrainConfig(max_steps=2, batch_size=4, learning_rate=1e-3, precision=precision, seed=0)
    run = finetune(model, tok, records(8), config=cfg, run_dir=tmp_path / "r")
    assert run.status == "completed"
    # the buffers are the ones the model made (RoPE inv_freq 0.316228, not bf16's 0.316406)
    for name, value in model.named_buffers():
        assert value.dtype == buffers[name].dtype and torch.equal(value, buffers[name]), name
    reloaded, _ = load_model(tmp_path / "r" / "model")
    ids = tok(["Classify: w1 w2 w3\nAnswer:", "a longer prompt of a few more words"], return_tensors="pt",
              padding=True)  # fmt: skip
    batch = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    if arch == "t5":
        batch["decoder_input_ids"] = ids["input_ids"][:, :5]
    _assert_same_model(model, reloaded, batch)


def test_master_weights_cast_parameters_only_and_restore_buffers_exactly():
    model, _ = tiny_random("llama", seed=0)
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    masters = MasterWeights(model, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # RoPE computes in fp32 from fp32 frequencies
    model.model.rotary_emb.inv_freq.mul_(2)  # e.g. dynamic RoPE rescales its frequencies during forward
    masters.restore()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.model.rotary_emb.inv_freq, inv_freq)


def test_base_snapshot_restores_weights_and_buffers_bit_for_bit():
    model, _ = tiny_random("llama", seed=0)
    base = fingerprint(model)
    snapshot = BaseSnapshot(model)
    with torch.no_grad():
        model.to(torch.bfloat16)  # rounds every weight and the RoPE frequencies (a non-persistent buffer)
        next(model.parameters()).add_(1)
        model.to(torch.float32)
    assert fingerprint(model) != base
    snapshot.restore()
    assert fingerprint(model) == base
    # ties survive: the output embedding is still the input embedding
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_base_snapshot_is_a_context_that_gives_the_model_back():
    model, _ = tiny_random("llama", seed=0)
    base = fingerprint(model)
    with BaseSnapshot(model) as snapshot, torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
        snapshot.restore()
        assert fingerprint(model) == base
        model.model.rotary_emb.inv_freq.zero_()
    assert fingerprint(model) == base
