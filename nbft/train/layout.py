"""One attention-layout decision per run: how a micro-batch is collated, and which attention runs it.

A layout turns a micro-batch of examples into the batches the loss module runs. For causal models:

* ``flash-varlen``: one row without padding; PyTorch's FlashAttention over cumulative sequence lengths
  (``torch.nn.attention.varlen``), one kernel call per layer. CUDA only.
* ``flex``: the same row; FlexAttention with a document-causal block mask (fully masked blocks skipped). CUDA only
  for training (FlexAttention has no CPU backward).
* ``varlen``: the same row; SDPA's causal kernel per example (``nbft.train.attention.split_attention``). Runs
  anywhere; the cheapest on CPU, where a block mask would cost ``total²`` score work.
* ``mask``: examples packed into rows no longer than the longest example, kept apart by an additive float
  block-diagonal mask; one kernel call per layer.
* ``padded``: one example per row, padded, with an additive float causal mask (``TrainConfig.packing=False``).
* ``single``: one example per forward pass, no mask and no padding: the model's own causal path. Always correct,
  slowest; the last fallback.

Any 4D mask is additive float in the model's compute dtype, so eager attention (which adds a boolean mask as 0/1)
masks what it must. :func:`choose_layout` checks the chosen layout once at setup, as
:func:`~nbft.train.loss.check_fused_head` does for the LM head: every example's logits must equal the logits it gets
alone, and changing one example's last token must change nothing else. A layout that fails falls back to the next
one with a logged message. On a GPU several packed layouts can pass; with ``measure=True`` each one that passes runs
a forward and backward of a real micro-batch and the fastest is kept (the timings are in ``layout.timings``).

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

from nbft.train import attention
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
    timings: dict[str, float] | None = None
    """Seconds per forward + backward of the sample micro-batch, per layout, when the layout was chosen by timing."""

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
    implementation = attention.SPLIT

    def batches(self, input_ids, labels, groups=None):
        batch = self._to_device(collate_varlen(input_ids, labels, groups))
        batch["implementation"] = self.implementation
        return [batch]

    @staticmethod
    def supported(device: torch.device) -> str | None:
        return None


class FlashVarlenLayout(VarlenLayout):
    name = "flash-varlen"
    implementation = attention.FLASH_VARLEN

    @staticmethod
    def supported(device: torch.device) -> str | None:
        if device.type != "cuda":
            return "PyTorch's varlen attention is FlashAttention: CUDA only"
        try:
            from torch.nn.attention.varlen import varlen_attn  # noqa: F401
        except ImportError:
            return "this torch has no torch.nn.attention.varlen"
        return None


class FlexLayout(VarlenLayout):
    name = "flex"
    implementation = attention.FLEX

    @staticmethod
    def supported(device: torch.device) -> str | None:
        if device.type != "cuda":
            return "FlexAttention has no backward on CPU"
        try:
            from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
        except ImportError:
            return "this torch has no FlexAttention"
        return None


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


_PACKED: tuple[type[_Layout], ...] = ()  # filled below: the layouts that pack several examples into a row


class SingleLayout(_Layout):
    name = "single"

    def batches(self, input_ids, labels, groups=None):
        out = []
        for k, (x, y) in enumerate(zip(input_ids, labels, strict=True)):
            group = None if groups is None else [groups[k]]
            batch = collate_causal([x], [y], pad_id=self.pad_id, pack=False, groups=group)
            out.append(self._to_device(batch))  # one unpadded row: no mask at all
        return out


_PACKED = (FlashVarlenLayout, FlexLayout, VarlenLayout, BlockMaskLayout)


class Seq2SeqLayout(_Layout):
    name = "seq2seq"

    def batches(self, input_ids, labels, groups=None):
        return [self._to_device(collate_seq2seq(input_ids, labels, pad_id=self.pad_id, groups=groups))]


def _candidates(model: Any, device: torch.device, packing: bool, prefer: str = "auto") -> list[type[_Layout]]:
    chain: list[type[_Layout]] = []
    if packing:
        varlen_ok = getattr(model, "_can_set_attn_implementation", lambda: False)()
        if varlen_ok:
            if device.type == "cuda":
                chain += [FlashVarlenLayout, FlexLayout]
            if device.type == "cpu":
                chain.append(VarlenLayout)
        chain.append(BlockMaskLayout)
        if varlen_ok and device.type != "cpu":
            chain.append(VarlenLayout)  # per-example SDPA on a GPU: many small kernels, but no mask
    chain += [PaddedLayout, SingleLayout]
    if prefer != "auto":
        wanted = {"varlen": (FlashVarlenLayout, VarlenLayout), "flex": (FlexLayout,)}.get(prefer)
        names = [c for c in chain if (wanted and c in wanted) or c.name == prefer]
        if not names:
            logger.warning(
                "attention=%r is not available for %s on %s; choosing automatically",
                prefer,
                type(model).__name__,
                device.type,
            )
            return chain
        chain = chain[chain.index(names[0]) :]
    return chain


def choose_layout(
    module: Any,
    *,
    packing: bool,
    pad_id: int,
    device: torch.device | None = None,
    mask_dtype: torch.dtype | None = None,
    check: bool = True,
    prefer: str = "auto",
    measure: bool = False,
    sample: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
) -> _Layout:
    """The first layout, in order ``flash-varlen`` → ``flex`` (CUDA) / ``varlen`` (CPU) → ``mask`` → ``padded`` →
    ``single``, that can run here and passes the check.

    ``module`` is a :class:`~nbft.train.loss.CausalLMLoss` (or a ``Seq2SeqLoss``, which always gets ``seq2seq``).
    ``packing=False`` starts at ``padded``; ``prefer`` (``TrainConfig.attention``) starts the chain at that layout.
    ``mask_dtype`` defaults to the model's parameter dtype. With ``measure=True`` (and ``sample``, a micro-batch of
    ``(input_ids, labels)``), every packed layout that passes is timed on ``sample`` and the fastest is returned.
    """
    model = module.model
    device = device if device is not None else next(model.parameters()).device
    mask_dtype = mask_dtype or next(model.parameters()).dtype
    if getattr(model.config, "is_encoder_decoder", False):
        return Seq2SeqLayout(pad_id, device)
    chain = _candidates(model, device, packing, prefer)
    passed: list[_Layout] = []
    for i, cls in enumerate(chain):
        layout = cls(pad_id, device, mask_dtype)
        unsupported = getattr(cls, "supported", lambda d: None)(device)
        if unsupported is not None:
            logger.info("attention layout %r skipped: %s", layout.name, unsupported)
            continue
        if not check or cls is SingleLayout:
            passed.append(layout)
            break
        problem = layout_problem(module, layout)
        if problem is None:
            passed.append(layout)
            if not (measure and sample is not None and cls in _PACKED):
                break
            continue
        logger.warning(
            "attention layout %r fails the packed = unpacked check on %s (%s); falling back to %r",
            layout.name,
            type(model).__name__,
            problem,
            chain[i + 1].name,
        )
    packed = [layout for layout in passed if type(layout) in _PACKED]
    if len(packed) > 1 and sample is not None:
        return _fastest(module, packed, sample)
    if not passed:
        raise AssertionError("unreachable: the single layout always passes")
    return passed[0]


def _fastest(module: Any, layouts: list[_Layout], sample: tuple[list[torch.Tensor], list[torch.Tensor]]) -> _Layout:
    """Time a forward + backward of ``sample`` with each layout (after one warm-up run); keep the fastest."""
    import time

    model = module.model
    ids, labels = sample
    timings: dict[str, float] = {}
    for layout in layouts:
        try:
            best = float("inf")
            for _ in range(2):  # the first run compiles (flex) and warms the kernels
                _sync(layout.device)
                t0 = time.perf_counter()
                for batch in layout.batches(ids, labels):
                    module(**batch).float().backward()
                _sync(layout.device)
                best = min(best, time.perf_counter() - t0)
            timings[layout.name] = best
        except Exception as exc:  # e.g. out of memory with one layout: the others may still run
            logger.warning("attention layout %r could not be timed (%s: %s)", layout.name, type(exc).__name__, exc)
        finally:
            model.zero_grad(set_to_none=True)
    if not timings:
        return layouts[0]
    winner = min(layouts, key=lambda layout: timings.get(layout.name, float("inf")))
    winner.timings = timings
    logger.info("attention layout %r chosen by timing: %s", winner.name, {k: round(v, 4) for k, v in timings.items()})
    return winner


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
