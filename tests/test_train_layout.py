"""The attention layout: checked once per run (packed = unpacked, no token sees another example or the future),
falling back with a logged message when a layout fails."""

from __future__ import annotations

import logging

import torch

from nbft.models import tiny_random
from nbft.train.layout import BlockMaskLayout, PaddedLayout, VarlenLayout, choose_layout, layout_problem
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
