"""Resumable checkpoints: model, optimizer, RNG states and data position, in safetensors, written atomically.

Layout of ``<run_dir>/checkpoints/step-000120/``::

    model/            save_pretrained (config.json + model.safetensors)
    optimizer.safetensors   every optimizer state tensor, flattened; param groups in the JSON metadata
    rng.safetensors   each process's torch CPU/CUDA generator states (and numpy's, when numpy is loaded)
    state.json        step, epoch, history so far, each process's Python RNG state

The main process writes the folder under a temporary name; it is renamed in one step only after every process has
reached the barrier, so a crash (of any process) never leaves half a checkpoint. Model weights are the fp32 master
weights, whatever dtype the model computes in.
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
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep_last: int,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    rng_states: list[dict[str, Any]] | None = None,
    is_main: bool = True,
    barrier: Any = None,
) -> Path:
    """Write a checkpoint for ``step`` atomically, then delete all but the newest ``keep_last``.

    ``weights`` replaces the model's own state dict (the fp32 master weights); ``optimizer_state`` replaces
    ``optimizer.state_dict()``. With several processes, every process calls this: ``rng_states`` holds each
    process's :func:`rng_state` (rank order), only ``is_main`` writes, and ``barrier()`` (called by all) decides
    the moment the checkpoint becomes complete.
    """
    target = checkpoint_dir(run_dir, step)
    rng_states = rng_states if rng_states is not None else [rng_state()]
    if not is_main:
        if barrier is not None:
            barrier()
        return target
    with atomic_path(target) as tmp:
        tmp.mkdir()
        model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=weights)
        opt = optimizer_state if optimizer_state is not None else optimizer.state_dict()  # type: ignore[union-attr]
        tensors, meta = _flatten_optimizer(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"nbft": json.dumps(meta)})
        rng = {f"rank{r}/{k}": v for r, s in enumerate(rng_states) for k, v in s["tensors"].items()}
        save_file(rng, str(tmp / "rng.safetensors"))
        full_state = {
            **state,
            "step": step,
            "world_size": len(rng_states),
            "python_rng": rng_states[0]["python"],
            "python_rng_per_rank": [s["python"] for s in rng_states],
        }
        (tmp / "state.json").write_text(json.dumps(full_state))
        if barrier is not None:
            barrier()  # every process got here: only now may the checkpoint be called complete
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def rng_state() -> dict[str, Any]:
    """This process's random generator states (torch CPU/CUDA, numpy when loaded, Python's)."""
    return {"tensors": _rng_tensors(), "python": _python_rng()}


def load_checkpoint(
    path: Path, *, optimizer: torch.optim.Optimizer | None, rank: int = 0, restore_optimizer: bool = True
) -> dict[str, Any]:
    """Restore optimizer and this process's RNG states from ``path`` (the caller loads the model); return
    state.json, whose ``optimizer_state`` key holds the optimizer state when ``restore_optimizer`` is False."""
    with safe_open(str(path / "optimizer.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["nbft"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys(), not iteration
    opt_state = _unflatten_optimizer(tensors, meta)
    if restore_optimizer and optimizer is not None:
        optimizer.load_state_dict(opt_state)
    with safe_open(str(path / "rng.safetensors"), framework="pt") as f:
        rng = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    mine = f"rank{rank}/" if any(k.startswith(f"rank{rank}/") for k in rng) else "rank0/"
    if any(k.startswith(mine) for k in rng):
        rng = {k.removeprefix(mine): v for k, v in rng.items() if k.startswith(mine)}
    _restore_rng(rng)  # a checkpoint from another number of processes: rank 0's states (or the legacy layout)
    state = json.loads((path / "state.json").read_text())
    per_rank = state.get("python_rng_per_rank") or [state["python_rng"]]
    version, internal, gauss = per_rank[rank] if rank < len(per_rank) else per_rank[0]
    random.setstate((version, tuple(internal), gauss))
    if not restore_optimizer:
        state["optimizer_state"] = opt_state
    return state


_NESTED = "::"  # joins a nested state key to its parent's in the flat tensor names


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()

    def own(t: torch.Tensor) -> torch.Tensor:
        # safetensors refuses tensors that share memory (bitsandbytes shares one quantisation map): copy repeats.
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            return t.clone()
        seen.add(ptr)
        return t

    for pid, values in sd["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}/{name}"] = own(value)
            elif isinstance(value, dict):  # one level of nesting (bitsandbytes keeps its 8-bit states in a dict)
                for sub, v in value.items():
                    if isinstance(v, torch.Tensor):
                        tensors[f"{pid}/{name}{_NESTED}{sub}"] = own(v)
                    else:
                        scalars.setdefault(str(pid), {}).setdefault(name, {})[sub] = v
                scalars.setdefault(str(pid), {}).setdefault(name, {})
            else:
                scalars.setdefault(str(pid), {})[name] = value
    # Some optimizers (torchao's) keep the learning rate as a tensor: the metadata is JSON, so store numbers.
    groups = [{k: v.item() if isinstance(v, torch.Tensor) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[Any, dict[str, Any]] = {}

    def key_of(pid: str) -> Any:  # integer ids for plain optimizers; parameter names under FSDP
        return int(pid) if pid.isdigit() else pid

    for key, value in tensors.items():
        pid, name = key.rsplit("/", 1)
        if _NESTED in name:
            name, sub = name.split(_NESTED, 1)
            state.setdefault(key_of(pid), {}).setdefault(name, {})[sub] = value
        else:
            state.setdefault(key_of(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        entry = state.setdefault(key_of(pid), {})
        for name, value in values.items():
            if isinstance(value, dict):
                entry.setdefault(name, {}).update(value)
            else:
                entry[name] = value
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
