"""``finetune()`` and ``resume()``: nbft's full fine-tuning loop on ``accelerate.Accelerator``.

The loop has torchtune's shape and reads top to bottom in :func:`train_loop`, two hops from ``finetune()``
(``finetune -> Run.start -> train_loop``)::

    state = setup(run)                        # devices, precision, attention layout, optimizer, data plan, resume
    while not stopped and steps remain:
        result = train_step(state, micro_batches)     # one optimizer step, never split
        record it; validate / measure / checkpoint when due; agree on stop and save across processes
    cleanup(run, state)                       # final checkpoint or evaluation, model back in its dtype, save

What one :func:`train_step` does:

1. take the step's micro-batches from the :class:`~nbft.train.batching.StepPlan` (a pure function of seed and
   step); each process takes every ``world``-th one;
2. for each micro-batch: collate it with the run's :mod:`attention layout <nbft.train.layout>` (packed, no padding
   compute), run the base model, apply the LM head only on labelled positions (chunked), and backpropagate
   ``sum(CE) / labelled tokens in the whole step`` into the fp32 master gradients (:class:`~nbft.train.sync.GradSync`);
3. all-reduce the master gradients once, clip, check the loss is finite, update AdamW.

Several processes (``accelerate launch``, ``nbft.launch``): every process runs this same loop on its share of each
step. Only the main process runs observers and writes files (run files, ``history.jsonl``, checkpoints, the model
and its card); a stop (``run.stop()``, an observer's ``StopTraining``, Ctrl-C on any process) is agreed on after each
step, so all processes stop after the same one; a checkpoint is complete only once every process reached its
barrier. Ctrl-C only asks for a stop: the current step finishes and a checkpoint is written (a second Ctrl-C aborts).

Example:
    >>> from nbft.models import tiny_random
    >>> model, tok = tiny_random("llama")
    >>> data = [{"prompt": "Say hi.\\n", "completion": "hi"}] * 8
    >>> run = finetune(model, tok, data, config=TrainConfig(max_steps=2), run_dir="/tmp/nbft-doc")  # doctest: +SKIP
    >>> run.status  # doctest: +SKIP
    'completed'
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from nbft._utils import atomic_path
from nbft.config import TrainConfig
from nbft.hashes import training_hashes, write_training_hashes
from nbft.train.batching import Examples, StepPlan, as_examples, eval_batches
from nbft.train.card import render_model_card
from nbft.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    write_failure,
)
from nbft.train.events import PROCESS_OBSERVERS, Events, HistoryWriter, Observer, StepState, StopTraining
from nbft.train.guard import (
    check_new_run_dir,
    claim_model,
    clear_old_run,
    plan_resume,
    read_meta,
    release_model,
    tidy_run_dir,
)
from nbft.train.kernels import KernelPlan, apply_kernels
from nbft.train.layout import AttentionLayout, choose_layout
from nbft.train.lock import RunLock
from nbft.train.loss import CausalLMLoss, Seq2SeqLoss, check_fused_head
from nbft.train.memory import enable_activation_checkpointing, make_optimizer, plan_optimizer, set_learning_rate
from nbft.train.precision import LossScaler, precision_name, resolve_precision
from nbft.train.precision import cpu_has_native_bf16 as cpu_has_native_bf16  # re-exported (older imports)
from nbft.train.selection import best_checkpoint, protected_steps
from nbft.train.sync import (
    GradSync,
    MasterWeights,
    agree,
    all_reduce_sum,
    broadcast_from_main,
    broadcast_from_main_object,
    distributed,
    gather_to_all,
)

logger = logging.getLogger("nbft.train")

_OOM_ERRORS: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    MemoryError,
)


class TrainingError(RuntimeError):
    """Training ended early for a reason the message explains (non-finite loss, out of memory)."""


def is_main_process() -> bool:
    """True in a single process, and on rank 0 when several processes train together."""
    return not distributed() or torch.distributed.get_rank() == 0


class Run:
    """Handle of one training run: ``status``, ``history``, ``model``; ``stop()``, ``wait()``, ``save()``.

    ``status`` is ``"pending"``, ``"running"``, ``"completed"``, ``"stopped"`` or ``"failed"`` (then ``error``
    holds the exception, which ``wait()`` raises). ``history`` is a list of plain dicts (``kind`` ``"train"``,
    ``"eval"`` or ``"monitor"``), e.g. ``pandas.DataFrame(run.history)``. ``stop_reason`` says why a stopped run
    stopped, when something said (a monitor's ``StopTraining("...")``, an interrupt).

    Example:
        >>> run = finetune(model, tok, data, background=True)  # doctest: +SKIP
        >>> run.stop(); run.wait().status  # doctest: +SKIP
        'stopped'
    """

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        train: Examples,
        val: Examples | None,
        config: TrainConfig,
        observers: Sequence[Observer],
        run_dir: Path,
        base_model: str | None,
        resume_from: Path | None = None,
        restore_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.train = train
        self.val = val
        self.config = config
        self.run_dir = run_dir
        self.base_model = base_model
        self.status = "pending"
        self.error: BaseException | None = None
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.train_hashes: Any = None
        """Content hashes of the training examples (``nbft.hashes``), written to the run directory for compare()."""
        self.card_sections: dict[str, str] = {}
        """Extra model-card sections (title -> markdown) that :meth:`save` writes, e.g. an evaluation table."""
        self.resume_from = resume_from
        self.restore_dtype = restore_dtype
        """The dtype the model is given back in when training ends (default: its dtype when training starts)."""
        self.skipped_checkpoints: list[tuple[Path, str]] = []
        """Checkpoints ``resume`` skipped because they failed their check, with the reason (renamed ``*.damaged``)."""
        # The history line first: an observer that hangs or fails cannot leave a step unrecorded on disk.
        self.events = Events(
            [HistoryWriter(run_dir / "history.jsonl"), *observers, *PROCESS_OBSERVERS], request_stop=self.stop
        )
        """The run's observers (on the main process; other processes get none when training starts)."""
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock: RunLock | None = None
        self._quiet: Any = None
        self._own_quiet = False

    def start(self, background: bool) -> Run:
        """Run :func:`train_loop` here, or in a worker thread when ``background`` (then return at once)."""
        from nbft.run_dirs import register_run

        register_run(self)
        if background:
            self._thread = threading.Thread(target=self._work, name="nbft-train", daemon=True)
            self._thread.start()
            if self._quiet is not None and self._own_quiet:
                self._quiet.release_thread()  # the notebook's own cells keep their warnings while this trains
            return self
        self._work()
        if self.error is not None:
            raise self.error
        return self

    def _work(self) -> None:
        if self._quiet is not None:
            self._quiet.claim_thread()  # library bars and repeated warnings of the training work stay quiet
        try:
            train_loop(self)
        finally:
            self._release()
            if self._quiet is not None and self._own_quiet:
                self._quiet.stop()
            self._done.set()

    def _release(self) -> None:
        """Let go of the run directory's lock and of the model object (when the run ends, or fails to start)."""
        release_model(self.model, self)
        if self._lock is not None:
            self._lock.release()

    def stop(self, reason: str | None = None) -> None:
        """Ask the loop to finish the current step, write a checkpoint and end with status ``"stopped"``."""
        if reason and self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run ends (or ``timeout`` seconds pass); re-raise the worker's exception if it failed.

        Interrupting the wait (Ctrl-C, "interrupt kernel") stops the run: the step finishes, a checkpoint is
        written, and the wait goes on until that is done.
        """
        if self._thread is not None:
            try:
                self._thread.join(timeout)
            except KeyboardInterrupt:
                logger.warning("interrupted: stopping after the current step (with a checkpoint)")
                self.stop("interrupted")
                self._thread.join()
        if self.error is not None:
            raise self.error
        return self

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def final_loss(self) -> float | None:
        losses = [h["loss"] for h in self.history if h["kind"] == "train"]
        return losses[-1] if losses else None

    @property
    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.run_dir)

    def best_checkpoint(self, max_drop: float | None = None) -> Path:
        """With a :class:`~nbft.evaluate.monitor.ForgettingMonitor`: the checkpoint with the best target score whose
        worst drop on the other tasks stays within ``max_drop`` (a fraction of each task's base score; default the
        monitor's). See :func:`nbft.train.selection.best_checkpoint`.

        Example:
            >>> path = run.best_checkpoint(max_drop=0.2)  # doctest: +SKIP
            >>> model, tok = nbft.load_model(path)  # doctest: +SKIP
        """
        total = self.summary.get("total_steps") if self.status == "completed" else None
        return best_checkpoint(self.run_dir, self.history, max_drop, total_steps=total)

    def save(
        self,
        path: str | Path | None = None,
        *,
        state_dict: dict[str, torch.Tensor] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the model (safetensors), tokenizer and a model card (``README.md``) to ``path``, atomically.

        Defaults to ``<run_dir>/model``; a completed run saves there by itself. With several processes only the
        main process writes (the others return the path). ``state_dict`` replaces the model's own (FSDP). A folder
        nbft did not write (a run directory, your own folder) is never replaced, unless ``overwrite=True``.
        """
        if self.status == "running" and threading.current_thread() is not self._thread:
            raise RuntimeError("the run is still training: call run.stop() and run.wait() before run.save()")
        path = Path(path) if path is not None else self.run_dir / "model"
        if not is_main_process():
            return path
        own = path.resolve() == (self.run_dir / "model").resolve()  # the run's own model folder, whoever wrote it
        if not own and (path / "run.json").exists():
            raise FileExistsError(
                f"{path} is a run directory: save the model into a folder of its own, e.g. {path / 'model'} "
                "(the default, run.save())"
            )
        with atomic_path(path, kind="dir", overwrite=overwrite or own) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            (tmp / "README.md").write_text(render_model_card(self.card_info(), self.card_sections))
        return path

    def card_info(self) -> dict[str, Any]:
        """What the model card reports: base model, data summaries, config and final losses."""
        final: dict[str, Any] = {"steps": self.summary.get("steps"), "train_loss": self.final_loss}
        evals = [h for h in self.history if h["kind"] == "eval"]
        if evals:
            final["val_loss"] = evals[-1]["val_loss"]
        return {
            "base_model": self.base_model,
            "data": self.train.summary,
            "val_data": self.val.summary if self.val is not None else None,
            "config": dataclasses.asdict(self.config),
            "final": final,
        }

    def __repr__(self) -> str:
        last = f", loss={self.final_loss:.4f}" if self.final_loss is not None else ""
        err = f", error={self.error!r}" if self.error is not None else ""
        steps = sum(h["kind"] == "train" for h in self.history)
        return f"Run({str(self.run_dir)!r}, status={self.status!r}, steps={steps}{last}{err})"


def finetune(
    model: Any,
    tokenizer: Any,
    train: Any,
    val: Any = None,
    config: TrainConfig | None = None,
    observers: Sequence[Observer] = (),
    run_dir: str | Path | None = None,
    background: bool = False,
    overwrite: bool = False,
) -> Run:
    """Full fine-tune of ``model`` (every weight is trained) on instruction data; returns a :class:`Run`.

    ``train``/``val``: a ``datasets.Dataset`` (or list of dicts) with ``prompt``/``completion`` text, or already
    tokenized ``input_ids``/``labels`` (``nbft.data.tokenize_for_training``). The loss covers completion tokens only.
    ``run_dir`` (default ``runs/run-<time>``) receives ``history.jsonl``, checkpoints and the final ``model/``; it
    is locked (``run.lock``) while the run trains, and a folder that holds another run is refused unless
    ``overwrite=True`` (which replaces that run's files, and nothing else in the folder).
    With ``background=True`` the call returns at once; use ``run.wait()`` / ``run.stop()``. Under ``accelerate
    launch`` (or ``nbft.launch``) every process calls ``finetune`` with the same arguments: they train together.

    Example:
        >>> run = finetune(model, tok, data["train"], val=data["validation"],
        ...                config=TrainConfig(epochs=2, eval_every=50), run_dir="runs/sentiment-1")  # doctest: +SKIP
    """
    config = _check_arguments(model, config, observers, background=background, overwrite=overwrite)
    if run_dir is not None and not isinstance(run_dir, str | os.PathLike):
        raise TypeError(f"run_dir must be a folder path (str or Path), not {run_dir!r}")
    if val is None and config.eval_every:
        logger.warning("TrainConfig.eval_every=%d but no val= data: no validation loss is computed", config.eval_every)
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and config.max_length > positions:
        logger.warning(
            "TrainConfig.max_length=%d is longer than the model's context (max_position_embeddings=%d): positions "
            "past it are outside what the model was trained on; lower max_length", config.max_length, positions,
        )  # fmt: skip
    from nbft import _quiet

    scope, owned = _quiet.enter()  # no library bars or repeated warnings from tokenizing, training, saving
    try:
        _join_processes()
        run_dir = Path(run_dir) if run_dir is not None else Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
        run_dir = broadcast_from_main_object(run_dir)  # a default name from the clock: every process takes rank 0's
        lock = RunLock(run_dir)
        _on_main(lock.acquire)  # one writer per run directory, for the whole run
        try:
            _on_main(lambda: check_new_run_dir(run_dir, overwrite=overwrite))
            if is_main_process():
                for line in tidy_run_dir(run_dir):
                    logger.warning("%s: %s", run_dir, line)
            kind = "seq2seq" if getattr(model.config, "is_encoder_decoder", False) else "causal"
            vocab = _vocab_size(model)
            train_ex = as_examples(
                train, kind=kind, tokenizer=tokenizer, max_length=config.max_length, name="train", vocab_size=vocab
            )
            val_ex = None
            if val is not None:
                val_ex = as_examples(
                    val, kind=kind, tokenizer=tokenizer, max_length=config.max_length, name="validation",
                    vocab_size=vocab,
                )  # fmt: skip
            base_model = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None) or None
            run = Run(
                model=model,
                tokenizer=tokenizer,
                train=train_ex,
                val=val_ex,
                config=config,
                observers=observers,
                run_dir=run_dir,
                base_model=base_model,
            )
            run.train_hashes = training_hashes(train)  # what compare() checks test splits against (nbft.hashes)
            if overwrite and is_main_process():  # only now: bad data must not cost the earlier run its files
                clear_old_run(run_dir)
            claim_model(model, run)  # one run per model object at a time
        except BaseException:
            lock.release()
            raise
        run._lock, run._quiet, run._own_quiet = lock, scope, owned
    except BaseException:
        if owned:
            scope.stop()
        raise
    return run.start(background)


def resume(
    run_dir: str | Path,
    *,
    observers: Sequence[Observer] = (),
    background: bool = False,
    more_steps: int | None = None,
    allow_config_change: bool = False,
) -> Run:
    """Continue a stopped or interrupted run from its newest intact checkpoint; the rest of the loss curve is the same.

    Each checkpoint is verified against its manifest (sizes and checksums) first: a damaged one is skipped (and
    renamed ``step-N.damaged``) with a warning that says why, and the run continues from the newest intact one.
    A completed run continues only with ``more_steps=N`` (N more optimizer steps from its final checkpoint; the
    learning-rate schedule is recomputed for the new total). A ``run.json`` whose config differs from the one the
    checkpoint was trained with is refused, naming the changes, unless ``allow_config_change=True``.
    The fp32 master weights are reloaded in fp32 whatever dtype the model trains in, and the model is given back
    in the dtype it had when the run began. Under ``accelerate launch`` every process calls ``resume``.

    Example:
        >>> run = resume("runs/sentiment-1", observers=[ProgressObserver()])  # doctest: +SKIP
        >>> run = resume("runs/sentiment-1", more_steps=50)  # a completed run, 50 steps further  # doctest: +SKIP
    """
    from nbft import _quiet

    if isinstance(run_dir, Run):
        run_dir = run_dir.run_dir
    if not isinstance(run_dir, str | os.PathLike):
        raise TypeError(f"run_dir must be a path (str or Path), not {type(run_dir).__name__}")
    run_dir = Path(run_dir)
    _check_observers(observers)
    _check_flag("background", background)
    _check_flag("allow_config_change", allow_config_change)
    if more_steps is not None and (isinstance(more_steps, bool) or not isinstance(more_steps, int) or more_steps < 1):
        raise ValueError(f"more_steps must be a positive integer (got {more_steps!r}), e.g. more_steps=100")
    meta = read_meta(run_dir)
    scope, owned = _quiet.enter()
    try:
        _join_processes()
        lock = RunLock(run_dir)
        _on_main(lock.acquire)  # refuses while the run (or anything else) is writing this folder
        try:
            plan = _on_main(
                lambda: plan_resume(run_dir, meta, more_steps=more_steps, allow_config_change=allow_config_change)
            )
            decided = broadcast_from_main_object(
                None if plan is None else (str(plan.checkpoint), dataclasses.asdict(plan.config), plan.extended)
            )
            checkpoint, config, extended = Path(decided[0]), TrainConfig(**decided[1]), decided[2]
            if extended and is_main_process():
                with atomic_path(run_dir / "run.json") as tmp:  # the run now means the longer run
                    tmp.write_text(json.dumps({**meta, "config": dataclasses.asdict(config)}, indent=2))
            run = _resumed_run(run_dir, meta, checkpoint, config, observers)
            run.skipped_checkpoints = list(plan.skipped) if plan is not None else []
            claim_model(run.model, run)
        except BaseException:
            lock.release()
            raise
        run._lock, run._quiet, run._own_quiet = lock, scope, owned
    except BaseException:
        if owned:
            scope.stop()
        raise
    return run.start(background)


def _resumed_run(
    run_dir: Path, meta: dict[str, Any], checkpoint: Path, config: TrainConfig, observers: Sequence[Observer]
) -> Run:
    """The :class:`Run` that continues from ``checkpoint``: the model from its fp32 masters, the run's data."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    dtype = getattr(torch, str(meta.get("dtype")), None)
    if meta.get("kind") not in ("causal", "seq2seq") or not isinstance(dtype, torch.dtype):
        raise ValueError(f"{run_dir}/run.json is damaged (kind {meta.get('kind')!r}, dtype {meta.get('dtype')!r})")
    train_path = run_dir / "data" / "train.safetensors"
    if not train_path.is_file():
        raise FileNotFoundError(f"{train_path} is missing: resume needs the run's tokenized training data")
    auto = AutoModelForSeq2SeqLM if meta["kind"] == "seq2seq" else AutoModelForCausalLM
    # Checkpoints hold fp32 master weights: load them in fp32, or a bf16 model would resume from rounded masters.
    model = auto.from_pretrained(
        checkpoint / "model", dtype=torch.float32, attn_implementation=meta.get("attn_implementation")
    )
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer") if (run_dir / "tokenizer").exists() else None
    val_path = run_dir / "data" / "validation.safetensors"
    return Run(
        model=model,
        tokenizer=tokenizer,
        train=Examples.load(train_path),
        val=Examples.load(val_path) if val_path.exists() else None,
        config=config,
        observers=observers,
        run_dir=run_dir,
        base_model=meta.get("base_model"),
        resume_from=checkpoint,
        restore_dtype=dtype,
    )


def _check_arguments(model: Any, config: Any, observers: Any, *, background: Any, overwrite: Any) -> TrainConfig:
    """``finetune``'s arguments, checked before any work; returns the (re-validated) config."""
    if isinstance(model, tuple) and len(model) == 2:
        raise TypeError("model is a (model, tokenizer) pair: unpack it, e.g. model, tok = nbft.load_model(...)")
    if isinstance(model, str | os.PathLike) and not isinstance(model, bool):
        raise TypeError(f"model must be a loaded model, not a name or path: model, tok = nbft.load_model({model!r})")
    if not hasattr(model, "parameters") or not hasattr(model, "config"):
        raise TypeError(f"model must be a transformers model (e.g. from nbft.load_model), not {type(model).__name__}")
    config = config if config is not None else TrainConfig()
    if isinstance(config, dict):
        raise TypeError(f"config must be a TrainConfig, not a dict: use TrainConfig(**{config!r})")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, not {type(config).__name__}")
    _check_observers(observers)
    _check_flag("background", background)
    _check_flag("overwrite", overwrite)
    return dataclasses.replace(config)  # checks the fields again: a config changed after it was made


def _vocab_size(model: Any) -> int | None:
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except Exception:  # a model without the usual embedding accessor: its ids are not checked here
        return None


def _check_observers(observers: Any) -> None:
    if isinstance(observers, str | bytes) or not isinstance(observers, Sequence):
        raise TypeError(f"observers must be a list, e.g. observers=[ProgressObserver()], got {observers!r}")


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")


def _on_main(fn: Any) -> Any:
    """Run ``fn`` on the main process only; every process raises if it failed there (same class, same message)."""
    error: BaseException | None = None
    result = None
    if is_main_process():
        try:
            result = fn()
        except (OSError, ValueError, RuntimeError, LookupError, TypeError) as exc:
            error = exc
    told = broadcast_from_main_object(None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    if told is not None:
        kinds = {c.__name__: c for c in (FileExistsError, FileNotFoundError, ValueError, LookupError, TypeError)}
        raise kinds.get(told[0], RuntimeError)(told[1])
    return result


def _join_processes() -> None:
    """Start (or join) accelerate's process group now, when launched with several processes, so that processes
    can agree on names and decisions before training starts."""
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())
    _warn_single_cpu_launch()


def _warn_single_cpu_launch() -> None:
    # `accelerate launch --cpu --num_processes N` starts ONE process unless given an MPI hostfile: say so.
    asked_several = "MASTER_ADDR" in os.environ and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
    if asked_several and "WORLD_SIZE" not in os.environ and not distributed():
        logger.warning(
            "accelerate launch --cpu ran a single process (several CPU processes need mpirun there); for several "
            "CPU processes use `accelerate launch --multi_gpu --num_processes N` (gloo on CPU) or torchrun"
        )


# ------------------------------------------------------------------------------------------------------ the loop


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
    """Consecutive steps whose gradient was exactly zero (a saturated model: see :func:`_check_progress`)."""
    last_state: StepState | None = None
    restored: bool = False
    kernels: str = "none"
    """The fused-kernel path in use (``nbft.train.kernels``): ``"liger"``, ``"compile"`` or ``"none"``."""
    optimizer_name: str = "adamw"
    undo: list[Any] = dataclasses.field(default_factory=list)
    """What setup changed on the model besides its dtype (compiled layers, checkpointing), undone at the end."""

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


def train_loop(run: Run) -> None:
    """Setup, then one optimizer step per iteration until done or stopped, then cleanup; the outcome is on ``run``.

    Reads only ``run``'s public fields and writes ``status``, ``error``, ``history``, ``summary``, ``stop_reason``.
    """
    run.status = "running"
    state: TrainState | None = None
    try:
        state = setup(run)
        cfg, oom = run.config, False
        try:
            with _stop_on_interrupt(run):
                if state.step == 0:
                    _measure(run, state, None)  # the monitors' point for the base model
                (stop,) = agree(state.device, run.stop_requested)
                while not stop and state.step < state.total_steps:
                    epoch, micro_batches = state.plan.step(state.step)
                    result = train_step(state, micro_batches)
                    state.step += 1  # the update and the counter move together: a step is never split
                    step_state = _record_step(run, state, result, epoch)
                    eval_due = bool(cfg.eval_every) and state.step % cfg.eval_every == 0
                    if run.val is not None and eval_due and state.step < state.total_steps:
                        _validate(run, state, step_state, "eval")
                    save = _measure(run, state, step_state)  # the main process measures; the others wait below
                    due = bool(cfg.save_every) and state.step % cfg.save_every == 0 and state.step < state.total_steps
                    due = due or _autosave_due(state)
                    # One small all-reduce per step: every process stops (and saves) after the same step.
                    stop, save = agree(state.device, run.stop_requested, save or due)
                    if save or (stop and state.step < state.total_steps):
                        _checkpoint(run, state)
        except _OOM_ERRORS:
            oom = True  # handled below, outside the except block, so the traceback's tensors can be freed
        if oom:
            _free_memory(state)
            raise TrainingError(
                f"out of memory at step {state.step + 1} on {state.device}. Lower TrainConfig.batch_size (or "
                "tokens_per_step), raise grad_accum (same maths, less memory), or lower max_length. The memory has "
                "been freed."
            )
        cleanup(run, state)
    except BaseException as exc:
        if state is not None and not state.restored:  # leave the model usable: original dtype, last good weights
            _free_memory(state)
            _restore_model(state)
        if isinstance(exc, KeyboardInterrupt):
            kept = latest_checkpoint(run.run_dir)
            exc = KeyboardInterrupt(f"aborted by a second interrupt; resume() continues from {kept or 'the start'}")
        exc = write_failure(exc, run.run_dir) or exc  # a full or read-only disk: what failed, how to resume
        run.status, run.error = "failed", exc
        run.summary = {**run.summary, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        logger.error("training failed: %s", exc)
    finally:
        run.summary.setdefault("status", run.status)
        run._release()  # before the end event: an observer that lists the runs must see this one as ended
        run.events.emit("on_train_end", dict(run.summary))


def setup(run: Run) -> TrainState:
    """Devices, precision, attention layout, optimizer and data plan; restore a checkpoint; tell the observers.

    Observers may refuse the setup in ``on_train_begin`` (``ValueError``): the run then fails here, before any
    step and before any run file is written.
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType

    cfg, model = run.config, run.model
    t_start = time.perf_counter()
    cpu = not torch.cuda.is_available()
    device = PartialState(cpu=cpu).device
    amp_dtype = resolve_precision(cfg.precision, device)
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp and amp_dtype == torch.float16:
        raise ValueError("precision='fp16' is not supported under FSDP (loss scaling across shards); use bf16 or fp32")
    if fsdp:  # FSDP's own mixed precision computes in bf16; elsewhere the model does (MasterWeights)
        mixed = "bf16" if amp_dtype is not None else "no"
        accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, fsdp_plugin=_fsdp_plugin(amp_dtype))
    else:
        accelerator = Accelerator(cpu=cpu)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if not accelerator.is_main_process:
        run.events = Events([], request_stop=run.stop)  # observers and run files belong to the main process
    events = run.events
    start_step = json.loads((run.resume_from / "state.json").read_text())["step"] if run.resume_from else 0
    events.emit("on_phase", {"phase": "setup", "step": start_step})
    if device.type == "cuda":
        if device.index is None:  # a single-GPU Accelerator says "cuda"; set_device needs an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)  # this may be a worker thread: the current device is per thread
        torch.cuda.reset_peak_memory_stats(device)
    kind = "seq2seq" if getattr(model.config, "is_encoder_decoder", False) else "causal"
    model_dtype = next(model.parameters()).dtype
    attn_implementation = getattr(model.config, "_attn_implementation", None)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model.to(device)
    model.train()
    model.requires_grad_(True)  # a full fine-tune: a loaded model may come with frozen parts

    # Decided on the weights as they came (fp32, as a rule): bf16 rounding would fail the fused head's check.
    fused = check_fused_head(model) if kind == "causal" else False
    # bf16/fp16: the model computes in that dtype and the optimizer keeps fp32 master weights (MasterWeights),
    # unless pure bf16 was asked for (master_weights=False) and its stochastic-rounding optimizer is installed.
    compute_dtype = amp_dtype if amp_dtype is not None and not fsdp else torch.float32
    pure_bf16 = not cfg.master_weights and compute_dtype == torch.bfloat16
    if not cfg.master_weights and not pure_bf16:
        logger.info("master_weights=False applies to bf16 compute only; this run computes in %s", compute_dtype)
    opt_plan = plan_optimizer(cfg.optimizer, pure_bf16, device)
    masters = MasterWeights(
        model, compute_dtype, restore_dtype=run.restore_dtype or model_dtype, keep_master=not opt_plan.pure_bf16
    )
    undo: list[Any] = []
    with _restore_on_error(masters, undo):  # a failed setup gives the model back as it came
        tasks = run.train.task_index()
        task_names, task_of = tasks if tasks is not None else ([], None)
        if kind == "causal":
            module: Any = CausalLMLoss(model, fused=fused, n_groups=len(task_names))
        else:
            module = Seq2SeqLoss(model, n_groups=len(task_names))
        pad_id = _pad_id(run.tokenizer, model)
        mask_dtype = amp_dtype if amp_dtype is not None else torch.float32
        plan = StepPlan(
            run.train.lengths,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            world_size=accelerator.num_processes,
            tokens_per_step=cfg.tokens_per_step,
            epochs=cfg.epochs,
            max_steps=cfg.max_steps,
        )
        first = plan.step(0)[1][0]  # a real micro-batch, to time the layouts on (GPU)
        sample = ([run.train.input_ids[i] for i in first], [run.train.labels[i] for i in first])
        layout = choose_layout(
            module,
            packing=cfg.packing,
            pad_id=pad_id,
            device=device,
            mask_dtype=mask_dtype,
            prefer=cfg.attention,
            measure=device.type == "cuda" and cfg.attention == "auto",
            sample=sample if first else None,
        )
        if cfg.activation_checkpointing:
            undo.append(enable_activation_checkpointing(model))
        kernels = KernelPlan("none")
        if kind == "causal" and not (fsdp and cfg.kernels == "auto"):
            kernels = apply_kernels(
                model,
                cfg.kernels,
                device=device,
                probe=lambda: _kernel_probe(module, layout),
                activation_checkpointing=cfg.activation_checkpointing,
            )
            undo.append(kernels.undo)
            module.head = kernels.head
        optimizer, opt_plan = make_optimizer(
            masters.master, cfg.learning_rate, cfg.weight_decay, device, plan=opt_plan, fused=not fsdp
        )
        scaler = LossScaler(device) if compute_dtype == torch.float16 else None
        if fsdp:
            if layout.name == "single":  # FSDP needs the same number of forward passes on every process
                raise ValueError(f"{type(model).__name__} passes no batched attention layout check; FSDP needs one")
            module, optimizer = accelerator.prepare(module, optimizer)
            if events.monitors():
                logger.warning("measuring observers are skipped under FSDP: the main process does not hold the model")
                for monitor in events.monitors():
                    events.drop(monitor)
        elif accelerator.num_processes > 1:
            broadcast_from_main([*model.parameters(), *model.buffers(), *(masters.master if masters.separate else [])])
        state = TrainState(
            config=cfg,
            data=run.train,
            run_dir=run.run_dir,
            accelerator=accelerator,
            device=device,
            model=model,
            module=module,
            optimizer=optimizer,
            sync=GradSync(masters, accelerator, module, fsdp=fsdp, scaler=scaler, optimizer=optimizer),
            layout=layout,
            plan=plan,
            kind=kind,
            precision=precision_name(compute_dtype if not fsdp else amp_dtype),
            total_steps=plan.total_steps,
            warmup_steps=cfg.warmup_steps or round(cfg.warmup_ratio * plan.total_steps),
            label_counts=run.train.label_counts(kind),
            task_names=task_names,
            task_of=task_of,
            fsdp=fsdp,
            wall_start=t_start,
            last_save_time=time.perf_counter(),
            kernels=kernels.name,
            optimizer_name=opt_plan.name,
            undo=undo,
        )
        if run.resume_from is not None:
            _restore_checkpoint(run, state)
        info = {
            "total_steps": state.total_steps,
            "start_step": state.start_step,
            "steps_per_epoch": plan.steps_per_epoch,
            "examples": len(run.train),
            "parameters": sum(p.numel() for p in masters.master),
            "precision": state.precision,
            "device": str(device),
            "world_size": accelerator.num_processes,
            "packing": layout.name if layout.name in ("flash-varlen", "flex", "varlen", "mask") else None,
            "layout": layout.name,
            "layout_timings": layout.timings,
            "kernels": kernels.name,
            "optimizer": opt_plan.name,
            "master_weights": masters.separate or compute_dtype == torch.float32,
            "activation_checkpointing": cfg.activation_checkpointing,
            "fused_loss": getattr(accelerator.unwrap_model(module), "fused", False),
            "tasks": task_names or None,
            "run_dir": str(run.run_dir),
            "base_model": run.base_model,
            "config": dataclasses.asdict(cfg),
        }
        refusal: BaseException | None = None
        try:
            events.emit("on_train_begin", info)
        except (ValueError, LookupError) as exc:
            refusal = exc
        # Every process must fail alike when the main process's observers refuse the setup.
        message = broadcast_from_main_object(None if refusal is None else f"{type(refusal).__name__}: {refusal}")
        if refusal is not None:
            raise refusal
        if message is not None:
            raise ValueError(message)
        if run.resume_from is None and state.is_main:
            _write_run_files(run.run_dir, run, state.kind, model_dtype, attn_implementation)
        return state


def train_step(state: TrainState, micro_batches: list[list[int]]) -> StepResult:
    """One optimizer step over ``micro_batches`` (this process takes every ``world``-th): forward and backward
    each, all-reduce the fp32 master gradients once, clip, check the loss is finite, update."""
    cfg = state.config
    t0 = time.perf_counter()
    lr = lr_at(state.step, state.total_steps, state.warmup_steps, cfg.learning_rate, cfg.schedule)
    set_learning_rate(state.optimizer, lr)
    # The loss is a sum over the step's labelled tokens divided by their count: the same number however the step
    # is split into micro-batches or processes.
    n_labels = sum(state.label_counts[i] for mb in micro_batches for i in mb)
    scale = 1.0 / max(n_labels, 1)
    mine = micro_batches[state.rank :: state.world]
    sums = torch.zeros(1 + len(state.task_names), device=state.device)  # [loss, loss per task...]
    for k, indices in enumerate(mine):
        pieces = _micro_batch(state, indices, micro_batches)
        for j, batch in enumerate(pieces):
            out = state.module(**batch)
            loss, per_task = out if state.task_of is not None else (out, None)
            state.sync.backward(loss, scale, last=k == len(mine) - 1 and j == len(pieces) - 1)
            sums[0] += loss.detach().float()
            if per_task is not None:
                sums[1:] += per_task
            del batch, out, loss
    grad_norm = state.sync.reduce_and_clip(cfg.max_grad_norm)
    if state.world > 1:
        all_reduce_sum([sums])
    step_loss = float(sums[0]) / max(n_labels, 1)
    scaler = state.sync.scaler
    loss_scale = scaler.value if scaler is not None else None
    # fp16: gradients that overflowed only skip this step (and halve the loss scale); a non-finite loss is an
    # overflow of the forward pass itself, which no loss scale cures.
    overflow = scaler is not None and math.isfinite(step_loss) and not math.isfinite(grad_norm)
    if scaler is not None and scaler.gave_up():
        overflow = False
    if not (math.isfinite(step_loss) and math.isfinite(grad_norm)) and not overflow:
        state.sync.zero_grad()
        kept = latest_checkpoint(state.run_dir)
        raise TrainingError(
            f"the loss became {step_loss} (gradient norm {grad_norm}) at step {state.step + 1}; the weights were not "
            f"updated. Last good checkpoint: {kept or 'none'}. Try a lower learning_rate, warmup_steps, "
            "max_grad_norm=1.0, or precision='fp32'"
        )
    _check_progress(state, grad_norm, n_labels, step_loss)
    skipped = state.sync.step(state.optimizer)
    state.optimizer.zero_grad(set_to_none=True)
    state.sync.zero_grad()
    if not skipped:
        state.sync.masters.master_to_model()
    elif scaler is not None and scaler.gave_up():
        raise TrainingError(
            f"fp16 gradients overflowed in {scaler.skipped_in_a_row} steps in a row (loss scale now "
            f"{scaler.value:g}); the weights were not updated. Use precision='bf16' if the hardware has it, or 'fp32'"
        )
    return StepResult(
        loss=step_loss,
        grad_norm=grad_norm,
        learning_rate=lr,
        tokens=sum(state.plan.lengths[i] for mb in micro_batches for i in mb),
        label_tokens=n_labels,
        seconds=time.perf_counter() - t0,
        task_losses=_task_losses(state, micro_batches, sums),
        loss_scale=loss_scale,
        skipped=skipped,
    )


def cleanup(run: Run, state: TrainState) -> None:
    """After the last step: checkpoint a stopped run, or validate and save a completed one; model back in its
    dtype; the summary."""
    if state.step < state.total_steps:  # stopped early: checkpoint so that resume() can continue exactly here
        if state.last_saved != state.step:
            _checkpoint(run, state)
        run.status = "stopped"
    else:
        evaluated = any(h["kind"] == "eval" and h["step"] == state.step for h in run.history[-3:])
        if run.val is not None and state.last_state is not None and not evaluated:
            _validate(run, state, state.last_state, "final_eval")
        if state.last_saved != state.step:  # the final checkpoint: resume(more_steps=N) continues from it exactly
            _checkpoint(run, state)
        run.status = "completed"
    weights = _full_state_dict(state) if state.fsdp else None
    _restore_model(state)
    run.summary = _summary(run, state)
    if run.status == "completed":
        run.events.emit("on_phase", {"phase": "saving", "step": state.step})
        path = run.save(run.run_dir / "model", state_dict=weights)
        if state.is_main:
            run.events.emit("on_save", path)
        state.accelerator.wait_for_everyone()
    run.summary["wall_s"] = time.perf_counter() - state.wall_start
    run.events.emit("on_phase", {"phase": "done", "step": state.step})


# ------------------------------------------------------------------------------------------------ step helpers


def _micro_batch(state: TrainState, indices: list[int], step: list[list[int]]) -> list[dict[str, Any]]:
    """The loss module's input batches for one micro-batch (usually one; an empty micro-batch gives none)."""
    if not indices:
        if not state.fsdp:
            return []  # nothing to add: this process's gradient for it is zero
        # FSDP runs collectives inside forward and backward: every process must run them, here on an example
        # whose labels are all ignored (zero loss, zero gradient).
        any_example = next(i for mb in step for i in mb)
        ids = [state.data.input_ids[any_example]]
        return state.layout.batches(ids, [torch.full_like(ids[0], -100)], [0] if state.task_of is not None else None)
    ids = [state.data.input_ids[i] for i in indices]
    labels = [state.data.labels[i] for i in indices]
    groups = [state.task_of[i] for i in indices] if state.task_of is not None else None
    return state.layout.batches(ids, labels, groups)


def _task_losses(state: TrainState, micro_batches: list[list[int]], sums: torch.Tensor) -> dict[str, float] | None:
    if state.task_of is None:
        return None
    counts = [0] * len(state.task_names)
    for i in (i for mb in micro_batches for i in mb):
        counts[state.task_of[i]] += state.label_counts[i]
    return {name: float(sums[1 + t]) / counts[t] for t, name in enumerate(state.task_names) if counts[t]}


def _record_step(run: Run, state: TrainState, result: StepResult, epoch: float) -> StepState:
    state.train_time += result.seconds
    state.tokens_seen += result.tokens
    done = state.step - state.start_step
    step_state = StepState(
        step=state.step,
        total_steps=state.total_steps,
        epoch=epoch,
        loss=result.loss,
        learning_rate=result.learning_rate,
        grad_norm=result.grad_norm,
        tokens=result.tokens,
        label_tokens=result.label_tokens,
        tokens_per_second=result.tokens / result.seconds if result.seconds else 0.0,
        elapsed_s=state.elapsed_before + state.train_time,
        eta_s=state.train_time / done * (state.total_steps - state.step),
        peak_memory_mb=peak_memory_mb(state.device),
        task_losses=result.task_losses,
        loss_scale=result.loss_scale,
        skipped=result.skipped,
    )
    state.last_state = step_state
    run.history.append({"kind": "train", **step_state.to_dict()})
    run.events.emit("on_step", step_state)
    return step_state


def _validate(run: Run, state: TrainState, step_state: StepState, phase: str) -> None:
    run.events.emit("on_phase", {"phase": phase, "step": state.step})
    t0 = time.perf_counter()
    metrics = {"val_loss": evaluate_loss(state, run.val)}  # type: ignore[arg-type]
    state.eval_time += time.perf_counter() - t0
    run.history.append({"kind": "eval", "step": state.step, "epoch": step_state.epoch, **metrics})
    run.events.emit("on_eval", step_state, metrics)


def _measure(run: Run, state: TrainState, step_state: StepState | None) -> bool:
    """Call the measuring observers due at this step (main process only); True if one asks for a checkpoint.

    The other processes do not wait here: they wait at the next agreement, which the main process reaches after
    measuring (the all-reduce is the barrier).
    """
    step = state.step

    def due(monitor: Any) -> bool:
        every = int(getattr(monitor, "every", 0) or 0)
        return step == 0 or step == state.total_steps or (every > 0 and step % every == 0)

    monitors = [m for m in run.events.monitors() if due(m)]
    if not monitors:
        return False
    run.events.emit("on_phase", {"phase": "monitor", "step": step})
    want_checkpoint = False
    model = state.model
    for monitor in monitors:
        t0 = time.perf_counter()
        record = None
        model.eval()
        try:
            with torch.no_grad():
                record = monitor.measure(model, run.tokenizer, step)
        except StopTraining as stop:
            run.stop(str(stop) or f"{type(monitor).__name__} asked to stop at step {step}")
        except Exception:
            logger.exception("monitor %r failed at step %d; it is switched off for this run", monitor, step)
            run.events.drop(monitor)
        finally:
            model.train()
            seconds = time.perf_counter() - t0
            state.monitor_time += seconds
        if record:
            row = {"kind": "monitor", "step": step, **record, "measure_s": seconds}
            run.history.append(row)
            run.events.emit("on_monitor", step_state, row)
            want_checkpoint = want_checkpoint or (bool(record.get("save_checkpoint")) and step > 0)
    return want_checkpoint


def _checkpoint(run: Run, state: TrainState) -> None:
    """Every process calls this; the main process writes; complete once all reached the barrier."""
    run.events.emit("on_phase", {"phase": "checkpoint", "step": state.step})
    t0 = time.perf_counter()
    if state.fsdp:
        weights = _full_state_dict(state)
        optimizer_state = _full_optimizer_state(state)
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


def _autosave_due(state: TrainState) -> bool:
    """``save_every_minutes`` of training passed since the last checkpoint (each process's clock; agreed on after)."""
    minutes = state.config.save_every_minutes
    if not minutes or state.step >= state.total_steps:
        return False
    return time.perf_counter() - state.last_save_time >= 60.0 * minutes


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


_STALL_STEPS = 3


def _check_progress(state: TrainState, grad_norm: float, n_labels: int, loss: float) -> None:
    """Stop a run that can no longer learn: a gradient of exactly zero on labelled tokens, step after step, means
    the model saturated (typically a learning rate orders of magnitude too high) and the loss stays flat."""
    if grad_norm != 0.0 or n_labels == 0:
        state.zero_grad_steps = 0
        return
    state.zero_grad_steps += 1
    if state.zero_grad_steps < _STALL_STEPS:
        return
    since = state.step + 2 - state.zero_grad_steps  # the first step whose gradient was zero
    before = [p for p in list_checkpoints(state.run_dir) if int(p.name.split("-")[1]) < since]
    raise TrainingError(
        f"the gradient was exactly 0 for {state.zero_grad_steps} steps (steps {since}-{state.step + 1}; loss stuck "
        f"at {loss:.4f}): the model saturated and cannot learn any more, typically from a learning rate far too "
        f"high (learning_rate={state.config.learning_rate:g}). Last checkpoint before that: "
        f"{before[-1] if before else 'none'}. Start a new run with a lower learning_rate (1e-5 to 1e-4)"
    )


def _restore_checkpoint(run: Run, state: TrainState) -> None:
    """Optimizer, RNG states, step and history of ``run.resume_from`` (its weights are already in the model)."""
    path = run.resume_from
    assert path is not None
    saved = load_checkpoint(path, optimizer=state.optimizer, rank=state.rank, restore_optimizer=not state.fsdp)
    if state.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(state.module, state.optimizer, saved["optimizer_state"], options=options)
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


def _fsdp_plugin(amp_dtype: torch.dtype | None) -> Any:
    """The accelerate config's FSDP settings; with bf16, gradients are reduced and outputs returned in fp32 (as
    nbft's own all-reduce of fp32 master gradients does), unless the config sets a mixed-precision policy."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if amp_dtype is not None and plugin.mixed_precision_policy is None:
        if plugin.fsdp_version == 2:
            from torch.distributed.fsdp import MixedPrecisionPolicy

            policy: Any = MixedPrecisionPolicy(
                param_dtype=amp_dtype, reduce_dtype=torch.float32, output_dtype=torch.float32
            )
        else:
            from torch.distributed.fsdp import MixedPrecision

            policy = MixedPrecision(param_dtype=amp_dtype, reduce_dtype=torch.float32, buffer_dtype=amp_dtype)
        plugin.mixed_precision_policy = policy
    return plugin


def _full_state_dict(state: TrainState) -> dict[str, torch.Tensor]:
    """FSDP: the whole model's state dict on the main process (every process must call this)."""
    full = state.accelerator.get_state_dict(state.module)
    return {k.removeprefix("model."): v for k, v in full.items()}


def _full_optimizer_state(state: TrainState) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(state.module, state.optimizer, options=options)


def _restore_model(state: TrainState) -> None:
    if not state.restored:
        _undo(state.undo)
        if not state.fsdp:
            state.sync.masters.restore()
    state.restored = True


def _undo(changes: list[Any]) -> None:
    while changes:
        try:
            changes.pop()()
        except Exception:  # leaving the model usable matters more than one failed undo
            logger.exception("could not undo a training-time change to the model")


def _free_memory(state: TrainState | None) -> None:
    if state is None:
        return
    state.optimizer.zero_grad(set_to_none=True)
    state.sync.zero_grad()
    gc.collect()
    if state.device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _restore_on_error(masters: MasterWeights, undo: list[Any]) -> Iterator[None]:
    try:
        yield
    except BaseException:
        _undo(undo)
        masters.restore()
        raise


def _kernel_probe(module: Any, layout: AttentionLayout) -> list[torch.Tensor]:
    """One forward and backward on three small examples: the loss and a few gradients (to check compiled layers
    against the plain model). Gradients are cleared afterwards."""
    model = module.model
    vocab = model.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, vocab, (n,), generator=gen) for n in (24, 17, 9)]
    params = [p for p in model.parameters() if p.requires_grad]
    watched = [params[0], params[len(params) // 2], params[-1]]
    try:
        loss = sum(module(**batch).float() for batch in layout.batches(ids, [x.clone() for x in ids]))
        loss.backward()
        return [loss.detach(), *[p.grad.detach().clone() for p in watched if p.grad is not None]]
    finally:
        model.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _stop_on_interrupt(run: Run) -> Iterator[None]:
    """Ctrl-C (SIGINT) asks for a stop: the current step finishes and a checkpoint is written. A second one aborts.

    Only the main thread can own a signal handler; a background run is stopped through ``run.stop()`` (which
    ``Run.wait()`` calls when interrupted).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    count = [0]

    def handler(signum: int, frame: Any) -> None:
        count[0] += 1
        if count[0] > 1:
            raise KeyboardInterrupt
        logger.warning("interrupted: finishing this step, then stopping with a checkpoint (interrupt again to abort)")
        run.stop("interrupted")

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


@torch.no_grad()
def evaluate_loss(state: TrainState, data: Examples) -> float:
    """Mean cross-entropy per labelled token over ``data`` (dropout off), shared out over the processes."""
    cfg = state.config
    module = state.module if state.fsdp else state.accelerator.unwrap_model(state.module)
    lengths = data.lengths
    budget = (cfg.tokens_per_step // cfg.grad_accum) if cfg.tokens_per_step else cfg.batch_size * max(lengths)
    batches = eval_batches(lengths, max(budget, max(lengths)))
    mine = batches[state.rank :: state.world]
    if state.fsdp:  # every process must run as many forward passes (FSDP gathers weights inside them)
        mine += [[]] * (math.ceil(len(batches) / state.world) - len(mine))
    total = torch.zeros((), device=state.device)
    module.eval()
    try:
        for indices in mine:
            if not indices:
                ids = [data.input_ids[0]]
                pieces = state.layout.batches(ids, [torch.full_like(ids[0], -100)])
            else:
                pieces = state.layout.batches([data.input_ids[i] for i in indices], [data.labels[i] for i in indices])
            for batch in pieces:
                total += module(**batch).float()
    finally:
        module.train()
    if state.world > 1:
        all_reduce_sum([total])
    n = sum(data.label_counts(state.kind))
    return float(total) / max(n, 1)


def _summary(run: Run, state: TrainState) -> dict[str, Any]:
    evals = [h for h in run.history if h["kind"] == "eval"]
    return {
        "status": run.status,
        "steps": state.step,
        "total_steps": state.total_steps,
        "train_loss": run.final_loss,
        "val_loss": evals[-1]["val_loss"] if evals else None,
        "train_time_s": state.train_time,
        "tokens_per_second": state.tokens_seen / state.train_time if state.train_time else None,
        "monitor_s": state.monitor_time,
        "eval_s": state.eval_time,
        "checkpoint_s": state.checkpoint_time,
        "wall_s": time.perf_counter() - state.wall_start,
        "peak_memory_mb": peak_memory_mb(state.device),
        "world_size": state.world,
        "layout": state.layout.name,
        "kernels": state.kernels,
        "optimizer": state.optimizer_name,
        "skipped_steps": state.sync.scaler.skipped_total if state.sync.scaler is not None else 0,
        "stop_reason": run.stop_reason if run.status == "stopped" else None,
        "run_dir": str(run.run_dir),
        "error": None,
    }


def _write_run_files(run_dir: Path, run: Run, kind: str, dtype: torch.dtype, attn_implementation: str | None) -> None:
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
    }
    write_training_hashes(run_dir / "data", run.train_hashes)  # None: warns that overlap can't be checked
    with atomic_path(run_dir / "run.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))


def _pad_id(tokenizer: Any, model: Any) -> int:
    for source in (tokenizer, model.config):
        pad = getattr(source, "pad_token_id", None)
        if pad is not None:
            return int(pad)
    return 0


# ------------------------------------------------------------------------------------------------------ helpers


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str) -> float:
    """Learning rate for the update after ``step`` updates (the same formulas as transformers' schedulers)."""
    if step < warmup:
        return peak * step / max(1, warmup)
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return peak * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return peak * max(0.0, 1.0 - progress)
