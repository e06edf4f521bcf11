"""The loop's hooks other parts of nbft build on: measuring observers, phase events, loss per task, refusing a
bad setup; and the pinned loss values of fixed tiny runs (a refactor that changes the maths fails here)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from _train_data import losses, records

from nbft.config import TrainConfig
from nbft.models import tiny_random
from nbft.train import StopTraining, finetune, resume
from nbft.train.batching import Examples, as_examples
from nbft.train.checkpoint import list_checkpoints

FP32 = {"precision": "fp32"}


class Probe:
    """A measuring observer that records how it was called (and the events it saw)."""

    def __init__(self, every: int, stop_at: int | None = None, save_at: int | None = None, pause: float = 0.0):
        self.every = every
        self.stop_at, self.save_at, self.pause = stop_at, save_at, pause
        self.calls: list[tuple[int, bool, bool]] = []
        self.monitor_events: list[tuple[object, dict]] = []
        self.phases: list[tuple[str, int]] = []

    def measure(self, model, tokenizer, step):
        self.calls.append((step, model.training, torch.is_grad_enabled()))
        time.sleep(self.pause)
        if step == self.stop_at:
            raise StopTraining("floor crossed")
        return {"score": float(step), "save_checkpoint": step == self.save_at}

    def on_monitor(self, state, record):
        self.monitor_events.append((state, record))

    def on_phase(self, phase):
        self.phases.append((phase["phase"], phase["step"]))


def test_monitor_is_called_at_start_every_n_and_end_in_eval_mode(tmp_path):
    model, tok = tiny_random("llama")
    probe = Probe(every=2, pause=0.05)
    cfg = TrainConfig(max_steps=5, batch_size=4, learning_rate=1e-3, **FP32)
    run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[probe])
    assert run.status == "completed" and model.training
    assert probe.calls == [(0, False, False), (2, False, False), (4, False, False), (5, False, False)]
    rows = [h for h in run.history if h["kind"] == "monitor"]
    assert [r["step"] for r in rows] == [0, 2, 4, 5] and all(r["measure_s"] >= 0.05 for r in rows)
    assert [r["score"] for r in rows] == [0.0, 2.0, 4.0, 5.0]
    assert probe.monitor_events[0][0] is None and probe.monitor_events[1][0].step == 2
    assert [e[1] for e in probe.monitor_events] == rows
    written = [json.loads(ln) for ln in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert [w for w in written if w["kind"] == "monitor"] == rows
    s = run.summary
    assert s["monitor_s"] == pytest.approx(sum(r["measure_s"] for r in rows))
    assert s["train_time_s"] + s["monitor_s"] <= s["wall_s"]  # measuring is not training time: tokens/s unchanged
    # no record asked for one: only the final checkpoint (every completed run writes it, for resume(more_steps=))
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-000005"]


def test_monitor_stop_and_checkpoint_requests(tmp_path):
    model, tok = tiny_random("llama")
    probe = Probe(every=1, stop_at=3, save_at=2)
    cfg = TrainConfig(max_steps=6, batch_size=4, keep_last=5, **FP32)
    run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[probe])
    assert run.status == "stopped" and run.stop_reason == "floor crossed"
    assert run.summary["stop_reason"] == "floor crossed" and run.summary["steps"] == 3
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-000002", "step-000003"]
    assert [c[0] for c in probe.calls] == [0, 1, 2, 3]
    # Resuming continues after the stop; the base-model point (step 0) is not measured again.
    again = Probe(every=1)
    rest = resume(tmp_path / "r", observers=[again])
    assert rest.status == "completed" and [c[0] for c in again.calls] == [4, 5, 6]


def test_phase_events_announce_long_work(tmp_path):
    model, tok = tiny_random("llama")
    probe = Probe(every=2)
    cfg = TrainConfig(max_steps=4, batch_size=4, eval_every=2, save_every=3, **FP32)
    finetune(model, tok, records(), val=records(4, seed=1), config=cfg, run_dir=tmp_path / "r", observers=[probe])
    assert probe.phases == [
        ("setup", 0),
        ("monitor", 0),
        ("eval", 2),
        ("monitor", 2),
        ("checkpoint", 3),
        ("monitor", 4),
        ("final_eval", 4),
        ("checkpoint", 4),  # the final checkpoint (resume(more_steps=...) continues from it)
        ("saving", 4),
        ("done", 4),
    ]


class Refuse:
    def on_train_begin(self, info):
        raise ValueError("unknown monitor task 'sentimnt'. Did you mean 'sentiment'?")


def test_observer_refusing_the_setup_fails_the_run_before_any_step(tmp_path):
    model, tok = tiny_random("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="Did you mean 'sentiment'"):
        finetune(model, tok, records(), config=TrainConfig(max_steps=2, **FP32), run_dir=tmp_path / "r",
                 observers=[Refuse()])  # fmt: skip
    assert not (tmp_path / "r").exists(), "nothing may be written for a refused run"
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    cfg = TrainConfig(max_steps=2, precision="bf16")
    run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "b", observers=[Refuse()], background=True)
    with pytest.raises(ValueError, match="sentimnt"):
        run.wait(60)
    assert run.status == "failed" and not (tmp_path / "b").exists()
    assert {p.dtype for p in model.parameters()} == {torch.float32}, "the model is given back as it came"


def test_loss_per_task_in_a_mixture(tmp_path):
    model, tok = tiny_random("llama", seed=4)
    data = [{**r, "task": "odd" if i % 2 else "even"} for i, r in enumerate(records(8))]
    # Reference, before any update: transformers' loss per example, summed per task per labelled token.
    ref = tiny_random("llama", seed=4)[0]
    sums, counts = {"odd": 0.0, "even": 0.0}, {"odd": 0, "even": 0}
    with torch.no_grad():
        for r in data:
            p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
            c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            labels = torch.tensor([[-100] * len(p) + c])
            k = int((labels[0, 1:] != -100).sum())
            sums[r["task"]] += float(ref(input_ids=torch.tensor([p + c]), labels=labels).loss) * k
            counts[r["task"]] += k
    cfg = TrainConfig(max_steps=3, batch_size=8, learning_rate=1e-3, save_every=1, **FP32)
    run = finetune(model, tok, data, config=cfg, run_dir=tmp_path / "r")
    first = run.history[0]
    assert first["task_losses"] == pytest.approx({t: sums[t] / counts[t] for t in sums}, rel=1e-5)
    assert all(set(h["task_losses"]) == {"odd", "even"} for h in run.history if h["kind"] == "train")
    saved = Examples.load(tmp_path / "r" / "data" / "train.safetensors")
    assert saved.tasks == [r["task"] for r in data]  # resume keeps the tasks
    single = finetune(*tiny_random("llama"), records(8), config=TrainConfig(max_steps=1, **FP32),
                      run_dir=tmp_path / "s")  # fmt: skip
    assert "task_losses" not in single.history[0]


def test_as_examples_keeps_tasks_and_single_task_data_has_no_index():
    _, tok = tiny_random("llama")
    ex = as_examples([{**r, "task": "qa"} for r in records(3)], kind="causal", tokenizer=tok)
    assert ex.tasks == ["qa", "qa", "qa"] and ex.task_index() is None


def test_background_stop_is_taken_between_steps(tmp_path):
    model, tok = tiny_random("llama")
    started = threading.Event()

    class Signal:
        def on_step(self, state):
            started.set()

    cfg = TrainConfig(max_steps=400, batch_size=2, **FP32)
    run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[Signal()], background=True)
    assert started.wait(60)
    run.stop()
    run.wait(60)
    steps = len(losses(run))
    assert run.status == "stopped" and run.summary["steps"] == steps
    assert list_checkpoints(tmp_path / "r")[-1].name == f"step-{steps:06d}"


# ---------------------------------------------------------------------------------------------- pinned losses
# Recorded on torch 2.13 CPU; the engine before the setup/step/cleanup split gave the same numbers (to 1e-6). A
# change of the maths (loss, schedule, clipping, data order, layout) moves them; a refactor that keeps the maths does
# not. Packed (varlen) and unpacked (padded) training must agree. Update only for a deliberate change of the maths
# or of the data (re-recorded when records() stopped drawing from the global RNG).
LLAMA = [5.528484, 5.530302, 5.244953, 4.952411, 4.764033]
PINNED = {"varlen": LLAMA, "padded": LLAMA, "t5": [6.217504, 6.179586, 5.318339, 4.229951, 3.966684]}


@pytest.mark.parametrize("case", ["varlen", "padded", "t5"])
def test_pinned_loss_values(case, tmp_path):
    arch = "t5" if case == "t5" else "llama"
    model, tok = tiny_random(arch, seed=0)
    cfg = TrainConfig(
        max_steps=5, batch_size=3, grad_accum=2, learning_rate=2e-3, warmup_steps=2, schedule="cosine",
        packing=case != "padded", **FP32,
    )  # fmt: skip
    run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r")
    assert run.summary["layout"] == {"varlen": "varlen", "padded": "padded", "t5": "seq2seq"}[case]
    assert losses(run) == pytest.approx(PINNED[case], rel=1e-4)
