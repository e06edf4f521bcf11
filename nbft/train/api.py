"""``finetune()`` and ``resume()``: check the arguments, prepare the run directory and the data, then start a
:class:`~nbft.train.run.Run` whose work is the loop (:func:`nbft.train.loop.train_loop`).

``finetune -> Run.start -> train_loop``: the loop is two hops from the call. Under ``accelerate launch`` (or
``nbft.launch``) every process calls the same function; decisions made on the main process (the run directory's
name, a refusal) reach every process.

Example:
    >>> from nbft.models import tiny_random
    >>> model, tok = tiny_random("llama")
    >>> data = [{"prompt": "Say hi.\\n", "completion": "hi"}] * 8
    >>> run = finetune(model, tok, data, config=TrainConfig(max_steps=2), run_dir="/tmp/nbft-doc")  # doctest: +SKIP
    >>> run.status  # doctest: +SKIP
    'completed'
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nbft._utils import atomic_path
from nbft.config import TrainConfig
from nbft.hashes import training_hashes
from nbft.train.batching import Examples, as_examples
from nbft.train.events import Observer
from nbft.train.guard import check_new_run_dir, claim_model, clear_old_run, plan_resume, read_meta, tidy_run_dir
from nbft.train.lock import RunLock
from nbft.train.loop import train_loop
from nbft.train.run import Run
from nbft.train.sync import broadcast_from_main_object, cast_buffers, distributed, is_main_process

logger = logging.getLogger("nbft.train")


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
    *,
    chat_template: bool | None = None,
    overflow: str | None = None,
) -> Run:
    """Full fine-tune of ``model`` (every weight is trained) on instruction data; returns a :class:`Run`.

    ``train``/``val``: a ``datasets.Dataset`` (or list of dicts) with ``prompt``/``completion`` text, or already
    tokenized ``input_ids``/``labels`` (``nbft.data.tokenize_for_training``). The loss covers completion tokens only.
    ``run_dir`` (default ``runs/run-<time>``) receives ``history.jsonl``, checkpoints and the final ``model/``; it
    is locked (``run.lock``) while the run trains, and a folder that holds another run is refused unless
    ``overwrite=True`` (which replaces that run's files, and nothing else in the folder). A folder that holds files
    which are not an nbft run (your own) is always refused: a run needs an empty or new folder.
    With ``background=True`` the call returns at once; use ``run.wait()`` / ``run.stop()``. Under ``accelerate
    launch`` (or ``nbft.launch``) every process calls ``finetune`` with the same arguments: they train together.

    Text data is tokenized with the settings the dataset carries (a ``DatasetBuilder``'s: chat format,
    ``max_length``, overflow; :mod:`nbft.dataset_settings`) unless told otherwise: ``chat_template=``,
    ``overflow=`` and a ``TrainConfig.max_length`` other than its default win, with a log line when they differ from
    the dataset's. The settings used go into ``run.json`` (key ``"data"``), where ``compare()`` reads them back.

    Example:
        >>> run = finetune(model, tok, data["train"], val=data["validation"],
        ...                config=TrainConfig(epochs=2, eval_every=50), run_dir="runs/sentiment-1")  # doctest: +SKIP
    """
    config = _check_arguments(model, config, observers, background=background, overwrite=overwrite)
    if run_dir is not None and not isinstance(run_dir, str | os.PathLike):
        raise TypeError(f"run_dir must be a folder path (str or Path), not {run_dir!r}")
    settings, data_settings = _data_settings(train, config, chat_template, overflow)
    config = dataclasses.replace(config, max_length=settings.max_length)  # run.json's config says what was used
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
            cut = {"max_length": settings.max_length, "chat_template": settings.chat_template,
                   "overflow": settings.overflow}  # fmt: skip
            train_ex = as_examples(train, kind=kind, tokenizer=tokenizer, name="train", vocab_size=vocab, **cut)
            val_ex = None
            if val is not None:
                val_ex = as_examples(val, kind=kind, tokenizer=tokenizer, name="validation", vocab_size=vocab, **cut)
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
            run.data_settings = data_settings  # into run.json: what compare() and the monitor read back
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
    return run.start(train_loop, background)


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
    return run.start(train_loop, background)


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
    cast_buffers(model, meta.get("buffer_dtypes", {}))  # RoPE frequencies etc. as the run had them (see sync.py)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer") if (run_dir / "tokenizer").exists() else None
    val_path = run_dir / "data" / "validation.safetensors"
    run = Run(
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
    run.data_settings = meta.get("data")  # the resumed run keeps its prompt format (for a monitor, for run.json)
    return run


def _data_settings(train: Any, config: TrainConfig, chat_template: Any, overflow: Any) -> tuple[Any, dict[str, Any]]:
    """The tokenization settings of this run (explicit arguments, else the dataset's, else the defaults) and the
    record ``run.json`` keeps of them."""
    from nbft.dataset_settings import resolve_training_settings

    if chat_template is not None and not isinstance(chat_template, bool):
        raise TypeError(f"chat_template must be True, False or None (the dataset's setting), not {chat_template!r}")
    if overflow is not None and overflow not in ("truncate", "drop"):
        raise ValueError(f"overflow must be 'truncate', 'drop' or None (the dataset's setting), not {overflow!r}")
    default = TrainConfig.__dataclass_fields__["max_length"].default
    if _columns_of(train) >= {"input_ids", "labels"}:
        # tokenized before: the cut was made; tokenize_for_training's output says how (else only what was told)
        from nbft.dataset_settings import TokenizationSettings, settings_of

        carried = settings_of(train)
        settings = carried or TokenizationSettings(max_length=config.max_length, overflow=overflow or "truncate")
        record = {**settings.to_dict(), "source": "tokenized"}
        if carried is None:
            record["chat_template"] = chat_template  # unknown (None) unless the caller said
        return dataclasses.replace(settings, max_length=config.max_length), record
    # TrainConfig.max_length left at its default is not a choice: the dataset's max_length wins over it
    explicit = config.max_length if config.max_length != default else None
    settings, source = resolve_training_settings(
        train, max_length=explicit, chat_template=chat_template, overflow=overflow, default_max_length=default
    )
    return settings, {**settings.to_dict(), "source": source}


def _columns_of(data: Any) -> set[str]:
    if hasattr(data, "column_names"):
        return set(data.column_names)
    if isinstance(data, dict):
        return set(data)
    if isinstance(data, list | tuple) and data and isinstance(data[0], dict):
        return set(data[0])
    return set()


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
