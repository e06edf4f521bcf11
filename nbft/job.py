"""A whole fine-tune described in one YAML or JSON file: what ``nbft train CONFIG`` and ``nbft.launch`` run.

The same file runs in one process (``nbft train cfg.yaml``), in several (``accelerate launch -m nbft train
cfg.yaml``: DDP on GPUs or on CPU with gloo, FSDP through an accelerate config), and from a notebook
(``nbft.launch("cfg.yaml", num_processes=2)``). ``nbft train --print-config`` writes the commented example below.

The file is checked before the model loads and before anything is written: an unknown field ("did you mean"), a
value of the wrong type, a missing file or an unknown task each give one line naming the field and the fix.

Example:
    >>> job = job_from_dict({"model": "tiny", "data": "sentiment", "train": {"max_steps": 2}})
    >>> job.train.max_steps, job.data_kind
    (2, 'task')
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from nbft._utils import atomic_path, did_you_mean
from nbft.config import EvalConfig, TrainConfig

logger = logging.getLogger("nbft.job")

EXAMPLE = """\
# nbft train config (YAML; JSON works too). Every field is checked before anything runs.
#   one process:                  nbft train train.yaml
#   several GPUs (DDP):           accelerate launch --num_processes 2 -m nbft train train.yaml
#   several CPU processes (gloo): accelerate launch --multi_gpu --num_processes 2 -m nbft train train.yaml
#   FSDP:                         accelerate launch --config_file fsdp.yaml -m nbft train train.yaml
#   from a notebook:              nbft.launch("train.yaml", num_processes=2)
model: HuggingFaceTB/SmolLM2-135M-Instruct  # Hub name, local folder, or "tiny" (a tiny random model, smoke tests)
data: sentiment            # a built-in task (its train split), a .jsonl/.json/.csv/.parquet file, or a Hub dataset
template: null             # file or Hub data: template id(s) or a task name to render each row; null when the rows
                           # have prompt and completion columns (a built-in task uses its own template)
max_examples: 320          # train on at most this many examples (null: all)
validation_examples: 64    # held-out examples for the validation loss (0: none)
chat_template: true        # wrap prompts in the model's chat template (instruct models follow a task better)
output_dir: runs/sentiment-cli  # the run: history.jsonl, checkpoints/, model/ (must not hold another run)
train:                     # nbft.TrainConfig (every field is documented there)
  learning_rate: 2.0e-4
  max_steps: 40
  batch_size: 8
  warmup_ratio: 0.1
  eval_every: 10
  save_every: 20
  max_length: 128
eval:                      # optional: base vs tuned with nbft.compare when training completes
  tasks: [sentiment, qa]   # the data's task is the target; the others show what was forgotten
  n: 100                   # and any nbft.EvalConfig field
"""


class ConfigError(ValueError):
    """A config file that cannot run: the message names the file, the field and the fix."""


@dataclasses.dataclass
class JobConfig:
    """What one config file asks for (see :data:`EXAMPLE`)."""

    model: str
    data: str
    train: TrainConfig
    output_dir: str | None = None
    template: str | list[str] | None = None
    max_examples: int | None = None
    validation_examples: int = 64
    chat_template: bool = False
    eval: dict[str, Any] | None = None
    data_kind: str = "task"
    """``"task"`` (a built-in task), ``"file"`` or ``"hub"``; decided when the file is checked."""
    source: str = "config"
    """Where the config came from (its path), for messages."""


_TOP = {
    "model": str,
    "data": str,
    "train": dict,
    "output_dir": str | None,
    "template": str | list[str] | None,
    "max_examples": int | None,
    "validation_examples": int,
    "chat_template": bool,
    "eval": dict | None,
}
_REQUIRED = {"model": "model: HuggingFaceTB/SmolLM2-135M-Instruct", "data": "data: sentiment"}


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read and check a YAML or JSON config file (nothing is loaded or written).

    ``overrides`` are ``field=value`` strings (``train.max_steps=3``, ``model=tiny``) applied before checking;
    values are read as YAML (numbers, lists, null).

    Example:
        >>> load_job("train.yaml").output_dir  # doctest: +SKIP
        'runs/sentiment-cli'
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; write an example with `nbft train --print-config > {path}`")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    else:
        import yaml

        try:
            raw = yaml.load(text, Loader=_unique_key_loader())  # safe_load's loader, refusing a key given twice
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML: {problem}{where}") from None
    if overrides and isinstance(raw, dict):
        for item in overrides:
            _override(raw, item, str(path))
    return job_from_dict(raw, source=str(path), base_dir=path.parent)


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ConfigError(
                f"{path}: the key {key!r} is given twice in one object (only the last would count); keep one"
            )
        seen.add(key)
    return dict(pairs)


def _unique_key_loader() -> type:
    """YAML's safe loader, except that a key given twice in one mapping is an error naming it and both lines (YAML
    itself keeps the last silently: a second ``train:`` block would replace the first)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` may be overridden by the keys beside it: that is what it is for
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class says so
                line = key_node.start_mark.line + 1
                if first is not None:
                    where = f"lines {first} and {line}" if first != line else f"line {line}"
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"the key {key!r} is given twice ({where}); only the last would count: keep one (merge "
                        "the settings of both into it)",
                        key_node.start_mark,
                    )  # fmt: skip
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _override(raw: dict[str, Any], item: str, source: str) -> None:
    import yaml

    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{source}: override {item!r} must look like field=value, e.g. train.max_steps=10")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {item!r}: {part} is not a mapping")
    node[leaf] = yaml.safe_load(text)


def job_from_dict(raw: Any, *, source: str = "config", base_dir: Path | None = None) -> JobConfig:
    """Check a config mapping (as read from YAML/JSON) and build the :class:`JobConfig`."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the config must be a mapping of fields (model:, data:, train: ...)")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _TOP:
            raise ConfigError(
                f"{source}: unknown field {key!r}.{did_you_mean(str(key), _TOP)} Fields: {', '.join(_TOP)}"
            )
        values[key] = _coerce(value, _TOP[key], f"{source}: {key}")
    for key, example in _REQUIRED.items():
        if key not in values:
            raise ConfigError(f"{source}: missing field {key!r}, e.g. `{example}`")
    train = _dataclass_from(TrainConfig, values.pop("train", None) or {}, f"{source}: train")
    job = JobConfig(train=train, source=source, **values)
    if job.max_examples is not None and job.max_examples < 1:
        raise ConfigError(f"{source}: max_examples must be >= 1 or null (all), got {job.max_examples}")
    if job.validation_examples < 0:
        raise ConfigError(f"{source}: validation_examples must be >= 0 (0: no validation loss)")
    job.model = _check_model(job.model, source, base_dir)
    job.data, job.data_kind = _check_data(job.data, source, base_dir)
    if job.template is not None:
        from nbft.templates import resolve_templates

        try:
            resolve_templates(job.template)
        except (ValueError, LookupError) as exc:
            raise ConfigError(f"{source}: template: {exc}") from None
    elif job.data_kind != "task":
        logger.debug("no template: the data must have prompt and completion columns")
    if job.eval is not None:
        job.eval = _check_eval(job.eval, source)
    return job


# ---------------------------------------------------------------------------------------------------- checks


def _task_names() -> list[str]:
    from nbft.evaluate import list_tasks

    return list_tasks()


def _check_model(model: str, source: str, base_dir: Path | None) -> str:
    if model == "tiny":
        return model
    path = _find(model, base_dir)
    if path is not None:
        if not (path / "config.json").exists():
            raise ConfigError(f"{source}: model: {path} has no config.json; give a folder written by save_pretrained")
        return str(path)
    if model.startswith((".", "/", "~")):
        raise ConfigError(f"{source}: model: folder not found: {model}")
    return model


def _check_data(data: str, source: str, base_dir: Path | None) -> tuple[str, str]:
    from nbft.data import FILE_FORMATS

    tasks = _task_names()
    if data in tasks:
        return data, "task"
    path = _find(data, base_dir)
    if path is not None:
        if path.is_file() and path.suffix.lower() not in FILE_FORMATS:
            raise ConfigError(f"{source}: data: unsupported file type {path.suffix!r}; use {', '.join(FILE_FORMATS)}")
        return str(path), "file"
    if Path(data).suffix.lower() in FILE_FORMATS or data.startswith((".", "/", "~")):
        raise ConfigError(f"{source}: data: file not found: {data} (relative to the current folder or the config's)")
    hint = did_you_mean(data, tasks)
    if hint and "/" not in data:
        raise ConfigError(f"{source}: data: unknown task {data!r}.{hint} Built-in tasks: {', '.join(tasks)}")
    return data, "hub"


def _find(name: str, base_dir: Path | None) -> Path | None:
    for candidate in (Path(name).expanduser(), (base_dir or Path(".")) / name):
        if candidate.exists():
            return candidate
    return None


def _check_eval(spec: dict[str, Any], source: str) -> dict[str, Any]:
    spec = dict(spec)
    if "tasks" not in spec:
        raise ConfigError(f"{source}: eval needs tasks, e.g. `tasks: [sentiment, qa]` (or drop eval:)")
    tasks = _coerce(spec.pop("tasks"), str | list[str], f"{source}: eval.tasks")
    tasks = [tasks] if isinstance(tasks, str) else tasks
    if not tasks:  # compare() would refuse it, but only after the whole training run
        raise ConfigError(
            f"{source}: eval.tasks is empty: list the tasks to compare base and tuned on, e.g. "
            "`tasks: [sentiment, qa]`, or drop eval: to train without the comparison"
        )
    known = _task_names()
    for name in tasks:
        if name not in known:
            raise ConfigError(f"{source}: eval.tasks: unknown task {name!r}.{did_you_mean(name, known)}")
    config = _dataclass_from(EvalConfig, spec, f"{source}: eval")
    return {"tasks": tasks, "config": config, "given": sorted(spec)}


def _dataclass_from(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints or key not in fields:
            allowed = [f for f in fields if f not in ("tasks",)]
            hint = did_you_mean(str(key), allowed)
            if not hint and _SYNONYMS.get(str(key).lower()) in allowed:
                hint = f" Did you mean {_SYNONYMS[str(key).lower()]!r}?"
            raise ConfigError(f"{where}.{key}: unknown {cls.__name__} field.{hint or ' Fields: ' + ', '.join(allowed)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


_SYNONYMS = {
    "lr": "learning_rate", "steps": "max_steps", "bs": "batch_size", "warmup": "warmup_steps", "wd": "weight_decay",
    "accumulation": "grad_accum", "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "dtype": "precision",
}  # fmt: skip
"""Names from other trainers (HF TrainingArguments, common shorthands) and the nbft field they mean."""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (YAML gives numbers like ``5e-5`` as text: those become floats), or an error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if origin in (list, tuple) and isinstance(value, list | tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
        item = args[0] if args else Any
        return origin(_coerce(v, item, where) for v in value)
    if origin is dict or hint is dict:
        if isinstance(value, Mapping):
            if not args:
                return dict(value)
            return {_coerce(k, args[0], where): _coerce(v, args[1], where) for k, v in value.items()}
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


# ------------------------------------------------------------------------------------------------------ data


def job_data(job: JobConfig, tokenizer: Any) -> tuple[Any, Any]:
    """Tokenized ``(train, validation or None)`` for the job, with ``task`` and ``template_id`` columns kept."""
    import datasets

    from nbft.data import build_instruction_dataset, load_source, tokenize_for_training

    seed = job.train.seed
    val = None
    if job.data_kind == "task":
        train, val = _task_rows(job.data, job.template, seed)
    elif job.template is not None:
        splits = build_instruction_dataset(job.data, job.template, seed=seed)
        train, val = splits["train"], splits["validation"]
    else:
        rows = load_source(job.data).shuffle(seed=seed)
        missing = {"prompt", "completion"} - set(rows.column_names)
        if missing:
            raise ConfigError(
                f"{job.source}: data: {job.data} has no {sorted(missing)} column(s) (columns: {rows.column_names}); "
                "set `template:` to a template id or task name that renders its rows"
            )
        held = min(job.validation_examples, len(rows) // 5)  # never more than a fifth of the data
        train, val = rows.select(range(held, len(rows))), rows.select(range(held)) if held else None
    train = train.shuffle(seed=seed)
    if job.max_examples is not None:
        train = train.select(range(min(job.max_examples, len(train))))
    if val is not None:
        val = val.select(range(min(job.validation_examples, len(val)))) if job.validation_examples else None
        val = val if val is not None and len(val) else None

    def tokenize(ds: datasets.Dataset) -> datasets.Dataset:
        cfg = job.train
        return tokenize_for_training(ds, tokenizer, max_length=cfg.max_length, chat_template=job.chat_template)

    return tokenize(train), tokenize(val) if val is not None else None


def _task_rows(name: str, templates: str | list[str] | None, seed: int) -> tuple[Any, Any]:
    """A built-in task's train and validation splits as prompt/completion rows (the task owns its splits: its
    test split is never trained on)."""
    from nbft.data import build_instruction_dataset

    data = build_instruction_dataset(task=name, templates=templates, seed=seed)
    val = data["validation"] if "validation" in data and len(data["validation"]) else None
    return data["train"], val


# ------------------------------------------------------------------------------------------------------- run


def _load_model(name: str) -> tuple[Any, Any]:
    from nbft.models import load_model, tiny_random

    return tiny_random("llama", seed=0) if name == "tiny" else load_model(name)


def run_job(
    job: JobConfig,
    *,
    resume: bool = False,
    observers: Sequence[Any] = (),
    echo: Callable[[str], None] | None = None,
    more_steps: int | None = None,
) -> dict[str, Any]:
    """Load the model and data, fine-tune, and (when ``eval`` is set and the run completes) compare base and tuned.

    Every process of a multi-process launch runs this; only the main process evaluates, writes and echoes.
    Returns ``{"status", "summary", "run_dir", "comparison"}`` (``comparison`` is the table's text, or None).

    Example:
        >>> run_job(load_job("train.yaml"), echo=print)  # doctest: +SKIP
    """
    import torch
    from accelerate import PartialState

    from nbft.train import ProgressObserver, finetune
    from nbft.train import resume as resume_run

    say = echo or (lambda line: logger.info("%s", line))
    run_dir = check_output_dir(job, resume=resume, more_steps=more_steps)
    _check_reachable(job)  # a task that needs the Hub fails now, not after training
    state = PartialState(cpu=not torch.cuda.is_available())
    main = state.is_main_process
    progress = [ProgressObserver()] if main else []
    if resume:
        run = resume_run(run_dir, observers=[*progress, *observers], more_steps=more_steps)
    else:
        from nbft._quiet import quiet

        # downloads and caches: one process fills them, the others read them; no library bars in the output
        with state.main_process_first(), quiet():
            model, tokenizer = _load_model(job.model)
            train, val = job_data(job, tokenizer)
        if main:
            say(f"nbft train: {job.model}, {len(train)} training examples from {job.data}, {state.num_processes} "
                f"process(es) on {state.device}")  # fmt: skip
        run = finetune(model, tokenizer, train, val=val, config=job.train, observers=[*progress, *observers],
                       run_dir=run_dir)  # fmt: skip
    result = {"status": run.status, "summary": run.summary, "run_dir": str(run.run_dir), "comparison": None}
    if not main:
        return result
    loss = f", final loss {run.final_loss:.4f}" if run.final_loss is not None else ""
    say(f"nbft train: {run.status} after {run.summary.get('steps')} steps{loss}; run in {run.run_dir}")
    if job.eval and run.status == "completed":
        table = _compare(job, run.run_dir / "model")
        text = table.to_text()
        _write_comparison(run.run_dir, table)
        result["comparison"] = text
        say(text)
    return result


def check_output_dir(job: JobConfig, *, resume: bool = False, more_steps: int | None = None) -> Path:
    """The run directory of ``job``, checked before anything runs (a new run needs a folder without a run in it;
    ``resume`` one with a checkpoint). ``nbft.launch`` calls it before it starts any process.

    Example:
        >>> check_output_dir(load_job("train.yaml"))  # doctest: +SKIP
        PosixPath('runs/sentiment-cli')
    """
    import time

    from nbft.train.checkpoint import list_checkpoints
    from nbft.train.guard import foreign_entries

    run_dir = Path(job.output_dir) if job.output_dir else Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{job.source}: output_dir {run_dir} is a file; set output_dir to a folder for the run")
    holds_run = bool(list_checkpoints(run_dir)) or (run_dir / "model").exists() or (run_dir / "run.json").exists()
    completed = (run_dir / "model" / "config.json").exists()
    if more_steps is not None and not resume:
        raise ConfigError(f"{job.source}: --more-steps continues a completed run: add --resume")
    if resume and not list_checkpoints(run_dir):
        raise ConfigError(f"{job.source}: output_dir {run_dir} has no checkpoint to resume; drop --resume")
    if resume and completed and more_steps is None:
        raise ConfigError(
            f"{job.source}: output_dir {run_dir} holds a completed run: train it further with `nbft train "
            f"{job.source} --resume --more-steps N`, or set another output_dir"
        )
    if holds_run and not resume:
        further = "--resume --more-steps N" if completed else "--resume"
        raise ConfigError(
            f"{job.source}: output_dir {run_dir} already holds a run; continue it with `nbft train "
            f"{job.source} {further}`, or set another output_dir (--set output_dir=...)"
        )
    foreign = [] if holds_run else foreign_entries(run_dir)
    if foreign:  # a run never mixes into a folder of the user's (its own data/ or tokenizer/ included)
        shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
        raise ConfigError(
            f"{job.source}: output_dir {run_dir} holds files that are not an nbft run ({shown}): a run needs an "
            f"empty or new folder; set another output_dir (--set output_dir={run_dir / 'run-1'})"
        )
    return run_dir


def _check_reachable(job: JobConfig) -> None:
    """Tasks and datasets that live on the Hugging Face Hub need it: say so before anything is loaded."""
    from nbft._registry import hub_reachable
    from nbft.evaluate import list_tasks

    offline = set(list_tasks(offline_only=True))
    needs = [job.data] if job.data_kind == "hub" or (job.data_kind == "task" and job.data not in offline) else []
    needs += [t for t in (job.eval or {}).get("tasks", []) if t not in offline]
    if needs and not hub_reachable():
        raise ConfigError(
            f"{job.source}: {sorted(set(needs))} need the Hugging Face Hub, which this machine cannot reach; use "
            f"tasks that work offline ({', '.join(sorted(offline))}) or a local data file"
        )


def _compare(job: JobConfig, tuned: Path) -> Any:
    """The one call into evaluation: ``nbft.compare`` of the base and tuned models on the config's tasks."""
    from nbft.report import compare

    spec = job.eval or {}
    config = spec["config"]
    if "chat_template" not in spec.get("given", ()):
        config = dataclasses.replace(config, chat_template=job.chat_template)  # evaluate as the model was trained
    target = job.data if job.data in spec["tasks"] else None
    # The base is loaded again (a tiny model is rebuilt from its seed): training changed the object in place.
    base = _load_model(job.model) if job.model == "tiny" else job.model
    return compare({"base": base, "tuned": str(tuned)}, spec["tasks"], target=target, config=config)


def _write_comparison(run_dir: Path, table: Any) -> None:
    from nbft.train.card import update_model_card

    with atomic_path(run_dir / "comparison.json") as tmp:
        tmp.write_text(json.dumps(table.to_dict(), indent=2, default=str, allow_nan=True))
    with atomic_path(run_dir / "comparison.txt") as tmp:
        tmp.write_text(table.to_text() + "\n")
    update_model_card(run_dir / "model", "Evaluation", "```\n" + table.to_text() + "\n```")
