"""What the loop writes into a run directory, and reads back to resume: checkpoints and the run files.

* :func:`write_checkpoint`: the fp32 master weights (or FSDP's gathered ones), the optimizer, every process's RNG
  states, the history and the loss scale, through :func:`nbft.train.checkpoint.save_checkpoint`; never from
  non-finite weights.
* :func:`restore_checkpoint`: the same state back into a :class:`~nbft.train.state.TrainState` being set up.
* :func:`write_run_files`: what ``resume()`` needs besides a checkpoint (``run.json``, tokenized data, tokenizer).

Example:
    >>> write_checkpoint(run, state)  # every process calls it; the main process writes  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from nbft._utils import atomic_path
from nbft.hashes import write_training_hashes
from nbft.train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint
from nbft.train.fsdp import full_optimizer_state, full_state_dict, load_full_optimizer_state
from nbft.train.selection import protected_steps
from nbft.train.state import RunHandle, TrainState
from nbft.train.sync import TrainingError, agree, buffer_dtypes, gather_to_all

logger = logging.getLogger("nbft.train")


def write_checkpoint(run: RunHandle, state: TrainState) -> None:
    """Every process calls this; the main process writes; complete once all reached the barrier."""
    run.events.emit("on_phase", {"phase": "checkpoint", "step": state.step})
    t0 = time.perf_counter()
    if state.fsdp:
        weights = full_state_dict(state.accelerator, state.module)
        optimizer_state = full_optimizer_state(state.module, state.optimizer)
    else:
        weights, optimizer_state = state.sync.masters.state_dict(), None
    _check_finite(state, weights)  # a checkpoint is only written when it is worth resuming from
    extra = {
        "epoch": state.plan.epoch_at(state.step),
        "history": run.history,
        "elapsed_s": state.elapsed_before + state.train_time,
        "total_steps": state.total_steps,
        "config": dataclasses.asdict(run.config),
    }
    if state.sync.scaler is not None:
        extra["loss_scaler"] = state.sync.scaler.state_dict()
    path = save_checkpoint(
        run.run_dir,
        step=state.step,
        model=state.model,
        weights=weights,
        optimizer=state.optimizer,
        optimizer_state=optimizer_state,
        state=extra,
        keep_last=run.config.keep_last,
        rng_states=gather_to_all(rng_state()),
        is_main=state.is_main,
        barrier=state.accelerator.wait_for_everyone,
        keep=protected_steps(run.history),  # a monitor's best checkpoint outlives keep_last
    )
    state.last_saved = state.step
    state.last_save_time = time.perf_counter()
    state.checkpoint_time += time.perf_counter() - t0
    if state.is_main:
        run.events.emit("on_save", path)


def _check_finite(state: TrainState, weights: dict[str, torch.Tensor]) -> None:
    """Refuse to call non-finite weights good: no checkpoint and no final model from them (every process agrees)."""
    bad = state.is_main and any(
        t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in weights.values() if t.numel()
    )
    (bad,) = agree(state.device, bad)
    if bad:
        kept = latest_checkpoint(state.run_dir)
        raise TrainingError(
            f"the weights became non-finite (inf or nan) by step {state.step}, so they were not saved. Last good "
            f"checkpoint: {kept or 'none'}. Try a lower learning_rate (full fine-tunes use 1e-5 to 1e-4), "
            "warmup_steps, max_grad_norm=1.0, or precision='fp32'"
        )


def restore_checkpoint(run: RunHandle, state: TrainState) -> None:
    """Optimizer, RNG states, step and history of ``run.resume_from`` (its weights are already in the model)."""
    path = run.resume_from
    assert path is not None
    saved = load_checkpoint(path, optimizer=state.optimizer, rank=state.rank, restore_optimizer=not state.fsdp)
    if state.fsdp:
        load_full_optimizer_state(state.module, state.optimizer, saved["optimizer_state"])
    if state.sync.scaler is not None and saved.get("loss_scaler"):
        state.sync.scaler.load_state_dict(saved["loss_scaler"])
    state.step = state.start_step = saved["step"]
    state.elapsed_before = saved["elapsed_s"]
    state.last_saved = saved["step"]
    run.history[:] = saved["history"]
    world = saved.get("world_size", 1)
    if world != state.world and run.config.tokens_per_step is None:
        logger.warning(
            "the checkpoint was written by %d processes and %d resume it: a step now holds a different number of "
            "examples, so the loss curve will not continue exactly",
            world,
            state.world,
        )


def write_run_files(
    run_dir: Path, run: RunHandle, kind: str, dtype: torch.dtype, attn_implementation: str | None
) -> None:
    """What resume() needs besides a checkpoint: config, tokenized data, tokenizer (data is small, written once)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "data").mkdir(exist_ok=True)
    run.train.save(run_dir / "data" / "train.safetensors")
    if run.val is not None:
        run.val.save(run_dir / "data" / "validation.safetensors")
    if run.tokenizer is not None:
        try:
            run.tokenizer.save_pretrained(run_dir / "tokenizer")
        except Exception as exc:  # a custom tokenizer that cannot be saved only costs resume() its tokenizer
            logger.warning("could not save the tokenizer to the run directory (%s)", exc)
    from nbft import __version__

    meta = {
        "nbft": __version__,  # a later nbft that cannot read this file says which version wrote it
        "config": dataclasses.asdict(run.config),
        "kind": kind,
        "base_model": run.base_model,
        "dtype": str(dtype).removeprefix("torch."),
        "attn_implementation": attn_implementation,
        "buffer_dtypes": buffer_dtypes(run.model),
        # how the text became tokens (nbft.dataset_settings): compare() and the monitor read the prompt format here
        "data": getattr(run, "data_settings", None),
    }
    write_training_hashes(run_dir / "data", run.train_hashes)  # None: warns that overlap can't be checked
    with atomic_path(run_dir / "run.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
