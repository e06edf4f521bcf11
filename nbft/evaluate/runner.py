"""The evaluation runner: models × tasks in, a plain results dict out (as lm-evaluation-harness returns one).

Three entry points, from small to large:

- :func:`~nbft.evaluate.scoring.score` — one model, one task, a list of examples → a dict of metric values and
  per-example outputs (:mod:`nbft.evaluate.scoring`). Greedy, batched, no bootstrap unless asked: fast enough to call
  every N training steps on a fixed small set (``task.sample(16)``), as a training-time forgetting monitor does.
- :func:`evaluate_model` — one model on several tasks (with in-context k-shot baselines), kept as a plain dict so a
  model fine-tuned *in place* can be compared later.
- :func:`compare_models` — every model on every task with identical prompts and decoding, train/test overlap
  checked and left out, paired Δ and forgetting (:mod:`nbft.evaluate.stats`) → the results dict that
  :mod:`nbft.report` renders (``nbft.compare`` wraps it in a :class:`~nbft.report.ComparisonTable`).

Example::

    from nbft.evaluate import compare_models, get_task, score
    s = score(model, tok, "qa", get_task("qa").sample(16))       # {'task': 'qa', 'value': 12.3, 'metrics': {...}, ...}
    results = compare_models({"base": base, "tuned": run}, ["sentiment", "qa"], target="sentiment", n=100)
    results["deltas"][0]["delta"], results["forgetting"][0]["AF"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nbft._utils import did_you_mean, user_stacklevel
from nbft.config import EvalConfig
from nbft.evaluate.generation import BATCH_DONE
from nbft.evaluate.overlap import TrainingSource, training_source
from nbft.evaluate.results import RESULTS_FORMAT, _assemble, _columns_for, _mark_overlap, _model_notes, _TaskData
from nbft.evaluate.scoring import _scored, _select, prompt_hash, score
from nbft.evaluate.tasks import Task, TaskError, resolve_tasks
from nbft.evaluate.text_probe import probe_settings, text_probe_results

__all__ = ["RESULTS_FORMAT", "compare_models", "evaluate_model", "prompt_hash", "score"]

logger = logging.getLogger(__name__)

_EVALUATION = "nbft-model-evaluation/1"


# --------------------------------------------------------------------------------------------------- test sets
def _example_key(task: Task, ex: Mapping[str, Any]) -> str:
    # identity of an example by its input fields and target, to keep test examples out of k-shot prompts
    payload = [ex.get(f) for f in (*task.template.fields, task.target)]
    return json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False)


def _prepare(task: Task, n: int | None, shots_k: Sequence[int], seed: int) -> _TaskData:
    splits = task.load()
    test_ds = splits["test"]
    n_avail = len(test_ds)
    if n is not None and n > n_avail:
        msg = f"task {task.name!r}: n={n} is larger than its test split ({n_avail} examples); using all {n_avail}"
        warnings.warn(msg, stacklevel=user_stacklevel())
        logger.warning(msg)
    idx = list(range(n_avail)) if n is None or n >= n_avail else sorted(random.Random(seed).sample(range(n_avail), n))
    test = [test_ds[i] for i in idx]
    try:
        refs = [task.reference(ex) for ex in test]
    except Exception as exc:
        raise TaskError(f"task {task.name!r}: cannot build references: {exc}") from exc
    shots: dict[int, list[list[dict[str, Any]]]] = {}
    wanted = [k for k in shots_k if k > 0]
    if wanted:
        if "train" not in splits or len(splits["train"]) == 0:
            raise TaskError(
                f"task {task.name!r} has no train split, so it can't give k-shot examples; k-shot prompts never "
                "draw from the test split. Give the task a DatasetDict with a 'train' split, or icl_shots=(0,)"
            )
        test_keys = {_example_key(task, ex) for ex in test_ds}
        # Shots come from the train split only, and an example that also appears in the test split is skipped.
        pool = [ex for ex in splits["train"] if _example_key(task, ex) not in test_keys]
        for k in wanted:
            if k > len(pool):
                n_train = len(splits["train"])
                if len(pool) < n_train:  # the shortfall is the overlap with the test split, not a small train split
                    shared = n_train - len(pool)
                    which = f"all {shared} are" if shared == n_train else f"{shared} of them are"
                    have = (
                        f"its train split has {n_train} examples, but {which} also in its test split, and k-shot "
                        f"prompts never show a test example ({len(pool)} left)"
                    )
                else:
                    have = f"its train split has {n_train}"
                raise TaskError(
                    f"task {task.name!r}: {k}-shot prompts need {k} train examples; {have}. Give the task more train "
                    f"examples that are not in its test split, or lower k in icl_shots (e.g. icl_shots=(0,))"
                )
            rng = random.Random(f"{seed}-{task.name}-{k}")
            shots[k] = [rng.sample(pool, k) for _ in test]
    return _TaskData(task, test, idx, refs, n_avail, shots, [{} for _ in test], list(range(len(test))))


def _setup(
    tasks: Sequence[str | Task] | str | Task, target: str | None, cfg: EvalConfig
) -> tuple[list[Task], set[str], list[int], dict[str, _TaskData]]:
    task_list = resolve_tasks(tasks)
    if cfg.probes:  # each task's out-of-domain probes, as rows of their own right after it
        from nbft.evaluate.tasks import expand_probes

        task_list = expand_probes(task_list)
    names = [t.name for t in task_list if not t.probe_of]
    if target is not None and target not in names:
        raise TaskError(
            f"target {target!r} is not among the tasks {names}.{did_you_mean(target, names)} "
            "Add it to tasks=[...] or fix the name"
        )
    names = [t.name for t in task_list]
    icl_tasks = set(cfg.icl_tasks) if cfg.icl_tasks is not None else ({target} if target else set(names))
    unknown_icl = sorted(icl_tasks - set(names))
    if unknown_icl:
        raise TaskError(f"icl_tasks {unknown_icl} are not among the tasks {names}")
    shots_k = sorted({k for k in cfg.icl_shots if k > 0})
    per_task = cfg.n_per_task or {}
    # a probe takes its task's n unless named itself: the same confidence as the in-domain row
    sizes = {t.name: per_task.get(t.name, per_task.get(t.probe_of or t.name, cfg.n)) for t in task_list}
    prepared = {t.name: _prepare(t, sizes[t.name], shots_k if t.name in icl_tasks else (), cfg.seed) for t in task_list}
    return task_list, icl_tasks, shots_k, prepared


class _Unset:
    """Marks an argument left out (``n=None`` already means "all examples")."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def _config(
    config: EvalConfig | None, n: Any, icl_shots: Sequence[int] | None, overrides: dict[str, Any]
) -> EvalConfig:
    if config is not None and not isinstance(config, EvalConfig):
        raise TypeError(f"config must be an nbft.EvalConfig, not {type(config).__name__}; e.g. EvalConfig(n=100)")
    fields = [f.name for f in dataclasses.fields(EvalConfig)]
    for key in overrides:
        if key not in fields:
            raise TypeError(
                f"compare() got an unknown setting {key!r}.{did_you_mean(key, fields)} EvalConfig fields: "
                f"{', '.join(fields)}"
            )
    cfg = dataclasses.replace(config or EvalConfig(), **overrides)
    if not isinstance(n, _Unset):
        cfg.n = n
    if icl_shots is not None:
        cfg.icl_shots = tuple(icl_shots)
    cfg.__post_init__()
    return cfg


# --------------------------------------------------------------------------------------------------- models
def _refuse_a_run_being_written(path: Path) -> None:
    """A run directory whose lock another live writer holds: say who, and to wait (resume would be refused)."""
    from nbft.run_dirs import _lock_held
    from nbft.train.lock import LOCK_NAME, RunInUseError, read_lock

    if not _lock_held(path):
        return
    holder = read_lock(path / LOCK_NAME) or {}
    who = f"process {holder.get('pid', '?')} on {holder.get('host', 'this machine')}"
    since = f" (since {holder['started']})" if holder.get("started") else ""
    raise RunInUseError(
        f"{path} is still being written by {who}{since}: it has no final model/ until that run completes. Wait for "
        "it to finish (run.wait(), or watch nbft.runs()) or stop it, then compare its model/ folder"
    )


def _materialize(spec: Any, tokenizer: Any) -> tuple[Any, Any, bool]:
    """(model, tokenizer, owned): ``owned`` models were loaded here and are released after use."""
    if isinstance(spec, tuple) and len(spec) == 2:
        return spec[0], spec[1] or tokenizer, False
    if isinstance(spec, (str, bytes)) or hasattr(spec, "__fspath__"):
        from nbft.models import load_model

        text = spec.decode() if isinstance(spec, bytes) else str(spec)
        path = Path(text)
        if (path / "run.json").exists() and not (path / "model").is_dir():
            _refuse_a_run_being_written(path)
            raise FileNotFoundError(
                f"{path} is a run directory without a final model/ (the run has not completed): resume it with "
                "nbft.resume(...), or pass a checkpoint's model folder"
            )
        if (path / "run.json").exists() and (path / "model").is_dir():  # a run directory: its final model
            text = str(path / "model")
        model, tok = load_model(text)  # the text as given: "./x" stays a path, never a Hub name
        return model, tokenizer or tok, True
    if hasattr(spec, "model") and not hasattr(spec, "generate"):  # a training Run handle
        return spec.model, tokenizer or getattr(spec, "tokenizer", None), False
    if not hasattr(spec, "generate"):
        raise TypeError(
            f"cannot evaluate {spec!r:.80}: a model is a loaded model, (model, tokenizer), a folder or Hub name, a "
            "run directory or a Run"
        )
    return spec, tokenizer, False


Progress = Callable[[dict[str, Any]], None]
"""``on_progress(event)``: ``{"model", "task", "task_index" (1-based), "n_tasks", "k", "done", "total"}`` after every
generation batch, e.g. to show "task 2/5 · tuned · 40/100" in a panel."""


def _quiet_call() -> Any:
    """No library progress bars, each warning once: into the scope that already owns this thread (a panel's log
    area), else a scope of this call's own."""
    from nbft import _quiet

    return _quiet.call_scope()


@contextlib.contextmanager
def _reporting(on_progress: Progress | None, event: dict[str, Any]) -> Iterator[None]:
    if on_progress is None:
        yield
        return
    done = [0]

    def batch_done(n: int) -> None:
        # log-likelihood scoring may count the same examples again after generation: never past the total
        done[0] = min(event["total"], done[0] + n)
        on_progress({**event, "done": done[0]})

    token = BATCH_DONE.set(batch_done)
    try:
        on_progress({**event, "done": 0})
        yield
    finally:
        BATCH_DONE.reset(token)


def _release() -> None:
    """Return freed memory to the device: called only after the runner dropped the last reference to a model it
    loaded itself (a caller's model is never released here, it still holds it)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _vocab_fingerprint(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def _dtype(model: Any) -> str:
    try:
        return str(next(model.parameters()).dtype).replace("torch.", "")
    except (StopIteration, AttributeError):
        return "unknown"


def _is_evaluation(spec: Any) -> bool:
    return isinstance(spec, Mapping) and spec.get("format") == _EVALUATION


def _evaluate_one(
    name: str,
    spec: Any,
    tokenizer: Any,
    prepared: Mapping[str, _TaskData],
    cfg: EvalConfig,
    icl_tasks: set[str],
    shots_k: Sequence[int],
    on_progress: Progress | None = None,
    probe: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    model, tok, owned = _materialize(spec, tokenizer)
    if tok is None:
        raise ValueError(f"model {name!r} was given without a tokenizer: pass tokenizer=..., or (model, tokenizer)")
    results: list[dict[str, Any]] = []
    try:
        for index, td in enumerate(prepared.values(), start=1):
            ks = [0, *(shots_k if td.task.name in icl_tasks else ())]
            for k in ks:
                # k-shot prompts are several times longer: `icl_n` evaluates them on the first examples only
                positions = td.keep if not k or cfg.icl_n is None else td.keep[: cfg.icl_n]
                examples = [td.examples[i] for i in positions]
                shots = [td.shots[k][i] for i in positions] if k else None
                event = {"model": _columns_for(name, k), "task": td.task.name, "task_index": index,
                         "n_tasks": len(prepared), "k": k, "total": len(examples)}  # fmt: skip
                with _reporting(on_progress, event):
                    r = score(
                        model, tok, td.task, examples, cfg, shots=shots,
                        desc=f"{_columns_for(name, k)} · {td.task.name}",
                    )  # fmt: skip
                r.update(k=k, positions=list(positions))
                results.append(r)
        if probe is not None:  # the label-free general-text probe (nbft.evaluate.text_probe), while the model is here
            from nbft.evaluate.text_probe import measure

            text_probe = measure(model, tok, probe)
        dtype = _dtype(model)
    finally:
        if owned:
            del model  # the runner's only reference: now the memory can really be returned
            _release()
    return {
        "format": _EVALUATION,
        "name": name,
        "config": dataclasses.asdict(cfg),
        "fingerprint": _vocab_fingerprint(tok),
        "dtype": dtype,
        "tasks": {td.task.name: [prompt_hash(td.task.prompt(ex)) for ex in td.examples] for td in prepared.values()},
        "results": results,
        **({"text_probe": text_probe} if probe is not None else {}),
    }


def evaluate_model(
    model: Any,
    tasks: Sequence[str | Task] | str | Task,
    *,
    name: str = "base",
    tokenizer: Any = None,
    target: str | None = None,
    n: int | _Unset | None = _UNSET,
    icl_shots: Sequence[int] | None = None,
    config: EvalConfig | None = None,
    on_progress: Progress | None = None,
    text_probe: Any = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate one model now (with its k-shot baselines) and keep the results, a plain dict, for a later compare.

    Use it before a fine-tune that updates the model in place, so the base needs no second copy in memory. Pass the
    dict as the model's value in :func:`compare_models` / ``nbft.compare`` with the same settings. Arguments are
    those of :func:`compare_models`.

    Example::

        base_eval = evaluate_model(model, ["sentiment", "qa"], tokenizer=tok, target="sentiment", n=200,
                                   icl_shots=(0, 3))
        run = nbft.finetune(model, tok, data)                 # trains `model` in place
        table = nbft.compare({"base": base_eval, "tuned": run}, ["sentiment", "qa"], target="sentiment", n=200,
                             icl_shots=(0, 3))
    """
    cfg = _config(config, n, icl_shots, overrides)
    with _quiet_call():
        _, icl_tasks, shots_k, prepared = _setup(tasks, target, cfg)
        probe = probe_settings(text_probe)
        return _evaluate_one(name, model, tokenizer, prepared, cfg, icl_tasks, shots_k, on_progress, probe)


def _reuse(
    ev: Mapping[str, Any], name: str, keep_icl: bool, cfg: EvalConfig, prepared: Mapping[str, _TaskData]
) -> dict[str, Any]:
    """A stored evaluation, checked against this comparison's settings and narrowed to the examples it scores."""
    fields = ("n", "n_per_task", "icl_n", "seed", "chat_template", "scoring", "max_new_tokens", "batch_size",
              "probes")  # fmt: skip
    saved = {"probes": False, **ev["config"]}  # evaluations saved before probes existed had none
    diff = {f: (saved.get(f), getattr(cfg, f)) for f in fields if saved.get(f) != getattr(cfg, f)}
    if diff:
        raise ValueError(
            f"the saved evaluation {ev['name']!r} used different settings than this comparison "
            f"(setting: (saved, now)) {diff}; evaluate again with the same settings"
        )
    missing = sorted(set(prepared) - set(ev["tasks"]))
    if missing:
        raise ValueError(f"the saved evaluation {ev['name']!r} has no results for tasks {missing}")
    for t, td in prepared.items():
        if ev["tasks"][t] != [prompt_hash(td.task.prompt(ex)) for ex in td.examples]:
            raise ValueError(
                f"the saved evaluation {ev['name']!r} scored other test examples of task {t!r} (the task's data "
                "changed since); evaluate again"
            )
    results = []
    for r in ev["results"]:
        if r["task"] not in prepared or (r["k"] and not keep_icl):
            continue
        td = prepared[r["task"]]
        keep = set(td.keep)
        where = [j for j, p in enumerate(r["positions"]) if p in keep]
        if len(where) == len(r["positions"]):
            results.append(r)
            continue
        positions = [r["positions"][j] for j in where]
        examples = [td.examples[p] for p in positions]
        narrowed = _scored(
            td.task, examples, [td.refs[p] for p in positions], _select(r["prompts"], where),
            _select(r["outputs"], where), _select(r["ll_choices"], where), cfg, ci=False,
        )  # fmt: skip
        narrowed.update(k=r["k"], positions=positions, prompt_tokens=_select(r["prompt_tokens"], where))
        results.append(narrowed)
    return {**ev, "name": name, "results": results}


# --------------------------------------------------------------------------------------------------- compare
def compare_models(
    models: Mapping[str, Any],
    tasks: Sequence[str | Task] | str | Task,
    *,
    target: str | None = None,
    n: int | _Unset | None = _UNSET,
    icl_shots: Sequence[int] | None = None,
    tokenizer: Any = None,
    config: EvalConfig | None = None,
    training_data: Mapping[str, Any] | None = None,
    keep_overlap: bool = False,
    on_progress: Progress | None = None,
    task_groups: Mapping[str, Sequence[str]] | None = None,
    text_probe: Any = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate every model on every task with identical prompts and decoding; return the results as a plain dict.

    ``nbft.compare`` takes the same arguments and wraps the dict in a :class:`~nbft.report.ComparisonTable`.

    Args:
        models: ``{name: model}`` in column order; the first is the reference (base). A value may be a loaded
            model, a ``(model, tokenizer)`` pair, a path or model name (loaded, used, then released), a run
            directory or a training ``Run`` handle (its model), or a dict made earlier by :func:`evaluate_model`.
            A **list** of such values is several runs of one variant (trained with different seeds, the same data
            and settings): the column shows the mean over the runs with a two-level bootstrap CI (seeds, then
            examples), each run's values kept; runs whose ``run.json`` settings (other than ``seed``) or training
            data differ are refused.
        tasks: task names or :class:`~nbft.evaluate.Task` objects (``Task.from_data(...)`` for your own data).
        target: the task the tuned model was trained for (its gain is G; the others measure forgetting).
        n: test examples per task (default from ``config``: 200). More than the split: all, with a warning.
        icl_shots: k values for the in-context baseline of the first model, e.g. ``(0, 3)``; k-shot examples come
            from each task's train split only, never from its test split.
        tokenizer: the tokenizer for models given without one (one for all, or ``{name: tokenizer}``).
        config: an :class:`~nbft.config.EvalConfig`; keyword ``overrides`` replace its fields
            (``batch_size=``, ``chat_template=``, ``scoring=``, ``n_boot=``, ``seed=``, ``progress=``...).
        training_data: ``{name: data}``, what a model was trained on when its value in ``models`` does not say
            (a bare model object): the dataset, or the run directory.
        keep_overlap: score test examples found in a model's training data too (flagged in the examples and the
            notes) instead of leaving them out.
        on_progress: called after every generation batch with ``{"model", "task", "task_index", "n_tasks", "k",
            "done", "total"}`` (a panel's progress line).
        task_groups: ``{group: [task, ...]}`` of non-target tasks, e.g. ``{"replayed": [...], "held-out": [...]}``:
            each forgetting record gets ``groups``, the AF, BWT′, worst drop and regressions of each group with CIs.
        text_probe: add the label-free row "general text · loss per token" (:mod:`nbft.evaluate.text_probe`: each
            model's loss on fixed chunks of public-domain prose; lower is better; paired bootstrap CI over chunks).
            ``True`` (16 chunks of 256 tokens), a number of chunks, or ``{"n_chunks", "chunk_tokens",
            "batch_size"}``; the results get a ``text_probe`` block.

    Every test example is checked against the training data of every model whose training data is known (a run
    directory, a ``Run``, a model loaded from ``<run_dir>/model``, or ``training_data``): exact matches under any
    phrasing of the task's template, and 13-word overlaps of its text. Overlapping examples are left out for every
    model (Δs stay paired) and the notes say how many; a model whose training data is unknown gets
    "overlap not checked".

    Returns the results dict: ``format``, ``config``, ``target``, ``reference``, ``columns``, ``models`` (dtype,
    training data), ``tasks`` (settings, sizes, overlap), ``scores`` (``{task: {column: score dict}}``, see
    :func:`score`), ``examples`` (``{task: {prompt, prompt_hash, reference, overlap, split_index}}``), ``deltas``
    (one record per task × non-reference column × reported metric), ``forgetting`` (one record per tuned model),
    ``diagnostics`` (per classification task and column: predicted-label shares beside the references' and the
    confusion matrix), ``task_groups``, ``notes`` and ``signatures``. A column given as a list of runs has ``seeds``
    in its score dicts, ``n_seeds``/``per_seed``/``seed_min``/``seed_max`` in its Δ records and ``<name>_per_seed``
    in its forgetting record.

    Example::

        results = compare_models({"base": (base, tok), "tuned": "runs/sentiment-1"}, ["sentiment", "qa"],
                                 target="sentiment", n=100, icl_shots=(0, 3), chat_template=True)
    """
    cfg = _config(config, n, icl_shots, overrides)
    if not isinstance(models, Mapping):
        raise TypeError(
            f"models must be a dict {{column name: model}}, e.g. {{'base': (model, tok), 'tuned': run}}, not "
            f"{type(models).__name__}"
        )
    if not models:
        raise ValueError("compare() needs at least one model, e.g. {'base': model}")
    probe = probe_settings(text_probe)  # bad settings fail here, before any model runs
    with _quiet_call():  # no library bars; each warning once (into a panel's log area when a panel calls)
        return _compare(models, tasks, cfg, target, tokenizer, training_data, keep_overlap, on_progress, task_groups,
                        probe)  # fmt: skip


def _compare(
    models: Mapping[str, Any],
    tasks: Sequence[str | Task] | str | Task,
    cfg: EvalConfig,
    target: str | None,
    tokenizer: Any,
    training_data: Mapping[str, Any] | None,
    keep_overlap: bool,
    on_progress: Progress | None,
    task_groups: Mapping[str, Sequence[str]] | None = None,
    probe: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    unknown_names = sorted(set(training_data or {}) - set(models))
    if unknown_names:
        raise ValueError(
            f"training_data names {unknown_names}, which are not among the models {list(models)}."
            f"{did_you_mean(unknown_names[0], list(models))}"
        )
    names = list(models)
    ref_name = names[0]
    runs_of = _seed_runs(models, ref_name, training_data)  # before any work: a list's runs must be one variant
    task_list, icl_tasks, shots_k, prepared = _setup(tasks, target, cfg)
    groups = _check_groups(task_groups, [t.name for t in task_list], target)
    notes: list[str] = []

    # 1. what each model was trained on, and which test examples it may have seen
    sources: dict[str, TrainingSource] = {}
    for mname in names:
        if mname in runs_of:
            sources[mname] = runs_of[mname].source
            notes += runs_of[mname].notes
            continue
        spec = models[mname]
        given = (training_data or {}).get(mname)
        sources[mname] = training_source(spec if not _is_evaluation(spec) else None, given)
        if not sources[mname].known and mname != ref_name:
            notes.append(
                f"{mname!r}: overlap not checked (its training data is unknown: pass the run directory or Run "
                f"handle as the model, or training_data={{{mname!r}: dataset}})"
            )
    overlap_info = _mark_overlap(prepared, sources, keep_overlap, notes)
    clean = [
        m for m, src in sources.items() if src.known and not any(i["by_model"].get(m) for i in overlap_info.values())
    ]
    for m in clean:
        notes.append(
            f"{m!r}: every test example was checked against its training data ({sources[m].label}): no overlap"
        )

    # 2. every model on the examples that are scored
    evaluations: dict[str, dict[str, Any]] = {}
    seed_evaluations: dict[str, list[dict[str, Any]]] = {}
    for mname in names:
        spec = models[mname]
        if mname in runs_of:
            tok = tokenizer.get(mname) if isinstance(tokenizer, Mapping) else tokenizer
            seed_evaluations[mname] = []
            for label, run in zip(runs_of[mname].labels, runs_of[mname].specs, strict=True):
                ev = (
                    _reuse(run, mname, False, cfg, prepared)
                    if _is_evaluation(run)
                    else _evaluate_one(
                        f"{mname} ({label})", run, tok, prepared, cfg, set(), shots_k, on_progress, probe
                    )
                )
                seed_evaluations[mname].append({**ev, "name": mname, "seed_label": label})
            evaluations[mname] = seed_evaluations[mname][0]
        elif _is_evaluation(spec):
            evaluations[mname] = _reuse(spec, mname, mname == ref_name, cfg, prepared)
        else:
            tok = tokenizer.get(mname) if isinstance(tokenizer, Mapping) else tokenizer
            icl = icl_tasks if mname == ref_name else set()
            evaluations[mname] = _evaluate_one(mname, spec, tok, prepared, cfg, icl, shots_k, on_progress, probe)
    _model_notes(evaluations, task_list, cfg, notes)
    columns = [ref_name]
    columns += sorted({_columns_for(ref_name, r["k"]) for r in evaluations[ref_name]["results"] if r["k"]},
                      key=lambda c: int(c.rsplit(" ", 1)[1].split("-")[0]))  # fmt: skip
    columns += names[1:]
    results = _assemble(evaluations, prepared, task_list, target, columns, ref_name, cfg, notes, sources,
                        overlap_info, keep_overlap, seed_evaluations, groups)  # fmt: skip
    if probe is not None:
        results["text_probe"] = text_probe_results(evaluations, seed_evaluations, columns, ref_name,
                                                   n_boot=cfg.n_boot, seed=cfg.seed)  # fmt: skip
        results["notes"] = [*results["notes"], *results["text_probe"]["notes"]]
    return results


# --------------------------------------------------------------------------------------------------- seeds
@dataclasses.dataclass
class _SeedRuns:
    """The runs of one variant given as a list: each run's label (its seed when known), the column's training
    source (checked to be the same for every run), and what could not be checked."""

    specs: list[Any]
    labels: list[str]
    source: TrainingSource
    notes: list[str]


def _run_json(spec: Any, given: Any) -> tuple[Path, dict[str, Any]] | None:
    """(run directory, run.json) of a run given as a Run, a run directory or its model folder; else ``None``."""
    from nbft.evaluate.overlap import _folder_of

    folder = _folder_of(given) if given is not None and not isinstance(given, Mapping) else None
    if folder is None and not _is_evaluation(spec):
        folder = _folder_of(spec[0] if isinstance(spec, tuple) and len(spec) == 2 else spec)
    for candidate in (folder, folder.parent if folder else None):
        if candidate is not None and (candidate / "run.json").is_file():
            try:
                meta = json.loads((candidate / "run.json").read_text())
            except (OSError, json.JSONDecodeError):
                return None
            if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
                return candidate, meta
    return None


def _seed_runs(
    models: Mapping[str, Any], ref_name: str, training_data: Mapping[str, Any] | None
) -> dict[str, _SeedRuns]:
    """Check every list of runs: one variant, differing only in its seed (run.json settings and training data)."""
    out: dict[str, _SeedRuns] = {}
    for mname, value in models.items():
        if not isinstance(value, list):
            continue
        if mname == ref_name:
            raise ValueError(
                f"the reference column {mname!r} is a list of {len(value)} runs; the first column is one model (the "
                "base), e.g. {'base': model, 'tuned': [run_a, run_b, run_c]}"
            )
        if not value:
            raise ValueError(f"{mname!r} is an empty list: give the runs of the variant, e.g. [run_a, run_b, run_c]")
        given = (training_data or {}).get(mname)
        if isinstance(given, list) and len(given) != len(value):
            raise ValueError(
                f"training_data[{mname!r}] lists {len(given)} entries for {len(value)} runs; give one per run"
            )
        per_run = given if isinstance(given, list) else [given] * len(value)
        metas = [_run_json(spec, g) for spec, g in zip(value, per_run, strict=True)]
        notes: list[str] = []
        labels = [
            f"seed {m[1]['config'].get('seed')}" if m is not None else f"run {i + 1}" for i, m in enumerate(metas)
        ]
        dirs = [m[0].resolve() for m in metas if m is not None]
        if len(set(dirs)) < len(dirs):
            twice = next(d for d in dirs if dirs.count(d) > 1)
            raise ValueError(f"{mname!r} lists the run {twice} twice; each run of a variant is another seed")
        if len(set(labels)) < len(labels):
            raise ValueError(
                f"{mname!r}: two of its runs used the same seed ({', '.join(labels)}); the runs of a variant differ "
                "in their seed (train again with another seed)"
            )
        known = [(lab, m[1]) for lab, m in zip(labels, metas, strict=True) if m is not None]
        if known:
            first_label, first = known[0]
            for label, meta in known[1:]:
                for field in sorted(set(first["config"]) | set(meta["config"]) | {"base_model"}):
                    if field == "seed":
                        continue
                    a = first.get(field) if field == "base_model" else first["config"].get(field)
                    b = meta.get(field) if field == "base_model" else meta["config"].get(field)
                    if a != b:
                        raise ValueError(
                            f"{mname!r}: its runs differ in {field!r} ({first_label}: {a!r}, {label}: {b!r}); the runs "
                            "of one variant differ only in their seed. Give them separate columns to compare settings"
                        )
        sources = [
            training_source(spec if not _is_evaluation(spec) else None, g)
            for spec, g in zip(value, per_run, strict=True)
        ]
        checked = [(lab, s) for lab, s in zip(labels, sources, strict=True) if s.known]
        for label, src in checked[1:]:
            ref_label, ref = checked[0]
            assert ref.hashes is not None and src.hashes is not None
            if not np.array_equal(ref.hashes.examples, src.hashes.examples):
                raise ValueError(
                    f"{mname!r}: its runs were trained on different data ('training data': {ref_label} "
                    f"{ref.hashes.n_examples} examples, {label} {src.hashes.n_examples}; the example hashes differ); "
                    "the runs of one variant differ only in their seed"
                )
        unchecked = [lab for lab, m, s in zip(labels, metas, sources, strict=True) if m is None or not s.known]
        if unchecked:
            notes.append(
                f"{mname!r}: runs {unchecked} have no run directory, so nbft could not check that they used the same "
                "settings and data as the others (pass the runs or their run directories)"
            )
        source = checked[0][1] if checked else sources[0]
        out[mname] = _SeedRuns(list(value), labels, source, notes)
    return out


def _check_groups(
    task_groups: Mapping[str, Sequence[str]] | None, names: list[str], target: str | None
) -> dict[str, list[str]] | None:
    if not task_groups:
        return None
    if not isinstance(task_groups, Mapping):
        raise TypeError(
            "task_groups must be a dict {group: [task, ...]}, e.g. {'replayed': ['qa'], 'held-out': ['ner']}"
        )
    seen: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for group, members in task_groups.items():
        members = [members] if isinstance(members, str) else list(members)
        for t in members:
            if t == target:
                raise ValueError(f"task_groups[{group!r}] names the target {t!r}: groups hold the other tasks")
            if t not in names:
                raise ValueError(
                    f"task_groups[{group!r}] names {t!r}, not among the tasks {names}.{did_you_mean(t, names)}"
                )
            if t in seen:
                raise ValueError(f"task {t!r} is in two task groups ({seen[t]!r} and {group!r})")
            seen[t] = group
        out[str(group)] = members
    return out
