"""Resumable checkpoints: model, optimizer, RNG states and data position, in safetensors, written atomically.

Layout of ``<run_dir>/checkpoints/step-000120/``::

    model/            save_pretrained (config.json + model.safetensors)
    optimizer.safetensors   every optimizer state tensor, flattened; param groups in the JSON metadata
    rng.safetensors   torch CPU/CUDA generator states (and numpy's, when numpy is loaded)
    state.json        step, epoch, history so far, Python's RNG state

The folder is written under a temporary name and renamed in one step, so a crash never leaves half a checkpoint.
The learning-rate schedule is a pure function of the step, and the data order a pure function of seed and epoch,
so step + these states are everything a resumed run needs to continue exactly.

Example:
    >>> latest_checkpoint("runs/missing") is None
    True
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nbft._utils import atomic_path

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of an interrupted save are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep_last: int,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint for ``step`` atomically, then delete all but the newest ``keep_last``.

    ``weights`` replaces the model's own state dict (the fp32 master weights of a bf16 run).
    """
    target = checkpoint_dir(run_dir, step)
    with atomic_path(target) as tmp:
        tmp.mkdir()
        model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=weights)
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"nbft": json.dumps(meta)})
        save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
        full_state = {**state, "step": step, "python_rng": _python_rng()}
        (tmp / "state.json").write_text(json.dumps(full_state))
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path, *, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer and RNG states from ``path`` (the model is loaded by the caller) and return state.json."""
    with safe_open(str(path / "optimizer.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["nbft"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys(), not iteration
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta))
    with safe_open(str(path / "rng.safetensors"), framework="pt") as f:
        _restore_rng({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    state = json.loads((path / "state.json").read_text())
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return state


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, values in sd["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    if "numpy" in sys.modules:  # only when something loaded numpy: its global RNG may feed augmentation code
        import numpy as np

        _, keys, pos, has_gauss, cached = np.random.get_state()
        out["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
        out["numpy_rest"] = torch.tensor([pos, has_gauss, cached], dtype=torch.float64)
    return out


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy_keys" in tensors:
        import numpy as np

        pos, has_gauss, cached = tensors["numpy_rest"].tolist()
        keys = tensors["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), cached))


def _python_rng() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
