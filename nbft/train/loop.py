"""``finetune()`` and ``resume()``: nbft's full fine-tuning loop on ``accelerate.Accelerator``.

The loop is :func:`train_loop`, one function that reads top to bottom: setup, the step loop, cleanup. It is two
hops from ``finetune()`` (``finetune -> Run.start -> train_loop``). What a step does:

1. take the step's micro-batches from the :class:`~nbft.train.batching.StepPlan` (a pure function of seed and step);
2. for each micro-batch: pack it (no padding compute), run the base model, apply the LM head only on labelled
   positions (chunked), and backpropagate ``sum(CE) / labelled tokens in the whole step``;
3. clip, check the loss is finite, update AdamW, emit ``on_step``; evaluate and checkpoint when due.

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
import random
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nbft._utils import atomic_path
from nbft.config import TrainConfig
from nbft.hashes import write_training_hashes
from nbft.train.batching import (
    Examples,
    StepPlan,
    as_examples,
    collate_causal,
    collate_seq2seq,
    collate_varlen,
    eval_batches,
)
from nbft.train.card import render_model_card
from nbft.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from nbft.train.events import Events, HistoryWriter, Observer, StepState
from nbft.train.loss import CausalLMLoss, Seq2SeqLoss, check_fused_head

logger = logging.getLogger("nbft.train")

_OOM_ERRORS: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    MemoryError,
)


class TrainingError(RuntimeError):
    """Training ended early for a reason the message explains (non-finite loss, out of memory)."""


class Run:
    """Handle of one training run: ``status``, ``history``, ``model``; ``stop()``, ``wait()``, ``save()``.

    ``status`` is ``"pending"``, ``"running"``, ``"completed"``, ``"stopped"`` or ``"failed"`` (then ``error``
    holds the exception, which ``wait()`` raises). ``history`` is a list of plain dicts (``kind`` ``"train"`` or
    ``"eval"``), e.g. ``pandas.DataFrame(run.history)``.

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
        self.card_sections: dict[str, str] = {}
        """Extra model-card sections (title -> markdown) that :meth:`save` writes, e.g. an evaluation table."""
        self.resume_from = resume_from
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._events = Events([*observers, HistoryWriter(run_dir / "history.jsonl")], request_stop=self.stop)

    def start(self, background: bool) -> Run:
        """Run :func:`train_loop` here, or in a worker thread when ``background`` (then return at once)."""
        if background:
            self._thread = threading.Thread(target=train_loop, args=(self,), name="nbft-train", daemon=True)
            self._thread.start()
            return self
        train_loop(self)
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        """Ask the loop to finish the current step, write a checkpoint and end with status ``"stopped"``."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run ends (or ``timeout`` seconds pass); re-raise the worker's exception if it failed."""
        if self._thread is not None:
            self._thread.join(timeout)
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

    def save(self, path: str | Path | None = None) -> Path:
        """Write the model (safetensors), tokenizer and a model card (``README.md``) to ``path``, atomically.

        Defaults to ``<run_dir>/model``; a completed run saves there by itself.
        """
        if self.status == "running" and threading.current_thread() is not self._thread:
            raise RuntimeError("the run is still training: call run.stop() and run.wait() before run.save()")
        path = Path(path) if path is not None else self.run_dir / "model"
        with atomic_path(path) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
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
) -> Run:
    """Full fine-tune of ``model`` (every weight is trained) on instruction data; returns a :class:`Run`.

    ``train``/``val``: a ``datasets.Dataset`` (or list of dicts) with ``prompt``/``completion`` text, or already
    tokenized ``input_ids``/``labels`` (``nbft.data.tokenize_for_training``). The loss covers completion tokens only.
    ``run_dir`` (default ``runs/run-<time>``) receives ``history.jsonl``, checkpoints and the final ``model/``.
    With ``background=True`` the call returns at once; use ``run.wait()`` / ``run.stop()``.

    Example:
        >>> run = finetune(model, tok, data["train"], val=data["validation"],
        ...                config=TrainConfig(epochs=2, eval_every=50), run_dir="runs/sentiment-1")  # doctest: +SKIP
    """
    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, not {type(config).__name__}")
    kind = "seq2seq" if getattr(model.config, "is_encoder_decoder", False) else "causal"
    train_ex = as_examples(train, kind=kind, tokenizer=tokenizer, max_length=config.max_length, name="train")
    val_ex = None
    if val is not None:
        val_ex = as_examples(val, kind=kind, tokenizer=tokenizer, max_length=config.max_length, name="validation")
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    if list_checkpoints(run_dir) or (run_dir / "model").exists():
        raise FileExistsError(
            f"{run_dir} already holds a run: continue it with nbft.resume({str(run_dir)!r}), or choose a new run_dir"
        )
    base_model = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None) or None
    _write_run_files(run_dir, model, tokenizer, train_ex, val_ex, config, kind, base_model)
    write_training_hashes(run_dir / "data", train)  # what compare() checks test splits against (nbft.hashes)
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
    return run.start(background)


def resume(run_dir: str | Path, *, observers: Sequence[Observer] = (), background: bool = False) -> Run:
    """Continue a stopped or interrupted run from its newest checkpoint; the rest of the loss curve is the same.

    Example:
        >>> run = resume("runs/sentiment-1", observers=[ProgressObserver()])  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{run_dir} is not an nbft run directory (no run.json); pass the run_dir of finetune()")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(
            f"{run_dir} has no checkpoint to resume from: checkpoints are written on stop and every "
            "TrainConfig.save_every steps"
        )
    meta = json.loads(meta_path.read_text())
    auto = AutoModelForSeq2SeqLM if meta["kind"] == "seq2seq" else AutoModelForCausalLM
    model = auto.from_pretrained(
        checkpoint / "model", dtype=getattr(torch, meta["dtype"]), attn_implementation=meta["attn_implementation"]
    )
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer") if (run_dir / "tokenizer").exists() else None
    val_path = run_dir / "data" / "validation.safetensors"
    run = Run(
        model=model,
        tokenizer=tokenizer,
        train=Examples.load(run_dir / "data" / "train.safetensors"),
        val=Examples.load(val_path) if val_path.exists() else None,
        config=TrainConfig(**meta["config"]),
        observers=observers,
        run_dir=run_dir,
        base_model=meta.get("base_model"),
        resume_from=checkpoint,
    )
    return run.start(background)


def train_loop(run: Run) -> None:
    """Setup, then one optimizer step per iteration until done or stopped; records the outcome on ``run``."""
    from accelerate import Accelerator

    cfg, model = run.config, run.model
    run.status = "running"
    events = run._events
    masters: MasterWeights | None = None
    try:
        # ---------------------------------------------------------------------------------------------- setup
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        device = accelerator.device
        if device.type == "cuda":
            if device.index is None:  # a single-GPU Accelerator says "cuda"; set_device needs an index
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)  # this may be a worker thread: the current device is per thread
            torch.cuda.reset_peak_memory_stats(device)
        amp_dtype = resolve_precision(cfg.precision, device)
        kind = "seq2seq" if getattr(model.config, "is_encoder_decoder", False) else "causal"
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        model.to(device)
        model.train()
        model.requires_grad_(True)  # a full fine-tune: a loaded model may come with frozen parts
        pack = _packing_mode(model, device) if cfg.packing and kind == "causal" else None
        module = CausalLMLoss(model, fused=check_fused_head(model)) if kind == "causal" else Seq2SeqLoss(model)
        # bf16: the model computes in bf16 and the optimizer keeps fp32 master weights (see MasterWeights).
        masters = MasterWeights(model, amp_dtype) if amp_dtype is not None else None
        trained = masters.master if masters is not None else list(model.parameters())
        optimizer = make_optimizer(trained, cfg.learning_rate, cfg.weight_decay, device)
        module, optimizer = accelerator.prepare(module, optimizer)
        world, rank = accelerator.num_processes, accelerator.process_index
        plan = StepPlan(
            run.train.lengths,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            world_size=world,
            tokens_per_step=cfg.tokens_per_step,
            epochs=cfg.epochs,
            max_steps=cfg.max_steps,
        )
        total = plan.total_steps
        warmup = cfg.warmup_steps or round(cfg.warmup_ratio * total)
        lengths, label_counts = run.train.lengths, run.train.label_counts(kind)
        pad_id = _pad_id(run.tokenizer, model)
        start_step, elapsed_before = 0, 0.0
        if run.resume_from is not None:
            saved = load_checkpoint(run.resume_from, optimizer=optimizer)  # also restores every RNG
            start_step, elapsed_before = saved["step"], saved["elapsed_s"]
            run.history[:] = saved["history"]
        events.emit(
            "on_train_begin",
            {
                "total_steps": total,
                "start_step": start_step,
                "steps_per_epoch": plan.steps_per_epoch,
                "examples": len(run.train),
                "parameters": sum(p.numel() for p in model.parameters()),
                "precision": "bf16" if amp_dtype is not None else "fp32",
                "device": str(device),
                "packing": pack,
                "fused_loss": getattr(accelerator.unwrap_model(module), "fused", False),
                "run_dir": str(run.run_dir),
                "base_model": run.base_model,
                "config": dataclasses.asdict(cfg),
            },
        )

        def checkpoint(step: int, epoch: float) -> None:
            state = {"epoch": epoch, "history": run.history, "elapsed_s": elapsed_before + train_time}
            if accelerator.is_main_process:
                weights = masters.state_dict() if masters is not None else None
                path = save_checkpoint(
                    run.run_dir,
                    step=step,
                    model=model,
                    weights=weights,
                    optimizer=optimizer,
                    state=state,
                    keep_last=cfg.keep_last,
                )
                events.emit("on_save", path)
            accelerator.wait_for_everyone()

        # ------------------------------------------------------------------------------------------ the loop
        step, epoch, last_saved = start_step, float(start_step) / plan.steps_per_epoch, -1
        train_time, tokens_seen, oom = 0.0, 0, False
        state: StepState | None = None
        try:
            while step < total:
                if run._stop.is_set():
                    break
                t0 = time.perf_counter()
                epoch, micro_batches = plan.step(step)
                lr = lr_at(step, total, warmup, cfg.learning_rate, cfg.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # The loss is a sum over the step's labelled tokens divided by their count: the same number however
                # the step is split into micro-batches or processes (DDP averages over processes: undo with * world).
                n_labels = sum(label_counts[i] for mb in micro_batches for i in mb)
                scale = world / max(n_labels, 1)
                loss_sum = torch.zeros((), device=device)
                mine = micro_batches[rank::world]
                for k, indices in enumerate(mine):
                    if not indices:
                        continue
                    batch = _collate(run.train, indices, kind, pad_id, pack, device)
                    sync = k == len(mine) - 1  # gradients are exchanged between processes once per step
                    with contextlib.nullcontext() if sync else accelerator.no_sync(module):
                        loss = module(**batch)
                        accelerator.backward(loss * scale)
                    loss_sum += loss.detach()
                    del batch, loss
                    if masters is not None:
                        masters.grads_to_master()
                max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
                grad_norm = float(accelerator.clip_grad_norm_(trained, max_norm))
                step_loss = float(accelerator.reduce(loss_sum, "sum")) / max(n_labels, 1)
                if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                    optimizer.zero_grad(set_to_none=True)
                    model.zero_grad(set_to_none=True)
                    kept = latest_checkpoint(run.run_dir)
                    raise TrainingError(
                        f"the loss became {step_loss} (gradient norm {grad_norm}) at step {step + 1}; the weights "
                        f"were not updated. Last good checkpoint: {kept or 'none'}. Try a lower learning_rate, "
                        "warmup_steps, max_grad_norm=1.0, or precision='fp32'"
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if masters is not None:
                    masters.master_to_model()
                step += 1

                dt = time.perf_counter() - t0
                train_time += dt
                tokens = sum(lengths[i] for mb in micro_batches for i in mb)
                tokens_seen += tokens
                state = StepState(
                    step=step,
                    total_steps=total,
                    epoch=epoch,
                    loss=step_loss,
                    learning_rate=lr,
                    grad_norm=grad_norm,
                    tokens=tokens,
                    label_tokens=n_labels,
                    tokens_per_second=tokens / dt,
                    elapsed_s=elapsed_before + train_time,
                    eta_s=train_time / (step - start_step) * (total - step),
                    peak_memory_mb=peak_memory_mb(device),
                )
                run.history.append({"kind": "train", **state.to_dict()})
                events.emit("on_step", state)
                if run.val is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                    _eval_and_emit(run, module, accelerator, kind, pad_id, pack, state)
                if cfg.save_every and step % cfg.save_every == 0 and step < total:
                    checkpoint(step, epoch)
                    last_saved = step
        except _OOM_ERRORS:
            oom = True  # handled below, outside the except block, so the traceback's tensors can be freed
        except KeyboardInterrupt:
            # In a notebook, "interrupt kernel" is a stop: the last finished step is checkpointed below.
            optimizer.zero_grad(set_to_none=True)
            run._stop.set()
        if oom:
            optimizer.zero_grad(set_to_none=True)
            model.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            raise TrainingError(
                f"out of memory at step {step + 1} on {device}. Lower TrainConfig.batch_size (or tokens_per_step), "
                "raise grad_accum (same maths, less memory), or lower max_length. The memory has been freed."
            )

        # --------------------------------------------------------------------------------------- cleanup
        if step < total:  # stopped early: checkpoint so that resume() can continue exactly here
            if last_saved != step:
                checkpoint(step, epoch)
            run.status = "stopped"
        else:
            if run.val is not None and state is not None:
                _eval_and_emit(run, module, accelerator, kind, pad_id, pack, state)
            run.status = "completed"
        run.summary = _summary(run, step, total, train_time, tokens_seen, device)
        if masters is not None:
            masters.restore()
            masters = None
        if run.status == "completed" and accelerator.is_main_process:
            events.emit("on_save", run.save(run.run_dir / "model"))
    except BaseException as exc:
        if masters is not None:  # leave the model usable: original dtype, last good (master) weights
            masters.restore()
        run.status, run.error = "failed", exc
        run.summary = {**run.summary, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        logger.error("training failed: %s", exc)
    finally:
        run.summary.setdefault("status", run.status)
        run._events.emit("on_train_end", dict(run.summary))
        run._done.set()


# ------------------------------------------------------------------------------------------------------ helpers


class MasterWeights:
    """bf16 weights in the model for speed, fp32 master copies for the optimizer (mixed precision).

    Forward and backward then run entirely in bf16: no per-op casts as under autocast, and half the memory
    traffic in the elementwise ops, which dominate on CPUs. The optimizer updates the fp32 masters, so small
    updates are not lost to bf16 rounding; the masters are copied back into the model after every step and
    restored as the model's weights when training ends. Memory per parameter: 2 (bf16) + 2 (bf16 grad) + 4 (fp32
    master) + 4 (fp32 grad) + 8 (AdamW) bytes, close to autocast's 16 + bf16 weight copies.
    """

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        self.model = model
        self.params = list(model.parameters())
        self.original_dtype = self.params[0].dtype
        with torch.no_grad():
            self.master = [torch.nn.Parameter(p.detach().float().clone()) for p in self.params]
        model.to(dtype)  # in place: the same Parameter objects (ties kept), now bf16

    def grads_to_master(self) -> None:
        """Move the bf16 gradients into fp32 master gradients (summing across micro-batches in fp32)."""
        for p, m in zip(self.params, self.master, strict=True):
            if p.grad is not None:
                m.grad = p.grad.float() if m.grad is None else m.grad.add_(p.grad)
                p.grad = None

    @torch.no_grad()
    def master_to_model(self) -> None:
        torch._foreach_copy_(self.params, self.master)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with fp32 master values in place of the bf16 parameters (for checkpoints)."""
        by_id = {id(p): m for p, m in zip(self.params, self.master, strict=True)}
        named = dict(self.model.named_parameters(remove_duplicate=False))
        return {k: by_id[id(named[k])].detach() if k in named else v for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def restore(self) -> None:
        """Training is over: the model gets its original dtype back, holding the trained master values."""
        self.model.to(self.original_dtype)
        torch._foreach_copy_(self.params, self.master)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast dtype, or ``None`` for fp32. ``auto`` uses bf16 only where the hardware runs it natively."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = cpu_has_native_bf16()
    else:
        supported = False
    if precision == "bf16":
        if device.type == "cuda" and not supported:
            raise ValueError("TrainConfig.precision='bf16' but this GPU has no bf16 support; use 'fp32' or 'auto'")
        return torch.bfloat16
    return torch.bfloat16 if supported else None


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX (where bf16 matmuls are fast); read from /proc/cpuinfo on Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


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


def make_optimizer(params: list[Any], lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over every parameter; no weight decay on norms and biases (1-D); fused kernel on CPU and CUDA."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel exists for CUDA and (since torch 2.4) CPU; it is what transformers.Trainer uses by default.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def _packing_mode(model: Any, device: torch.device) -> str | None:
    """How packed examples are kept apart: ``"varlen"``, ``"mask"`` or ``None`` (no packing).

    * ``varlen`` (CPU): the micro-batch is one row without padding, and attention runs per example through the
      attention interface. Cheapest on CPU, where a block mask would cost ``total²`` score work.
    * ``mask`` (GPU): rows no longer than the longest example, with a 4D block-diagonal mask in SDPA; one kernel
      call per layer, which suits GPUs. SDPA honours the mask exactly; eager attention does not, so switch.
    """
    if device.type == "cpu" and getattr(model, "_can_set_attn_implementation", lambda: False)():
        return "varlen"
    impl = getattr(model.config, "_attn_implementation", None)
    if impl == "sdpa":
        return "mask"
    try:
        model.set_attn_implementation("sdpa")
        logger.info("switched attention from %s to sdpa so packed examples stay isolated", impl)
        return "mask"
    except Exception as exc:
        logger.warning("packing turned off: %s cannot use sdpa attention (%s)", type(model).__name__, exc)
        return None


def _pad_id(tokenizer: Any, model: Any) -> int:
    for source in (tokenizer, model.config):
        pad = getattr(source, "pad_token_id", None)
        if pad is not None:
            return int(pad)
    return 0


def _collate(data: Examples, indices: list[int], kind: str, pad_id: int, pack: str | None, device: torch.device):
    ids = [data.input_ids[i] for i in indices]
    labels = [data.labels[i] for i in indices]
    if kind == "seq2seq":
        batch = collate_seq2seq(ids, labels, pad_id=pad_id)
    elif pack == "varlen":
        batch = collate_varlen(ids, labels)
    else:
        batch = collate_causal(ids, labels, pad_id=pad_id, pack=pack == "mask")
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _eval_and_emit(run: Run, module: Any, accelerator: Any, kind: str, pad_id: int, pack, state: StepState):
    metrics = {"val_loss": evaluate_loss(run, module, accelerator, kind, pad_id, pack)}
    run.history.append({"kind": "eval", "step": state.step, "epoch": state.epoch, **metrics})
    run._events.emit("on_eval", state, metrics)


@torch.no_grad()
def evaluate_loss(run: Run, module: Any, accelerator: Any, kind: str, pad_id: int, pack: str | None) -> float:
    """Mean cross-entropy per labelled token over the validation set (dropout off, no packing needed)."""
    assert run.val is not None
    cfg, device = run.config, accelerator.device
    inner = accelerator.unwrap_model(module)  # no gradients, so no DDP wrapper needed
    lengths = run.val.lengths
    budget = (cfg.tokens_per_step // cfg.grad_accum) if cfg.tokens_per_step else cfg.batch_size * max(lengths)
    batches = eval_batches(lengths, max(budget, max(lengths)))[accelerator.process_index :: accelerator.num_processes]
    total = torch.zeros((), device=device)
    inner.eval()
    try:
        for indices in batches:
            batch = _collate(run.val, indices, kind, pad_id, pack, device)
            total += inner(**batch).float()
    finally:
        inner.train()
    n = sum(run.val.label_counts(kind))
    return float(accelerator.reduce(total, "sum")) / max(n, 1)


def _summary(run: Run, step: int, total: int, train_time: float, tokens: int, device: torch.device) -> dict[str, Any]:
    evals = [h for h in run.history if h["kind"] == "eval"]
    return {
        "status": run.status,
        "steps": step,
        "total_steps": total,
        "train_loss": run.final_loss,
        "val_loss": evals[-1]["val_loss"] if evals else None,
        "train_time_s": train_time,
        "tokens_per_second": tokens / train_time if train_time else None,
        "peak_memory_mb": peak_memory_mb(device),
        "run_dir": str(run.run_dir),
        "error": None,
    }


def _write_run_files(
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    train: Examples,
    val: Examples | None,
    config: TrainConfig,
    kind: str,
    base_model: str | None,
) -> None:
    """What resume() needs besides a checkpoint: config, tokenized data, tokenizer (data is small, written once)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "data").mkdir(exist_ok=True)
    train.save(run_dir / "data" / "train.safetensors")
    if val is not None:
        val.save(run_dir / "data" / "validation.safetensors")
    if tokenizer is not None:
        try:
            tokenizer.save_pretrained(run_dir / "tokenizer")
        except Exception as exc:  # a custom tokenizer that cannot be saved only costs resume() its tokenizer
            logger.warning("could not save the tokenizer to the run directory (%s)", exc)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    meta = {
        "config": dataclasses.asdict(config),
        "kind": kind,
        "base_model": base_model,
        "dtype": dtype,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }
    with atomic_path(run_dir / "run.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
