"""Resumable checkpoints: model, optimizer, RNG states and data position, in safetensors, written atomically.

Layout of ``<run_dir>/checkpoints/step-000120/``::

    model/            save_pretrained (config.json + model.safetensors)
    optimizer.safetensors   every optimizer state tensor, flattened; param groups in the JSON metadata
    rng.safetensors   each process's torch CPU/CUDA generator states (and numpy's, when numpy is loaded)
    state.json        step, epoch, history so far, the run's config, each process's Python RNG state
    manifest.json     size and SHA-256 of every file above: written last, so it vouches for the whole folder

The main process writes the folder under a temporary name; it is renamed in one step only after every process has
reached the barrier, so a crash (of any process) never leaves half a checkpoint. Model weights are the fp32 master
weights, whatever dtype the model computes in. What a disk, a copy or a kill can still do to a folder afterwards
(a truncated or empty file, flipped bytes, a lost file) is caught by :func:`verify_checkpoint`, and
:func:`resumable_checkpoint` falls back to the newest intact checkpoint. A kill during a save leaves a temporary
``.step-N.*`` folder: :func:`tidy_checkpoints` (called when a run starts) restores a complete one whose final
name is missing and removes the rest.
The learning-rate schedule is a pure function of the step, and the data order a pure function of seed and epoch,
so step + these states are everything a resumed run needs to continue exactly.

Example:
    >>> latest_checkpoint("runs/missing") is None
    True
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import random
import re
import shutil
import struct
import sys
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nbft._utils import OWNER_MARKER, atomic_path

logger = logging.getLogger("nbft.train")

_STEP_DIR = re.compile(r"^step-(\d+)$")
# What an interrupted save can leave in checkpoints/: atomic_path's temporary folder, or a folder moved aside.
_TEMP_DIR = re.compile(r"^\.step-(\d+)\.(?:[a-z0-9_]{8}|old-\d+)$")
MANIFEST = "manifest.json"
_REQUIRED = ("model/config.json", "optimizer.safetensors", "rng.safetensors", "state.json")


class RunWriteError(OSError):
    """A run file could not be written (a full or read-only disk...); the message says what failed, which
    checkpoint is intact, and how to resume. ``errno`` is the original error's."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO}


def write_failure(exc: BaseException, run_dir: str | Path, what: str | None = None) -> RunWriteError | None:
    """``exc`` as a :class:`RunWriteError` when it is a failed write to the disk (``what`` names what was being
    written; without it only disk errors such as a full or read-only disk count); ``None`` otherwise.

    Example:
        >>> err = write_failure(OSError(28, "No space left on device"), "runs/missing", "the checkpoint of step 4")
        >>> str(err).split(":")[0]
        'could not write the checkpoint of step 4 to runs/missing'
    """
    if isinstance(exc, RunWriteError):
        return exc
    code = getattr(exc, "errno", None)
    if isinstance(exc, SafetensorError):  # the Rust error: IoError(Os { code: 28, ..., message: "No space left..." })
        found = re.search(r"code: (\d+).*?message: \"([^\"]*)\"", str(exc))
        code, reason = (int(found.group(1)), found.group(2)) if found else (None, str(exc))
    elif isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    else:
        return None
    run_dir = Path(run_dir)
    name = getattr(exc, "filename", None)
    if what is None:  # only a disk error while writing the run directory (a full /tmp elsewhere is another story)
        if code not in _DISK_ERRNOS or (name and not Path(name).resolve().is_relative_to(run_dir.resolve())):
            return None
        what = str(name) if name else "a run file"
    kept, _ = resumable_checkpoint(run_dir)
    if kept is not None:
        saved = (
            f"Nothing was lost: the previous checkpoint {kept.name} is intact (nothing half-written was left "
            f"behind). {_remedy(code)}, then continue the run from {kept.name} with nbft.resume('{run_dir}')"
        )
    else:
        saved = (
            f"No checkpoint had been written yet, so the run has to start again. {_remedy(code)}, then train again "
            "with overwrite=True"
        )
    error = RunWriteError(f"could not write {what} to {run_dir}: {reason}. {saved}")
    error.errno = code
    return error


@contextlib.contextmanager
def _write_failures(run_dir: Path, what: str) -> Iterator[None]:
    try:
        yield
    except (OSError, SafetensorError) as exc:
        raise write_failure(exc, run_dir, what) from exc  # type: ignore[misc]


def _remedy(code: int | None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "Free some space on that disk (or copy the run folder to a larger one)"
    if code == errno.EROFS:
        return "Make the disk writable again (or copy the run folder to a writable one)"
    return "Fix the cause above"


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
    keep: Collection[int] = (),
) -> Path:
    """Write a checkpoint for ``step`` atomically, then delete all but the newest ``keep_last`` and those of the
    steps in ``keep`` (e.g. the best one a monitor marked, see :func:`nbft.train.selection.protected_steps`).

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
    # a full or read-only disk: RunWriteError (the earlier checkpoints are untouched, the temporary folder removed)
    with _write_failures(run_dir, f"the checkpoint of step {step}"), atomic_path(target, overwrite=True) as tmp:
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
        write_manifest(tmp, step)  # last: a folder with a valid manifest is a whole checkpoint
        if barrier is not None:
            barrier()  # every process got here: only now may the checkpoint be called complete
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if int(old.name.removeprefix("step-")) not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return target


def write_manifest(folder: Path, step: int) -> Path:
    """Write ``manifest.json``: size and SHA-256 of every file in ``folder`` (call it after the last file)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in (MANIFEST, OWNER_MARKER):
            continue
        files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    manifest = folder / MANIFEST
    manifest.write_text(json.dumps({"format": 1, "step": step, "files": files}, indent=1))
    return manifest


def verify_checkpoint(path: str | Path, *, checksums: bool = True) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from, or ``None`` when it is intact.

    With a manifest: every listed file exists with its size (and, with ``checksums``, its SHA-256). Without one
    (written by an nbft before manifests): the required files exist, parse and are not truncated.

    Example:
        >>> verify_checkpoint("runs/missing/checkpoints/step-000001")
        'the folder is missing'
    """
    path = Path(path)
    if not path.is_dir():
        return "the folder is missing"
    manifest = path / MANIFEST
    if not manifest.is_file():
        return _verify_legacy(path)
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"{MANIFEST} is damaged"
    for rel in _REQUIRED:
        if rel not in listed:
            return f"{MANIFEST} does not list {rel}"
    for rel, want in listed.items():
        file = path / rel
        if not file.is_file():
            return f"{rel} is missing"
        size = file.stat().st_size
        if size != want.get("size"):
            return f"{rel} has {size} bytes, {want.get('size')} were written (truncated or changed)"
        if checksums and _sha256(file) != want.get("sha256"):
            return f"{rel} does not match its checksum (its bytes changed after it was written)"
    return None


def _verify_legacy(path: Path) -> str | None:
    if not any(path.iterdir()):
        return "the folder is empty"
    for rel in _REQUIRED:
        if not (path / rel).is_file():
            return f"{rel} is missing (and there is no {MANIFEST}: the checkpoint is incomplete)"
    weights = sorted((path / "model").glob("*.safetensors"))
    if not weights:
        return "model/ has no .safetensors weights"
    for file in [*weights, path / "optimizer.safetensors", path / "rng.safetensors"]:
        problem = _safetensors_problem(file)
        if problem:
            return f"{file.relative_to(path).as_posix()} {problem}"
    try:
        json.loads((path / "state.json").read_text())["step"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "state.json is damaged"
    return None


def _safetensors_problem(file: Path) -> str | None:
    """A safetensors file's header must parse and the data it describes must all be there."""
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return "is truncated"
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return "is empty or damaged"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return "is truncated" if 8 + n + end > size else None


def resumable_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint of a run, and the newer ones skipped with the reason for each.

    Example:
        >>> resumable_checkpoint("runs/missing")
        (None, [])
    """
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint so it is no longer listed (nor pruned as if it were newer); return the new path."""
    target = path.with_name(f"{path.name}.damaged")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{n}")
    path.rename(target)
    return target


def tidy_checkpoints(run_dir: str | Path) -> list[str]:
    """After a crash: restore a whole checkpoint left under a temporary name, remove the other temporaries.

    Only nbft's own temporary names (``.step-N.XXXXXXXX``, ``.step-N.old-PID``) in ``checkpoints/`` are touched;
    call it only while holding the run directory's lock (a live writer's temporaries look the same). Returns one
    line per action, for the log.
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = []
    for entry in sorted(root.iterdir()):
        m = _TEMP_DIR.match(entry.name)
        if not m or not entry.is_dir() or entry.is_symlink():
            continue
        final = root / f"step-{m.group(1)}"
        # atomic_path's temporary holds the checkpoint one level down; a folder moved aside is the checkpoint
        candidate = entry / final.name if (entry / final.name).is_dir() else entry
        if not final.exists() and (candidate / MANIFEST).is_file() and verify_checkpoint(candidate) is None:
            candidate.rename(final)
            done.append(f"restored {final.name} from the interrupted save {entry.name}")
        else:
            done.append(f"removed {entry.name}, left by an interrupted save")
        shutil.rmtree(entry, ignore_errors=True)
    return done


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


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
    # By device number: sorted as strings, device 10's state would go to device 2.
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("torch_cuda_")), key=_device_number)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy_keys" in tensors:
        import numpy as np

        pos, has_gauss, cached = tensors["numpy_rest"].tolist()
        keys = tensors["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), cached))


def _device_number(key: str) -> int:
    return int(key.removeprefix("torch_cuda_"))


def _python_rng() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
