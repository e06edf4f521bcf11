"""The attention layout: checked once per run (packed = unpacked, no token sees another example or the future),
falling back with a logged message when a layout fails."""

from __future__ import annotations

import itertools
import logging
import time

import torch
import torch.nn.functional as F

from nbft.models import tiny_random
from nbft.train import attention
from nbft.train.layout import (
    BlockMaskLayout,
    FlashVarlenLayout,
    FlexLayout,
    PaddedLayout,
    VarlenLayout,
    choose_layout,
    layout_problem,
)
from nbft.train.loss import CausalLMLoss

CPU = torch.device("cpu")


def test_every_layout_passes_with_sdpa_and_eager_in_fp32_and_bf16():
    for impl in ("sdpa", "eager"):
        model, _ = tiny_random("llama")
        model.set_attn_implementation(impl)
        module = CausalLMLoss(model, fused=True)
        for dtype in (torch.float32, torch.bfloat16):
            model.to(dtype)
            for cls in (VarlenLayout, BlockMaskLayout, PaddedLayout):
                assert layout_problem(module, cls(0, CPU, dtype)) is None, (impl, dtype, cls.name)


def test_a_boolean_mask_on_eager_attention_is_caught():
    model, _ = tiny_random("llama")
    model.set_attn_implementation("eager")

    class BooleanMask(PaddedLayout):  # what nbft did before: eager attention adds True/False as 1/0
        def batches(self, input_ids, labels, groups=None):
            out = super().batches(input_ids, labels, groups)
            for batch in out:
                batch["attention_mask"] = batch["attention_mask"] == 0
            return out

    problem = layout_problem(CausalLMLoss(model, fused=True), BooleanMask(0, CPU))
    assert problem is not None and "differ from its logits alone" in problem


def test_a_leaking_layout_falls_back_with_a_message(monkeypatch, caplog):
    model, _ = tiny_random("llama")
    module = CausalLMLoss(model, fused=True)
    original = VarlenLayout.batches

    def one_sequence(self, input_ids, labels, groups=None):  # the row read as one long sequence: a leak
        out = []
        for b in original(self, input_ids, labels, groups):
            positions = torch.arange(b["input_ids"].shape[1])[None]
            out.append({**{k: v for k, v in b.items() if k != "bounds"}, "position_ids": positions})
        return out

    monkeypatch.setattr(VarlenLayout, "batches", one_sequence)
    assert "differ from its logits alone" in layout_problem(module, VarlenLayout(0, CPU))
    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        chosen = choose_layout(module, packing=True, pad_id=0, device=CPU)
    assert chosen.name == "mask"
    assert "'varlen' fails the packed = unpacked check" in caplog.text and "falling back to 'mask'" in caplog.text
    assert choose_layout(module, packing=False, pad_id=0, device=CPU).name == "padded"


def test_a_faint_leak_below_the_logit_tolerance_is_caught_by_changing_one_token():
    model, _ = tiny_random("llama")

    class SoftMask(BlockMaskLayout):  # masked scores at -12 instead of the minimum: weights of ~6e-6 leak through
        def batches(self, input_ids, labels, groups=None):
            out = super().batches(input_ids, labels, groups)
            for batch in out:
                mask = batch["attention_mask"]
                batch["attention_mask"] = mask.masked_fill(mask < -1e30, -12.0)
            return out

    problem = layout_problem(CausalLMLoss(model, fused=True), SoftMask(0, CPU))
    assert problem is not None and "attention leaks" in problem


# ------------------------------------------------------------------------- packed attention without a 4D mask


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """What ``torch.nn.attention.varlen.varlen_attn`` computes (its kernel is FlashAttention, CUDA only): causal
    SDPA per sequence of ``[total, heads, dim]`` tensors cut at ``cu_seqlens``."""
    assert window_size == (-1, 0) and cu_q.dtype == torch.int32 and max_q == max(cu_q.diff().tolist())
    out = []
    for a, b in itertools.pairwise(cu_q.tolist()):
        qs, ks, vs = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=enable_gqa)
        out.append(o[0].transpose(0, 1))
    return torch.cat(out)


def test_flash_varlen_layout_feeds_pytorchs_varlen_kernel_correctly(monkeypatch):
    # On CPU the FlashAttention kernel cannot run; a reference with the same contract checks nbft's side of it
    # (layout of q/k/v, cumulative lengths, grouped-query heads, scale) against the plain model.
    monkeypatch.setattr(attention, "_varlen_kernel", lambda: _reference_varlen)
    model, _ = tiny_random("llama")  # 4 query heads, 2 key/value heads
    module = CausalLMLoss(model, fused=True)
    assert layout_problem(module, FlashVarlenLayout(0, CPU)) is None
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, model.config.vocab_size, (n,), generator=gen) for n in (17, 9, 30)]
    grads = []
    for cls in (VarlenLayout, FlashVarlenLayout):
        model.zero_grad(set_to_none=True)
        (batch,) = cls(0, CPU).batches(ids, [x.clone() for x in ids])
        module(**batch).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_flash_varlen_and_flex_are_skipped_on_cpu_and_a_preference_starts_the_chain(caplog):
    model, _ = tiny_random("llama")
    module = CausalLMLoss(model, fused=True)
    with caplog.at_level(logging.INFO, logger="nbft.train"):
        assert choose_layout(module, packing=True, pad_id=0, device=CPU, prefer="varlen").name == "varlen"
        assert choose_layout(module, packing=True, pad_id=0, device=CPU, prefer="flex").name == "varlen"
    assert "not available for LlamaForCausalLM on cpu" in caplog.text
    assert choose_layout(module, packing=True, pad_id=0, device=CPU, prefer="mask").name == "mask"
    assert choose_layout(module, packing=True, pad_id=0, device=CPU, prefer="single").name == "single"
    assert FlashVarlenLayout.supported(CPU) and FlexLayout.supported(CPU)  # each says why it cannot run here


def test_flex_document_mask_keeps_examples_apart():
    # FlexAttention trains on CUDA only, but its forward runs (compiled) on CPU: the block mask must pass the check.
    model, _ = tiny_random("llama")
    assert layout_problem(CausalLMLoss(model, fused=True), FlexLayout(0, CPU)) is None


def test_layouts_that_pass_are_timed_and_the_fastest_kept(monkeypatch):
    model, _ = tiny_random("llama")
    module = CausalLMLoss(model, fused=True)
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, model.config.vocab_size, (n,), generator=gen) for n in (40, 31, 12, 7)]
    slow = VarlenLayout.batches

    def slower(self, input_ids, labels, groups=None):
        time.sleep(0.3)  # far more than a tiny model's forward and backward: varlen must lose
        return slow(self, input_ids, labels, groups)

    monkeypatch.setattr(VarlenLayout, "batches", slower)
    chosen = choose_layout(module, packing=True, pad_id=0, device=CPU, measure=True, sample=(ids, ids))
    assert chosen.name == "mask" and set(chosen.timings) == {"mask", "varlen"}
    assert chosen.timings["varlen"] > chosen.timings["mask"]
    assert all(p.grad is None for p in model.parameters())  # timing leaves no gradients behind
    assert choose_layout(module, packing=True, pad_id=0, device=CPU).name == "varlen"  # without timing: the order
