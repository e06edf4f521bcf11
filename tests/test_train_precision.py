"""Precision (nbft/train/precision.py): native-bf16 detection, fp16 with dynamic loss scaling, skipped steps."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from _train_data import losses, records

from nbft.config import TrainConfig
from nbft.models import tiny_random
from nbft.train import finetune, resume
from nbft.train.batching import as_examples
from nbft.train.loop import setup, train_step
from nbft.train.precision import LossScaler, resolve_precision
from nbft.train.run import Run


class _FakeCuda:
    """``torch.cuda.is_bf16_supported`` of a GPU: a T4 emulates bf16 (True only with ``including_emulation``)."""

    def __init__(self, native: bool) -> None:
        self.native = native
        self.asked: list[bool] = []

    def __call__(self, including_emulation: bool = True) -> bool:
        self.asked.append(including_emulation)
        return self.native or including_emulation


def test_auto_precision_asks_for_native_bf16_and_picks_fp16_on_a_t4(monkeypatch, caplog):
    cuda = torch.device("cuda", 0)
    t4 = _FakeCuda(native=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", t4)
    # The old check (default including_emulation=True) said yes on a T4 and trained in emulated bf16.
    assert resolve_precision("auto", cuda) is torch.float16
    assert False in t4.asked
    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        assert resolve_precision("bf16", cuda) is torch.bfloat16  # allowed when asked for, but said to be slow
    assert "emulates bf16" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", _FakeCuda(native=True))  # A100, H100
    assert resolve_precision("auto", cuda) is torch.bfloat16
    assert resolve_precision("fp16", cuda) is torch.float16
    assert resolve_precision("fp16", torch.device("cpu")) is torch.float16  # explicit fp16 runs on CPU too


def test_loss_scaler_skips_an_overflowing_step_and_halves_the_scale():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    scaler = LossScaler(torch.device("cpu"), init_scale=2.0**10, growth_interval=2)
    p.grad = torch.tensor([1.0, float("inf"), 1.0])
    scaler.unscale(opt)
    assert scaler.step(opt) is True  # skipped
    assert torch.equal(p.detach(), torch.ones(3)) and scaler.value == 2.0**9
    for expected in (2.0**9, 2.0**10):  # two good steps in a row: the scale doubles again
        p.grad = torch.full((3,), scaler.value)  # a scaled gradient of 1
        scaler.unscale(opt)
        assert scaler.step(opt) is False
        assert scaler.value == expected
    assert not torch.equal(p.detach(), torch.ones(3))
    assert scaler.skipped_total == 1
    restored = LossScaler(torch.device("cpu"))
    restored.load_state_dict(scaler.state_dict())
    assert restored.value == scaler.value and restored.state_dict() == scaler.state_dict()


def _steps(cfg: TrainConfig, tmp_path, scaled: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    model, tok = tiny_random("llama")
    run = Run(
        model=model,
        tokenizer=tok,
        train=as_examples(records(16), kind="causal", tokenizer=tok),
        val=None,
        config=cfg,
        observers=(),
        run_dir=tmp_path / ("scaled" if scaled else "plain"),
        base_model=None,
    )
    state = setup(run)
    if scaled:  # loss scaling around an fp32 model: multiplying by a power of two is exact
        state.sync.scaler = LossScaler(torch.device("cpu"))
    out = []
    while state.step < state.total_steps:
        result = train_step(state, state.plan.step(state.step)[1])
        state.step += 1
        out.append(result.loss)
        assert not result.skipped
    state.restore_model()
    return out, {k: v.clone() for k, v in model.state_dict().items()}


def test_loss_scaling_without_skipped_steps_is_the_same_maths(tmp_path):
    cfg = TrainConfig(max_steps=4, batch_size=4, grad_accum=2, learning_rate=1e-3, precision="fp32")
    plain_losses, plain = _steps(cfg, tmp_path, scaled=False)
    scaled_losses, scaled = _steps(cfg, tmp_path, scaled=True)
    assert scaled_losses == plain_losses
    assert all(torch.equal(plain[k], scaled[k]) for k in plain)


class _Weights:
    """Keeps a checksum of one weight after every step (observers may read the model, not change it)."""

    def __init__(self, model) -> None:
        self.weight = model.get_output_embeddings().weight
        self.sums: list[float] = []

    def on_step(self, state) -> None:
        self.sums.append(float(self.weight.detach().float().sum()))


def test_fp16_overflow_skips_steps_records_them_and_recovers(tmp_path, monkeypatch):
    # Start from a loss scale so large that the fp16 gradients overflow: the first steps must be skipped.
    monkeypatch.setattr(LossScaler.__init__, "__defaults__", (2.0**24, 2000))  # about 8 skipped steps
    model, tok = tiny_random("llama")
    before = float(model.get_output_embeddings().weight.detach().float().sum())
    watch = _Weights(model)
    cfg = TrainConfig(max_steps=16, batch_size=4, learning_rate=1e-3, precision="fp16")
    run = finetune(model, tok, records(24), config=cfg, observers=[watch], run_dir=tmp_path / "run")
    rows = [h for h in run.history if h["kind"] == "train"]
    skipped = [h["skipped"] for h in rows]
    assert run.status == "completed" and skipped[0] and not skipped[-1]
    first_good = skipped.index(False)
    assert not any(skipped[first_good:])  # once the scale fits, no more overflow
    for a, b in itertools.pairwise(rows[: first_good + 1]):
        assert b["loss_scale"] == a["loss_scale"] / 2  # each skipped step halved the scale
    assert all(abs(s - before) < 1e-3 for s in watch.sums[:first_good])  # skipped: weights untouched
    assert abs(watch.sums[first_good] - before) > 1e-3
    assert run.summary["skipped_steps"] == first_good
    assert losses(run)[-1] < losses(run)[first_good]


def test_fp16_loss_curve_follows_fp32(tmp_path):
    curves = {}
    for precision in ("fp32", "fp16"):
        model, tok = tiny_random("llama")
        cfg = TrainConfig(max_steps=8, batch_size=4, learning_rate=1e-3, precision=precision)
        run = finetune(model, tok, records(32), config=cfg, run_dir=tmp_path / precision)
        curves[precision] = losses(run)
        assert next(model.parameters()).dtype == torch.float32  # given back in the dtype it came in
    assert curves["fp16"] == pytest.approx(curves["fp32"], rel=2e-3)
    assert curves["fp16"] != curves["fp32"]  # it did compute in fp16


def test_fp16_run_resumes_with_its_loss_scale(tmp_path, monkeypatch):
    monkeypatch.setattr(LossScaler.__init__, "__defaults__", (2.0**24, 2000))  # the scale changes before the stop
    cfg = TrainConfig(max_steps=12, batch_size=4, learning_rate=1e-3, precision="fp16")
    model, tok = tiny_random("llama")
    whole = finetune(model, tok, records(24), config=cfg, run_dir=tmp_path / "whole")
    model, tok = tiny_random("llama")

    class StopAt:
        def on_step(self, state):
            if state.step == 5:
                from nbft.train import StopTraining

                raise StopTraining

    part = finetune(model, tok, records(24), config=cfg, observers=[StopAt()], run_dir=tmp_path / "part")
    assert part.status == "stopped"
    rest = resume(tmp_path / "part")
    scales = [h["loss_scale"] for h in rest.history if h["kind"] == "train"]
    assert scales == [h["loss_scale"] for h in whole.history if h["kind"] == "train"]
    assert losses(rest) == losses(whole)
