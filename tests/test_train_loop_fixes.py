"""Loop bugs found by reading the code (issue 14, items 6-10), each pinned by a test that failed before its fix:
a single Ctrl-C anywhere in a run only asks for a stop; fp16 steps skipped for overflow do not count as updates;
the compile check's probe runs without dropout; a resume from step 0 does not measure the base model again; CUDA
RNG states go back to their own devices."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch
from _train_data import records

from nbft.config import TrainConfig
from nbft.models import tiny_random
from nbft.train import StopTraining, finetune, resume
from nbft.train.checkpoint import list_checkpoints

FP32 = {"precision": "fp32"}


needs_main_thread = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signal handlers belong to the main thread"
)


class InterruptAt:
    """Sends this process a SIGINT (Ctrl-C) the first time the run reaches ``phase`` (an ``on_phase`` name, or
    ``"on_eval"``), from the main thread, as a user pressing Ctrl-C at that moment."""

    def __init__(self, phase: str) -> None:
        self.phase, self.sent = phase, 0

    def _interrupt(self) -> None:
        if not self.sent:
            self.sent += 1
            os.kill(os.getpid(), signal.SIGINT)

    def on_phase(self, phase: dict) -> None:
        if phase["phase"] == self.phase:
            self._interrupt()

    def on_eval(self, state, metrics) -> None:
        if self.phase == "on_eval":
            self._interrupt()


@needs_main_thread
def test_one_interrupt_during_setup_stops_the_run_with_a_checkpoint(tmp_path):
    model, tok = tiny_random("llama")
    ctrl_c = InterruptAt("setup")
    run = finetune(model, tok, records(8), config=TrainConfig(max_steps=3, batch_size=4, **FP32),
                   observers=[ctrl_c], run_dir=tmp_path / "r")  # fmt: skip
    assert ctrl_c.sent == 1
    assert run.status == "stopped" and run.error is None and run.stop_reason == "interrupted"
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-000000"]
    assert resume(tmp_path / "r").status == "completed"  # and resume() continues it


@needs_main_thread
@pytest.mark.parametrize("phase", ["final_eval", "on_eval", "saving"])
def test_one_interrupt_after_the_last_step_still_writes_the_final_checkpoint_and_model(phase, tmp_path):
    model, tok = tiny_random("llama")
    ctrl_c = InterruptAt(phase)
    cfg = TrainConfig(max_steps=2, batch_size=4, **FP32)
    run = finetune(model, tok, records(8), val=records(4, seed=1), config=cfg, observers=[ctrl_c],
                   run_dir=tmp_path / "r")  # fmt: skip
    assert ctrl_c.sent == 1
    assert run.error is None and run.status == "completed", run.error
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-000002"]
    assert (tmp_path / "r" / "model" / "model.safetensors").is_file()
    assert [h["step"] for h in run.history if h["kind"] == "eval"] == [2]


@needs_main_thread
def test_an_interrupt_nobody_sent_twice_is_not_called_a_second_one(tmp_path):
    class Raises:  # a KeyboardInterrupt that did not come through the handler (e.g. raised by code)
        def on_step(self, state):
            raise KeyboardInterrupt

    model, tok = tiny_random("llama")
    run = finetune(model, tok, records(8), config=TrainConfig(max_steps=3, batch_size=4, save_every=1, **FP32),
                   observers=[Raises()], run_dir=tmp_path / "r", background=True)  # fmt: skip
    with pytest.raises(KeyboardInterrupt) as info:
        run.wait()
    assert run.status == "failed"
    assert "second" not in str(info.value) and "aborted by an interrupt" in str(info.value)


def _fp16_run(tmp_path, name, overflow_at=None, monkeypatch=None):
    """A tiny fp16 run (fp16 computes on CPU too); ``overflow_at``: the step whose gradients are made to overflow
    (once), as fp16 gradients do when the loss scale is too large."""
    if overflow_at is not None:
        from nbft.train.precision import LossScaler

        original, calls = LossScaler.unscale, []

        def unscale(self, optimizer):  # called once per step attempt, on the summed gradients
            calls.append(1)
            if len(calls) == overflow_at:
                optimizer.param_groups[0]["params"][0].grad.fill_(float("inf"))
            original(self, optimizer)

        monkeypatch.setattr(LossScaler, "unscale", unscale)
    model, tok = tiny_random("llama")
    cfg = TrainConfig(max_steps=5, batch_size=4, learning_rate=1e-3, warmup_steps=3, precision="fp16")
    return finetune(model, tok, records(16), config=cfg, run_dir=tmp_path / name)


def test_an_fp16_step_skipped_for_overflow_does_not_count_as_an_update(tmp_path, monkeypatch):
    plain = _fp16_run(tmp_path, "plain")
    run = _fp16_run(tmp_path, "skip", overflow_at=2, monkeypatch=monkeypatch)
    rows = [h for h in run.history if h["kind"] == "train"]
    applied = [h for h in rows if not h["skipped"]]
    skipped = [h for h in rows if h["skipped"]]
    # The history keeps the skipped attempt, under the step it tried; the step is then taken again.
    assert [h["step"] for h in skipped] == [2] and [h["step"] for h in rows] == [1, 2, 2, 3, 4, 5]
    assert skipped[0]["loss_scale"] == 2 * applied[1]["loss_scale"]  # retried with half the scale
    # max_steps, warm-up and the schedule count applied updates: the same as in a run without the overflow.
    assert run.summary["steps"] == 5 and run.summary["skipped_steps"] == 1
    want = [h["learning_rate"] for h in plain.history if h["kind"] == "train"]
    assert [h["learning_rate"] for h in applied] == want
    assert skipped[0]["learning_rate"] == applied[1]["learning_rate"] == want[1]
    # and each applied update saw the same examples as in the run without the overflow
    assert [h["tokens"] for h in applied] == [h["tokens"] for h in plain.history if h["kind"] == "train"]


def test_the_compile_checks_probe_runs_without_dropout_so_a_dropout_model_can_compile():
    from transformers import GPT2Config, GPT2LMHeadModel

    from nbft.train.kernels import apply_kernels, kernel_probe
    from nbft.train.layout import VarlenLayout
    from nbft.train.loss import CausalLMLoss

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)  # fmt: skip
    model = GPT2LMHeadModel(config).train()
    module, layout = CausalLMLoss(model, fused=True), VarlenLayout(0, torch.device("cpu"))
    first, second = kernel_probe(module, layout), kernel_probe(module, layout)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))  # the same maths twice: no dropout
    assert model.training  # and the model trains with its dropout afterwards
    plan = apply_kernels(model, "compile", device=torch.device("cpu"), probe=lambda: kernel_probe(module, layout))
    assert plan.name == "compile", plan.note
    plan.undo()


class Measure:
    """A measuring observer: the sum of the weights every 2 steps."""

    every = 2

    def measure(self, model, tokenizer, step):
        return {"weight_sum": float(sum(p.detach().float().sum() for p in model.parameters()))}


class StopBeforeAnyStep:
    def on_train_begin(self, info):
        raise StopTraining("stopped before the first step")


def test_resuming_from_a_step_0_checkpoint_does_not_measure_the_base_model_again(tmp_path):
    import json

    model, tok = tiny_random("llama")
    cfg = TrainConfig(max_steps=4, batch_size=4, **FP32)
    run = finetune(model, tok, records(8), config=cfg, observers=[Measure(), StopBeforeAnyStep()],
                   run_dir=tmp_path / "r")  # fmt: skip
    assert run.status == "stopped" and [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-000000"]
    rest = resume(tmp_path / "r", observers=[Measure()])
    assert rest.status == "completed"
    assert [h["step"] for h in rest.history if h["kind"] == "monitor"] == [0, 2, 4]
    lines = [json.loads(line) for line in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in lines if h["kind"] == "monitor"] == [0, 2, 4]  # the file equals the history


def test_cuda_rng_states_go_back_to_their_own_devices(monkeypatch):
    from nbft.train import checkpoint

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # 12 devices, faked: no GPU needed
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(int(s[0]) for s in states))
    saved = {"torch_cpu": torch.get_rng_state(), **{f"torch_cuda_{i}": torch.tensor([i]) for i in range(12)}}
    checkpoint._restore_rng(saved)
    assert restored == list(range(12))  # device 10's state on device 10, not on device 2
