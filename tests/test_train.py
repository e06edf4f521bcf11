"""Tests for the training engine (nbft/train): correctness of the maths, stop/resume, guards, events, adapter."""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch
from _train_data import losses, records

from nbft.config import TrainConfig
from nbft.models import tiny_random
from nbft.train import HistoryWriter, StopTraining, TrainerObserverCallback, TrainingError, finetune, resume
from nbft.train.batching import StepPlan, as_examples, collate_causal, collate_varlen
from nbft.train.card import update_model_card
from nbft.train.checkpoint import list_checkpoints
from nbft.train.loss import CausalLMLoss, linear_cross_entropy
from nbft.train.precision import resolve_precision
from nbft.train.schedule import lr_at

FP32 = {"precision": "fp32"}


def tokenized(tokenizer, n: int = 24) -> list[dict[str, list[int]]]:
    out = []
    for r in records(n):
        p = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append({"input_ids": p + c, "labels": [-100] * len(p) + c})
    return out


class Recorder:
    """An observer that keeps every event, and can ask for a stop at a given step."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.events: list[tuple[str, object]] = []

    def on_train_begin(self, info):
        self.events.append(("begin", info))

    def on_step(self, state):
        self.events.append(("step", state))
        if self.stop_at is not None and state.step >= self.stop_at:
            raise StopTraining

    def on_eval(self, state, metrics):
        self.events.append(("eval", metrics))

    def on_save(self, path):
        self.events.append(("save", path))

    def on_train_end(self, summary):
        self.events.append(("end", summary))

    def of(self, kind):
        return [e for k, e in self.events if k == kind]


# ---------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"learning_rate": 0}, "TrainConfig.learning_rate must be > 0"),
        ({"batch_size": 0}, "TrainConfig.batch_size must be an integer >= 1"),
        ({"schedule": "exponential"}, "TrainConfig.schedule must be one of"),
        ({"precision": "fp8"}, "'auto' picks bf16"),
        ({"precision": "fp32", "master_weights": False}, "can only be False with bf16 compute"),
        ({"packing": False, "attention": "varlen"}, "use attention='padded' or packing=True"),
        ({"optimizer": "sgd"}, "TrainConfig.optimizer must be one of"),
        ({"kernels": "triton"}, "TrainConfig.kernels must be one of"),
        ({"warmup_steps": 5, "warmup_ratio": 0.1}, "cannot be combined with warmup_steps"),
        ({"eval_every": 0}, "TrainConfig.eval_every must be a positive integer or None"),
        ({"max_grad_norm": -1.0}, "None to turn clipping off"),
    ],
)
def test_invalid_train_config_names_field_and_fix(kwargs, expected):
    with pytest.raises(ValueError, match="TrainConfig") as info:
        TrainConfig(**kwargs)
    assert expected in str(info.value)
    assert "(got " in str(info.value)


def test_precision_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr("nbft.train.precision.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) is None
    monkeypatch.setattr("nbft.train.precision.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) is torch.bfloat16


def test_lr_schedule_matches_transformers():
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    for schedule, factory in (("linear", get_linear_schedule_with_warmup), ("cosine", get_cosine_schedule_with_warmup)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = factory(opt, num_warmup_steps=3, num_training_steps=10)
        for step in range(10):
            assert math.isclose(lr_at(step, 10, 3, 0.1, schedule), opt.param_groups[0]["lr"], rel_tol=1e-12)
            opt.step()
            sched.step()


# ---------------------------------------------------------------------------------------------------- maths


def test_chunked_linear_cross_entropy_matches_reference():
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    ref = torch.nn.functional.cross_entropy(h @ w.T, t, reduction="sum")
    ref_gh, ref_gw = torch.autograd.grad(ref * 0.5, (h, w))
    got = linear_cross_entropy(h, w, t, chunk_rows=8)  # 5 chunks, the last one partial
    gh, gw = torch.autograd.grad(got * 0.5, (h, w))
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(gh, ref_gh)
    torch.testing.assert_close(gw, ref_gw)


def test_packed_loss_equals_unpacked_loss():
    model, tok = tiny_random("llama", seed=1)
    model.train()
    examples = tokenized(tok, 6)
    long = examples[0]["input_ids"] * 4  # one long example, so the short ones share rows (capacity = longest)
    examples.append({"input_ids": long, "labels": [-100] * (len(long) - 3) + long[-3:]})
    ids = [torch.tensor(e["input_ids"]) for e in examples]
    labels = [torch.tensor(e["labels"]) for e in examples]
    module = CausalLMLoss(model, fused=True)
    packed = collate_causal(ids, labels, pad_id=tok.pad_token_id, pack=True)
    assert packed["input_ids"].shape[0] < len(ids), "the examples were not actually packed"
    packed_loss = module(**packed)
    packed_grads = torch.autograd.grad(packed_loss, list(model.parameters()))
    # Reference: transformers' own loss on each example alone (HF mean loss times the number of labelled tokens).
    unpacked_loss = torch.zeros((), dtype=torch.float64)
    for x, y in zip(ids, labels, strict=True):
        out = model(input_ids=x[None], labels=y[None])
        unpacked_loss = unpacked_loss + out.loss.double() * int((y[1:] != -100).sum())
    unpacked_grads = torch.autograd.grad(unpacked_loss, list(model.parameters()))
    torch.testing.assert_close(packed_loss.double(), unpacked_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(packed_grads, unpacked_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # The model's own forward (the fallback path) gives the same number through the same packed batch.
    torch.testing.assert_close(CausalLMLoss(model, fused=False)(**packed), packed_loss, rtol=1e-5, atol=1e-5)
    # And the CPU path: one row, no padding, attention per example (varlen_attention).
    varlen = collate_varlen(ids, labels)
    assert varlen["input_ids"].shape == (1, sum(len(x) for x in ids))
    varlen_loss = module(**varlen)
    varlen_grads = torch.autograd.grad(varlen_loss, list(model.parameters()))
    torch.testing.assert_close(varlen_loss.double(), unpacked_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(varlen_grads, unpacked_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert model.config._attn_implementation == "sdpa", "the varlen switch must be undone after the forward"


def test_padding_only_batch_gives_finite_loss():
    model, _ = tiny_random("llama")
    ids = [torch.arange(5, 25), torch.arange(5, 9)]
    labels = [torch.cat([torch.full((15,), -100), torch.arange(20, 25)]), torch.tensor([-100, -100, 7, 8])]
    batch = collate_causal(ids, labels, pad_id=0, pack=False)  # one row is mostly padding
    loss = CausalLMLoss(model, fused=True)(**batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_step_plan_is_deterministic_and_covers_each_example_once():
    lengths = [5 + (i * 7) % 40 for i in range(50)]
    plan = StepPlan(lengths, seed=3, batch_size=4, grad_accum=2)
    again = StepPlan(lengths, seed=3, batch_size=4, grad_accum=2)
    epoch0 = [i for s in range(plan.steps_per_epoch) for mb in plan.step(s)[1] for i in mb]
    assert sorted(epoch0) == list(range(50))
    assert [again.step(s) for s in range(12)] == [plan.step(s) for s in range(12)]
    assert all(len(plan.step(s)[1]) == 2 for s in range(plan.steps_per_epoch))
    budget = StepPlan(lengths, seed=3, batch_size=1, grad_accum=1, tokens_per_step=100)
    for s in range(budget.steps_per_epoch):
        chosen = [i for mb in budget.step(s)[1] for i in mb]
        assert sum(lengths[i] for i in chosen) <= 100 or len(chosen) == 1


# ---------------------------------------------------------------------------------------------------- loop


@pytest.mark.parametrize(("arch", "precision"), [("llama", "fp32"), ("t5", "fp32"), ("llama", "bf16")])
def test_every_parameter_changes_after_one_step(arch, precision, tmp_path):
    model, tok = tiny_random(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(max_steps=1, learning_rate=1e-3, precision=precision)
    run = finetune(model, tok, records(8), config=cfg, run_dir=tmp_path / "r")
    assert run.status == "completed"
    # bf16 runs compute in bf16 but hand back the fp32 master weights.
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []


def test_same_seed_gives_bit_identical_loss_curve(tmp_path):
    curves = []
    for i in range(2):
        model, tok = tiny_random("llama", seed=0)
        cfg = TrainConfig(max_steps=4, batch_size=4, learning_rate=1e-3, seed=7, precision="bf16")
        curves.append(losses(finetune(model, tok, records(), config=cfg, run_dir=tmp_path / f"r{i}")))
    assert curves[0] == curves[1]
    assert len(set(curves[0])) > 1


def test_seq2seq_run_learns(tmp_path):
    model, tok = tiny_random("t5")
    data = [{"prompt": "Say yes.", "completion": "yes"}] * 8
    val = [{"prompt": "Say yes.", "completion": "yes"}] * 2
    cfg = TrainConfig(max_steps=8, batch_size=4, learning_rate=3e-3, eval_every=4, **FP32)
    run = finetune(model, tok, data, val=val, config=cfg, run_dir=tmp_path / "r")
    curve = losses(run)
    assert run.status == "completed"
    assert curve[-1] < curve[0] * 0.8
    assert [h["step"] for h in run.history if h["kind"] == "eval"] == [4, 8]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stop_then_resume_equals_uninterrupted_run(precision, tmp_path):
    cfg = TrainConfig(max_steps=6, batch_size=2, grad_accum=2, learning_rate=1e-3, warmup_steps=2, precision=precision)
    model, tok = tiny_random("llama", seed=5)
    full = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "full")
    full_weights = {n: p.detach().clone() for n, p in full.model.named_parameters()}

    model, tok = tiny_random("llama", seed=5)
    stopper = Recorder(stop_at=3)
    first = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "split", observers=[stopper])
    assert first.status == "stopped"
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["step-000003"]
    assert stopper.of("end")[0]["status"] == "stopped"
    assert stopper.of("save"), "the stop must write a checkpoint and say so"

    rest = resume(tmp_path / "split")
    assert rest.status == "completed"
    assert losses(rest) == losses(full)  # the history carries the first three steps; the rest must be equal
    for name, p in rest.model.named_parameters():
        torch.testing.assert_close(p.detach(), full_weights[name], rtol=0, atol=0)
    lines = (tmp_path / "split" / "history.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2, 3, 4, 5, 6]


def test_background_run_can_be_stopped(tmp_path):
    model, tok = tiny_random("llama")
    first_step = threading.Event()

    class Signal:
        def on_step(self, state):
            first_step.set()

    cfg = TrainConfig(max_steps=500, batch_size=2, **FP32)
    run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[Signal()], background=True)
    assert first_step.wait(60)
    run.stop()
    assert run.wait(60) is run
    assert run.status == "stopped"
    steps = len(losses(run))
    assert 1 <= steps < 500
    assert list_checkpoints(tmp_path / "r")[-1].name == f"step-{steps:06d}"


def test_background_exception_surfaces(tmp_path, monkeypatch):
    model, tok = tiny_random("llama")

    def broken(self, **batch):
        raise RuntimeError("boom in forward")

    monkeypatch.setattr(CausalLMLoss, "forward", broken)
    recorder = Recorder()
    cfg = TrainConfig(max_steps=2, **FP32)
    run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[recorder], background=True)
    with pytest.raises(RuntimeError, match="boom in forward"):
        run.wait(60)
    assert run.status == "failed"
    assert isinstance(run.error, RuntimeError)
    assert "boom in forward" in recorder.of("end")[0]["error"]


def test_foreground_exception_raises_from_finetune(tmp_path, monkeypatch):
    model, tok = tiny_random("llama")

    def broken(self, **batch):
        raise RuntimeError("boom in forward")

    monkeypatch.setattr(CausalLMLoss, "forward", broken)
    with pytest.raises(RuntimeError, match="boom in forward"):
        finetune(model, tok, records(), config=TrainConfig(max_steps=2, **FP32), run_dir=tmp_path / "r")


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    model, tok = tiny_random("llama")

    class Poison:  # the test reaches into the model on purpose: observers in real use cannot
        def on_save(self, path):  # right after the step-2 checkpoint is safely written
            if path.name == "step-000002":
                with torch.no_grad():
                    model.model.layers[0].mlp.up_proj.weight.fill_(float("nan"))

    cfg = TrainConfig(max_steps=6, batch_size=2, save_every=1, keep_last=5, **FP32)
    with pytest.raises(TrainingError, match=r"the loss became nan .* at step 3") as info:
        finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[Poison()])
    assert "step-000002" in str(info.value)
    assert "learning_rate" in str(info.value)
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-000001", "step-000002"]
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "r" / "checkpoints" / "step-000002" / "model" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_out_of_memory_gives_advice_and_leaves_process_usable(tmp_path, monkeypatch):
    model, tok = tiny_random("llama")
    original = CausalLMLoss.forward

    def oom(self, **batch):
        raise MemoryError

    monkeypatch.setattr(CausalLMLoss, "forward", oom)
    with pytest.raises(TrainingError, match="out of memory") as info:
        finetune(model, tok, records(), config=TrainConfig(max_steps=2, **FP32), run_dir=tmp_path / "a")
    assert "batch_size" in str(info.value) and "max_length" in str(info.value)
    monkeypatch.setattr(CausalLMLoss, "forward", original)
    run = finetune(model, tok, records(), config=TrainConfig(max_steps=1, **FP32), run_dir=tmp_path / "b")
    assert run.status == "completed"


def test_events_history_and_saved_model(tmp_path):
    from nbft.models import load_model

    model, tok = tiny_random("llama")
    recorder = Recorder()
    cfg = TrainConfig(max_steps=4, batch_size=4, eval_every=2, learning_rate=1e-3, **FP32)
    run = finetune(
        model, tok, records(), val=records(4, seed=1), config=cfg, run_dir=tmp_path / "r", observers=[recorder]
    )
    begin = recorder.of("begin")[0]
    assert begin["total_steps"] == 4 and begin["packing"] == "varlen" and begin["fused_loss"] is True
    steps = recorder.of("step")
    assert [s.step for s in steps] == [1, 2, 3, 4]
    s = steps[-1]
    assert s.tokens > s.label_tokens > 0 and s.tokens_per_second > 0 and s.peak_memory_mb > 0
    assert s.eta_s == 0 and s.elapsed_s > 0 and s.learning_rate > 0
    assert [m["val_loss"] > 0 for m in recorder.of("eval")] == [True, True]
    written = [json.loads(ln) for ln in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert written == json.loads(json.dumps(run.history))
    assert recorder.of("end")[0]["status"] == "completed"

    card = (tmp_path / "r" / "model" / "README.md").read_text()
    assert "## Final losses" in card and "train_loss" in card and "val_loss" in card
    update_model_card(tmp_path / "r" / "model", "Evaluation", "| task | score |\n|---|---|\n| sentiment | 0.9 |")
    update_model_card(tmp_path / "r" / "model", "Evaluation", "| task | score |\n|---|---|\n| sentiment | 0.8 |")
    card = (tmp_path / "r" / "model" / "README.md").read_text()
    assert card.count("## Evaluation") == 1 and "0.8" in card and "0.9" not in card and "## Final losses" in card

    reloaded, _ = load_model(tmp_path / "r" / "model")
    x = torch.tensor([[5, 6, 7, 8]])
    model.eval()
    torch.testing.assert_close(reloaded(input_ids=x).logits, model(input_ids=x).logits)


def test_observer_bug_does_not_end_the_run(tmp_path, caplog):
    model, tok = tiny_random("llama")

    class Broken:
        def on_step(self, state):
            raise ValueError("plot failed")

    run = finetune(
        model, tok, records(), config=TrainConfig(max_steps=2, **FP32), run_dir=tmp_path / "r", observers=[Broken()]
    )
    assert run.status == "completed"
    assert "plot failed" in caplog.text


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_training_data_messages(tmp_path):
    model, tok = tiny_random("llama")
    with pytest.raises(ValueError, match=r"needs columns input_ids \+ labels .* it has \['text'\]"):
        finetune(model, tok, [{"text": "hello"}], run_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="must be aligned with input_ids"):
        as_examples([{"input_ids": [1, 2, 3], "labels": [1, 2]}], kind="causal")
    with pytest.raises(ValueError, match="empty"):
        as_examples({"input_ids": [], "labels": []}, kind="causal")
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        finetune(model, tok, records(), config={"max_steps": 1}, run_dir=tmp_path / "b")


def test_run_dir_reuse_and_resume_errors(tmp_path):
    model, tok = tiny_random("llama")
    finetune(model, tok, records(), config=TrainConfig(max_steps=1, **FP32), run_dir=tmp_path / "r")
    with pytest.raises(FileExistsError, match=r"nbft.resume\("):
        finetune(model, tok, records(), config=TrainConfig(max_steps=1, **FP32), run_dir=tmp_path / "r")
    with pytest.raises(ValueError, match=r"has completed .* pass more_steps=N"):
        resume(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="no run directory .*elsewhere.*nbft.runs"):
        resume(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(FileNotFoundError, match="not an nbft run directory"):
        resume(tmp_path / "elsewhere")


# ---------------------------------------------------------------------------------------------------- adapter


def test_trainer_callback_feeds_observers_and_stops(tmp_path):
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model, tok = tiny_random("llama")
    recorder = Recorder(stop_at=2)
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=6,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenized(tok),
        data_collator=DataCollatorForSeq2Seq(tok, label_pad_token_id=-100),
        callbacks=[TrainerObserverCallback([recorder, HistoryWriter(tmp_path / "h.jsonl")])],
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert recorder.of("begin")[0]["total_steps"] == 6
    assert [s.step for s in recorder.of("step")] == [1, 2]
    assert all(s.loss > 0 for s in recorder.of("step"))
    assert recorder.of("end")[0]["status"] == "stopped"
    assert len((tmp_path / "h.jsonl").read_text().splitlines()) == 2
