"""One attention-layout decision per run: how a micro-batch is collated, and which attention runs it.

A layout turns a micro-batch of examples into the batches the loss module runs. Four exist for causal models:

* ``varlen``: one row without padding; attention runs per example (``nbft.train.loss.varlen_attention``). The
  cheapest on CPU, where a block mask would cost ``total²`` score work.
* ``mask``: examples packed into rows no longer than the longest example, kept apart by an additive float
  block-diagonal mask; one kernel call per layer, which suits GPUs.
* ``padded``: one example per row, padded, with an additive float causal mask (``TrainConfig.packing=False``).
* ``single``: one example per forward pass, no mask and no padding: the model's own causal path. Always correct,
  slowest; the last fallback.

Any 4D mask is additive float in the model's compute dtype, so eager attention (which adds a boolean mask as 0/1)
masks what it must. :func:`choose_layout` checks the chosen layout once at setup, as
:func:`~nbft.train.loss.check_fused_head` does for the LM head: every example's logits must equal the logits it gets
alone, and changing one example's last token must change nothing else. A layout that fails falls back to the next
one with a logged message.

Example:
    >>> from nbft.models import tiny_random
    >>> from nbft.train.loss import CausalLMLoss
    >>> model, _ = tiny_random()
    >>> choose_layout(CausalLMLoss(model, fused=True), packing=True, pad_id=0).name
    'varlen'
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch

from nbft.train.batching import collate_causal, collate_seq2seq, collate_varlen

logger = logging.getLogger("nbft.train")


class AttentionLayout(Protocol):
    """How a micro-batch becomes the loss module's input batches (usually one; ``single`` gives one per example)."""

    name: str

    def batches(
        self, input_ids: list[torch.Tensor], labels: list[torch.Tensor], groups: list[int] | None = None
    ) -> list[dict[str, Any]]: ...


class _Layout:
    name = "?"

    def __init__(self, pad_id: int, device: torch.device, mask_dtype: torch.dtype = torch.float32) -> None:
        self.pad_id = pad_id
        self.device = device
        self.mask_dtype = mask_dtype

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def __repr__(self) -> str:
        return f"<attention layout {self.name!r}>"


class VarlenLayout(_Layout):
    name = "varlen"

    def batches(self, input_ids, labels, groups=None):
        return [self._to_device(collate_varlen(input_ids, labels, groups))]


class BlockMaskLayout(_Layout):
    name = "mask"
    pack = True

    def batches(self, input_ids, labels, groups=None):
        batch = collate_causal(
            input_ids, labels, pad_id=self.pad_id, pack=self.pack, mask_dtype=self.mask_dtype, groups=groups
        )
        return [self._to_device(batch)]


class PaddedLayout(BlockMaskLayout):
    name = "padded"
    pack = False


class SingleLayout(_Layout):
    name = "single"

    def batches(self, input_ids, labels, groups=None):
        out = []
        for k, (x, y) in enumerate(zip(input_ids, labels, strict=True)):
            group = None if groups is None else [groups[k]]
            batch = collate_causal([x], [y], pad_id=self.pad_id, pack=False, groups=group)
            out.append(self._to_device(batch))  # one unpadded row: no mask at all
        return out


class Seq2SeqLayout(_Layout):
    name = "seq2seq"

    def batches(self, input_ids, labels, groups=None):
        return [self._to_device(collate_seq2seq(input_ids, labels, pad_id=self.pad_id, groups=groups))]


def _candidates(model: Any, device: torch.device, packing: bool) -> list[type[_Layout]]:
    chain: list[type[_Layout]] = []
    if packing:
        varlen_ok = getattr(model, "_can_set_attn_implementation", lambda: False)()
        if device.type == "cpu" and varlen_ok:
            chain.append(VarlenLayout)
        chain.append(BlockMaskLayout)
    return [*chain, PaddedLayout, SingleLayout]


def choose_layout(
    module: Any,
    *,
    packing: bool,
    pad_id: int,
    device: torch.device | None = None,
    mask_dtype: torch.dtype | None = None,
    check: bool = True,
) -> _Layout:
    """The first layout, in order ``varlen`` (CPU) → ``mask`` → ``padded`` → ``single``, that passes the check.

    ``module`` is a :class:`~nbft.train.loss.CausalLMLoss` (or a ``Seq2SeqLoss``, which always gets ``seq2seq``).
    ``packing=False`` starts at ``padded``. ``mask_dtype`` defaults to the model's parameter dtype.
    """
    model = module.model
    device = device if device is not None else next(model.parameters()).device
    mask_dtype = mask_dtype or next(model.parameters()).dtype
    if getattr(model.config, "is_encoder_decoder", False):
        return Seq2SeqLayout(pad_id, device)
    chain = _candidates(model, device, packing)
    for i, cls in enumerate(chain):
        layout = cls(pad_id, device, mask_dtype)
        if not check or cls is SingleLayout:
            return layout
        problem = layout_problem(module, layout)
        if problem is None:
            return layout
        logger.warning(
            "attention layout %r fails the packed = unpacked check on %s (%s); falling back to %r",
            layout.name,
            type(model).__name__,
            problem,
            chain[i + 1].name,
        )
    raise AssertionError("unreachable: the single layout always passes")


@torch.no_grad()
def layout_problem(module: Any, layout: _Layout) -> str | None:
    """``None`` when ``layout`` gives each example the logits it has alone, and no example sees another's tokens.

    Three synthetic examples (24, 12 and 8 tokens) are used, so the ``mask`` layout packs the last two into one
    padded row. Checks: (1) logits equal those of each example run alone, within the dtype's tolerance; (2) after
    changing the middle example's last token, the logits of its earlier tokens and of the other examples are
    unchanged (masked positions contribute exact zeros, so this holds in any dtype).
    """
    model = module.model
    was_training = model.training
    model.eval()
    try:
        vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else 256
        gen = torch.Generator().manual_seed(0)
        ids = [torch.randint(0, vocab, (n,), generator=gen) for n in (24, 12, 8)]
        labels = [x.clone() for x in ids]
        first = _per_example_logits(module, layout, ids, labels)
        dtype = first[0].dtype
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        for x, got in zip(ids, first, strict=True):
            alone = model(input_ids=x[None].to(layout.device), use_cache=False).logits[0].float()
            scale = max(1.0, float(alone.abs().max()))
            err = float((got.float() - alone).abs().max()) / scale
            if not err <= tol:  # also catches NaN
                return f"an example's logits differ from its logits alone by {err:.2g} (relative)"
        # Change the middle example's last token: it shares a packed row with the next example (any layout).
        changed = [x.clone() for x in ids]
        changed[1][-1] = (changed[1][-1] + 1) % vocab
        second = _per_example_logits(module, layout, changed, labels)
        for k, (a, b) in enumerate(zip(first, second, strict=True)):
            a, b = (a[:-1], b[:-1]) if k == 1 else (a, b)
            err = float((a.float() - b.float()).abs().max()) / max(1.0, float(a.float().abs().max()))
            if err > 1e-6:
                where = "earlier tokens of the same example" if k == 1 else "another example"
                return f"changing one token changed the logits of {where} by {err:.2g}: attention leaks"
        return None
    except Exception as exc:  # a model this layout cannot run at all
        return f"{type(exc).__name__}: {exc}"
    finally:
        model.train(was_training)


def _per_example_logits(module: Any, layout: _Layout, ids: list[torch.Tensor], labels: list[torch.Tensor]):
    out = []
    for batch in layout.batches(ids, labels):
        logits = module.logits(**batch)
        out += [(logits, row, start) for row, start in batch["spans"]]
    return [logits[row, start : start + len(x)] for (logits, row, start), x in zip(out, ids, strict=True)]
