"""The loop's state: :class:`TrainState` (built once by ``setup``, its counters move with the steps),
:class:`StepResult` (what one step measured) and :class:`RunHandle` (what the loop reads and writes on the run).

Example:
    >>> state = setup(run); state.step, state.total_steps  # doctest: +SKIP
    (0, 100)
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from nbft.config import TrainConfig
from nbft.train.batching import Examples, StepPlan
from nbft.train.events import Events, StepState
from nbft.train.layout import AttentionLayout
from nbft.train.sync import GradSync, MasterWeights

logger = logging.getLogger("nbft.train")


class RunHandle(Protocol):
    """What the loop reads and writes on the run it trains (:class:`nbft.train.run.Run` is one)."""

    config: TrainConfig
    model: Any
    tokenizer: Any
    train: Examples
    val: Examples | None
    run_dir: Path
    base_model: str | None
    resume_from: Path | None
    restore_dtype: torch.dtype | None
    train_hashes: Any
    events: Events
    status: str
    error: BaseException | None
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    stop_reason: str | None

    @property
    def stop_requested(self) -> bool: ...

    @property
    def final_loss(self) -> float | None: ...

    def stop(self, reason: str | None = None) -> None: ...

    def release(self) -> None: ...

    def save(self, path: Path, *, state_dict: dict[str, torch.Tensor] | None = None) -> Path: ...


@dataclasses.dataclass
class TrainState:
    """Everything the step loop needs, built once by :func:`setup`; the counters move as steps are done."""

    config: TrainConfig
    data: Examples
    """The training examples."""
    run_dir: Path
    accelerator: Any
    device: torch.device
    model: Any
    """The user's model, trained in place (in its compute dtype while training)."""
    module: Any
    """The loss module around the model (``CausalLMLoss``/``Seq2SeqLoss``; FSDP-wrapped under FSDP)."""
    optimizer: torch.optim.Optimizer
    sync: GradSync
    layout: AttentionLayout
    plan: StepPlan
    kind: str
    precision: str
    total_steps: int
    warmup_steps: int
    label_counts: list[int]
    task_names: list[str]
    task_of: list[int] | None
    """Index into ``task_names`` per training example, when the data mixes several tasks."""
    fsdp: bool = False
    step: int = 0
    start_step: int = 0
    elapsed_before: float = 0.0
    train_time: float = 0.0
    monitor_time: float = 0.0
    eval_time: float = 0.0
    checkpoint_time: float = 0.0
    wall_start: float = 0.0
    tokens_seen: int = 0
    last_saved: int = -1
    last_save_time: float = 0.0
    """``time.perf_counter()`` at the last checkpoint (or the start): what ``save_every_minutes`` counts from."""
    zero_grad_steps: int = 0
    """Consecutive steps whose gradient was exactly zero (a saturated model: the loop stops it)."""
    last_state: StepState | None = None
    restored: bool = False
    kernels: str = "none"
    """The fused-kernel path in use (``nbft.train.kernels``): ``"liger"``, ``"compile"`` or ``"none"``."""
    optimizer_name: str = "adamw"
    undo: list[Any] = dataclasses.field(default_factory=list)
    """What setup changed on the model besides its dtype (compiled layers, checkpointing), undone at the end."""

    def restore_model(self) -> None:
        """Give the model back as it came (its dtype, uncompiled, no checkpointing) with the trained values."""
        if not self.restored:
            undo_all(self.undo)
            if not self.fsdp:
                self.sync.masters.restore()
        self.restored = True

    def free_memory(self) -> None:
        """Drop the gradients and return cached device memory (after an error, before the model is given back)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.sync.zero_grad()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one optimizer step measured (the same on every process)."""

    loss: float
    grad_norm: float
    learning_rate: float
    tokens: int
    label_tokens: int
    seconds: float
    task_losses: dict[str, float] | None
    loss_scale: float | None = None
    skipped: bool = False


def undo_all(changes: list[Callable[[], Any]]) -> None:
    """Undo training-time changes to the model, newest first; one that fails is logged, the others still run."""
    while changes:
        try:
            changes.pop()()
        except Exception:  # leaving the model usable matters more than one failed undo
            logger.exception("could not undo a training-time change to the model")


@contextlib.contextmanager
def restore_on_error(masters: MasterWeights, undo: list[Callable[[], Any]]) -> Iterator[None]:
    """A setup that fails inside this block gives the model back as it came (changes undone, dtype restored)."""
    try:
        yield
    except BaseException:
        undo_all(undo)
        masters.restore()
        raise
