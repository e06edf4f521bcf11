"""Attention over one packed row without a 4D mask: each example attends only to its own earlier tokens.

Three implementations, registered with transformers' ``AttentionInterface`` and switched on for the length of one
forward pass (:func:`use_attention`), all fed from the same collated row (``nbft.train.batching.collate_varlen``):

* ``nbft_varlen`` (:func:`split_attention`): SDPA's causal kernel per example, on slices of the row. No mask and
  no padding; the cost is ``sum(len_i²)``. Runs everywhere; the CPU path (FlexAttention has no CPU backward, and
  PyTorch's varlen kernel is FlashAttention, CUDA only).
* ``nbft_flash_varlen`` (:func:`flash_varlen_attention`): ``torch.nn.attention.varlen.varlen_attn``, PyTorch's
  FlashAttention over cumulative sequence lengths: one kernel call per layer for the whole row. CUDA, fp16/bf16.
* ``nbft_flex`` (:func:`flex_attention`): FlexAttention (compiled) with a document-causal ``BlockMask`` built once
  per batch, so fully masked blocks are skipped. Training needs CUDA (forward only on CPU).

Each honours the layer's sliding window, which transformers passes to attention functions per layer
(``sliding_window``: the last ``W`` tokens, ``q - k < W``), and attention-logit soft-capping (``softcap``, Gemma 2).

Which one a run uses is decided once, in :mod:`nbft.train.layout`, by the packed = unpacked check (and on GPU by
timing). The functions are opaque to ``torch.compile`` (``torch.compiler.disable``), so compiled decoder layers
break the graph around attention instead of specialising on the row's example lengths.

Example:
    >>> import torch
    >>> q = k = v = torch.randn(1, 2, 5, 4)
    >>> out, _ = split_attention(None, q, k, v, None, nbft_bounds=[0, 2, 5], scaling=0.5)
    >>> out.shape  # [batch, tokens, heads, head_dim], as transformers' attention functions return
    torch.Size([1, 5, 2, 4])
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch

SPLIT = "nbft_varlen"
FLASH_VARLEN = "nbft_flash_varlen"
FLEX = "nbft_flex"


def window_mask(n: int, window: int | None, device: torch.device | None = None) -> torch.Tensor | None:
    """Boolean ``[n, n]`` mask (True = may attend) of causal attention over the last ``window`` tokens, as
    transformers defines a sliding window (``q - k < window``); ``None`` when the window covers all ``n`` tokens.

    Example:
        >>> window_mask(4, 2).int().tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    """
    if window is None or n <= window:
        return None
    q = torch.arange(n, device=device)[:, None]
    k = torch.arange(n, device=device)[None, :]
    return (k <= q) & (q - k < window)


def _attend(module, q, k, v, *, window: int | None, softcap: float | None, **kwargs: Any) -> torch.Tensor:
    """Causal attention of one example ``[1, heads, n, dim]`` -> ``[1, n, heads, dim]``, honouring the layer's
    sliding window and attention-logit soft-capping (which SDPA cannot do: Gemma 2 computes it eagerly)."""
    mask = window_mask(q.shape[2], window, q.device)
    scale = kwargs.get("scaling")
    if softcap is not None:  # the eager computation transformers' Gemma 2 uses
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        scores = torch.matmul(q, k.transpose(2, 3)) * (scale if scale is not None else q.shape[-1] ** -0.5)
        scores = torch.tanh(scores / softcap) * softcap
        allowed = mask if mask is not None else torch.ones_like(scores[0, 0], dtype=torch.bool).tril()
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        if module is not None and module.training and kwargs.get("dropout"):
            weights = torch.nn.functional.dropout(weights, p=kwargs["dropout"])
        return torch.matmul(weights, v).transpose(1, 2)
    if module is None:  # plain use (docs, tests): SDPA directly
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        ).transpose(1, 2)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    four_d = None if mask is None else mask[None, None]
    return sdpa_attention_forward(module, q, k, v, four_d, is_causal=mask is None, **kwargs)[0]


@torch.compiler.disable
def split_attention(
    module, query, key, value, attention_mask, *, nbft_bounds, is_causal=None, sliding_window=None, **kwargs
):
    """Causal SDPA run separately on each packed example of a single row: no padding, no mask, no cross-talk.

    ``query``/``key``/``value`` are ``[1, heads, total_tokens, dim]``; ``nbft_bounds`` holds the examples' start
    offsets and the total. Each slice takes SDPA's ``is_causal`` path, which on CPU skips the masked half of the
    score matrix, so the cost is ``sum(len_i²)`` instead of ``total²`` with a block mask. A layer with a sliding
    window (transformers passes ``sliding_window`` per layer) masks each example longer than its window; a layer
    with attention soft-capping (``softcap``) is computed eagerly, as the model does.
    """
    # A tensor (not a list) reaches us through compiled layers: lists make torch.compile recompile for every count.
    bounds = nbft_bounds.tolist() if isinstance(nbft_bounds, torch.Tensor) else nbft_bounds
    # split (not slicing): its backward is one concatenation, where slices would each zero-fill a full-size grad.
    sizes = [b - a for a, b in itertools.pairwise(bounds)]
    softcap = kwargs.pop("softcap", None)
    outputs = [
        _attend(module, q, k, v, window=sliding_window, softcap=softcap, **kwargs)
        for q, k, v in zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2), strict=True)
    ]
    return torch.cat(outputs, dim=1), None


def _varlen_kernel():
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


@torch.compiler.disable
def flash_varlen_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    *,
    nbft_cu_seqlens,
    nbft_max_len,
    scaling=None,
    sliding_window=None,
    softcap=None,
    **kwargs,
):
    """PyTorch's FlashAttention over cumulative sequence lengths (``torch.nn.attention.varlen.varlen_attn``).

    ``query`` is ``[1, heads, total, dim]``; the kernel takes ``[total, heads, dim]`` and ``cu_seqlens`` (int32
    start offsets plus the total). Grouped-query attention is native (``enable_gqa``): no repeated K/V. A sliding
    window of ``W`` tokens is the kernel's ``window_size=(W - 1, 0)`` (``q - k < W``, as transformers defines it).
    """
    if softcap is not None:  # the kernel has no soft-capping: refuse rather than compute something else
        raise NotImplementedError("PyTorch's varlen attention has no attention-logit soft-capping")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [total, heads, dim]
    out = _varlen_kernel()(
        q,
        k,
        v,
        nbft_cu_seqlens,
        nbft_cu_seqlens,
        nbft_max_len,
        nbft_max_len,
        scale=scaling,
        window_size=(-1 if sliding_window is None else sliding_window - 1, 0),  # causal, maybe windowed
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out[None], None  # [1, total, heads, dim]


_FLEX_COMPILED: Any = None


def _flex():
    global _FLEX_COMPILED
    if _FLEX_COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention as flex

        # FlexAttention is only fast (and on CPU only runs) compiled; one compiled callable for the process.
        _FLEX_COMPILED = torch.compile(flex, dynamic=True)
    return _FLEX_COMPILED


@torch.compiler.disable
def flex_attention(
    module, query, key, value, attention_mask, *, nbft_document, scaling=None, sliding_window=None, softcap=None, **kw
):
    """FlexAttention with a document-causal block mask, built once per batch and window from ``nbft_document`` (the
    example index of every token of the row) and shared by the layers with that window; soft-capping as a
    ``score_mod``."""
    score_mod = None
    if softcap is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.tanh(score / softcap) * softcap

    out = _flex()(
        query,
        key,
        value,
        score_mod=score_mod,
        block_mask=_block_mask(nbft_document, sliding_window),
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


_MASK_CACHE: dict[Any, Any] = {}  # (batch, window) -> BlockMask: the last batch's masks (every layer asks)


def _block_mask(document: torch.Tensor, window: int | None = None) -> Any:
    batch = (document.data_ptr(), document.shape[0], document.device)
    if any(key[0] != batch for key in _MASK_CACHE):
        _MASK_CACHE.clear()
    if (batch, window) not in _MASK_CACHE:
        _MASK_CACHE[batch, window] = document_block_mask(document, window)
    return _MASK_CACHE[batch, window]


def document_block_mask(document: torch.Tensor, window: int | None = None) -> Any:
    """FlexAttention ``BlockMask``: token ``q`` sees ``k`` when both are in the same example, ``k <= q`` and, with a
    sliding ``window``, ``q - k < window``."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        same = (document[q_idx] == document[kv_idx]) & (kv_idx <= q_idx)
        return same if window is None else same & (q_idx - kv_idx < window)

    total = document.shape[0]
    return create_block_mask(mask_mod, None, None, total, total, device=document.device)


def register() -> None:
    """Register the three implementations with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for name, fn in ((SPLIT, split_attention), (FLASH_VARLEN, flash_varlen_attention), (FLEX, flex_attention)):
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, lambda *args, **kwargs: None)  # they need no 4D mask


def attention_kwargs(implementation: str, bounds: list[int], device: torch.device) -> dict[str, Any]:
    """The extra forward kwargs ``implementation`` needs for a row whose examples start at ``bounds``."""
    if implementation == SPLIT:
        return {"nbft_bounds": torch.tensor(bounds)}  # on the CPU: read back without a device sync
    if implementation == FLASH_VARLEN:
        cu = torch.tensor(bounds, dtype=torch.int32, device=device)
        return {"nbft_cu_seqlens": cu, "nbft_max_len": max(b - a for a, b in itertools.pairwise(bounds))}
    if implementation == FLEX:
        lengths = torch.tensor([b - a for a, b in itertools.pairwise(bounds)])
        document = torch.repeat_interleave(torch.arange(len(bounds) - 1), lengths).to(device)
        return {"nbft_document": document}
    raise ValueError(f"unknown packed attention implementation {implementation!r}")


@contextlib.contextmanager
def use_attention(config: Any, implementation: str | None) -> Iterator[None]:
    """Switch the model's attention implementation for one forward pass (its own setting is restored after)."""
    previous = config._attn_implementation_internal
    config._attn_implementation_internal = implementation
    try:
        yield
    finally:
        config._attn_implementation_internal = previous
