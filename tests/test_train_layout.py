"""The attention layout: checked once per run (packed = unpacked, no token sees another example or the future),
falling back with a logged message when a layout fails."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
import torch.nn.functional as F
from _train_data import spread
from transformers import MistralForCausalLM

from nbft.models import tiny_random
from nbft.train import attention
from nbft.train import layout as layout_module
from nbft.train.layout import (
    BlockMaskLayout,
    FlashVarlenLayout,
    FlexLayout,
    PaddedLayout,
    VarlenLayout,
    attention_pattern,
    check_lengths,
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
    left, right = window_size
    assert right == 0 and cu_q.dtype == torch.int32 and max_q == max(cu_q.diff().tolist())
    out = []
    for a, b in itertools.pairwise(cu_q.tolist()):
        qs, ks, vs = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
        i = torch.arange(b - a)
        allowed = (i[None] <= i[:, None]) & ((i[:, None] - i[None] <= left) if left >= 0 else True)  # flash's rule
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed, scale=scale, enable_gqa=enable_gqa)
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
    now = [0.0]
    cost = {"varlen": 0.3, "mask": 0.01}  # what each layout's forward + backward takes on the injected clock
    for cls in (VarlenLayout, BlockMaskLayout):

        def timed(self, input_ids, labels, groups=None, _original=cls.batches):
            now[0] += cost[self.name]
            return _original(self, input_ids, labels, groups)

        monkeypatch.setattr(cls, "batches", timed)
    chosen = choose_layout(
        module, packing=True, pad_id=0, device=CPU, measure=True, sample=(ids, ids), clock=lambda: now[0]
    )
    assert chosen.name == "mask" and chosen.timings == pytest.approx({"mask": 0.01, "varlen": 0.3})
    assert all(p.grad is None for p in model.parameters())  # timing leaves no gradients behind
    assert choose_layout(module, packing=True, pad_id=0, device=CPU).name == "varlen"  # without timing: the order


# ------------------------------------------------------------------------------------------- attention windows


def _windowed_examples(vocab: int, lengths=(70, 45, 20, 36)) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(4, vocab, (n,), generator=gen) for n in lengths]


@pytest.mark.parametrize("arch", ["mistral", "gemma2", "gemma3_text"])
def test_every_layout_honours_a_sliding_window_shorter_than_the_examples(arch, monkeypatch):
    # The CUDA kernels' contracts on CPU: flash-varlen through its reference, FlexAttention uncompiled (its eager
    # reference: the block mask and soft-capping score_mod are nbft's; compiled flex on CPU trips an inductor bug).
    from torch.nn.attention.flex_attention import flex_attention as eager_flex

    monkeypatch.setattr(attention, "_varlen_kernel", lambda: _reference_varlen)
    monkeypatch.setattr(attention, "_flex", lambda: eager_flex)
    model, _ = tiny_random(arch, sliding_window=32, hidden_size=32)
    spread(model, std=0.15)
    module = CausalLMLoss(model, fused=False)
    pattern = attention_pattern(model.config)
    ids = _windowed_examples(model.config.vocab_size)
    alone = [model(input_ids=x[None]).logits[0] for x in ids]
    layouts = [VarlenLayout, FlexLayout, BlockMaskLayout, PaddedLayout]
    if arch != "gemma2":  # PyTorch's varlen kernel has no soft-capping: the check refuses it for Gemma 2
        layouts.append(FlashVarlenLayout)
    for cls in layouts:
        layout = cls(0, CPU, torch.float32, pattern)
        with torch.no_grad():
            got = [
                module.logits(**batch)[row, start : start + len(x)]
                for batch in layout.batches(ids, ids)
                for (row, start), x in zip(batch["spans"], ids, strict=True)
            ]
        for a, b in zip(got, alone, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"{arch} {cls.name}")
        assert layout_problem(module, layout) is None, (arch, cls.name)
    if arch == "gemma2":
        problem = layout_problem(module, FlashVarlenLayout(0, CPU, torch.float32, pattern))
        assert "no attention-logit soft-capping" in problem
    # The same layouts without the model's window: the check's examples are longer than it, so it is caught.
    assert check_lengths(pattern) == (69, 35, 8)
    assert "differ from its logits alone" in layout_problem(module, BlockMaskLayout(0, CPU, torch.float32, {}))


def test_a_pattern_a_layout_cannot_serve_is_skipped_with_one_line_naming_the_layout_used(caplog):
    model, _ = tiny_random("llama4_text", sliding_window=16, hidden_size=32)  # chunked attention
    module = CausalLMLoss(model, fused=False)
    with caplog.at_level(logging.INFO, logger="nbft.train"):
        chosen = choose_layout(module, packing=True, pad_id=0, device=CPU)
    assert chosen.name == "mask"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [
        "attention layout 'varlen' skipped for Llama4ForCausalLM: chunked attention is not passed to attention "
        "functions; it needs a mask; trying 'mask'"
    ]


class CustomMistral(MistralForCausalLM):
    """A model from outside transformers (as ``trust_remote_code`` loads): its module is not transformers'."""


def test_custom_code_is_checked_on_a_real_batch_and_a_mismatch_names_the_settings_to_try(monkeypatch):
    from transformers import MistralConfig

    config = MistralConfig(
        vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=30,
    )  # fmt: skip
    torch.manual_seed(0)
    model = spread(CustomMistral(config).eval(), std=0.15)
    module = CausalLMLoss(model, fused=False)
    # Custom code may keep its window where nbft cannot read it: then the synthetic examples (24 tokens, inside the
    # window) pass a mask without it, and only the real batch (longer examples) shows the mismatch.
    monkeypatch.setattr(layout_module, "attention_pattern", lambda config: {"full_attention": None})
    ids = _windowed_examples(260)
    with pytest.raises(ValueError, match=r"custom code.*'mask'.*attention='padded'.*packing=False"):
        choose_layout(module, packing=True, pad_id=0, device=CPU, prefer="mask", sample=(ids, ids))
    # The per-layer attention functions learn the window from the model itself: varlen passes on the real batch.
    assert choose_layout(module, packing=True, pad_id=0, device=CPU, sample=(ids, ids)).name == "varlen"
