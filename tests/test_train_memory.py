"""Memory modes (nbft/train/memory.py): pure bf16 with stochastic rounding, 8-bit AdamW, activation checkpointing;
each against the fp32-master run, and each falling back with a message when its library is missing."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
from _train_data import losses, records

from nbft.config import TrainConfig
from nbft.models import tiny_random
from nbft.train import StopTraining, finetune, resume
from nbft.train.batching import collate_varlen
from nbft.train.loss import CausalLMLoss
from nbft.train.memory import OptimizerPlan, enable_activation_checkpointing, make_optimizer, plan_optimizer

CPU = torch.device("cpu")


def block_import(monkeypatch, name: str) -> None:
    """Make ``import name`` (and its submodules) raise ImportError, as if the library were not installed."""
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        monkeypatch.setitem(sys.modules, key, None)
    monkeypatch.setitem(sys.modules, name, None)


def _run(tmp_path, name: str, steps: int = 8, observers=(), **kw):
    model, tok = tiny_random("llama")
    cfg = TrainConfig(max_steps=steps, batch_size=4, learning_rate=1e-3, **kw)
    return model, finetune(model, tok, records(32), config=cfg, observers=list(observers), run_dir=tmp_path / name)


class _Dtypes:
    def __init__(self, model) -> None:
        self.model = model
        self.seen: set[torch.dtype] = set()

    def on_step(self, state) -> None:
        self.seen |= {p.dtype for p in self.model.parameters()}


@pytest.fixture(scope="module")
def fp32_master_curve(tmp_path_factory) -> list[float]:
    _, run = _run(tmp_path_factory.mktemp("ref"), "bf16", precision="bf16")
    assert run.summary["optimizer"] == "adamw"
    return losses(run)


def test_stochastic_rounding_keeps_updates_smaller_than_bf16_spacing():
    # 1.0 in bf16 has neighbours 1 - 2**-8 and 1 + 2**-7: an Adam step of 1e-3 rounds back to 1.0 every time.
    for stochastic in (False, True):
        p = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
        plan = OptimizerPlan("adamw-bf16-sr" if stochastic else "adamw", pure_bf16=stochastic)
        opt, _ = make_optimizer([p], lr=1e-3, weight_decay=0.0, device=CPU, plan=plan)
        torch.manual_seed(0)
        for _ in range(50):
            p.grad = torch.ones_like(p)
            opt.step()
        mean = float(p.detach().float().mean())
        if stochastic:
            assert mean == pytest.approx(1 - 50e-3, abs=5e-3)  # the expected fp32 result
        else:
            assert mean == 1.0  # round-to-nearest lost every update: why pure bf16 needs stochastic rounding


def test_pure_bf16_has_no_master_copy_and_follows_the_fp32_master_curve(tmp_path, fp32_master_curve):
    model, _ = tiny_random("llama")
    watch = _Dtypes(model)
    cfg = TrainConfig(max_steps=8, batch_size=4, learning_rate=1e-3, precision="bf16", master_weights=False)
    run = finetune(model, None, _tokenized(), config=cfg, observers=[watch], run_dir=tmp_path / "pure")
    assert run.summary["optimizer"] == "adamw-bf16-sr"
    assert watch.seen == {torch.bfloat16}
    assert next(model.parameters()).dtype == torch.float32  # given back in its own dtype
    assert losses(run) == pytest.approx(fp32_master_curve, rel=0.02)


def _tokenized():
    _, tok = tiny_random("llama")
    out = []
    for r in records(32):
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append({"input_ids": p + c, "labels": [-100] * len(p) + c})
    return out


def test_adamw_8bit_follows_the_fp32_master_curve(tmp_path, fp32_master_curve):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is an optional extra (pip install nbft[speed])")
    _, run = _run(tmp_path, "8bit", precision="bf16", optimizer="adamw-8bit")
    assert run.summary["optimizer"] == "adamw-8bit"
    assert losses(run) == pytest.approx(fp32_master_curve, rel=0.02)


@pytest.mark.parametrize(
    ("blocked", "kw", "message"),
    [
        ("torchao", {"master_weights": False}, "needs torchao"),
        ("bitsandbytes", {"optimizer": "adamw-8bit"}, "adamw-8bit' unavailable"),
    ],
)
def test_memory_mode_falls_back_with_a_message_when_its_library_is_missing(
    blocked, kw, message, tmp_path, monkeypatch, caplog
):
    block_import(monkeypatch, blocked)
    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        _, run = _run(tmp_path, blocked, steps=2, precision="bf16", **kw)
    assert run.status == "completed" and run.summary["optimizer"] == "adamw"
    assert message in caplog.text and "fp32 master weights instead" in caplog.text


def test_plan_keeps_master_weights_for_8bit_with_pure_bf16(caplog):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is an optional extra (pip install nbft[speed])")
    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        plan = plan_optimizer("adamw-8bit", pure_bf16=True, device=CPU)
    assert plan == OptimizerPlan("adamw-8bit", pure_bf16=False, note=plan.note) and "keeping fp32" in caplog.text


@pytest.mark.parametrize("kw", [{"master_weights": False}, {"optimizer": "adamw-8bit"}])
def test_memory_modes_resume_exactly(kw, tmp_path):
    if kw.get("optimizer") == "adamw-8bit":
        pytest.importorskip("bitsandbytes", reason="bitsandbytes is an optional extra (pip install nbft[speed])")
    _, whole = _run(tmp_path, "whole", steps=6, precision="bf16", **kw)

    class StopAt:
        def on_step(self, state):
            if state.step == 3:
                raise StopTraining

    _, part = _run(tmp_path, "part", steps=6, observers=[StopAt()], precision="bf16", **kw)
    assert part.status == "stopped"
    rest = resume(tmp_path / "part")
    assert rest.summary["optimizer"] == whole.summary["optimizer"]
    assert losses(rest) == losses(whole)


# ------------------------------------------------------------------------------------- activation checkpointing


def _loss_and_grads(model, batch):
    module = CausalLMLoss(model, fused=True)
    model.zero_grad(set_to_none=True)
    loss = module(**batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_recomputes_layers_with_the_packed_attention():
    model, _ = tiny_random("llama")
    model.train()
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, model.config.vocab_size, (n,), generator=gen) for n in (20, 11, 7)]
    batch = collate_varlen(ids, [x.clone() for x in ids])  # one packed row: per-example attention
    plain_loss, plain = _loss_and_grads(model, batch)
    calls = []
    hook = model.model.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))
    undo = enable_activation_checkpointing(model)
    ckpt_loss, ckpt = _loss_and_grads(model, batch)
    assert len(calls) == 2  # the layer ran again inside backward
    # The replay ran under the per-example attention of its forward: otherwise examples would see each other and
    # the gradients would differ.
    assert torch.equal(plain_loss, ckpt_loss)
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    undo()
    hook.remove()
    assert not _checkpointing(model)


def test_activation_checkpointing_run_matches_and_is_undone(tmp_path):
    _, plain = _run(tmp_path, "plain", steps=3, precision="fp32")
    model, ckpt = _run(tmp_path, "ckpt", steps=3, precision="fp32", activation_checkpointing=True)
    assert losses(ckpt) == pytest.approx(losses(plain), rel=1e-5)
    assert not _checkpointing(model)


def _checkpointing(model) -> bool:
    """transformers 5 renamed is_gradient_checkpointing (now deprecated) to is_activation_checkpointing."""
    flag = getattr(type(model), "is_activation_checkpointing", None)
    return model.is_activation_checkpointing if flag is not None else model.is_gradient_checkpointing
