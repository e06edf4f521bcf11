"""``nbft.estimate`` (nbft/estimation.py): memory parts, the memory modes, suggestions, bad input, and predictions
against measurements on a tiny model (saved tensors of a real forward; the CPU allocator's peak during a real run)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _train_data import records
from torch.profiler import ProfilerActivity, profile

import nbft
from nbft import estimation
from nbft.config import TrainConfig
from nbft.models import tiny_random
from nbft.train import finetune
from nbft.train import memory as train_memory
from nbft.train.batching import collate_varlen
from nbft.train.loss import CausalLMLoss

GIB = 2**30
CPU = "cpu"


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_random("llama")
    return model, tok


@pytest.fixture(scope="module")
def larger():
    """Four layers and a wider hidden state: the per-layer extrapolation from the 1- and 2-layer probes matters."""
    return tiny_random("llama", hidden_size=128, num_layers=4)


def est(model, **kw) -> estimation.Estimate:
    kw.setdefault("precision", "bf16")
    return nbft.estimate(model, TrainConfig(**kw), device=CPU, measure_rate=False)


def _libraries(monkeypatch, *, torchao: bool, bnb: bool) -> None:
    """Pretend torchao / bitsandbytes are (not) usable, for the engine's optimizer plan and for the suggestions."""
    monkeypatch.setattr(train_memory, "_torchao_adamw", lambda: object() if torchao else None)
    monkeypatch.setattr(train_memory, "_bnb_problem", lambda device: None if bnb else "not installed (test)")
    monkeypatch.setattr(estimation, "_installed", lambda name: {"torchao": torchao, "bitsandbytes": bnb}.get(name))


# ------------------------------------------------------------------------------------------------ memory parts


def test_memory_parts_add_up_to_peak_and_weights_are_params_times_dtype(tiny):
    model, _ = tiny
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())  # tied embeddings once
    bf16 = est(model, batch_size=4, max_length=128)
    fp32 = est(model, batch_size=4, max_length=128, precision="fp32")
    assert bf16.parameters == fp32.parameters == n
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    assert bf16.memory["weights"] == 2 * n and fp32.memory["weights"] == 4 * n
    # bf16 compute keeps fp32 masters and their fp32 gradients; fp32 has neither
    assert bf16.memory["master_weights"] == 4 * n and fp32.memory["master_weights"] == 0
    assert bf16.memory["gradients"] == 2 * n + 4 * n and fp32.memory["gradients"] == 4 * n
    assert bf16.memory["optimizer"] == fp32.memory["optimizer"] == 2 * 4 * n  # AdamW's two fp32 moments
    for e in (bf16, fp32):
        m = e.memory
        assert all(v > 0 for k, v in m.items() if k != "master_weights"), m
        static = m["weights"] + m["master_weights"] + m["optimizer"]
        # One micro-batch: activations are freed while the gradients appear, so the peak is the larger of the two.
        assert e.peak_bytes == static + max(m["activations"] + m["lm_head"], m["gradients"])
        assert e.peak_bytes < sum(m.values())
        assert e.tokens_per_micro_batch == 4 * 128
    assert fp32.memory["activations"] > bf16.memory["activations"]


def test_more_tokens_predict_proportionally_more_activations(tiny):
    model, _ = tiny
    base = est(model, batch_size=2, max_length=128).memory["activations"]
    longer = est(model, batch_size=2, max_length=256).memory["activations"]
    wider = est(model, batch_size=4, max_length=128).memory["activations"]
    assert longer == pytest.approx(2 * base, rel=0.01)
    assert wider == pytest.approx(2 * base, rel=0.01)


def test_activation_checkpointing_predicts_fewer_activations_and_more_compute(larger):
    model, _ = larger
    plain = est(model, batch_size=4, max_length=128)
    ckpt = est(model, batch_size=4, max_length=128, activation_checkpointing=True)
    assert ckpt.memory["activations"] < 0.6 * plain.memory["activations"]
    assert ckpt.peak_bytes < plain.peak_bytes
    assert ckpt.step_flops > plain.step_flops
    assert {k: v for k, v in ckpt.memory.items() if k != "activations"} == {
        k: v for k, v in plain.memory.items() if k != "activations"
    }


def test_pure_bf16_predicts_less_memory_than_fp32_masters(tiny, monkeypatch):
    model, _ = tiny
    _libraries(monkeypatch, torchao=True, bnb=False)
    masters = est(model, batch_size=4, max_length=128)
    pure = est(model, batch_size=4, max_length=128, master_weights=False)
    assert pure.memory["master_weights"] == 0 < masters.memory["master_weights"]
    assert pure.memory["optimizer"] == masters.memory["optimizer"] // 2  # bf16 moments
    assert pure.memory["gradients"] < masters.memory["gradients"]
    assert pure.peak_bytes < masters.peak_bytes
    assert not pure.notes


def test_pure_bf16_without_torchao_predicts_the_fallback_the_run_takes(tiny, monkeypatch):
    """The engine falls back to fp32 masters without torchao: the estimate must not promise the smaller memory."""
    model, _ = tiny
    _libraries(monkeypatch, torchao=False, bnb=False)
    masters = est(model, batch_size=4, max_length=128)
    asked = est(model, batch_size=4, max_length=128, master_weights=False)
    assert asked.memory == masters.memory and asked.peak_bytes == masters.peak_bytes
    assert any("torchao" in note for note in asked.notes), asked.notes
    assert "torchao" in asked.summary()


def test_adamw_8bit_predicts_less_optimizer_memory(tiny, monkeypatch):
    model, _ = tiny
    _libraries(monkeypatch, torchao=False, bnb=True)
    plain = est(model, batch_size=4, max_length=128)
    eight = est(model, batch_size=4, max_length=128, optimizer="adamw-8bit")
    assert eight.memory["optimizer"] < 0.5 * plain.memory["optimizer"]
    assert eight.peak_bytes < plain.peak_bytes
    assert {k: v for k, v in eight.memory.items() if k != "optimizer"} == {
        k: v for k, v in plain.memory.items() if k != "optimizer"
    }
    _libraries(monkeypatch, torchao=False, bnb=False)
    fallback = est(model, batch_size=4, max_length=128, optimizer="adamw-8bit")
    assert fallback.memory == plain.memory
    assert any("adamw-8bit" in note for note in fallback.notes), fallback.notes


def test_grad_accum_keeps_the_masters_gradients_during_the_next_micro_batch(tiny):
    model, _ = tiny
    one = est(model, batch_size=4, max_length=128)
    two = est(model, batch_size=2, grad_accum=2, max_length=128)
    assert two.tokens_per_micro_batch == one.tokens_per_micro_batch // 2
    assert two.memory["activations"] == pytest.approx(one.memory["activations"] / 2, rel=0.01)
    assert two.step_flops == pytest.approx(one.step_flops, rel=0.01)  # the same tokens per optimizer step


def test_step_time_needs_the_measured_rate(tiny):
    model, _ = tiny
    timed = nbft.estimate(model, TrainConfig(batch_size=2, max_length=64), device=CPU)
    assert timed.step_seconds is not None and timed.step_seconds > 0
    assert "s per optimizer step" in timed.summary()
    assert est(model, batch_size=2, max_length=64).step_seconds is None


def test_encoder_decoder_model_is_estimated_too():
    model, _ = tiny_random("t5", hidden_size=32)
    e = est(model, batch_size=2, max_length=64)
    assert e.memory["activations"] > 0 and e.peak_bytes > e.memory["weights"]


# ------------------------------------------------------------------------------------------------ suggestions


def test_each_suggestion_is_a_valid_config_predicted_as_that_config(larger, monkeypatch):
    model, _ = larger
    _libraries(monkeypatch, torchao=True, bnb=True)
    cfg = TrainConfig(batch_size=4, max_length=128, precision="bf16")
    e = nbft.estimate(model, cfg, device=CPU, measure_rate=False)
    changes = [s["changes"] for s in e.suggestions]
    assert {} in changes and {"activation_checkpointing": True} in changes
    assert {"batch_size": 2, "grad_accum": 2} in changes and {"master_weights": False} in changes
    for s in e.suggestions:
        alt = dataclasses.replace(cfg, **s["changes"])  # TrainConfig checks every field again
        assert isinstance(alt, TrainConfig)
        direct = nbft.estimate(model, alt, device=CPU, measure_rate=False)
        assert s["peak_gib"] * GIB == pytest.approx(direct.peak_bytes, rel=1e-6), s


def test_suggestions_that_fit_come_first(larger, monkeypatch):
    model, _ = larger
    _libraries(monkeypatch, torchao=True, bnb=False)
    cfg = TrainConfig(batch_size=8, max_length=256, precision="bf16")
    free = nbft.estimate(model, cfg, device=CPU, measure_rate=False)
    peaks = sorted(s["peak_gib"] * GIB for s in free.suggestions)
    assert peaks[0] < free.peak_bytes
    # A device between the smallest and the asked-for peak: the asked-for setup no longer fits.
    monkeypatch.setattr(estimation, "_available_bytes", lambda device, model: int((peaks[0] + peaks[-1]) / 2 / 0.9))
    tight = nbft.estimate(model, cfg, device=CPU)
    fits = [s["fits"] for s in tight.suggestions]
    assert tight.fits is False and any(fits) and not all(fits)
    assert fits == sorted(fits, reverse=True), tight.suggestions
    assert tight.suggestions[0]["changes"] and tight.suggestions[0]["peak_gib"] * GIB < tight.peak_bytes
    fitting = [s for s in tight.suggestions if s["fits"]]
    assert all(s["peak_gib"] * GIB <= 0.9 * tight.available_bytes for s in fitting)
    text = tight.summary()
    assert "does NOT fit" in text and "suggested:" in text


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("model", "config", "kw", "error", "fix"),
    [
        ("gpt2", None, {}, TypeError, "load_model"),
        ("pair", None, {}, TypeError, "unpack"),
        ("model", {"batch_size": 4}, {}, TypeError, "TrainConfig(**"),
        ("model", "bf16", {}, TypeError, "TrainConfig"),
        ("model", None, {"device": "gpu0"}, ValueError, "device='cpu'"),
        ("model", None, {"measure_rate": "yes"}, TypeError, "True or False"),
    ],
)
def test_bad_input_names_the_fix(tiny, model, config, kw, error, fix):
    m = {"model": tiny[0], "pair": tiny, "gpt2": "gpt2"}[model]
    with pytest.raises(error) as info:
        nbft.estimate(m, config, **kw)
    assert fix in str(info.value)


# ------------------------------------------------------------------------------------------------ vs measured


def _saved_tensor_bytes(model, lengths: list[int]) -> int:
    """Bytes autograd saves for backward in nbft's own packed forward (the decoder, without the LM head)."""
    probe = type(model)(model.config).to(torch.bfloat16).train()
    probe.load_state_dict(model.state_dict())
    params = {id(p) for p in probe.parameters()}
    seen: dict[int, int] = {}
    kept = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(base) not in params and id(base) not in seen:
            seen[id(base)] = base.numel() * base.element_size()
            kept.append(base)
        return t

    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, model.config.vocab_size, (n,), generator=g) for n in lengths]
    batch = collate_varlen(ids, ids)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        CausalLMLoss(probe, fused=True)._run(True, batch["input_ids"], batch["position_ids"], None, batch["bounds"])
    return sum(seen.values())


def test_predicted_activations_match_the_saved_tensors_of_a_real_forward(larger):
    """The estimate measures 1- and 2-layer copies with a 256-token vocabulary on 64 tokens; the full model on a
    full micro-batch must save what it extrapolates to (within 25%)."""
    model, _ = larger
    e = est(model, batch_size=4, max_length=192)
    measured = _saved_tensor_bytes(model, [192] * 4)
    assert 0.8 < e.memory["activations"] / measured < 1.25, (e.memory["activations"], measured)


def _measured_peak(model, tok, data, cfg, run_dir) -> int:
    """The CPU allocator's peak during a real ``finetune`` (profiler memory events), plus the weights held at the
    start (the run reuses them as its fp32 masters or weights, so they are not allocated during it)."""
    held = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run = finetune(model, tok, data, config=cfg, run_dir=run_dir)
    assert run.status == "completed"
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return held + peak


@pytest.mark.parametrize("kw", [{"precision": "bf16"}, {"precision": "bf16", "activation_checkpointing": True}])
def test_predicted_peak_is_within_a_factor_of_1_5_of_a_real_run(tmp_path, kw):
    model, tok = tiny_random("llama", hidden_size=128, num_layers=4)
    data = records(32)
    cfg = TrainConfig(max_steps=2, batch_size=8, learning_rate=1e-3, save_every_minutes=None, **kw)
    e = nbft.estimate(model, cfg, data=data, tokenizer=tok, device=CPU, measure_rate=False)
    measured = _measured_peak(model, tok, data, cfg, tmp_path / "run")
    assert 1 / 1.5 < e.peak_bytes / measured < 1.5, (e.peak_bytes, measured, e.memory)
