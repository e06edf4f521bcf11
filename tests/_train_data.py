"""Data and small helpers shared by the training tests and their multi-process worker (no pytest import)."""

from __future__ import annotations

import random

import torch


def records(n: int = 24, seed: int = 0) -> list[dict[str, str]]:
    """Prompt/completion pairs with prompts of varied length, several times longer than completions. The same
    ``seed`` gives the same data whatever happened to the global random generators (a local one draws it)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = " ".join(f"w{rng.randrange(50)}" for _ in range(rng.randint(3, 14)))
        out.append({"prompt": f"Classify: {words}\nAnswer:", "completion": " yes" if i % 2 else " no"})
    return out


def losses(run) -> list[float]:
    return [h["loss"] for h in run.history if h["kind"] == "train"]


def spread(model, seed: int = 0, std: float = 0.3):
    """Larger random weights for a tiny model: default init (std 0.02) makes it emit one token forever; these give
    varied, distinct outputs, so equality tests actually compare something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, std, generator=g)
    return model
