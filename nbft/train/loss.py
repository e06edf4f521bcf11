"""Losses that run the LM head only where there is a label, a chunk at a time.

For instruction data most tokens are prompt tokens, which carry no loss. A causal LM's usual forward computes
``batch × seq × vocab`` logits (49k-152k wide) and then throws most of them away. Here the base model returns
hidden states, the labelled positions are gathered, and :class:`LinearCrossEntropy` applies the LM head and the
cross-entropy chunk by chunk, computing the gradients in the same pass, so at most one chunk of logits ever exists.

Example:
    >>> import torch
    >>> h, w = torch.randn(5, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    >>> loss = linear_cross_entropy(h, w, torch.tensor([1, 2, 3, 4, 5]))
    >>> loss.backward()
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nbft.train import attention

logger = logging.getLogger("nbft.train")


class LinearCrossEntropy(torch.autograd.Function):
    """``sum(cross_entropy(hidden @ weight.T, targets))`` without materialising all logits.

    Forward walks over row chunks: logits for the chunk (in ``compute_dtype``, like autocast would), log-sum-exp
    in fp32, and the gradient ``softmax - onehot`` straight away, turned into grad-hidden and grad-weight. Backward
    only scales the stored gradients, so the FLOPs equal a plain linear + cross-entropy and memory holds one chunk.
    """

    @staticmethod
    def forward(ctx: Any, hidden, weight, targets, chunk_rows: int, compute_dtype, grad_enabled: bool):  # type: ignore[override]
        # Forward always runs with grad mode off, so the caller tells whether gradients are wanted (not in eval).
        need_h, need_w = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            rows = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = None  # fp32 accumulator, created by the first chunk
            for start in range(0, hidden.shape[0], chunk_rows):
                h = hidden[start : start + chunk_rows].to(compute_dtype)
                t = targets[start : start + chunk_rows]
                logits = (h @ w.T).float()
                lse = torch.logsumexp(logits, dim=-1)
                row = lse - logits.gather(1, t[:, None]).squeeze(1)
                rows[start : start + chunk_rows] = row
                total += row.sum()
                if need_h or need_w:
                    # d(sum CE)/d(logits) = softmax - onehot, computed in place over the chunk's logits.
                    grad = logits.sub_(lse[:, None]).exp_()
                    grad[torch.arange(len(t), device=t.device), t] -= 1.0
                    grad = grad.to(compute_dtype)
                    if grad_h is not None:
                        grad_h[start : start + chunk_rows] = grad @ w
                    if need_w:
                        part = grad.T @ h
                        grad_w = part.float() if grad_w is None else grad_w.add_(part)
        if need_w and grad_w is None:  # no labelled rows at all
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w) if g is not None))
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(rows)
        return total, rows

    @staticmethod
    def backward(ctx: Any, grad_output, grad_rows):  # type: ignore[override]
        # The stored gradients are ours alone, so scale them in place instead of allocating copies.
        saved = list(ctx.saved_tensors)
        grad_h = saved.pop(0).mul_(grad_output) if ctx.has[0] else None
        grad_w = saved.pop(0).mul_(grad_output).to(ctx.weight_dtype) if ctx.has[1] else None
        return grad_h, grad_w, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    compute_dtype: torch.dtype | None = None,
    chunk_rows: int | None = None,
    return_rows: bool = False,
) -> Any:
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, one chunk of rows at a time.

    With ``return_rows=True`` also returns each row's cross-entropy (fp32, no gradient), e.g. for a loss per task.
    """
    if compute_dtype is None:
        compute_dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled() else weight.dtype
    if chunk_rows is None:
        chunk_rows = chunk_rows_for(weight.shape[0], hidden.device)
    total, rows = LinearCrossEntropy.apply(hidden, weight, targets, chunk_rows, compute_dtype, torch.is_grad_enabled())
    return (total, rows) if return_rows else total


def chunk_rows_for(vocab_size: int, device: torch.device) -> int:
    """Rows per chunk so one fp32 chunk of logits stays near 64 MB on CPU (512 MB on GPU, for bigger matmuls)."""
    budget = (2**27 if device.type == "cuda" else 2**24) // max(vocab_size, 1)
    return max(64, budget)


VARLEN = attention.SPLIT
"""Attention implementation name used while a packed single row is in flight (see :mod:`nbft.train.attention`)."""
varlen_attention = attention.split_attention


class CausalLMLoss(nn.Module):
    """Wraps a causal LM: ``forward(batch) -> summed CE over labelled positions``.

    Wrapping (instead of calling ``model.model`` from the loop) keeps FSDP hooks working when accelerate wraps
    this module. ``fused`` is decided once by :func:`check_fused_head`: models whose logits are not a plain linear
    map of the final hidden state (soft-capping, scaling) fall back to the model's own forward. When the batch has
    ``groups`` (a group id per target, e.g. the example's task; -1 for none), ``forward`` returns
    ``(summed CE, summed CE per group)``, the latter a detached fp32 vector of length ``n_groups``.
    """

    def __init__(self, model: nn.Module, fused: bool, n_groups: int = 0) -> None:
        super().__init__()
        self.model = model
        self.fused = fused
        self.n_groups = n_groups
        self.head: Any = None
        """A fused linear + cross-entropy from a kernel library (``nbft.train.kernels``), used instead of the chunked
        head when set and no loss per group is needed."""
        attention.register()

    def _run(self, fused: bool, input_ids, position_ids, attention_mask, bounds, implementation=None):
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": False}
        switch = contextlib.nullcontext()
        if bounds is not None:  # one packed row: attention per example, without a mask (nbft.train.attention)
            implementation = implementation or VARLEN
            kwargs.update(attention.attention_kwargs(implementation, bounds, input_ids.device))
            switch = attention.use_attention(self.model.config, implementation)
        with switch:
            if fused:
                return self.model.base_model(input_ids=input_ids, **kwargs).last_hidden_state
            return self.model(input_ids=input_ids, **kwargs).logits

    def forward(  # type: ignore[override]
        self,
        input_ids,
        position_ids,
        targets,
        attention_mask=None,
        bounds=None,
        spans=None,
        groups=None,
        implementation=None,
    ):
        """``spans`` (where each example sits) is accepted and ignored: the loss needs only ``targets``.
        ``implementation`` names the packed row's attention (``nbft.train.attention``; default: per example SDPA)."""
        flat_targets = targets.reshape(-1)
        keep = flat_targets.ne(-100).nonzero().squeeze(1)
        out = self._run(self.fused, input_ids, position_ids, attention_mask, bounds, implementation)
        out = out.reshape(-1, out.shape[-1]).index_select(0, keep)
        kept_targets = flat_targets.index_select(0, keep)
        if self.fused and self.head is not None and groups is None:
            weight = self.model.get_output_embeddings().weight
            return self.head(out, weight, kept_targets)
        if self.fused:
            weight = self.model.get_output_embeddings().weight  # tied or not: autograd routes the gradient
            total, rows = linear_cross_entropy(out, weight, kept_targets, return_rows=True)
        else:
            rows = F.cross_entropy(out.float(), kept_targets, reduction="none")
            total = rows.sum()
        if groups is None:
            return total
        return total, _group_sums(rows.detach(), groups.reshape(-1).index_select(0, keep), self.n_groups)

    @torch.no_grad()
    def logits(
        self, input_ids, position_ids, attention_mask=None, bounds=None, implementation=None, **_: Any
    ) -> torch.Tensor:
        """Full logits ``[rows, width, vocab]`` of a collated batch, through the same attention path as the loss."""
        return self._run(False, input_ids, position_ids, attention_mask, bounds, implementation)


def _group_sums(rows: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    sums = torch.zeros(n_groups + 1, dtype=torch.float32, device=rows.device)
    sums.index_add_(0, torch.where(groups < 0, n_groups, groups), rows.float())  # slot n_groups: no group
    return sums[:n_groups]


class Seq2SeqLoss(nn.Module):
    """Wraps an encoder-decoder model: summed CE over the target tokens (computed in fp32); per group with
    ``groups`` as :class:`CausalLMLoss` does."""

    def __init__(self, model: nn.Module, n_groups: int = 0) -> None:
        super().__init__()
        self.model = model
        self.n_groups = n_groups

    def forward(self, input_ids, attention_mask, labels, groups=None):  # type: ignore[override]
        decoder_input_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, use_cache=False
        ).logits
        rows = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none")
        total = rows.sum()  # ignored positions give 0
        if groups is None:
            return total
        return total, _group_sums(rows.detach(), groups.reshape(-1), self.n_groups)


def check_fused_head(model: nn.Module) -> bool:
    """True when ``logits == lm_head(base_model(x).last_hidden_state)`` for this model (checked on 8 tokens)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", None)
    if not isinstance(head, nn.Linear) or head.bias is not None or base is None or base is model:
        return False
    was_training = model.training
    model.eval()
    try:
        device = head.weight.device
        x = torch.arange(8, device=device)[None] % head.weight.shape[0]
        with torch.no_grad():
            want = model(input_ids=x, use_cache=False).logits.float()
            got = head(base(input_ids=x, use_cache=False).last_hidden_state).float()
        same = want.shape == got.shape and torch.allclose(want, got, rtol=1e-4, atol=1e-4)
    except Exception as exc:  # an unusual architecture: the model's own forward is always correct
        logger.info("fused LM-head loss unavailable for %s (%s); using the model's forward", type(model).__name__, exc)
        same = False
    finally:
        model.train(was_training)
    if not same:
        logger.info("%s: logits are not a plain linear head; using the model's forward", type(model).__name__)
    return same
