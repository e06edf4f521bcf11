"""Memory modes: which optimizer updates the weights, and activation checkpointing.

* ``TrainConfig.optimizer="adamw"`` (default): ``torch.optim.AdamW`` with its fused kernel, over fp32 master weights
  (or the bf16 weights themselves in pure-bf16 mode, with stochastic rounding).
* ``"adamw-8bit"``: bitsandbytes' ``AdamW8bit`` (block-wise 8-bit moments: 2 bytes per parameter instead of 8).
* ``TrainConfig.master_weights=False`` with bf16 compute (pure bf16): no fp32 copy of the weights; torchao's AdamW
  with ``bf16_stochastic_round=True`` computes each update in fp32 and rounds the new bf16 weight up or down at
  random in proportion to the remainder, so the *expected* weight equals the fp32 result and updates smaller than
  bf16's spacing are not lost (plain round-to-nearest would drop them: the failure of "pure bf16" Trainer runs).
* ``TrainConfig.activation_checkpointing``: the model's own (transformers) checkpointing of each decoder layer,
  non-reentrant, with the recomputation run under the attention implementation that the forward used.

Each library is optional. When one is missing or cannot run on the device, :func:`make_optimizer` says so in the
log and falls back to the plain fp32-master AdamW, which is always correct.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(4, 4)
    >>> opt, plan = make_optimizer(list(model.parameters()), lr=1e-3, weight_decay=0.0, device=torch.device("cpu"))
    >>> plan.name
    'adamw'
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch

from nbft.train.attention import use_attention

logger = logging.getLogger("nbft.train")


@dataclasses.dataclass(frozen=True)
class OptimizerPlan:
    """What was asked for and what runs: ``name`` is ``"adamw"``, ``"adamw-8bit"`` or ``"adamw-bf16-sr"``."""

    name: str
    pure_bf16: bool
    """True when the optimizer updates bf16 weights directly (no fp32 masters)."""
    note: str | None = None
    """Why a fallback was taken, if one was."""


def plan_optimizer(kind: str, pure_bf16: bool, device: torch.device) -> OptimizerPlan:
    """Decide the optimizer before any weight is touched (pure bf16 changes how ``MasterWeights`` is built).

    Falls back to fp32 masters + AdamW (with a logged message) when the library a mode needs is missing.
    """
    if pure_bf16 and kind == "adamw":
        if _torchao_adamw() is None:
            return _fallback(
                "adamw", "master_weights=False needs torchao (pip install torchao) for stochastic rounding"
            )
        return OptimizerPlan("adamw-bf16-sr", pure_bf16=True)
    if kind == "adamw-8bit":
        problem = _bnb_problem(device)
        if problem is not None:
            return _fallback("adamw", f"optimizer='adamw-8bit' unavailable ({problem})")
        if pure_bf16:
            note = (
                "optimizer='adamw-8bit' with master_weights=False: bitsandbytes would round bf16 updates to nearest "
                "and lose the small ones; keeping fp32 master weights (8-bit states still save 6 bytes a parameter)"
            )
            logger.warning(note)
            return OptimizerPlan("adamw-8bit", pure_bf16=False, note=note)
        return OptimizerPlan("adamw-8bit", pure_bf16=False)
    return OptimizerPlan("adamw", pure_bf16=False)


def _fallback(name: str, why: str) -> OptimizerPlan:
    note = f"{why}; using AdamW with fp32 master weights instead"
    logger.warning(note)
    return OptimizerPlan(name, pure_bf16=False, note=note)


def make_optimizer(
    params: list[Any],
    lr: float,
    weight_decay: float,
    device: torch.device,
    *,
    plan: OptimizerPlan | None = None,
    fused: bool = True,
) -> tuple[torch.optim.Optimizer, OptimizerPlan]:
    """AdamW over ``params`` (decay on matrices only, not on norms and biases), as ``plan`` says.

    The default is ``torch.optim.AdamW`` with the fused kernel (CPU and CUDA), what ``transformers.Trainer`` uses.
    """
    plan = plan or OptimizerPlan("adamw", pure_bf16=False)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    betas, eps = (0.9, 0.999), 1e-8
    if plan.name == "adamw-8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=eps), plan
    if plan.name == "adamw-bf16-sr":
        adamw = _torchao_adamw()
        assert adamw is not None
        return adamw(groups, lr=lr, betas=betas, eps=eps, bf16_stochastic_round=True), plan
    fused = fused and device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None), plan


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate (torchao's optimizers keep it as a tensor, filled in place)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        elif _needs_tensor_lr(optimizer):  # a state dict loaded from a checkpoint brings a float
            group["lr"] = torch.tensor(lr, dtype=torch.float32)
        else:
            group["lr"] = lr


def _needs_tensor_lr(optimizer: torch.optim.Optimizer) -> bool:
    return type(optimizer).__module__.startswith("torchao.")


def _torchao_adamw() -> Any:
    try:
        from torchao.optim import _AdamW  # the documented entry point for bf16 stochastic rounding
    except Exception:  # ImportError, or a torchao built against another torch
        return None
    return _AdamW


def _bnb_problem(device: torch.device) -> str | None:
    try:
        import bitsandbytes as bnb
    except Exception as exc:
        return f"bitsandbytes is not installed or does not load: {type(exc).__name__}: {exc}"
    try:  # the CPU backend exists only in recent versions: try one tiny step where the model will train
        p = torch.nn.Parameter(torch.zeros(4096, device=device))
        p.grad = torch.ones_like(p)
        bnb.optim.AdamW8bit([p], lr=1e-3).step()
    except Exception as exc:
        return f"bitsandbytes cannot run on {device.type}: {type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------------------------------------------
# Activation checkpointing


def enable_activation_checkpointing(model: Any) -> Callable[[], None]:
    """Checkpoint every decoder layer (transformers' own mechanism, non-reentrant); returns the undo function.

    nbft switches the attention implementation for the length of one forward pass (packed rows run per-example
    attention); the recomputation happens later, inside backward, so each checkpoint remembers the implementation
    its forward used and recomputes under it (``context_fn``). Without that, the replay would attend across packed
    examples and the gradients would be silently wrong.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"{type(model).__name__} does not support activation checkpointing; use activation_checkpointing=False"
        )
    config = model.config

    def context_fn() -> tuple[Any, Any]:
        implementation = config._attn_implementation_internal
        return contextlib.nullcontext(), use_attention(config, implementation)

    kwargs = {"use_reentrant": False, "context_fn": context_fn}
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable(kwargs)

    def undo() -> None:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()
        if hasattr(model, "disable_input_require_grads"):
            with contextlib.suppress(Exception):  # only set for models whose inputs are ids
                model.disable_input_require_grads()

    return undo


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
