"""How much a fine-tune changed a model's weights: relative L2 change per layer and module type, computed
streaming from models, state dicts or safetensors files (one tensor at a time).

The figure of it is :func:`nbft.report.weight_change_heatmap`.

Example::

    from nbft.weights import weight_change
    wc = weight_change(base_model, run.model)      # tidy DataFrame: layer, module, rel_change, n_params
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["weight_change"]

_LAYER = re.compile(r"(?:layers|layer|h|block|blocks)\.(\d+)\.")


def _module_type(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("embed", "wte", "wpe", "lm_head", "shared")):
        return "embeddings"
    if "norm" in n or re.search(r"(^|\.)ln_?\w*\.", n):
        return "norms"
    if any(k in n for k in ("attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj")):
        return "attention"
    if any(k in n for k in ("mlp", "ffn", "feed_forward", "gate_proj", "up_proj", "down_proj", "fc", "dense")):
        return "mlp"
    return "other"


def _tensors(source: Any) -> Iterable[tuple[str, Any]]:
    """(name, tensor) pairs from a model, a state dict, or a folder/file of safetensors (read one at a time)."""
    if isinstance(source, (str, Path)):
        from safetensors import safe_open

        path = Path(source)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {path}")
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    yield key, f.get_tensor(key)
        return
    if hasattr(source, "named_parameters"):
        yield from source.named_parameters()
        return
    yield from dict(source).items()


def weight_change(base: Any, tuned: Any, *, chunk_rows: int = 4096) -> pd.DataFrame:
    """Relative L2 change ‖W_tuned − W_base‖ / ‖W_base‖ per layer and module type, computed streaming.

    ``base`` and ``tuned`` are models, state dicts, or folders of safetensors (read one tensor at a time). The
    difference is formed ``chunk_rows`` rows at a time, so no third copy of the model is ever held in memory.
    Returns a tidy DataFrame: layer (int, -1 for non-layer parameters), module (attention, mlp, embeddings, norms,
    other), rel_change, n_params.

    Example::

        wc = weight_change(base_model, run.model)
        weight_change_heatmap(wc)
    """
    import torch

    base_map = dict(_tensors(base)) if not isinstance(base, (str, Path)) else None
    # named_parameters() lists a tied weight (embeddings = lm_head) once, so it is counted once.
    acc: dict[tuple[int, str], list[float]] = {}

    def lookup(name: str) -> Any:
        if base_map is not None:
            return base_map.get(name)
        return None

    if base_map is None:  # base on disk: stream base tensors, look tuned ones up by name
        tuned_map = dict(_tensors(tuned))
        pairs: Iterable[tuple[str, Any, Any]] = ((n, t, tuned_map.get(n)) for n, t in _tensors(base))
    else:
        pairs = ((n, lookup(n), t) for n, t in _tensors(tuned))
    with torch.no_grad():
        for name, b, t in pairs:
            if b is None or t is None or b.shape != t.shape:
                continue
            b2 = b.detach().reshape(b.shape[0], -1) if b.dim() > 1 else b.detach().reshape(1, -1)
            t2 = t.detach().reshape(b2.shape)
            diff_sq = base_sq = 0.0
            for i in range(0, b2.shape[0], chunk_rows):
                bb = b2[i : i + chunk_rows].float()
                tt = t2[i : i + chunk_rows].to(bb.device).float()
                diff_sq += float(torch.sum((tt - bb) ** 2))
                base_sq += float(torch.sum(bb**2))
            m = _LAYER.search(name)
            group = (int(m.group(1)) if m else -1, _module_type(name))
            slot = acc.setdefault(group, [0.0, 0.0, 0])
            slot[0] += diff_sq
            slot[1] += base_sq
            slot[2] += int(b.numel())
    if not acc:  # an empty table would read as "nothing changed"
        raise ValueError(
            "weight_change: the two models share no parameter of the same name and shape (different architectures "
            "or sizes?); compare a tuned model with the base it was trained from"
        )
    rows = [
        {"layer": layer, "module": module, "rel_change": math.sqrt(d) / math.sqrt(bsq) if bsq > 0 else math.nan,
         "n_params": int(npar)}
        for (layer, module), (d, bsq, npar) in sorted(acc.items())
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["layer", "module", "rel_change", "n_params"])
