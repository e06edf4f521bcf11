"""One test per bug of issue 8 (each failed on the code before the fix): eager attention without packing, Ctrl-C
between the update and the step counter, resume of a bf16 model, and token-budget epochs."""

from __future__ import annotations

import signal
from collections import Counter

import pytest
import torch
from _train_data import losses, records

from nbft.config import TrainConfig
from nbft.models import tiny_random
from nbft.train import StopTraining, finetune, resume
from nbft.train.batching import StepPlan
from nbft.train.checkpoint import list_checkpoints


class StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, state):
        if state.step >= self.step:
            raise StopTraining


def test_token_budget_epochs_see_each_example_exactly_once():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 500, (1000,), generator=g).tolist()
    plan = StepPlan(lengths, seed=1, batch_size=1, grad_accum=2, tokens_per_step=2000, epochs=3)
    seen = Counter(i for s in range(plan.total_steps) for mb in plan.step(s)[1] for i in mb)
    assert set(seen.values()) == {3}, f"{sum(v != 3 for v in seen.values())} examples not seen exactly 3 times"
    assert len(seen) == 1000
    # Fractional epochs end inside an epoch; a fresh plan with max_steps continues into as many epochs as needed.
    half = StepPlan(lengths, seed=1, batch_size=1, grad_accum=2, tokens_per_step=2000, epochs=1.5)
    seen = Counter(i for s in range(half.total_steps) for mb in half.step(s)[1] for i in mb)
    assert max(seen.values()) <= 2 and min(seen.values()) >= 1
    progress = [plan.step(s)[0] for s in range(plan.total_steps)]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(3.0)


def test_eager_attention_without_packing_gives_the_reference_loss_and_gradient(tmp_path):
    """A boolean 4D mask is added as 0/1 by eager attention, so nothing was masked: tokens saw the future."""
    model, tok = tiny_random("llama", seed=3)
    model.set_attn_implementation("eager")
    data = records(6)
    # The reference: transformers' own loss, each example alone (no padding, no mask), summed per labelled token.
    ref = tiny_random("llama", seed=3)[0]
    ref.set_attn_implementation("eager")
    ref.train()
    total, n = torch.zeros((), dtype=torch.float64), 0
    for r in data:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids, labels = torch.tensor([p + c]), torch.tensor([[-100] * len(p) + c])
        k = int((labels[0, 1:] != -100).sum())
        total = total + ref(input_ids=ids, labels=labels).loss.double() * k
        n += k
    ref_loss = total / n  # float64
    ref_loss.backward()
    ref_norm = torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in ref.parameters()]))

    cfg = TrainConfig(max_steps=1, batch_size=6, packing=False, precision="fp32", max_grad_norm=None)
    run = finetune(model, tok, data, config=cfg, run_dir=tmp_path / "r")
    step = run.history[0]
    assert step["loss"] == pytest.approx(float(ref_loss.detach()), rel=1e-5)
    assert step["grad_norm"] == pytest.approx(float(ref_norm), rel=1e-4)


def test_interrupt_between_update_and_step_counter_resumes_exactly(tmp_path, monkeypatch):
    """Ctrl-C right after AdamW's update: the checkpoint must hold exactly the updates its step number says."""
    cfg = TrainConfig(max_steps=5, batch_size=2, learning_rate=1e-3, precision="fp32")
    model, tok = tiny_random("llama", seed=5)
    full = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "full")

    original = torch.optim.AdamW.step
    calls = []

    def step_then_interrupt(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # as a user pressing Ctrl-C (or "interrupt kernel") just now
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_interrupt)
    model, tok = tiny_random("llama", seed=5)
    first = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "split")
    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    assert first.status == "stopped"
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["step-000003"]
    rest = resume(tmp_path / "split")
    assert losses(rest) == losses(full)
    for (name, p), q in zip(rest.model.named_parameters(), full.model.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_bf16_model_resumes_bit_exact(tmp_path):
    """A model handed over in bf16: its fp32 master weights must be saved and reloaded in fp32."""
    cfg = TrainConfig(max_steps=5, batch_size=2, learning_rate=1e-3, precision="bf16")

    def bf16_model():
        model, tok = tiny_random("llama", seed=2)
        return model.to(torch.bfloat16), tok

    model, tok = bf16_model()
    full = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "full")
    model, tok = bf16_model()
    first = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "split", observers=[StopAt(2)])
    assert first.status == "stopped"
    rest = resume(tmp_path / "split")
    assert losses(rest) == losses(full)
    assert {p.dtype for p in rest.model.parameters()} == {torch.bfloat16}, "the model keeps the dtype it came in"
    for (name, p), q in zip(rest.model.named_parameters(), full.model.parameters(), strict=True):
        assert torch.equal(p, q), name
