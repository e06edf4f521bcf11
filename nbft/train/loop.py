"""nbft's fine-tuning loop on ``accelerate.Accelerator``: ``setup`` → ``train_step`` per step → ``cleanup``.

It has torchtune's shape and reads top to bottom in :func:`train_loop`, two hops from ``finetune()``
(``finetune -> Run.start -> train_loop``: :mod:`nbft.train.api` gives the :class:`~nbft.train.run.Run` handle this
loop as its work; the loop sees the run as a :class:`~nbft.train.state.RunHandle` and never imports the handle)::

    state = setup(run)                        # devices, precision, model, step plan, layout, kernels, optimizer
    while not stopped and steps remain:
        result = train_step(state, micro_batches)     # one optimizer step, never split
        record it; validate / measure / checkpoint when due; agree on stop and save across processes
    cleanup(run, state)                       # final checkpoint or evaluation, model back in its dtype, save

One :func:`train_step`: the step's micro-batches come from the :class:`~nbft.train.batching.StepPlan` (a pure
function of seed and step; each process takes every ``world``-th); each is collated by the run's
:mod:`attention layout <nbft.train.layout>`, and ``sum(CE) / labelled tokens in the whole step`` is backpropagated
into the fp32 master gradients; :class:`~nbft.train.sync.GradSync` all-reduces them once, clips and updates.
fp16 gradients that overflow skip the update (the loss scale halves) and the same step is taken again: the step
counter, the schedule, warm-up and ``max_steps`` count applied updates; the history keeps the skipped attempt.

Several processes (``accelerate launch``, ``nbft.launch``) run this same loop on their shares of each step. Only
the main process runs observers and writes files; a stop (``run.stop()``, an observer's ``StopTraining``, Ctrl-C)
is agreed on after each step, so all processes stop after the same one. Ctrl-C only asks for a stop
(:func:`~nbft.train.guard.stop_on_interrupt`): the step finishes and a checkpoint is written (a second one aborts).
Elsewhere: :mod:`~nbft.train.run_files` (checkpoints, run files), :mod:`~nbft.train.schedule`,
:mod:`~nbft.train.fsdp`, the compile check's probe in :mod:`~nbft.train.kernels`.

Example:
    >>> run = nbft.finetune(model, tok, data, config=TrainConfig(max_steps=2))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from typing import Any

import torch

from nbft.config import TrainConfig
from nbft.train.batching import Examples, StepPlan, eval_batches
from nbft.train.checkpoint import latest_checkpoint, list_checkpoints, write_failure
from nbft.train.events import Events, StepState, StopTraining
from nbft.train.fsdp import fsdp_plugin, fsdp_requested, full_state_dict
from nbft.train.guard import stop_on_interrupt
from nbft.train.kernels import KernelPlan, apply_kernels, kernel_probe
from nbft.train.layout import AttentionLayout, choose_layout
from nbft.train.loss import CausalLMLoss, Seq2SeqLoss, check_fused_head
from nbft.train.memory import (
    OptimizerPlan,
    enable_activation_checkpointing,
    make_optimizer,
    peak_memory_mb,
    plan_optimizer,
    set_learning_rate,
)
from nbft.train.precision import LossScaler, precision_name, resolve_precision
from nbft.train.run_files import restore_checkpoint, write_checkpoint, write_run_files
from nbft.train.schedule import lr_at, warmup_steps
from nbft.train.state import RunHandle, StepResult, TrainState, restore_on_error
from nbft.train.sync import (
    GradSync,
    MasterWeights,
    TrainingError,
    agree,
    all_reduce_sum,
    broadcast_from_main,
    broadcast_from_main_object,
)

logger = logging.getLogger("nbft.train")

_OOM_ERRORS: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    MemoryError,
)


def train_loop(run: RunHandle) -> None:
    """Setup, then one optimizer step per iteration until done or stopped, then cleanup; the outcome is on ``run``.

    Reads only ``run``'s public fields and writes ``status``, ``error``, ``history``, ``summary``, ``stop_reason``.
    """
    run.status = "running"
    state: TrainState | None = None
    # From setup to the end event, one Ctrl-C only asks for a stop: the final checkpoint and model are still written.
    with stop_on_interrupt(run.stop) as interrupts:
        try:
            state = setup(run)
            cfg, oom = run.config, False
            try:
                if state.step == 0 and not _measured(run.history, 0):  # a resume from step 0 has it already
                    _measure(run, state, None)  # the monitors' point for the base model
                (stop,) = agree(state.device, run.stop_requested)
                while not stop and state.step < state.total_steps:
                    epoch, micro_batches = state.plan.step(state.step)
                    result = train_step(state, micro_batches)
                    if result.skipped:  # fp16 overflow: nothing learned; the same step again, at half the loss scale
                        _record_step(run, state, result, epoch)
                        continue
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
                        write_checkpoint(run, state)
            except _OOM_ERRORS:
                oom = True  # handled below, outside the except block, so the traceback's tensors can be freed
            if oom:
                state.free_memory()
                raise TrainingError(
                    f"out of memory at step {state.step + 1} on {state.device}. Lower TrainConfig.batch_size (or "
                    "tokens_per_step), raise grad_accum (same maths, less memory), or lower max_length. The memory has "
                    "been freed."
                )
            cleanup(run, state)
        except BaseException as exc:
            if state is not None and not state.restored:  # leave the model usable: original dtype, last good weights
                state.free_memory()
                state.restore_model()
            if isinstance(exc, KeyboardInterrupt):
                kept = latest_checkpoint(run.run_dir)
                how = "a second interrupt" if interrupts.count > 1 else "an interrupt"
                exc = KeyboardInterrupt(f"aborted by {how}; resume() continues from {kept or 'the start'}")
            exc = write_failure(exc, run.run_dir) or exc  # a full or read-only disk: what failed, how to resume
            run.status, run.error = "failed", exc
            run.summary = {**run.summary, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            logger.error("training failed: %s", exc)
        finally:
            run.summary.setdefault("status", run.status)
            run.release()  # before the end event: an observer that lists the runs must see this one as ended
            run.events.emit("on_train_end", dict(run.summary))


# ------------------------------------------------------------------------------------------------------ setup


def setup(run: RunHandle) -> TrainState:
    """Devices and precision, the model, the step plan, the attention layout, kernels and the optimizer (in that
    order: each step takes what the one before returned); restore a checkpoint; tell the observers.

    Observers may refuse the setup in ``on_train_begin`` (``ValueError``): the run then fails here, before any
    step and before any run file is written.
    """
    cfg, model = run.config, run.model
    t_start = time.perf_counter()
    # First: under FSDP the accelerator decides the compute dtype, and a worker thread picks its CUDA device.
    hw = _precision_plan(cfg)
    if not hw.accelerator.is_main_process:
        run.events = Events([], request_stop=run.stop)  # observers and run files belong to the main process
    start_step = json.loads((run.resume_from / "state.json").read_text())["step"] if run.resume_from else 0
    run.events.emit("on_phase", {"phase": "setup", "step": start_step})
    kind = "seq2seq" if getattr(model.config, "is_encoder_decoder", False) else "causal"
    model_dtype = next(model.parameters()).dtype  # what the model is given back in (unless resume says otherwise)
    attn_implementation = getattr(model.config, "_attn_implementation", None)
    masters, opt_plan, fused = _prepare_model(run, hw, kind, model_dtype)
    undo: list[Any] = []
    with restore_on_error(masters, undo):  # from the cast on, a failed setup gives the model back as it came
        tasks = run.train.task_index()
        task_names, task_of = tasks if tasks is not None else ([], None)
        if kind == "causal":
            module: Any = CausalLMLoss(model, fused=fused, n_groups=len(task_names))
        else:
            module = Seq2SeqLoss(model, n_groups=len(task_names))
        plan = _step_plan(cfg, run.train, hw.accelerator.num_processes)
        # After the cast, so the check runs in the dtype training computes in; on the plan's first micro-batch.
        layout = _choose_layout(run, module, plan, hw)
        kernels = _kernels(cfg, kind, module, layout, hw, undo)
        module, optimizer, scaler, opt_plan = _optimizer(run, masters, module, opt_plan, layout, hw)
        state = TrainState(
            config=cfg,
            data=run.train,
            run_dir=run.run_dir,
            accelerator=hw.accelerator,
            device=hw.device,
            model=model,
            module=module,
            optimizer=optimizer,
            sync=GradSync(masters, hw.accelerator, module, fsdp=hw.fsdp, scaler=scaler, optimizer=optimizer),
            layout=layout,
            plan=plan,
            kind=kind,
            precision=precision_name(hw.compute_dtype if not hw.fsdp else hw.amp_dtype),
            total_steps=plan.total_steps,
            warmup_steps=warmup_steps(cfg.warmup_steps, cfg.warmup_ratio, plan.total_steps),
            label_counts=run.train.label_counts(kind),
            task_names=task_names,
            task_of=task_of,
            fsdp=hw.fsdp,
            wall_start=t_start,
            last_save_time=time.perf_counter(),
            kernels=kernels.name,
            optimizer_name=opt_plan.name,
            undo=undo,
        )
        if run.resume_from is not None:  # once the optimizer and the loss scaler exist: their states are loaded
            restore_checkpoint(run, state)
        _tell_observers(run, state, hw)
        if run.resume_from is None and state.is_main:  # only once the observers accepted: a refusal writes nothing
            write_run_files(run.run_dir, run, state.kind, model_dtype, attn_implementation)
        return state


@dataclasses.dataclass(frozen=True)
class _Hardware:
    """Setup's first step: where the run computes, and in which precision."""

    accelerator: Any
    device: torch.device
    amp_dtype: torch.dtype | None
    """The asked-for low precision (bf16/fp16), or ``None`` for fp32."""
    compute_dtype: torch.dtype
    """The dtype the model's weights hold while training (fp32 under FSDP, whose own policy casts)."""
    fsdp: bool


def _precision_plan(cfg: TrainConfig) -> _Hardware:
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType

    cpu = not torch.cuda.is_available()
    device = PartialState(cpu=cpu).device
    amp_dtype = resolve_precision(cfg.precision, device)
    fsdp = fsdp_requested()
    if fsdp and amp_dtype == torch.float16:
        raise ValueError("precision='fp16' is not supported under FSDP (loss scaling across shards); use bf16 or fp32")
    if fsdp:  # FSDP's own mixed precision computes in bf16; elsewhere the model does (MasterWeights)
        mixed = "bf16" if amp_dtype is not None else "no"
        accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, fsdp_plugin=fsdp_plugin(amp_dtype))
    else:
        accelerator = Accelerator(cpu=cpu)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if device.type == "cuda":
        if device.index is None:  # a single-GPU Accelerator says "cuda"; set_device needs an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)  # this may be a worker thread: the current device is per thread
        torch.cuda.reset_peak_memory_stats(device)
    compute_dtype = amp_dtype if amp_dtype is not None and not fsdp else torch.float32
    return _Hardware(accelerator, device, amp_dtype, compute_dtype, fsdp)


def _prepare_model(
    run: RunHandle, hw: _Hardware, kind: str, model_dtype: torch.dtype
) -> tuple[MasterWeights, OptimizerPlan, bool]:
    """Seeds, the model on its device and trainable, then cast to its compute dtype behind fp32 master weights;
    returns the masters, the optimizer plan and whether the fused LM-head loss applies."""
    cfg, model = run.config, run.model
    torch.manual_seed(cfg.seed)  # before anything random: the layout check and the kernel probe run the model
    random.seed(cfg.seed)
    model.to(hw.device)
    model.train()
    model.requires_grad_(True)  # a full fine-tune: a loaded model may come with frozen parts
    # Decided on the weights as they came (fp32, as a rule), before the cast: bf16 rounding would fail its check.
    fused = check_fused_head(model) if kind == "causal" else False
    # Before the cast too: pure bf16 (master_weights=False, with its stochastic-rounding optimizer installed) means
    # MasterWeights keeps no fp32 copy.
    pure_bf16 = not cfg.master_weights and hw.compute_dtype == torch.bfloat16
    if not cfg.master_weights and not pure_bf16:
        logger.info("master_weights=False applies to bf16 compute only; this run computes in %s", hw.compute_dtype)
    opt_plan = plan_optimizer(cfg.optimizer, pure_bf16, hw.device)
    masters = MasterWeights(
        model, hw.compute_dtype, restore_dtype=run.restore_dtype or model_dtype, keep_master=not opt_plan.pure_bf16
    )
    return masters, opt_plan, fused


def _step_plan(cfg: TrainConfig, data: Examples, world: int) -> StepPlan:
    return StepPlan(
        data.lengths,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        world_size=world,
        tokens_per_step=cfg.tokens_per_step,
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
    )


def _choose_layout(run: RunHandle, module: Any, plan: StepPlan, hw: _Hardware) -> AttentionLayout:
    cfg = run.config
    first = plan.step(0)[1][0]  # a real micro-batch, to time the layouts on (GPU)
    sample = ([run.train.input_ids[i] for i in first], [run.train.labels[i] for i in first])
    return choose_layout(
        module,
        packing=cfg.packing,
        pad_id=_pad_id(run.tokenizer, run.model),
        device=hw.device,
        mask_dtype=hw.amp_dtype if hw.amp_dtype is not None else torch.float32,
        prefer=cfg.attention,
        measure=hw.device.type == "cuda" and cfg.attention == "auto",
        sample=sample if first else None,
        # the check's examples need not be longer than any example this run will see (train or validation)
        max_length=max([*run.train.lengths, *(run.val.lengths if run.val is not None else [])]),
    )


def _kernels(
    cfg: TrainConfig, kind: str, module: Any, layout: AttentionLayout, hw: _Hardware, undo: list[Any]
) -> KernelPlan:
    """Activation checkpointing, then fused kernels (checked with the run's own layout); their undos go on
    ``undo``."""
    model = module.model
    if cfg.activation_checkpointing:  # first: the compile check must see the layers as training will run them
        undo.append(enable_activation_checkpointing(model))
    if kind != "causal" or (hw.fsdp and cfg.kernels == "auto"):
        return KernelPlan("none")
    kernels = apply_kernels(
        model,
        cfg.kernels,
        device=hw.device,
        probe=lambda: kernel_probe(module, layout),
        activation_checkpointing=cfg.activation_checkpointing,
    )
    undo.append(kernels.undo)
    module.head = kernels.head
    return kernels


def _optimizer(
    run: RunHandle, masters: MasterWeights, module: Any, opt_plan: OptimizerPlan, layout: AttentionLayout, hw: _Hardware
) -> tuple[Any, torch.optim.Optimizer, LossScaler | None, OptimizerPlan]:
    """The optimizer over the masters (and fp16's loss scaler); then the model shared out: FSDP wraps the loss
    module and the optimizer together, other multi-process runs start every replica from rank 0's weights."""
    cfg = run.config
    optimizer, opt_plan = make_optimizer(
        masters.master, cfg.learning_rate, cfg.weight_decay, hw.device, plan=opt_plan, fused=not hw.fsdp
    )
    scaler = LossScaler(hw.device) if hw.compute_dtype == torch.float16 else None
    if hw.fsdp:
        if layout.name == "single":  # FSDP needs the same number of forward passes on every process
            raise ValueError(f"{type(run.model).__name__} passes no batched attention layout check; FSDP needs one")
        module, optimizer = hw.accelerator.prepare(module, optimizer)
        if run.events.monitors():
            logger.warning("measuring observers are skipped under FSDP: the main process does not hold the model")
            for monitor in run.events.monitors():
                run.events.drop(monitor)
    elif hw.accelerator.num_processes > 1:
        model = run.model
        broadcast_from_main([*model.parameters(), *model.buffers(), *(masters.master if masters.separate else [])])
    return module, optimizer, scaler, opt_plan


def _tell_observers(run: RunHandle, state: TrainState, hw: _Hardware) -> None:
    """``on_train_begin`` with what setup decided; every process fails alike when an observer refuses."""
    masters, layout = state.sync.masters, state.layout
    info = {
        "total_steps": state.total_steps,
        "start_step": state.start_step,
        "resumed": run.resume_from is not None,
        "steps_per_epoch": state.plan.steps_per_epoch,
        "examples": len(run.train),
        "parameters": sum(p.numel() for p in masters.master),
        "precision": state.precision,
        "device": str(state.device),
        "world_size": state.world,
        "packing": layout.name if layout.name in ("flash-varlen", "flex", "varlen", "mask") else None,
        "layout": layout.name,
        "layout_timings": layout.timings,
        "kernels": state.kernels,
        "optimizer": state.optimizer_name,
        "master_weights": masters.separate or hw.compute_dtype == torch.float32,
        "activation_checkpointing": run.config.activation_checkpointing,
        "fused_loss": getattr(state.accelerator.unwrap_model(state.module), "fused", False),
        "tasks": state.task_names or None,
        "run_dir": str(run.run_dir),
        "base_model": run.base_model,
        "config": dataclasses.asdict(run.config),
        "data": getattr(run, "data_settings", None),  # the prompt format the model learns (a monitor follows it)
    }
    refusal: BaseException | None = None
    try:
        run.events.emit("on_train_begin", info)
    except (ValueError, LookupError) as exc:
        refusal = exc
    message = broadcast_from_main_object(None if refusal is None else f"{type(refusal).__name__}: {refusal}")
    if refusal is not None:
        raise refusal
    if message is not None:
        raise ValueError(message)


# ------------------------------------------------------------------------------------------------------ one step


def train_step(state: TrainState, micro_batches: list[list[int]]) -> StepResult:
    """One optimizer step over ``micro_batches`` (this process takes every ``world``-th): forward and backward
    each, all-reduce the fp32 master gradients once, clip, update (or skip an fp16 overflow)."""
    cfg, t0 = state.config, time.perf_counter()
    lr = lr_at(state.step, state.total_steps, state.warmup_steps, cfg.learning_rate, cfg.schedule)
    set_learning_rate(state.optimizer, lr)
    # The loss is a sum over the step's labelled tokens divided by their count: the same number however the step
    # is split into micro-batches or processes.
    n_labels = sum(state.label_counts[i] for mb in micro_batches for i in mb)
    sums = _forward_backward(state, micro_batches, scale=1.0 / max(n_labels, 1))
    grad_norm = state.sync.reduce_and_clip(cfg.max_grad_norm)
    if state.world > 1:
        all_reduce_sum([sums])
    step_loss = float(sums[0]) / max(n_labels, 1)
    loss_scale = state.sync.scaler.value if state.sync.scaler is not None else None  # what this backward used
    _check_progress(state, grad_norm, n_labels, step_loss)
    try:
        skipped = state.sync.update(state.optimizer, step_loss, grad_norm)
    except FloatingPointError as exc:  # nothing was updated: say which checkpoint is still good
        kept = latest_checkpoint(state.run_dir)
        raise TrainingError(
            f"{exc} at step {state.step + 1}; the weights were not updated. Last good checkpoint: {kept or 'none'}. "
            "Try a lower learning_rate, warmup_steps, max_grad_norm=1.0, or precision='fp32'"
        ) from None
    tokens = sum(state.plan.lengths[i] for mb in micro_batches for i in mb)
    task_losses = _task_losses(state, micro_batches, sums)
    return StepResult(
        step_loss, grad_norm, lr, tokens, n_labels, time.perf_counter() - t0, task_losses, loss_scale, skipped
    )


def _forward_backward(state: TrainState, micro_batches: list[list[int]], scale: float) -> torch.Tensor:
    """This process's micro-batches, forward and backward (gradients scaled by ``scale``): ``[loss sum, loss sum
    per task...]``."""
    mine = micro_batches[state.rank :: state.world]
    sums = torch.zeros(1 + len(state.task_names), device=state.device)
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
    return sums


# ------------------------------------------------------------------------------------------------------ cleanup


def cleanup(run: RunHandle, state: TrainState) -> None:
    """After the last step: checkpoint a stopped run, or validate and save a completed one; model back in its
    dtype; the summary."""
    if state.step < state.total_steps:  # stopped early: checkpoint so that resume() can continue exactly here
        if state.last_saved != state.step:
            write_checkpoint(run, state)
        run.status = "stopped"
    else:
        evaluated = any(h["kind"] == "eval" and h["step"] == state.step for h in run.history[-3:])
        if run.val is not None and state.last_state is not None and not evaluated:
            _validate(run, state, state.last_state, "final_eval")
        if state.last_saved != state.step:  # the final checkpoint: resume(more_steps=N) continues from it exactly
            write_checkpoint(run, state)
        run.status = "completed"
    weights = full_state_dict(state.accelerator, state.module) if state.fsdp else None
    state.restore_model()
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


def _record_step(run: RunHandle, state: TrainState, result: StepResult, epoch: float) -> StepState:
    """A history row and ``on_step`` for a step (an attempt skipped for fp16 overflow: under the step it tried)."""
    state.train_time += result.seconds
    state.tokens_seen += result.tokens
    done = max(state.step - state.start_step, 1)
    step_state = StepState(
        step=state.step + 1 if result.skipped else state.step,
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


def _validate(run: RunHandle, state: TrainState, step_state: StepState, phase: str) -> None:
    run.events.emit("on_phase", {"phase": phase, "step": state.step})
    t0 = time.perf_counter()
    metrics = {"val_loss": evaluate_loss(state, run.val)}  # type: ignore[arg-type]
    state.eval_time += time.perf_counter() - t0
    run.history.append({"kind": "eval", "step": state.step, "epoch": step_state.epoch, **metrics})
    run.events.emit("on_eval", step_state, metrics)


def _measure(run: RunHandle, state: TrainState, step_state: StepState | None) -> bool:
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


def _measured(history: list[dict[str, Any]], step: int) -> bool:
    return any(h["kind"] == "monitor" and h["step"] == step for h in history)


def _autosave_due(state: TrainState) -> bool:
    """``save_every_minutes`` of training passed since the last checkpoint (each process's clock; agreed on after)."""
    minutes = state.config.save_every_minutes
    if not minutes or state.step >= state.total_steps:
        return False
    return time.perf_counter() - state.last_save_time >= 60.0 * minutes


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


def _summary(run: RunHandle, state: TrainState) -> dict[str, Any]:
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


def _pad_id(tokenizer: Any, model: Any) -> int:
    for source in (tokenizer, model.config):
        pad = getattr(source, "pad_token_id", None)
        if pad is not None:
            return int(pad)
    return 0
