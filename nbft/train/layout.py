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

Every layout honours the model's attention pattern per layer (:func:`attention_pattern`): the per-example attention
functions take each layer's sliding window from transformers (``sliding_window``), and 4D masks are built per layer
type (a dict of masks when layers differ, as Gemma 2/3 take). A layout that cannot serve a pattern (chunked
attention without a mask) is skipped with one logged line naming the layout tried instead.

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
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from nbft.train import attention
from nbft.train.batching import Rule, collate_causal, collate_seq2seq, collate_varlen

logger = logging.getLogger("nbft.train")


class AttentionLayout(Protocol):
    """How a micro-batch becomes the loss module's input batches (usually one; ``single`` gives one per example)."""

    name: str

    def batches(
        self, input_ids: list[torch.Tensor], labels: list[torch.Tensor], groups: list[int] | None = None
    ) -> list[dict[str, Any]]: ...


def attention_pattern(config: Any) -> dict[str, Rule]:
    """How each type of layer of a model attends, read from its config: layer type -> rule (``None`` for full
    causal attention, ``("window", W)`` for a sliding window of ``W`` tokens, ``("chunk", C)`` for chunked
    attention). Layer types follow transformers' ``config.layer_types`` (``"full_attention"``,
    ``"sliding_attention"``, ``"chunked_attention"``); a config without them but with a ``sliding_window`` (Mistral,
    Phi-3) has one sliding type for every layer.

    Example:
        >>> from nbft.models import tiny_random
        >>> attention_pattern(tiny_random("gemma2", sliding_window=8)[0].config)
        {'sliding_attention': ('window', 8), 'full_attention': None}
        >>> attention_pattern(tiny_random()[0].config)
        {'full_attention': None}
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    chunk = getattr(config, "attention_chunk_size", None)
    types = getattr(config, "layer_types", None)
    if not types:
        uses_window = window is not None and getattr(config, "use_sliding_window", True) is not False
        types = ["sliding_attention" if uses_window else "chunked_attention" if chunk else "full_attention"]
    rules = {"sliding_attention": ("window", window) if window else None, "chunked_attention": ("chunk", chunk)}
    return {kind: rules.get(kind) for kind in dict.fromkeys(types)}


def smallest_span(pattern: dict[str, Rule]) -> int | None:
    """The fewest tokens any layer sees (its window or chunk), or ``None`` when every layer attends fully."""
    sizes = [rule[1] for rule in pattern.values() if rule is not None]
    return min(sizes) if sizes else None


def describe(pattern: dict[str, Rule]) -> str:
    """``"sliding_attention: window 512, full_attention: full"``, for messages."""
    return ", ".join(f"{kind}: {'full' if rule is None else f'{rule[0]} {rule[1]}'}" for kind, rule in pattern.items())


class _Layout:
    name = "?"
    timings: dict[str, float] | None = None
    """Seconds per forward + backward of the sample micro-batch, per layout, when the layout was chosen by timing."""

    def __init__(
        self,
        pad_id: int,
        device: torch.device,
        mask_dtype: torch.dtype = torch.float32,
        pattern: dict[str, Rule] | None = None,
    ) -> None:
        self.pad_id = pad_id
        self.device = device
        self.mask_dtype = mask_dtype
        self.pattern = pattern
        """The model's attention rule per layer type (:func:`attention_pattern`); masks are built per rule."""

    @staticmethod
    def serves(pattern: dict[str, Rule]) -> str | None:
        """Why this layout cannot run a model with this attention pattern, or ``None`` when it can."""
        return None

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

    @staticmethod
    def serves(pattern: dict[str, Rule]) -> str | None:
        # The per-layer attention functions learn a layer's sliding window from transformers (``sliding_window``),
        # but nothing tells them about chunks.
        if any(rule is not None and rule[0] == "chunk" for rule in pattern.values()):
            return "chunked attention is not passed to attention functions; it needs a mask"
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
            input_ids,
            labels,
            pad_id=self.pad_id,
            pack=self.pack,
            mask_dtype=self.mask_dtype,
            groups=groups,
            pattern=self.pattern,
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
    max_length: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> _Layout:
    """The first layout, in order ``flash-varlen`` → ``flex`` (CUDA) / ``varlen`` (CPU) → ``mask`` → ``padded`` →
    ``single``, that can run here and passes the check.

    ``module`` is a :class:`~nbft.train.loss.CausalLMLoss` (or a ``Seq2SeqLoss``, which always gets ``seq2seq``).
    ``packing=False`` starts at ``padded``; ``prefer`` (``TrainConfig.attention``) starts the chain at that layout.
    ``mask_dtype`` defaults to the model's parameter dtype. With ``measure=True`` (and ``sample``, a micro-batch of
    ``(input_ids, labels)``), every packed layout that passes is timed on ``sample`` (with ``clock``) and the
    fastest is returned.

    Every layout honours the model's attention pattern (:func:`attention_pattern`: sliding windows, chunks, per
    layer type); one that cannot is skipped with a logged line saying why. The check uses examples longer than
    the smallest window (one longer than two), capped at ``max_length`` (the longest training example: a window
    no example reaches changes nothing), so a layout that ignores a window that matters is never chosen. A model
    whose code is not transformers' own (``trust_remote_code``) is also checked on ``sample``, one real batch;
    if that fails, a ``ValueError`` names the mismatch and the settings to try.
    """
    model = module.model
    device = device if device is not None else next(model.parameters()).device
    mask_dtype = mask_dtype or next(model.parameters()).dtype
    if getattr(model.config, "is_encoder_decoder", False):
        return Seq2SeqLayout(pad_id, device)
    pattern = attention_pattern(model.config)
    if any(rule is not None for rule in pattern.values()):
        logger.info("attention pattern of %s: %s", type(model).__name__, describe(pattern))
    chain = _candidates(model, device, packing, prefer)
    passed: list[_Layout] = []
    for i, cls in enumerate(chain):
        layout = cls(pad_id, device, mask_dtype, pattern)
        unsupported = getattr(cls, "supported", lambda d: None)(device) or cls.serves(pattern)
        if unsupported is not None:
            later = next((c.name for c in chain[i + 1 :] if c.serves(pattern) is None), "single")
            log = logger.warning if cls.serves(pattern) is not None else logger.info
            log("attention layout %r skipped for %s: %s; trying %r", layout.name, type(model).__name__, unsupported,
                later)  # fmt: skip
            continue
        if not check or cls is SingleLayout:
            passed.append(layout)
            break
        problem = layout_problem(module, layout, max_length=max_length)
        if problem is None and sample is not None and _custom_code(model):
            problem = layout_problem(module, layout, sample=sample)
            if problem is not None:
                raise ValueError(
                    f"{type(model).__name__} (custom code) gives different logits with the {layout.name!r} attention "
                    f"layout than alone on a real batch: {problem}. Try TrainConfig(attention='padded') or "
                    "TrainConfig(packing=False); attention='single' always matches the model's own forward"
                )
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
        return _fastest(module, packed, sample, clock)
    if not passed:
        raise AssertionError("unreachable: the single layout always passes")
    return passed[0]


def _custom_code(model: Any) -> bool:
    """A model whose code is not one of transformers' own architectures (``trust_remote_code``, or user code)."""
    return not type(model).__module__.startswith("transformers.models.")


def _fastest(
    module: Any,
    layouts: list[_Layout],
    sample: tuple[list[torch.Tensor], list[torch.Tensor]],
    clock: Callable[[], float] = time.perf_counter,
) -> _Layout:
    """Time a forward + backward of ``sample`` with each layout (after one warm-up run); keep the fastest."""
    model = module.model
    ids, labels = sample
    timings: dict[str, float] = {}
    for layout in layouts:
        try:
            best = float("inf")
            for _ in range(2):  # the first run compiles (flex) and warms the kernels
                _sync(layout.device)
                t0 = clock()
                for batch in layout.batches(ids, labels):
                    module(**batch).float().backward()
                _sync(layout.device)
                best = min(best, clock() - t0)
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


def check_lengths(pattern: dict[str, Rule] | None, max_length: int | None = None) -> tuple[int, int, int]:
    """Lengths of the check's three examples: 24, 12 and 8 tokens, or, when a layer attends to fewer tokens
    (window or chunk ``W``), ``2W + 5``, ``W + 3`` and 8, so one example crosses two windows and one crosses one.
    ``max_length`` caps them: a window no example reaches changes nothing.

    Example:
        >>> check_lengths({"sliding_attention": ("window", 16)})
        (37, 19, 8)
    """
    span = smallest_span(pattern or {})
    lengths = (24, 12, 8) if span is None else (max(24, 2 * span + 5), max(12, span + 3), 8)
    if max_length is not None:
        lengths = tuple(max(2, min(n, max_length)) for n in lengths)  # type: ignore[assignment]
    return lengths  # type: ignore[return-value]


@torch.no_grad()
def layout_problem(
    module: Any,
    layout: _Layout,
    *,
    max_length: int | None = None,
    sample: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
) -> str | None:
    """``None`` when ``layout`` gives each example the logits it has alone, and no example sees another's tokens.

    Three synthetic examples are used (:func:`check_lengths`: longer than the model's smallest attention window),
    so the ``mask`` layout packs the last two into one padded row; or the real micro-batch ``sample``. Checks:
    (1) logits equal those of each example run alone, within the dtype's tolerance; (2) after changing the middle
    example's last token, the logits of its earlier tokens and of the other examples are unchanged (masked
    positions contribute exact zeros, so this holds in any dtype).
    """
    model = module.model
    was_training = model.training
    model.eval()
    try:
        vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else 256
        if sample is not None:
            ids = [x.clone() for x in sample[0]]
        else:
            gen = torch.Generator().manual_seed(0)
            # The model's own windows decide the lengths (not the layout's idea of them), within its positions.
            limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
            cap = min((n for n in (max_length, limit) if n), default=None)
            lengths = check_lengths(attention_pattern(model.config), cap)
            ids = [torch.randint(0, vocab, (n,), generator=gen) for n in lengths]
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
        if len(ids) < 2:
            return None
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
