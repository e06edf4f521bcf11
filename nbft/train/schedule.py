"""The learning-rate schedule: linear warm-up, then linear decay, cosine decay or constant.

The step is the number of updates applied so far: an fp16 step skipped for overflow is not one (it is taken again).

Example:
    >>> lr_at(0, total=10, warmup=2, peak=1e-4, schedule="linear")
    0.0
    >>> lr_at(2, total=10, warmup=2, peak=1e-4, schedule="linear")
    0.0001
"""

from __future__ import annotations

import math


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str) -> float:
    """Learning rate for the update after ``step`` updates (the same formulas as transformers' schedulers)."""
    if step < warmup:
        return peak * step / max(1, warmup)
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return peak * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return peak * max(0.0, 1.0 - progress)


def warmup_steps(steps: int, ratio: float, total: int) -> int:
    """The warm-up length: ``steps`` if given, else ``ratio`` of the ``total`` updates."""
    return steps or round(ratio * total)
