"""Data and small helpers shared by the training tests and their multi-process worker (no pytest import)."""

from __future__ import annotations

import torch


def records(n: int = 24, seed: int = 0) -> list[dict[str, str]]:
    """Prompt/completion pairs with prompts of varied length, several times longer than completions."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        words = " ".join(f"w{int(x)}" for x in torch.randint(0, 50, (int(torch.randint(3, 15, (1,), generator=g)),)))
        out.append({"prompt": f"Classify: {words}\nAnswer:", "completion": " yes" if i % 2 else " no"})
    return out


def losses(run) -> list[float]:
    return [h["loss"] for h in run.history if h["kind"] == "train"]
