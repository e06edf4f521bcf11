"""What ``finetune`` and ``resume`` check before they touch a run directory, so that nothing is lost or mixed.

* **One writer per run directory**: :class:`~nbft.train.lock.RunLock` (``run.lock``) for the run's whole life.
* **One run per model object**: a model that a live run is training cannot start a second run.
* **A new run lands in an empty or new folder**: a folder holding files that are not an nbft run is refused (so a
  run never mixes into the user's own ``data/`` or ``tokenizer/``); a folder holding another run (``run.json``, a
  history, checkpoints or a model) is refused too, and ``overwrite=True`` replaces nbft's own files of it (by name:
  nothing else in the folder, nor a file the user put in its ``data/`` or ``tokenizer/``).
* **Resume continues what is there, or says why not**: the newest intact checkpoint (damaged ones are skipped with
  the reason, and set aside), a completed run only with ``more_steps=``, a changed ``run.json`` config only with
  ``allow_config_change=True``.
* **Ctrl-C only asks for a stop**: :func:`stop_on_interrupt` turns the first interrupt into a stop request.

Example:
    >>> check_new_run_dir(Path("/tmp/nbft-doc-new-run"), overwrite=False)  # an empty or missing folder is fine
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nbft._utils import OWNER_MARKER
from nbft.config import TrainConfig
from nbft.train.checkpoint import list_checkpoints, resumable_checkpoint, set_aside, tidy_checkpoints

logger = logging.getLogger("nbft.train")

RUN_FILES = ("run.json", "history.jsonl", "checkpoints", "model", "data", "tokenizer", "comparison.json",
             "comparison.txt")  # fmt: skip
"""The names nbft writes in a run directory (besides ``run.lock``)."""

WHOLE_FOLDERS = ("checkpoints", "model")
"""Folders a run writes whole (each checkpoint and the model land in one rename): ``overwrite=True`` removes them."""

SHARED_FOLDERS = {
    "data": ("train.safetensors", "validation.safetensors", "train_hashes.safetensors"),
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                  "chat_template.jinja", "chat_template.json", "vocab.json", "vocab.txt", "merges.txt",
                  "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "source.spm", "target.spm",
                  "bpe.codes", "vocab.model", "additional_chat_templates"),
}  # fmt: skip
"""Folders a run writes file by file (``mkdir`` then its files), with the names it writes there: ``overwrite=True``
removes only these names (and the folder when nothing else is left), so a file put beside them survives."""

# ------------------------------------------------------------------------------------------------ new runs


def check_new_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse a ``run_dir`` that is a file, holds files that are not an nbft run (a new run needs an empty or absent
    folder), or already holds a run, unless ``overwrite`` (then :func:`clear_old_run` removes that run's files when
    the new run is ready). Call it holding the lock."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"run_dir {run_dir} is a file; give a folder path for the run")
    held = _what_it_holds(run_dir)
    if not held:
        foreign = foreign_entries(run_dir)
        if foreign:
            raise FileExistsError(
                f"run_dir {run_dir} holds files that are not an nbft run ({_listed(foreign)}): a run needs an empty "
                f"or new folder, so that none of your files is mixed with or replaced by the run's. Choose a new "
                f"run_dir, e.g. {str(run_dir / 'run-1')!r}"
                + (" (overwrite=True replaces only an earlier nbft run)" if overwrite else "")
            )
        return
    if not overwrite:
        hint = ""
        if (run_dir / "model").exists() and list_checkpoints(run_dir):
            hint = f"train it further with nbft.resume({str(run_dir)!r}, more_steps=N), "
        elif list_checkpoints(run_dir):
            hint = f"continue it with nbft.resume({str(run_dir)!r}), "
        raise FileExistsError(
            f"{run_dir} already holds a run ({held}): {hint}choose a new run_dir, or pass overwrite=True to replace "
            "that run's files"
        )


def foreign_entries(run_dir: Path) -> list[str]:
    """What in ``run_dir`` (one that holds no run) nbft did not write: everything but ``run.lock``, nbft's temporary
    names, and the ``data/``/``tokenizer/`` files a run killed before it wrote ``run.json`` left (nbft's own names,
    and ``tokenizer/`` only beside nbft's ``data/train.safetensors``). Folders are listed with a trailing ``/``.

    Example:
        >>> foreign_entries(Path("/tmp/nbft-doc-no-such-folder"))
        []
    """
    if not run_dir.is_dir():
        return []
    temp = _temp_name()
    setup_left = (run_dir / "data" / "train.safetensors").is_file()
    out = []
    for entry in sorted(run_dir.iterdir()):
        name = entry.name
        if name in ("run.lock", "run.lock.tmp") or (temp.match(name) and not entry.is_symlink()):
            continue
        if name in SHARED_FOLDERS and entry.is_dir() and not entry.is_symlink() and setup_left:
            strays = [p.name for p in entry.iterdir() if p.name not in SHARED_FOLDERS[name] and not temp.match(p.name)]
            if not strays:
                continue
        out.append(name + ("/" if entry.is_dir() else ""))
    return out


def _listed(names: list[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def clear_old_run(run_dir: Path) -> None:
    """``overwrite=True``: remove an earlier run's files once the new run is ready to start: the files nbft writes
    (:data:`RUN_FILES`; in ``data/`` and ``tokenizer/`` only nbft's names), never a file of the user's beside them."""
    held = _what_it_holds(run_dir)
    if not held:
        return
    removed, kept = [], []
    for name in RUN_FILES:
        path = run_dir / name
        if name in SHARED_FOLDERS and path.is_dir() and not path.is_symlink():
            for entry in sorted(path.iterdir()):
                if entry.name in SHARED_FOLDERS[name] or _temp_name().match(entry.name):
                    _remove(entry)
                    removed.append(f"{name}/{entry.name}")
                else:
                    kept.append(f"{name}/{entry.name}")
            if not any(path.iterdir()):
                path.rmdir()
        elif name == "model" and path.exists() and not _nbft_model(run_dir):
            kept.append("model/")
        elif path.exists() or path.is_symlink():
            _remove(path)
            removed.append(name + ("/" if name in WHOLE_FOLDERS else ""))
    also = f"; kept what nbft did not write: {_listed(kept)}" if kept else ""
    logger.warning(
        "overwrite=True: removed the earlier run's files in %s (%s): %s%s", run_dir, held, _listed(removed, 12), also
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _temp_name() -> re.Pattern[str]:
    """The temporary names nbft's atomic writes use next to a target (``.<name>.<8 chars>`` or ``.<name>.old-N``)."""
    return re.compile(r"^\.[^/]+\.(?:[a-z0-9_]{8}|old-\d+)$")


def _what_it_holds(run_dir: Path) -> str:
    parts = []
    if _nbft_model(run_dir):
        parts.append("a final model/")
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        parts.append(f"{len(checkpoints)} checkpoint(s), the newest {checkpoints[-1].name}")
    history = run_dir / "history.jsonl"
    if history.is_file() and history.stat().st_size > 0:
        steps = sum(1 for line in history.read_text(errors="replace").splitlines() if '"kind": "train"' in line)
        parts.append(f"history.jsonl with {steps} step(s)")
    if (run_dir / "run.json").exists():
        parts.append("run.json")
    if parts and not checkpoints and not _nbft_model(run_dir):
        parts.append("no checkpoint")
    return ", ".join(parts)


def _nbft_model(run_dir: Path) -> bool:
    """``model/`` is the run's (nbft marks the folders it writes, and a run writes ``run.json`` first), not a folder
    of the user's that happens to have that name."""
    model = run_dir / "model"
    return model.is_dir() and ((model / OWNER_MARKER).is_file() or (run_dir / "run.json").is_file())


def tidy_run_dir(run_dir: Path) -> list[str]:
    """Remove what a killed write left in a run directory (only nbft's own temporary names), and restore a folder
    that was moved aside when its replacement never arrived. Call it while holding the lock."""
    done = [*tidy_checkpoints(run_dir)]
    if not run_dir.is_dir():
        return done
    names = "|".join(re.escape(n) for n in (*RUN_FILES, "history.jsonl"))
    temp = re.compile(rf"^\.({names})\.(?:([a-z0-9_]{{8}})|old-\d+)$")
    for entry in sorted(run_dir.iterdir()):
        m = temp.match(entry.name)
        if not m or entry.is_symlink():
            continue
        final = run_dir / m.group(1)
        if m.group(2) is None and entry.is_dir() and not final.exists():  # a whole folder moved aside: put it back
            entry.rename(final)
            done.append(f"restored {final.name} from {entry.name}")
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        done.append(f"removed {entry.name}, left by an interrupted write")
    return done


# ------------------------------------------------------------------------------------------------ model objects

_TRAINING: dict[int, Any] = {}
_TRAINING_LOCK = threading.Lock()


def claim_model(model: Any, run: Any) -> None:
    """Refuse a model object that a live run is training; else remember it as ``run``'s until :func:`release_model`."""
    with _TRAINING_LOCK:
        other = _TRAINING.get(id(model))
        if other is not None and other is not run:
            raise RuntimeError(
                f"this model object is already being trained by the run in {other.run_dir} (status {other.status}): "
                "wait for it (run.wait()), stop it (run.stop()), or train a copy (copy.deepcopy(model)) in a new run"
            )
        _TRAINING[id(model)] = run


def release_model(model: Any, run: Any) -> None:
    with _TRAINING_LOCK:
        if _TRAINING.get(id(model)) is run:
            del _TRAINING[id(model)]


# ------------------------------------------------------------------------------------------------ resume


@dataclasses.dataclass
class ResumePlan:
    """Where ``resume`` continues from and with which config."""

    checkpoint: Path
    meta: dict[str, Any]
    config: TrainConfig
    step: int
    skipped: list[tuple[Path, str]]
    """Newer checkpoints that failed their check, with the reason (they were renamed ``step-N.damaged``)."""
    extended: bool = False
    """``more_steps`` extends a completed run: run.json must be rewritten with the new ``max_steps``."""


def read_meta(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a run directory, or an error that says what is wrong and what to do."""
    meta_path = run_dir / "run.json"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}; list your runs with nbft.runs('runs') and pass one")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not an nbft run directory (no run.json); pass the run_dir of finetune()")
    from nbft.run_dirs import newer_version_note

    text = meta_path.read_text(errors="replace")
    try:
        meta = json.loads(text)
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise ValueError("no config in it")
    except ValueError as exc:
        newer = newer_version_note(text)
        if newer:
            raise ValueError(f"{meta_path} is in a form this nbft cannot read ({exc}).{newer}") from None
        raise ValueError(
            f"{meta_path} is damaged ({exc}): resume needs it. Restore it from a copy, or start a new run"
        ) from None
    return meta


def plan_resume(
    run_dir: Path, meta: dict[str, Any], *, more_steps: int | None, allow_config_change: bool
) -> ResumePlan:
    """Check a run directory for ``resume`` (holding its lock) and decide where to continue from."""
    for line in tidy_run_dir(run_dir):
        logger.warning("%s: %s", run_dir, line)
    checkpoint, skipped = resumable_checkpoint(run_dir)
    if checkpoint is None:
        reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped)
        raise FileNotFoundError(
            f"{run_dir} has no checkpoint to resume from"
            + (f" (none is intact: {reasons})" if skipped else "")
            + ": checkpoints are written on stop, at the end, every TrainConfig.save_every steps and every "
            "save_every_minutes"
        )
    set_aside_paths = []
    for path, why in skipped:
        moved = set_aside(path)
        set_aside_paths.append(moved)
        logger.warning(
            "%s: skipped checkpoint %s: %s. It was renamed %s (delete it when you no longer need it)",
            run_dir, path.name, why, moved.name,
        )  # fmt: skip
    if skipped:
        logger.warning("%s: resuming from %s, the newest intact checkpoint", run_dir, checkpoint.name)
    state = json.loads((checkpoint / "state.json").read_text())
    step = int(state["step"])
    saved_total = state.get("total_steps")
    final = saved_total is not None and step >= int(saved_total)
    # A kill between the final checkpoint and model/ leaves a run that resume() completes (it writes model/).
    completed = _has_final_model(run_dir) and (final or saved_total is None)
    try:
        config = TrainConfig(**meta["config"])
    except (TypeError, ValueError) as exc:
        from nbft.run_dirs import newer_version_note

        newer = newer_version_note((run_dir / "run.json").read_text(errors="replace"))
        raise ValueError(f"{run_dir}/run.json holds a config that is not valid: {exc}.{newer}") from None
    saved = state.get("config")
    if more_steps is not None:
        if not completed and not final:
            raise ValueError(
                f"{run_dir} has not completed (it is at step {step}): resume it without more_steps; more_steps "
                "extends a completed run"
            )
        if not final:
            raise ValueError(
                f"{run_dir} completed without a checkpoint at its final step (written by an older nbft), so it cannot "
                f"continue exactly: start a new run from {run_dir}/model with finetune()"
            )
        config = dataclasses.replace(config, max_steps=step + more_steps)
        if saved is not None:  # the extension is the one change the user asked for
            saved = {**saved, "max_steps": step + more_steps}
    elif completed:
        raise ValueError(
            f"{run_dir} has completed (step {step}; its model is in {run_dir / 'model'}): there is nothing to resume. "
            "To train it further, pass more_steps=N (continues from its final checkpoint)"
        )
    if saved is not None:
        changes = _config_changes(saved, dataclasses.asdict(config))
        if changes and not allow_config_change:
            raise ValueError(
                f"{run_dir}/run.json's config differs from the one {checkpoint.name} was trained with ({changes}): "
                "pass allow_config_change=True to continue with the changed config, or restore run.json"
            )
        if changes:
            logger.warning("%s: continuing with a changed config (%s)", run_dir, changes)
    return ResumePlan(checkpoint, meta, config, step, skipped, extended=more_steps is not None)


def _has_final_model(run_dir: Path) -> bool:
    return (run_dir / "model" / "config.json").is_file()


def _config_changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    keys = sorted(set(before) | set(after))
    diffs = [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys if before.get(k) != after.get(k)]
    return ", ".join(diffs)


# ------------------------------------------------------------------------------------------------ interrupts


@dataclasses.dataclass
class Interrupts:
    """The Ctrl-C presses a run received (the first asks for a stop, a second aborts)."""

    count: int = 0


@contextlib.contextmanager
def stop_on_interrupt(stop: Callable[[str], None]) -> Iterator[Interrupts]:
    """Ctrl-C (SIGINT) calls ``stop("interrupted")``: the current step finishes and a checkpoint is written (after
    the last step: the run completes as usual). A second one aborts (``KeyboardInterrupt``).

    Only the main thread can own a signal handler; a background run is stopped through ``run.stop()`` (which
    ``Run.wait()`` calls when interrupted).
    """
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        interrupts.count += 1
        if interrupts.count > 1:
            raise KeyboardInterrupt
        logger.warning("interrupted: finishing this step, then stopping with a checkpoint (interrupt again to abort)")
        stop("interrupted")

    signal.signal(signal.SIGINT, handler)
    try:
        yield interrupts
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
