"""Fused kernels from maintained libraries: Liger (Triton, CUDA) or ``torch.compile`` of each decoder layer.

A decoder layer in eager PyTorch runs RMSNorm, rotary embeddings, SiLU-gating, residual adds and dtype casts as a
dozen separate elementwise passes over memory; on small models (and on CPUs) they cost as much as the matmuls.

* ``"liger"``: liger-kernel's Triton RMSNorm, rotary and SwiGLU patched into the model (what
  ``transformers.Trainer(use_liger_kernel=True)`` applies), and its fused linear + cross-entropy as the LM head on the
  labelled positions. CUDA only (Triton).
* ``"compile"``: ``torch.compile`` of every decoder layer (``dynamic=True``: packed rows change length every step,
  and all layers share one compiled graph). The per-example attention runs outside the graph. Works on CPU
  (inductor with a C++ compiler) and CUDA (Triton).
* ``"none"``: the model as it is, with nbft's chunked LM-head cross-entropy.

:func:`apply_kernels` checks a compiled model once on a small batch (loss and gradients against the plain model)
and falls back to the plain path, with a logged message, when the library is missing, the device cannot run it,
or the check fails. :func:`KernelPlan.undo` gives the model back uncompiled when training ends (Liger's patches
stay: they are the same maths, but cannot be removed).

Example:
    >>> from nbft.models import tiny_random
    >>> model, _ = tiny_random()
    >>> apply_kernels(model, "none", device=model.device).name
    'none'
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger("nbft.train")

COMPILE_MIN_PARAMETERS = 50_000_000
"""``kernels="auto"`` compiles (on CUDA) only models at least this big: below it, compiling costs more than it
saves."""


@dataclasses.dataclass
class KernelPlan:
    """Which fused path a run uses (``name``: ``"liger"``, ``"compile"`` or ``"none"``) and how to undo it."""

    name: str
    note: str | None = None
    """Why the asked-for path was not taken, if it was not."""
    head: Callable[..., torch.Tensor] | None = None
    """A fused linear + cross-entropy (``head(hidden, weight, targets) -> summed CE``) replacing nbft's chunked
    head, or ``None``."""
    undo: Callable[[], None] = lambda: None


def apply_kernels(
    model: Any,
    mode: str,
    *,
    device: torch.device,
    probe: Callable[[], list[torch.Tensor]] | None = None,
    activation_checkpointing: bool = False,
) -> KernelPlan:
    """Apply the fused-kernel path ``mode`` (``"auto"``, ``"liger"``, ``"compile"``, ``"none"``) to ``model``.

    ``probe`` (optional) runs one forward and backward on a small batch and returns ``[loss, *gradients]``; it runs
    before and after compiling, and a compiled model whose results differ (beyond the dtype's rounding) or that
    fails to run is given back uncompiled.
    """
    if mode == "none":
        return KernelPlan("none")
    notes: list[str] = []
    if mode in ("liger", "auto"):
        plan = _try_liger(model, device, quiet=mode == "auto")
        if plan.name == "liger":
            return plan
        if mode == "liger":
            logger.warning("%s; using the plain model", plan.note)
            return KernelPlan("none", note=plan.note)
        if plan.note and device.type == "cuda":
            notes.append(plan.note)
    if mode == "auto":
        if device.type != "cuda":  # measured on 2 CPU cores: no faster than eager, and a minute of compiling
            return KernelPlan("none", note="; ".join([*notes, "not compiled on CPU (no gain measured there)"]))
        n = sum(p.numel() for p in model.parameters())
        if n < COMPILE_MIN_PARAMETERS:
            return KernelPlan("none", note="; ".join([*notes, f"{n / 1e6:.0f}M parameters: too small to compile"]))
        if activation_checkpointing:
            return KernelPlan("none", note="not compiled: activation checkpointing recomputes the layers eagerly")
    plan = _try_compile(model, device, probe)
    if plan.note:
        logger.warning("%s; using the plain model", plan.note)
    return plan


# --------------------------------------------------------------------------------------------------------- liger


def _try_liger(model: Any, device: torch.device, quiet: bool) -> KernelPlan:
    if device.type != "cuda":
        return KernelPlan("none", note="kernels='liger' needs a CUDA GPU (Liger's kernels are Triton)")
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        from liger_kernel.transformers.monkey_patch import (
            MODEL_TYPE_TO_APPLY_LIGER_FN,
            _apply_liger_kernel_to_instance,
        )
    except Exception as exc:  # ImportError, or a Triton that does not load
        return KernelPlan("none", note=f"liger-kernel is not available ({type(exc).__name__}: {exc})")
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return KernelPlan("none", note=f"liger-kernel has no kernels for model type {model_type!r}")
    # The LM head is nbft's (only labelled positions); Liger's own loss patches are left off.
    _apply_liger_kernel_to_instance(
        model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )

    def head(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return liger_fused_linear_cross_entropy(hidden, weight, targets, reduction="sum")

    if not quiet:
        logger.info("Liger kernels applied to %s", type(model).__name__)
    return KernelPlan("liger", head=head)


# ------------------------------------------------------------------------------------------------------- compile


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's repeated decoder blocks (transformers marks them as ``GradientCheckpointingLayer``)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _try_compile(model: Any, device: torch.device, probe: Callable[[], list[torch.Tensor]] | None) -> KernelPlan:
    layers = decoder_layers(model)
    if not layers:
        return KernelPlan("none", note=f"kernels='compile': no decoder layers found in {type(model).__name__}")
    problem = compile_problem(device)
    if problem is not None:
        return KernelPlan("none", note=f"kernels='compile' unavailable ({problem})")
    reference = [t.detach().float().clone() for t in probe()] if probe is not None else None
    for layer in layers:
        layer.compile(dynamic=True)  # packed rows change length every step: one graph for all lengths

    def undo() -> None:
        for layer in layers:
            layer._compiled_call_impl = None  # what nn.Module.compile set; the module is the same object

    if probe is not None and reference is not None:
        try:
            got = [t.detach().float() for t in probe()]
            error = max_relative_error(reference, got)
        except Exception as exc:
            undo()
            return KernelPlan("none", note=f"torch.compile of the decoder layers failed ({type(exc).__name__}: {exc})")
        tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
        if not error <= tol:
            undo()
            return KernelPlan("none", note=f"the compiled layers' loss or gradients differ by {error:.2g} (relative)")
    return KernelPlan("compile", undo=undo)


def max_relative_error(want: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """Largest ``|got - want| / max(|want|)`` over the tensors (NaN if any is not finite)."""
    worst = 0.0
    for a, b in zip(want, got, strict=True):
        if not bool(torch.isfinite(b).all()):
            return float("nan")
        worst = max(worst, float((a - b).abs().max()) / max(float(a.abs().max()), 1e-12))
    return worst


def compile_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run here (no C++ compiler on CPU, no Triton on CUDA), or ``None``."""
    if device.type == "cpu":
        import shutil

        from torch._inductor import config as inductor_config

        compiler = inductor_config.cpp.cxx[0] if isinstance(inductor_config.cpp.cxx, tuple) else None
        if not any(shutil.which(c) for c in filter(None, [compiler, "g++", "c++", "clang++"])):
            return "inductor needs a C++ compiler (g++ or clang++) on CPU"
        return None
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except Exception as exc:
            return f"Triton is not available ({type(exc).__name__})"
        return None
    return f"not supported on {device.type}"


def kernel_probe(module: Any, layout: Any) -> list[torch.Tensor]:
    """One forward and backward of the loss ``module`` on three small examples, collated by ``layout``: the loss
    and a few gradients (to check compiled layers against the plain model). Runs with dropout off (eval mode; the
    model's mode is restored after) and clears the gradients afterwards."""
    model = module.model
    vocab = model.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, vocab, (n,), generator=gen) for n in (24, 17, 9)]
    params = [p for p in model.parameters() if p.requires_grad]
    watched = [params[0], params[len(params) // 2], params[-1]]
    was_training = model.training
    model.eval()  # with dropout on, two runs of the same maths never agree and the check would always refuse
    try:
        loss = sum(module(**batch).float() for batch in layout.batches(ids, [x.clone() for x in ids]))
        loss.backward()
        return [loss.detach(), *[p.grad.detach().clone() for p in watched if p.grad is not None]]
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
