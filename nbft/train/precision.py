"""Precision: which compute dtype a run uses, and dynamic loss scaling for fp16.

* :func:`resolve_precision` turns ``TrainConfig.precision`` into a compute dtype. ``"auto"`` asks whether the
  hardware runs bf16 *natively*: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (the default
  ``including_emulation=True`` says yes on a T4, which only emulates bf16 at a fraction of its fp16 speed), or
  AVX512-BF16/AMX on CPUs. GPUs without native bf16 get fp16 with loss scaling; CPUs without it get fp32.
* :class:`LossScaler` is fp16's dynamic loss scaling, done by ``torch.amp.GradScaler``: the loss is multiplied by
  a large power of two before backward so small fp16 gradients do not flush to zero; the fp32 master gradients are
  divided back before clipping; a step whose gradients overflowed is skipped and the scale halved, and after
  ``growth_interval`` good steps it doubles again. Multiplying by a power of two is exact, so a run with no
  skipped step does the same maths as one without scaling.

Example:
    >>> import torch
    >>> resolve_precision("fp32", torch.device("cpu")) is None
    True
    >>> resolve_precision("fp16", torch.device("cpu"))
    torch.float16
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

logger = logging.getLogger("nbft.train")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The compute dtype for ``precision`` on ``device`` (``None`` = fp32).

    ``"auto"``: bf16 where the hardware runs it natively, else fp16 on CUDA (with loss scaling), else fp32.
    ``"bf16"`` on a GPU that only emulates it is allowed but logged (it is slow there).
    """
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    native = native_bf16(device)
    if precision == "bf16":
        if device.type == "cuda" and not native:
            if not torch.cuda.is_bf16_supported(including_emulation=True):
                raise ValueError("TrainConfig.precision='bf16' but this GPU has no bf16 support; use 'fp16' or 'auto'")
            logger.warning("this GPU emulates bf16 (slow): precision='fp16' or 'auto' uses its fp16 tensor cores")
        return torch.bfloat16
    if native:
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run natively: CUDA compute capability 8.0+ (A100, H100, RTX 30xx+), or a CPU with
    AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX (where bf16 matmuls are fast); read from /proc/cpuinfo on Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")  # type: ignore[arg-type]


class LossScaler:
    """fp16 dynamic loss scaling around an optimizer whose parameters hold fp32 (master) gradients.

    ``scale(loss)`` before backward; after the gradients are summed, ``unscale(optimizer)`` divides them back and
    notes any inf/NaN; ``step(optimizer)`` updates unless they overflowed, then adjusts the scale and returns
    whether the step was skipped. Backed by ``torch.amp.GradScaler``.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.SGD([p], lr=0.1)
        >>> scaler = LossScaler(torch.device("cpu"), init_scale=4.0)
        >>> scaler.scale(p.sum()).backward()
        >>> scaler.unscale(opt); scaler.step(opt), scaler.value
        (False, 4.0)
    """

    max_consecutive_skips = 30
    """Skipping more steps in a row than this means scaling cannot help (the forward itself overflows)."""

    def __init__(self, device: torch.device, init_scale: float = 2.0**16, growth_interval: int = 2000) -> None:
        self.scaler = torch.amp.GradScaler(device.type, init_scale=init_scale, growth_interval=growth_interval)
        # GradScaler creates its scale on the first scale(); a process with no micro-batch in a step still unscales.
        self.scaler.scale(torch.zeros((), device=device))
        self.skipped_in_a_row = 0
        self.skipped_total = 0

    @property
    def value(self) -> float:
        """The current loss scale."""
        return float(self.scaler.get_scale())

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the optimizer's gradients by the scale (call before clipping)."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Update unless the gradients overflowed; adjust the scale; True if the step was skipped."""
        before = self.value
        self.scaler.step(optimizer)
        self.scaler.update()
        skipped = self.value < before  # GradScaler backs off exactly when it skipped
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        self.skipped_total += int(skipped)
        return skipped

    def gave_up(self) -> bool:
        return self.skipped_in_a_row > self.max_consecutive_skips or not math.isfinite(self.value)

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers (JSON-safe), for checkpoints."""
        sd = self.scaler.state_dict()
        return {
            "scale": float(sd.get("scale", self.value)),
            "growth_tracker": int(sd.get("_growth_tracker", 0)),
            "skipped_total": self.skipped_total,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        full = self.scaler.state_dict()
        full["scale"] = float(sd["scale"])
        full["_growth_tracker"] = int(sd["growth_tracker"])
        self.scaler.load_state_dict(full)
        self.skipped_total = int(sd.get("skipped_total", 0))
