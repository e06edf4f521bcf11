"""Find, read and compare training runs on disk; stop live runs; see and free the memory models hold.

Everything here reads run directories and never writes to them. A run directory (``finetune(run_dir=...)``) holds
``run.json`` (config, base model), ``history.jsonl`` (one line per step, evaluation and monitor point),
``checkpoints/step-N/`` and, once completed, ``model/``. From those files alone :func:`runs` tells a run's status,
so a new kernel (after a restart, a crash or a Colab disconnect) can find a run and resume it.

Status, from the files:

- ``running``: training now, in this process (a live ``Run``) or in another one that holds the run's lock file
  (``run.lock``, see :mod:`nbft.train.lock`);
- ``completed``: ``model/`` was written;
- ``stopped``: the newest checkpoint is at the last recorded step (Stop, Ctrl-C, or a failure after a save);
- ``interrupted``: steps were recorded after the newest checkpoint (the kernel died); resuming repeats them;
- ``no checkpoint``: steps were recorded but no checkpoint was written (``TrainConfig(save_every=...)`` avoids it);
- ``not started``: ``run.json`` only.

Example:
    >>> import nbft
    >>> nbft.runs("runs")  # doctest: +SKIP
             run       status  step  of    loss  val_loss  elapsed              updated  resumable
    0  sentiment-1  interrupted    40  60  0.4112    0.5210   1:12  2026-11-27 18:40:02       True
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import json
import logging
import os
import re
import socket
import sys
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "RunInfo",
    "config_diff",
    "free_memory",
    "live_runs",
    "load_history",
    "main_run_dir",
    "memory_report",
    "read_run",
    "register_run",
    "runs",
    "stop_run",
]

_STEP_DIR = re.compile(r"^step-(\d+)$")
_COLUMNS = [
    "run", "status", "step", "of", "loss", "val_loss", "elapsed", "updated", "resumable", "checkpoint", "path",
]  # fmt: skip


@dataclasses.dataclass
class RunInfo:
    """What the files of one run directory say about it (see the module docstring for ``status``)."""

    path: Path
    status: str
    step: int | None = None
    """The last recorded optimizer step."""
    total_steps: int | None = None
    loss: float | None = None
    """Training loss at the last recorded step."""
    val_loss: float | None = None
    elapsed_s: float | None = None
    updated: _dt.datetime | None = None
    """When a file of the run last changed."""
    checkpoint: Path | None = None
    """The newest complete checkpoint (what ``nbft.resume`` continues from)."""
    checkpoint_step: int | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    base_model: str | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def resumable(self) -> bool:
        """A checkpoint exists and the run is neither running nor completed."""
        return self.checkpoint is not None and self.status in ("stopped", "interrupted")

    def row(self) -> dict[str, Any]:
        return {
            "run": self.name,
            "status": self.status,
            "step": self.step,
            "of": self.total_steps,
            "loss": self.loss,
            "val_loss": self.val_loss,
            "elapsed": _clock(self.elapsed_s),
            "updated": self.updated.strftime("%Y-%m-%d %H:%M:%S") if self.updated else None,
            "resumable": self.resumable,
            "checkpoint": self.checkpoint_step,
            "path": str(self.path),
        }


# ------------------------------------------------------------------------------------------------ reading
def load_history(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/history.jsonl`` as plain dicts (a torn last line, from a kill, is skipped).

    Example:
        >>> load_history("runs/missing")
        []
    """
    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash; the rest of the file is still good
        if isinstance(record, dict):
            records.append(record)
    return records


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        # A checkpoint folder appears under its final name only once complete (written under a temporary name).
        if m and p.is_dir() and (p / "state.json").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _lock_held(run_dir: Path) -> bool:
    """Whether another live process holds the run directory's lock file (an OS lock, or a PID on this host)."""
    for lock in [*run_dir.glob("*.lock"), run_dir / "lock", run_dir / ".lock"]:
        if not lock.is_file():
            continue
        if _os_lock_held(lock):
            return True
        try:
            text = lock.read_text(errors="replace").strip()
        except OSError:
            continue
        pid, host = None, None
        try:
            data = json.loads(text)
            if isinstance(data, dict):
                if data.get("os_lock") and _has_flock():
                    continue  # nbft's own lock: the OS lock is free, so its holder is gone (even if its PID is reused)
                pid, host = data.get("pid"), data.get("host") or data.get("hostname")
            elif isinstance(data, int):
                pid = data
        except json.JSONDecodeError:
            parts = text.split()
            pid = int(parts[0]) if parts and parts[0].isdigit() else None
            host = parts[1] if len(parts) > 1 else None
        if isinstance(pid, int) and (host in (None, socket.gethostname())) and _pid_alive(pid):
            return True
    return False


def _has_flock() -> bool:
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover - Windows
        return False
    return True


def _os_lock_held(lock: Path) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: rely on the PID in the file
        return False
    try:
        with open(lock, "rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # a shared probe; released on close
            except BlockingIOError:
                return True
    except OSError:
        return False
    return False


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return False  # this process: only a live Run object in it counts (see live_runs)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def newer_version_note(text: str) -> str:
    """For an error about a ``run.json`` (its text): which nbft wrote it, when that is newer than this one.

    Example:
        >>> newer_version_note('{"nbft": "99.0", "config": {}}')  # doctest: +ELLIPSIS
        ' It was written by nbft 99.0 (this is ...): upgrade with pip install -U nbft, then try again'
        >>> newer_version_note('{"config": {}}')
        ''
    """
    from packaging.version import InvalidVersion, Version

    from nbft import __version__

    try:
        meta = json.loads(text)
        version = meta.get("nbft") if isinstance(meta, dict) else None
    except ValueError:  # too damaged to parse: the version may still be readable
        found = re.search(r'"nbft"\s*:\s*"([^"]{1,40})"', text)
        version = found.group(1) if found else None
    try:
        newer = isinstance(version, str) and Version(version) > Version(__version__)
    except InvalidVersion:
        return ""
    if not newer:
        return ""
    return (
        f" It was written by nbft {version} (this is {__version__}): upgrade with pip install -U nbft, then try again"
    )


def main_run_dir(folder: str | os.PathLike[str]) -> Path:
    """``folder`` itself when it is a run directory; for the folder of a sweep or a demo (``sweep.json``), its main
    run: the first variant's first seed (the demo's tuned model). Anything else is returned as given.

    Example:
        >>> main_run_dir("runs/demo-1")  # doctest: +SKIP
        PosixPath('runs/demo-1/target-only/seed-0')
    """
    path = Path(folder)
    if (path / "run.json").is_file() or not (path / "sweep.json").is_file():
        return path
    try:
        main = json.loads((path / "sweep.json").read_text()).get("main_run")
    except (OSError, json.JSONDecodeError, AttributeError):
        return path
    return path / main if isinstance(main, str) and (path / main / "run.json").is_file() else path


def read_run(run_dir: str | os.PathLike[str], *, _live: list[Any] | None = None) -> RunInfo:
    """Read one run directory (read-only) into a :class:`RunInfo`.

    Example:
        >>> info = read_run("runs/sentiment-1")  # doctest: +SKIP
        >>> info.status, info.step, info.resumable  # doctest: +SKIP
        ('interrupted', 40, True)
    """
    path = Path(run_dir)
    meta_path = path / "run.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{path} is not an nbft run directory (no run.json); list the runs with nbft.runs('runs') and pass "
            "one of their paths"
        )
    text = meta_path.read_text(errors="replace")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{meta_path} is damaged ({exc}); this run cannot be resumed from its files.{newer_version_note(text)}"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config", {}), dict):
        raise ValueError(
            f"{meta_path} is damaged (not a run description); this run cannot be resumed from its files."
            f"{newer_version_note(text)}"
        )
    history = load_history(path)
    # a record whose step is not a number (edited by hand, or damaged) says nothing about progress
    history = [h for h in history if isinstance(h.get("step", 0), int | float) and not isinstance(h.get("step"), bool)]
    train = [h for h in history if h.get("kind") == "train"]
    evals = [h for h in history if h.get("kind") == "eval" and h.get("val_loss") is not None]
    checkpoints = _checkpoints(path)
    ck_step, ck_path = checkpoints[-1] if checkpoints else (None, None)
    step = train[-1].get("step") if train else ck_step
    info = RunInfo(
        path=path,
        status="",
        step=step,
        total_steps=train[-1].get("total_steps") if train else meta.get("config", {}).get("max_steps"),
        loss=train[-1].get("loss") if train else None,
        val_loss=evals[-1].get("val_loss") if evals else None,
        elapsed_s=train[-1].get("elapsed_s") if train else None,
        updated=_updated(path, ck_path),
        checkpoint=ck_path,
        checkpoint_step=ck_step,
        config=dict(meta.get("config") or {}),
        base_model=meta.get("base_model"),
        history=history,
    )
    info.status = _status(path, info, train, live_runs() if _live is None else _live)
    return info


def _status(path: Path, info: RunInfo, train: list[dict[str, Any]], live: list[Any]) -> str:
    if any(_same_dir(run.run_dir, path) for run in live) or _lock_held(path):
        return "running"
    last = train[-1] if train else {}
    extended = isinstance(last.get("total_steps"), int) and (last.get("step") or 0) < last["total_steps"]
    if (path / "model" / "config.json").exists() and not extended:
        return "completed"  # (a completed run continued with resume(more_steps=...) is not, until it ends again)
    if info.checkpoint is None:
        return "no checkpoint" if train else "not started"
    if info.step is not None and info.checkpoint_step is not None and info.step > info.checkpoint_step:
        return "interrupted"
    return "stopped"


def _updated(path: Path, checkpoint: Path | None) -> _dt.datetime | None:
    candidates = [path / "history.jsonl", path / "run.json", path / "model"]
    if checkpoint is not None:
        candidates.append(checkpoint)
    times = [p.stat().st_mtime for p in candidates if p.exists()]
    return _dt.datetime.fromtimestamp(max(times)) if times else None


def _same_dir(a: Any, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def _clock(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _find_run_dirs(folder: Path, depth: int = 3) -> list[Path]:
    if (folder / "run.json").is_file():
        return [folder]
    found: list[Path] = []
    if depth == 0:
        return found
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return found
    for child in children:
        found.extend(_find_run_dirs(child, depth - 1))
    return found


def runs(folder: str | os.PathLike[str] = "runs") -> Any:
    """A table of the training runs under ``folder``: status, step, last loss, validation loss, time, resumable.

    Reads ``run.json``, ``history.jsonl`` and ``checkpoints/`` of each run directory (up to three levels down, so
    a sweep's ``<sweep>/<variant>/seed-<s>`` too); writes nothing. Newest first. ``nbft.resume(path)`` (or
    ``TrainPanel.from_run_dir(path)``) continues a resumable one.

    Example:
        >>> table = runs("runs")  # doctest: +SKIP
        >>> table[table.resumable].path.tolist()  # doctest: +SKIP
        ['runs/sentiment-1']
    """
    import pandas as pd

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(
            f"no folder {str(root)!r} (in {Path.cwd()}): pass the folder that holds your run directories, "
            "e.g. nbft.runs('runs') where finetune(run_dir='runs/...') wrote them"
        )
    infos = []
    live = live_runs()
    for path in _find_run_dirs(root):
        try:
            infos.append(read_run(path, _live=live))
        except (OSError, ValueError) as exc:
            logger.warning("skipped %s: %s", path, exc)
    infos.sort(key=lambda i: i.updated or _dt.datetime.min, reverse=True)
    return pd.DataFrame([i.row() for i in infos], columns=_COLUMNS)


# ------------------------------------------------------------------------------------------------ comparing
def config_diff(configs: Mapping[str, Mapping[str, Any]]) -> Any:
    """The settings that differ between runs: one row per differing key, one column per run.

    Example:
        >>> config_diff({"a": {"lr": 1e-4, "seed": 0}, "b": {"lr": 2e-4, "seed": 0}}).to_dict()
        {'a': {'lr': 0.0001}, 'b': {'lr': 0.0002}}
    """
    import pandas as pd

    flat = {name: _flatten(cfg) for name, cfg in configs.items()}
    keys = sorted({k for cfg in flat.values() for k in cfg})
    missing = object()
    rows = {}
    for key in keys:
        values = [flat[name].get(key, missing) for name in flat]
        if len({json.dumps(v, sort_keys=True, default=str) if v is not missing else "\0" for v in values}) > 1:
            rows[key] = {name: (None if v is missing else v) for name, v in zip(flat, values)}
    # object dtype and rows built as lists: pandas would turn a missing setting's None into NaN
    frame = pd.DataFrame([list(v.values()) for v in rows.values()], index=list(rows), columns=list(flat), dtype=object)
    frame.index.name = "setting"
    return frame


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


# ------------------------------------------------------------------------------------------------ live runs
_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


def register_run(run: Any) -> Any:
    """Remember a live ``Run`` so :func:`live_runs` and ``%nbft stop`` find it (panels call this)."""
    _LIVE.add(run)
    return run


def live_runs() -> list[Any]:
    """The ``nbft.train.Run`` objects of this process that are still training (registered, or found by gc)."""
    found = {id(r): r for r in list(_LIVE)}
    handles = sys.modules.get("nbft.train.run")
    if handles is not None:  # runs started from a script or a cell without a panel
        run_type = handles.Run
        for obj in gc.get_objects():
            if type(obj) is run_type:  # type(), not isinstance: some objects warn when asked for __class__
                found.setdefault(id(obj), obj)
    # "running", not "not done": a run that is reporting its end (on_train_end) is no longer training
    return [r for r in found.values() if getattr(r, "status", "") == "running"]


def stop_run(which: str | os.PathLike[str] | None = None) -> Any:
    """Ask a live run to stop after its current step (a checkpoint is written); return it.

    ``which``: the run directory (path or folder name); may be left out when exactly one run is training.

    Example:
        >>> stop_run("runs/sentiment-1")  # doctest: +SKIP
    """
    live = live_runs()
    if not live:
        raise LookupError("no run is training in this kernel (runs in other processes stop with their own Stop)")
    if which is None:
        if len(live) > 1:
            names = ", ".join(str(r.run_dir) for r in live)
            raise LookupError(f"{len(live)} runs are training ({names}): name the one to stop, e.g. %nbft stop RUN")
        chosen = live[0]
    else:
        text = str(which)
        matches = [r for r in live if _same_dir(r.run_dir, Path(text)) or Path(r.run_dir).name == text]
        if not matches:
            names = ", ".join(str(r.run_dir) for r in live)
            raise LookupError(f"no training run matches {text!r}; training now: {names}")
        chosen = matches[0]
    chosen.stop()
    return chosen


# ------------------------------------------------------------------------------------------------ memory
def memory_report(namespace: Mapping[str, Any] | None = None) -> Any:
    """Memory in use (per GPU, or the process on CPU) and the models that hold it, with the names that refer to
    them in ``namespace`` (e.g. a notebook's globals), so you know what to ``del``.

    Example:
        >>> memory_report(globals())  # doctest: +SKIP
    """
    import pandas as pd

    rows = []
    for model in _models_in_memory():
        params = list(model.parameters())
        nbytes = sum(p.numel() * p.element_size() for p in params)
        device = str(params[0].device) if params else "?"
        name = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
        rows.append(
            {
                "model": type(model).__name__,
                "name": name,
                "parameters_M": round(sum(p.numel() for p in params) / 1e6, 1),
                "MiB": round(nbytes / 2**20, 1),
                "device": device,
                "held_by": ", ".join(_names_for(model, namespace or {})) or "(no variable: held by a run or panel)",
            }
        )
    return pd.DataFrame(rows, columns=["model", "name", "parameters_M", "MiB", "device", "held_by"])


def _models_in_memory() -> list[Any]:
    if "torch" not in sys.modules:
        return []
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return []
    found = [obj for obj in gc.get_objects() if issubclass(type(obj), PreTrainedModel)]
    # A causal LM holds its base model (also a PreTrainedModel): count each set of weights once, at the top.
    inner = {id(sub) for model in found for sub in model.modules() if sub is not model}
    return [model for model in found if id(model) not in inner]


def _names_for(obj: Any, namespace: Mapping[str, Any]) -> list[str]:
    names = []
    for name, value in namespace.items():
        if name.startswith("_"):
            continue
        if value is obj:
            names.append(name)
        elif isinstance(value, tuple) and any(v is obj for v in value):
            names.append(f"{name}[…]")
        else:
            try:
                held = getattr(value, "model", None) is obj  # a Run, a panel, a Trainer...
            except Exception:  # an arbitrary object whose attribute raises: not ours to judge
                held = False
            if held:
                names.append(f"{name}.model")
    return names


def device_memory() -> list[dict[str, Any]]:
    """Allocated and reserved memory per CUDA device (MiB), or the process's resident memory on CPU."""
    rows: list[dict[str, Any]] = []
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            rows.append(
                {
                    "device": f"cuda:{i}",
                    "allocated_MiB": round(torch.cuda.memory_allocated(i) / 2**20, 1),
                    "reserved_MiB": round(torch.cuda.memory_reserved(i) / 2**20, 1),
                    "peak_MiB": round(torch.cuda.max_memory_allocated(i) / 2**20, 1),
                }
            )
        return rows
    rows.append({"device": "cpu", "resident_MiB": round(_rss_bytes() / 2**20, 1)})
    return rows


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def free_memory() -> dict[str, Any]:
    """Collect garbage and return the CUDA cache to the driver; ``{"before": [...], "after": [...]}``.

    Call it *after* dropping your references (``del model``): memory still referenced cannot be freed, and
    emptying the cache before the last reference goes returns nothing.

    Example:
        >>> del model; free_memory()["after"]  # doctest: +SKIP
    """
    before = device_memory()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"before": before, "after": device_memory()}
