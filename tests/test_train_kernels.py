"""Fused and compiled paths (nbft/train/kernels.py, nbft/train/attention.py): each pinned against the plain path on a
tiny model, and each falling back with a message when its library (or device) is missing."""

from __future__ import annotations

import copy
import logging
import sys

import pytest
import torch
import torch.nn.functional as F
from _train_data import losses, records

import nbft.train.kernels as kernels_module
from nbft.config import TrainConfig
from nbft.models import tiny_random
from nbft.train import finetune
from nbft.train.batching import collate_varlen
from nbft.train.kernels import apply_kernels, decoder_layers
from nbft.train.layout import VarlenLayout
from nbft.train.loss import CausalLMLoss

CPU = torch.device("cpu")
CUDA_LIGER = torch.cuda.is_available() and __import__("importlib").util.find_spec("liger_kernel") is not None


def _batches(vocab: int):
    gen = torch.Generator().manual_seed(1)
    out = []
    for lengths in ((21, 13, 6), (30, 9), (8, 8, 8, 5)):  # a different number of examples and length each time
        ids = [torch.randint(0, vocab, (n,), generator=gen) for n in lengths]
        out.append(collate_varlen(ids, [x.clone() for x in ids]))
    return out


def _loss_and_grads(module, batch):
    module.model.zero_grad(set_to_none=True)
    loss = module(**batch)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in module.model.named_parameters()}


def test_compiled_decoder_layers_match_the_plain_model(caplog):
    model, _ = tiny_random("llama")
    model.train()
    plain = CausalLMLoss(copy.deepcopy(model), fused=True)
    compiled = CausalLMLoss(model, fused=True)
    layout = VarlenLayout(0, CPU)
    probe_batch = layout.batches(*([torch.arange(5, 25)] * 1, [torch.arange(5, 25)]))[0]
    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        plan = apply_kernels(
            model, "compile", device=CPU, probe=lambda: list(_loss_and_grads(compiled, probe_batch)[1].values())
        )
    assert plan.name == "compile", caplog.text
    assert all(layer._compiled_call_impl is not None for layer in decoder_layers(model))
    from torch._dynamo.utils import counters

    graphs = []
    for batch in _batches(model.config.vocab_size):
        want_loss, want = _loss_and_grads(plain, batch)
        got_loss, got = _loss_and_grads(compiled, batch)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[0]  # new lengths and example counts reuse the compiled graphs
    plan.undo()
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))


def test_compile_falls_back_with_a_message_without_a_cpp_compiler(monkeypatch, caplog):
    import shutil

    model, _ = tiny_random("llama")
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no g++, c++ or clang++ on PATH
    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        plan = apply_kernels(model, "compile", device=CPU)
    assert plan.name == "none" and "needs a C++ compiler" in caplog.text
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))


def test_compile_falls_back_when_the_compiled_model_fails_its_check(caplog):
    model, _ = tiny_random("llama")
    calls = []

    def probe():
        calls.append(1)
        if len(calls) > 1:  # the compiled run
            raise RuntimeError("inductor could not build the kernel")
        return [torch.ones(1)]

    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        plan = apply_kernels(model, "compile", device=CPU, probe=probe)
    assert plan.name == "none" and "torch.compile of the decoder layers failed" in caplog.text
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))


def test_liger_falls_back_with_a_message_on_cpu_and_when_not_installed(monkeypatch, caplog):
    model, _ = tiny_random("llama")
    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        plan = apply_kernels(model, "liger", device=CPU)
    assert plan.name == "none" and "needs a CUDA GPU" in caplog.text
    caplog.clear()
    for key in [k for k in sys.modules if k == "liger_kernel" or k.startswith("liger_kernel.")]:
        monkeypatch.setitem(sys.modules, key, None)
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # as if not installed
    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        plan = apply_kernels(model, "liger", device=torch.device("cuda"))  # returns before touching the GPU
    assert plan.name == "none" and "liger-kernel is not available" in caplog.text


def test_auto_kernels_never_compile_on_cpu_and_leave_a_tiny_model_plain(monkeypatch):
    model, _ = tiny_random("llama")
    monkeypatch.setattr(kernels_module, "COMPILE_MIN_PARAMETERS", 1)  # even a model "big enough" stays plain on CPU
    plan = apply_kernels(model, "auto", device=CPU)
    assert plan.name == "none" and "not compiled on CPU" in plan.note
    assert all(layer._compiled_call_impl is None for layer in kernels_module.decoder_layers(model))
    monkeypatch.undo()
    # on CUDA the size rule decides (the decision is taken before anything touches the device)
    plan = apply_kernels(model, "auto", device=torch.device("cuda"))
    assert plan.name == "none" and "too small to compile" in plan.note


def test_a_fused_head_from_a_library_replaces_the_chunked_head_with_the_same_result():
    model, _ = tiny_random("llama")
    batch = _batches(model.config.vocab_size)[0]
    plain = CausalLMLoss(copy.deepcopy(model), fused=True)
    fused = CausalLMLoss(model, fused=True)
    calls = []

    def head(hidden, weight, targets):  # stands in for Liger's fused linear + cross-entropy
        calls.append(hidden.shape[0])
        return F.cross_entropy(hidden @ weight.T, targets, reduction="sum")

    fused.head = head
    want_loss, want = _loss_and_grads(plain, batch)
    got_loss, got = _loss_and_grads(fused, batch)
    assert calls == [int((batch["targets"] != -100).sum())]  # only the labelled positions reach the head
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_compiled_run_trains_like_a_plain_one(tmp_path):
    curves = {}
    for kernels in ("none", "compile"):
        model, tok = tiny_random("llama")
        cfg = TrainConfig(max_steps=3, batch_size=4, learning_rate=1e-3, precision="fp32", kernels=kernels)
        run = finetune(model, tok, records(16), config=cfg, run_dir=tmp_path / kernels)
        assert run.summary["kernels"] == kernels
        assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))  # undone at the end
        curves[kernels] = losses(run)
    assert curves["compile"] == pytest.approx(curves["none"], rel=1e-5)


@pytest.mark.skipif(not CUDA_LIGER, reason="Liger's kernels are Triton: needs a CUDA GPU with liger-kernel installed")
def test_liger_matches_the_plain_model_on_gpu():
    cuda = torch.device("cuda")
    model, _ = tiny_random("llama")
    model.to(cuda).train()
    plain = CausalLMLoss(copy.deepcopy(model), fused=True)
    liger = CausalLMLoss(model, fused=True)
    plan = apply_kernels(model, "liger", device=cuda)
    assert plan.name == "liger"
    liger.head = plan.head
    for batch in _batches(model.config.vocab_size):
        batch = {k: v.to(cuda) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        want_loss, want = _loss_and_grads(plain, batch)
        got_loss, got = _loss_and_grads(liger, batch)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-4, atol=1e-4)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-4, msg=name)
