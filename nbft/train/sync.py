"""Precision and agreement between processes: fp32 master weights, the gradient synchroniser, shared decisions.

* :class:`MasterWeights` keeps the optimizer's fp32 copy of every weight, whatever dtype the model computes in.
* :class:`GradSync` owns gradient synchronisation for an optimizer step: it accumulates each micro-batch's gradient
  into the fp32 master gradients, all-reduces them **once** per optimizer step, then clips. (Exchanging gradients
  during backward, as DDP does, and clearing the bf16 gradients after copying them to the masters, as this engine
  once did, only ever sent the last micro-batch's gradient: replicas drifted apart.)
* :func:`agree` turns each process's flags (stop, save) into one decision that every process takes, so all ranks
  stop after the same step.

In one process nothing is communicated. Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> masters = MasterWeights(model, torch.bfloat16)
    >>> model.weight.dtype, masters.master[0].dtype
    (torch.bfloat16, torch.float32)
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from nbft.train.precision import LossScaler

_BUCKET_BYTES = 2**26  # gradients travel in flat buffers of at most 64 MiB: few messages, bounded extra memory


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main_process() -> bool:
    """True in a single process, and on rank 0 when several processes train together."""
    return not distributed() or torch.distributed.get_rank() == 0


class TrainingError(RuntimeError):
    """Training ended early for a reason the message explains (non-finite loss, out of memory)."""


class MasterWeights:
    """The model computes in ``compute_dtype``; the optimizer updates fp32 master weights (mixed precision).

    ``keep_master=False`` (pure bf16) keeps no fp32 copy: the optimizer updates the bf16 weights themselves (with
    stochastic rounding, see :mod:`nbft.train.memory`).

    With bf16 compute, forward and backward run entirely in bf16 (no per-op casts as under autocast), and the fp32
    masters are copied back into the model after every update, so small updates are not lost to bf16 rounding.
    With fp32 compute, the model's own parameters (upcast to fp32 if it came in bf16) are the masters. At the end,
    :meth:`restore` gives the model back in ``restore_dtype`` (its dtype when training began) with the trained
    values. Checkpoints hold the fp32 masters, whatever the model's dtype, so a resumed run continues exactly.
    """

    def __init__(
        self,
        model: Any,
        compute_dtype: torch.dtype,
        restore_dtype: torch.dtype | None = None,
        keep_master: bool = True,
    ) -> None:
        self.model = model
        self.params = list(model.parameters())
        self.restore_dtype = restore_dtype or self.params[0].dtype
        self.separate = compute_dtype != torch.float32 and keep_master
        # Buffers the state dict leaves out (RoPE's inv_freq, ...) are derived from the config: the saved model
        # recomputes them on load, so the model given back must hold them exactly as it came.
        self.derived = derived_buffers(model)
        if self.separate:
            with torch.no_grad():
                self.master = [torch.nn.Parameter(p.detach().float().clone()) for p in self.params]
        # Parameters only, in place (the same Parameter objects, so ties are kept): buffers keep the dtype the model
        # made them in (RoPE computes in fp32 from fp32 frequencies; bf16 would round 0.316228 to 0.316406).
        cast_parameters(model, compute_dtype)
        if not self.separate:
            # fp32, or pure bf16 (keep_master=False): the model's own parameters are what the optimizer updates.
            self.master = self.params

    def accumulate(self) -> None:
        """After a micro-batch's backward: add the model's (bf16) gradients to the fp32 master gradients."""
        if not self.separate:
            return  # fp32: autograd already accumulates into the masters' .grad
        for p, m in zip(self.params, self.master, strict=True):
            if p.grad is not None:
                m.grad = p.grad.float() if m.grad is None else m.grad.add_(p.grad)
                p.grad = None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        for m in self.master:
            m.grad = None

    @torch.no_grad()
    def master_to_model(self) -> None:
        if self.separate:
            torch._foreach_copy_(self.params, self.master)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the fp32 master values for every parameter (what checkpoints hold)."""
        by_id = {id(p): m for p, m in zip(self.params, self.master, strict=True)}
        named = dict(self.model.named_parameters(remove_duplicate=False))
        return {
            k: by_id[id(named[k])].detach().float() if k in named else v for k, v in self.model.state_dict().items()
        }

    @torch.no_grad()
    def restore(self) -> None:
        """Training is over: the model gets ``restore_dtype`` back, holding the trained master values, and its
        derived (non-persistent) buffers exactly as they came."""
        cast_parameters(self.model, self.restore_dtype)  # first: copying fp32 masters into bf16 would round them
        if self.separate:
            torch._foreach_copy_(self.params, self.master)
        restore_buffers(self.model, self.derived)


def cast_parameters(model: Any, dtype: torch.dtype) -> None:
    """Cast ``model``'s floating-point parameters (and their gradients) to ``dtype`` in place; buffers are left as
    they are. The Parameter objects stay the same, so tied weights stay tied and an optimizer keeps its references.

    Example:
        >>> m = torch.nn.BatchNorm1d(2)
        >>> cast_parameters(m, torch.bfloat16)
        >>> m.weight.dtype, m.running_mean.dtype
        (torch.bfloat16, torch.float32)
    """
    with torch.no_grad():
        for p in model.parameters():  # each shared Parameter once
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
                if p.grad is not None:
                    p.grad = p.grad.to(dtype)


def derived_buffers(model: Any) -> dict[str, torch.Tensor]:
    """Copies of the buffers that ``model.state_dict()`` leaves out (non-persistent: recomputed from the config on
    load, such as RoPE's ``inv_freq``), by name."""
    out = {}
    for prefix, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            value = module._buffers.get(name)
            if value is not None:
                out[f"{prefix}.{name}" if prefix else name] = value.detach().clone()
    return out


def restore_buffers(model: Any, saved: dict[str, torch.Tensor]) -> None:
    """Put ``saved`` buffers back into ``model`` exactly (their dtype and values), on the device each now lives on."""
    with torch.no_grad():
        for name, value in saved.items():
            prefix, _, leaf = name.rpartition(".")
            module = model.get_submodule(prefix)
            current = module._buffers.get(leaf)
            if current is not None and current.dtype == value.dtype and current.shape == value.shape:
                current.copy_(value)  # in place: a buffer shared between modules stays shared
            else:
                device = current.device if current is not None else value.device
                module._buffers[leaf] = value.to(device, copy=True)


def buffer_dtypes(model: Any) -> dict[str, str]:
    """The dtype of each floating-point buffer the state dict leaves out (``{"model.rotary_emb.inv_freq":
    "float32"}``): what a run records so that resume() rebuilds them as the model had them (a model handed over
    after ``model.to(torch.bfloat16)`` trains with bf16-rounded RoPE frequencies, and must resume with them)."""
    return {k: str(v.dtype).removeprefix("torch.") for k, v in derived_buffers(model).items() if v.is_floating_point()}


def cast_buffers(model: Any, dtypes: dict[str, str]) -> None:
    """Cast the named buffers to the recorded dtypes (see :func:`buffer_dtypes`); names the model lacks are skipped.
    The model computes them from its config, so the cast gives exactly what the recorded run had."""
    if not isinstance(dtypes, dict):  # an older or hand-edited run.json: the buffers stay as the model made them
        return
    for name, dtype_name in dtypes.items():
        prefix, _, leaf = name.rpartition(".")
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            continue
        current = module._buffers.get(leaf)
        dtype = getattr(torch, str(dtype_name), None)
        if current is not None and isinstance(dtype, torch.dtype) and current.dtype != dtype:
            module._buffers[leaf] = current.to(dtype)


class GradSync:
    """Accumulate over a step's micro-batches, all-reduce the fp32 master gradients once, then clip.

    ``backward(loss, scale)`` runs one micro-batch's backward of ``loss * scale`` and folds its gradient into the
    masters; :meth:`reduce_and_clip` sums the masters' gradients over processes (one bucketed all-reduce per
    step) and clips their global norm. Every process then holds the same gradients and takes the same update.
    Under FSDP (``fsdp=True``) FSDP itself reduces: micro-batches before the last run under ``no_sync``, and the
    loss is scaled by the number of processes because FSDP averages.
    """

    def __init__(
        self,
        masters: MasterWeights,
        accelerator: Any,
        module: Any,
        fsdp: bool = False,
        scaler: LossScaler | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.masters = masters
        self.accelerator = accelerator
        self.module = module
        self.fsdp = fsdp
        self.world = accelerator.num_processes
        self.scaler = scaler
        """fp16's dynamic loss scaling (``None`` otherwise): backward scales, :meth:`reduce_and_clip` unscales."""
        self.optimizer = optimizer

    def backward(self, loss: torch.Tensor, scale: float, last: bool) -> None:
        loss = loss * scale
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        if self.fsdp:
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.module)
            with sync:
                self.accelerator.backward(loss * self.world)
            return
        loss.backward()
        self.masters.accumulate()

    def reduce_and_clip(self, max_norm: float | None) -> float:
        """Sum gradients over processes (once per step), unscale them (fp16), clip to ``max_norm``; return the norm
        before clipping (inf or NaN when fp16 gradients overflowed)."""
        limit = max_norm if max_norm is not None else math.inf
        if self.fsdp:
            if self.scaler is not None and self.optimizer is not None:
                self.scaler.unscale(self.optimizer)
            return float(self.accelerator.clip_grad_norm_(self.module.parameters(), limit))
        masters = self.masters.master
        if self.world > 1 and distributed():
            for m in masters:  # a process whose micro-batches were empty still takes part, with zeros
                if m.grad is None:
                    m.grad = torch.zeros_like(m)
            all_reduce_sum([m.grad for m in masters])
        if self.scaler is not None and self.optimizer is not None:
            self.scaler.unscale(self.optimizer)  # after the sum (one check for all processes), before clipping
        with_grad = [m for m in masters if m.grad is not None]
        if not with_grad:
            return 0.0
        return float(torch.nn.utils.clip_grad_norm_(with_grad, limit))

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Update the weights; with loss scaling, skip a step whose gradients overflowed. True if skipped."""
        if self.scaler is not None:
            return self.scaler.step(optimizer)
        optimizer.step()
        return False

    def update(self, optimizer: torch.optim.Optimizer, loss: float, grad_norm: float) -> bool:
        """End the step: update the weights (the model gets the new master values), or skip the update when fp16
        gradients overflowed (the loss scale halves); clear the gradients. True if the update was skipped.

        Raises ``FloatingPointError`` (nothing updated) when the loss or gradient norm is not finite for any other
        reason (a forward pass that overflowed, which no loss scale cures), or when fp16 overflowed in too many
        steps in a row.
        """
        scaler = self.scaler
        overflow = scaler is not None and math.isfinite(loss) and not math.isfinite(grad_norm) and not scaler.gave_up()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)) and not overflow:
            self.zero_grad()
            raise FloatingPointError(f"the loss became {loss} (gradient norm {grad_norm})")
        skipped = self.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        self.zero_grad()
        if not skipped:
            self.masters.master_to_model()
        elif scaler is not None and scaler.gave_up():
            raise FloatingPointError(
                f"fp16 gradients overflowed in {scaler.skipped_in_a_row} steps in a row (loss scale now "
                f"{scaler.value:g}; use precision='bf16' if the hardware has it)"
            )
        return skipped

    def zero_grad(self) -> None:
        self.masters.zero_grad()


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over all processes, in place, through flat buckets (few messages, bounded memory)."""
    bucket: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        flat = torch.cat([b.reshape(-1) for b in bucket])
        torch.distributed.all_reduce(flat)
        parts = flat.split([b.numel() for b in bucket])
        torch._foreach_copy_(bucket, [v.view_as(b) for v, b in zip(parts, bucket, strict=True)])

    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and (size + nbytes > _BUCKET_BYTES or t.dtype != bucket[0].dtype):
            flush()
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        flush()


@torch.no_grad()
def broadcast_from_main(tensors: list[torch.Tensor]) -> None:
    """Give every process rank 0's values (the initial weights), so all replicas start identical."""
    if not distributed():
        return
    for t in tensors:
        torch.distributed.broadcast(t.data, src=0)


def agree(device: torch.device, *flags: bool) -> tuple[bool, ...]:
    """Each flag becomes True on every process if it is True on any (one tiny all-reduce of the maximum)."""
    if not distributed() or torch.distributed.get_world_size() == 1:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def gather_to_all(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (pickled; for small things such as RNG states)."""
    if not distributed():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_from_main_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (e.g. an error message that all must raise)."""
    if not distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
