"""The evaluation runner: models × tasks in, a plain results dict out (as lm-evaluation-harness returns one).

Three entry points, from small to large:

- :func:`score` — one model, one task, a list of examples → a dict of metric values and per-example outputs. Greedy,
  batched, no bootstrap unless asked: fast enough to call every N training steps on a fixed small set
  (``task.sample(16)``), which is what a training-time forgetting monitor does.
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

import dataclasses
import gc
import hashlib
import json
import logging
import math
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nbft._utils import did_you_mean
from nbft.config import EvalConfig
from nbft.evaluate import stats
from nbft.evaluate.generation import generate, generate_and_score, prompt_token_counts, score_choices
from nbft.evaluate.metrics import Metric, MetricError
from nbft.evaluate.overlap import TrainingSource, find_overlap, training_source
from nbft.evaluate.tasks import Task, TaskError, get_task, resolve_tasks

__all__ = ["RESULTS_FORMAT", "compare_models", "evaluate_model", "prompt_hash", "score"]

logger = logging.getLogger(__name__)

RESULTS_FORMAT = "nbft-results/1"
_EVALUATION = "nbft-model-evaluation/1"


def prompt_hash(text: str) -> str:
    """A short, stable hash of the exact prompt text; equal hashes prove models saw the same input."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------- scoring
def _modes(task: Task, cfg: EvalConfig) -> tuple[bool, bool]:
    """(generate, log-likelihood): classification can be scored both ways; other tasks only by generation."""
    gen_on = not task.is_classification or cfg.scoring in ("generate", "both")
    ll_on = task.is_classification and cfg.scoring in ("loglik", "both")
    return gen_on, ll_on


def _report_keys(task: Task, gen_on: bool, ll_on: bool) -> list[str]:
    keys = [task.headline_key(generate=gen_on)]
    if task.is_classification and gen_on and ll_on:
        keys.append("ll_" + keys[0])
    return keys


def _run_model(
    model: Any, tokenizer: Any, task: Task, prompts: list[str], cfg: EvalConfig, desc: str
) -> tuple[list[str] | None, list[str] | None]:
    """Generated answers (or None) and log-likelihood choices (or None), with the same settings for every model."""
    gen_on, ll_on = _modes(task, cfg)
    gen_kwargs = {
        "max_new_tokens": cfg.max_new_tokens or task.max_new_tokens,
        "stop": task.stop,
        "halt": task.halt,
        "batch_size": cfg.batch_size,
        "chat": cfg.chat_template,
        "progress": cfg.progress,
        "desc": desc,
    }
    outputs = ll = None
    if gen_on and ll_on:
        assert task.choices is not None
        outputs, ll = generate_and_score(model, tokenizer, prompts, task.choices, **gen_kwargs)
    elif gen_on:
        outputs = generate(model, tokenizer, prompts, **gen_kwargs)
    elif ll_on:
        assert task.choices is not None
        ll = score_choices(
            model, tokenizer, prompts, task.choices, batch_size=cfg.batch_size, chat=cfg.chat_template,
            progress=cfg.progress, desc=f"{desc} log-lik",
        )  # fmt: skip
    ll_choices = [task.choices[j] for j in ll.argmax(axis=1)] if ll is not None and task.choices else None
    return outputs, ll_choices


def _statistics(
    task: Task,
    outputs: list[str] | None,
    ll_choices: list[str] | None,
    refs: list[str],
    examples: list[dict[str, Any]],
) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, stats.Scores], list[Metric]]:
    """Metric values, per-example scores, and for every key what the bootstrap resamples (array or statistic)."""
    gen_on, ll_on = outputs is not None, ll_choices is not None
    metrics = task.metric_objects(loglik=ll_on, generate=gen_on)
    values: dict[str, float] = {}
    per_ex: dict[str, np.ndarray] = {}
    stat: dict[str, stats.Scores] = {}
    for m in metrics:
        preds = ll_choices if m.name.startswith("ll_") else outputs
        assert preds is not None
        extra = {"examples": examples} if m.needs_examples else {}
        try:
            vals = m.corpus(preds, refs, **extra)
            pe = m.per_example(preds, refs, **extra)
        except MetricError as exc:
            raise MetricError(f"task {task.name!r}: {exc}") from exc
        except Exception as exc:
            raise MetricError(f"task {task.name!r}: metric {m.name!r} raised {type(exc).__name__}: {exc}") from exc
        values.update(vals)
        per_ex.update(pe)
        for key in vals:
            stat[key] = pe[key] if key in m.mean_keys and key in pe else m.statistic(preds, refs, key, **extra)
    return values, per_ex, stat, metrics


def _select(values: list[Any] | None, positions: Sequence[int]) -> list[Any] | None:
    return None if values is None else [values[i] for i in positions]


def score(
    model: Any,
    tokenizer: Any,
    task: str | Task,
    examples: Sequence[Mapping[str, Any]],
    config: EvalConfig | None = None,
    *,
    shots: Sequence[Sequence[Mapping[str, Any]]] | None = None,
    ci: bool = False,
    desc: str | None = None,
) -> dict[str, Any]:
    """Run one model on ``examples`` of one task (greedy, batched) and score them with the task's metrics.

    The small, fast evaluation entry point: a training-time monitor calls it every N steps with the same fixed
    examples (e.g. ``task.sample(16)``) and the same ``config``. No bootstrap unless ``ci=True``.

    Args:
        task: a task name or :class:`~nbft.evaluate.Task`.
        examples: raw examples of the task (dicts with the template's fields and the target).
        config: an :class:`~nbft.config.EvalConfig` (``batch_size``, ``chat_template``, ``scoring``,
            ``max_new_tokens``, ``progress``...); default ``EvalConfig(progress=False)``.
        shots: per example, the solved examples put before it (in-context learning).
        ci: add 95% bootstrap CIs (``config.n_boot`` resamples) for the reported keys.

    Returns a plain dict: ``task``, ``n``, ``headline`` (metric key), ``value`` (its value, points 0-100),
    ``metrics`` (every key), ``keys`` (the keys a table shows), ``no_label_rate`` (classification: % of generated
    answers with no recognisable label), ``empty_rate``, ``outputs``, ``ll_choices``, ``references``, ``prompts``,
    ``prompt_hashes``, ``prompt_tokens``, ``per_example`` (``{key: [score per example]}``) and, with ``ci``,
    ``ci`` (``{key: [low, high]}``).

    Example::

        fixed = get_task("qa").sample(16)
        s = score(model, tok, "qa", fixed, EvalConfig(chat_template=True, progress=False))
        s["value"], s["outputs"][:2]
    """
    task = get_task(task)
    cfg = config or EvalConfig(progress=False)
    examples = [dict(ex) for ex in examples]
    try:
        refs = [task.reference(ex) for ex in examples]
    except Exception as exc:
        raise TaskError(f"task {task.name!r}: cannot build references: {exc}") from exc
    prompts = [
        task.prompt(ex, tokenizer, chat=cfg.chat_template, shots=shots[i] if shots else ())
        for i, ex in enumerate(examples)
    ]
    outputs, ll_choices = _run_model(model, tokenizer, task, prompts, cfg, desc or task.name)
    result = _scored(task, examples, refs, prompts, outputs, ll_choices, cfg, ci=ci)
    result["prompt_tokens"] = prompt_token_counts(tokenizer, prompts, chat=cfg.chat_template)
    return result


def _scored(
    task: Task,
    examples: list[dict[str, Any]],
    refs: list[str],
    prompts: list[str],
    outputs: list[str] | None,
    ll_choices: list[str] | None,
    cfg: EvalConfig,
    *,
    ci: bool,
) -> dict[str, Any]:
    """The score dict of outputs already generated (also used to rescore a subset of a stored evaluation)."""
    values, per_ex, stat, metrics = _statistics(task, outputs, ll_choices, refs, examples)
    keys = _report_keys(task, outputs is not None, ll_choices is not None)
    missing = [k for k in keys if k not in values]
    if missing:
        raise MetricError(
            f"task {task.name!r}: headline metric {missing[0]!r} is not produced by its metrics "
            f"{[m.name for m in metrics]}; they give {sorted(values)}.{did_you_mean(missing[0], values)}"
        )
    empty_rate = 100.0 * sum(not o.strip() for o in outputs) / max(1, len(outputs)) if outputs is not None else None
    example_key = next((m.example_key for m in metrics if keys[0] in m.keys), None)
    result: dict[str, Any] = {
        "task": task.name,
        "n": len(examples),
        "headline": keys[0],
        "value": values[keys[0]],
        "keys": keys,
        "example_key": example_key,
        "metrics": values,
        "no_label_rate": values.get("unparseable_rate") if task.is_classification and outputs is not None else None,
        "empty_rate": empty_rate,
        "outputs": outputs,
        "ll_choices": ll_choices,
        "references": refs,
        "prompts": prompts,
        "prompt_hashes": [prompt_hash(p) for p in prompts],
        "per_example": {k: v.tolist() for k, v in per_ex.items()},
        "signatures": {f"{task.name}/{m.name}": sig for m in metrics if (sig := _signature(m))},
    }
    if ci:
        n = len(examples)
        result["ci"] = {k: list(stats.bootstrap_ci(stat[k], n=n, n_boot=cfg.n_boot, seed=cfg.seed)) for k in keys}
    return result


def _signature(metric: Metric) -> str | None:
    try:
        return metric.signature()
    except Exception:  # a signature is documentation; never fail an evaluation over it
        return None


# --------------------------------------------------------------------------------------------------- test sets
@dataclasses.dataclass
class _TaskData:
    """A task's sampled test examples (positions 0..n-1 of this list are what results refer to) and k-shot draws."""

    task: Task
    examples: list[dict[str, Any]]
    split_index: list[int]  # each example's row in the test split
    refs: list[str]
    n_available: int
    shots: dict[int, list[list[dict[str, Any]]]]
    overlap: list[dict[str, str]] = dataclasses.field(default_factory=list)  # per example: {model: kind}
    keep: list[int] = dataclasses.field(default_factory=list)  # positions that are scored


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
        warnings.warn(msg, stacklevel=4)
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
                raise TaskError(f"task {task.name!r}: {k}-shot prompts need {k} train examples, it has {len(pool)}")
            rng = random.Random(f"{seed}-{task.name}-{k}")
            shots[k] = [rng.sample(pool, k) for _ in test]
    return _TaskData(task, test, idx, refs, n_avail, shots, [{} for _ in test], list(range(len(test))))


def _setup(
    tasks: Sequence[str | Task] | str | Task, target: str | None, cfg: EvalConfig
) -> tuple[list[Task], set[str], list[int], dict[str, _TaskData]]:
    task_list = resolve_tasks(tasks)
    names = [t.name for t in task_list]
    if target is not None and target not in names:
        raise TaskError(
            f"target {target!r} is not among the tasks {names}.{did_you_mean(target, names)} "
            "Add it to tasks=[...] or fix the name"
        )
    icl_tasks = set(cfg.icl_tasks) if cfg.icl_tasks is not None else ({target} if target else set(names))
    unknown_icl = sorted(icl_tasks - set(names))
    if unknown_icl:
        raise TaskError(f"icl_tasks {unknown_icl} are not among the tasks {names}")
    shots_k = sorted({k for k in cfg.icl_shots if k > 0})
    sizes = {t.name: (cfg.n_per_task or {}).get(t.name, cfg.n) for t in task_list}
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
    cfg = dataclasses.replace(config or EvalConfig(), **overrides)
    if not isinstance(n, _Unset):
        cfg.n = n
    if icl_shots is not None:
        cfg.icl_shots = tuple(icl_shots)
    cfg.__post_init__()
    return cfg


# --------------------------------------------------------------------------------------------------- models
def _materialize(spec: Any, tokenizer: Any) -> tuple[Any, Any, bool]:
    """(model, tokenizer, owned): ``owned`` models were loaded here and are released after use."""
    if isinstance(spec, tuple) and len(spec) == 2:
        return spec[0], spec[1] or tokenizer, False
    if isinstance(spec, (str, bytes)) or hasattr(spec, "__fspath__"):
        from nbft.models import load_model

        path = Path(str(spec))
        if (path / "run.json").exists() and (path / "model").is_dir():  # a run directory: its final model
            path = path / "model"
        model, tok = load_model(str(path))
        return model, tokenizer or tok, True
    if hasattr(spec, "model") and not hasattr(spec, "generate"):  # a training Run handle
        return spec.model, tokenizer or getattr(spec, "tokenizer", None), False
    return spec, tokenizer, False


def _release() -> None:
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


def _columns_for(name: str, k: int) -> str:
    return name if k == 0 else f"{name} {k}-shot"


def _evaluate_one(
    name: str,
    spec: Any,
    tokenizer: Any,
    prepared: Mapping[str, _TaskData],
    cfg: EvalConfig,
    icl_tasks: set[str],
    shots_k: Sequence[int],
) -> dict[str, Any]:
    model, tok, owned = _materialize(spec, tokenizer)
    if tok is None:
        raise ValueError(f"model {name!r} was given without a tokenizer: pass tokenizer=..., or (model, tokenizer)")
    results: list[dict[str, Any]] = []
    try:
        for td in prepared.values():
            ks = [0, *(shots_k if td.task.name in icl_tasks else ())]
            for k in ks:
                # k-shot prompts are several times longer: `icl_n` evaluates them on the first examples only
                positions = td.keep if not k or cfg.icl_n is None else td.keep[: cfg.icl_n]
                examples = [td.examples[i] for i in positions]
                shots = [td.shots[k][i] for i in positions] if k else None
                r = score(
                    model, tok, td.task, examples, cfg, shots=shots, desc=f"{_columns_for(name, k)} · {td.task.name}"
                )
                r.update(k=k, positions=list(positions))
                results.append(r)
        dtype = _dtype(model)
    finally:
        if owned:
            del model
            _release()
    return {
        "format": _EVALUATION,
        "name": name,
        "config": dataclasses.asdict(cfg),
        "fingerprint": _vocab_fingerprint(tok),
        "dtype": dtype,
        "tasks": {td.task.name: [prompt_hash(td.task.prompt(ex)) for ex in td.examples] for td in prepared.values()},
        "results": results,
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
    _, icl_tasks, shots_k, prepared = _setup(tasks, target, cfg)
    return _evaluate_one(name, model, tokenizer, prepared, cfg, icl_tasks, shots_k)


def _reuse(
    ev: Mapping[str, Any], name: str, keep_icl: bool, cfg: EvalConfig, prepared: Mapping[str, _TaskData]
) -> dict[str, Any]:
    """A stored evaluation, checked against this comparison's settings and narrowed to the examples it scores."""
    fields = ("n", "n_per_task", "icl_n", "seed", "chat_template", "scoring", "max_new_tokens", "batch_size")
    saved = ev["config"]
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
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate every model on every task with identical prompts and decoding; return the results as a plain dict.

    ``nbft.compare`` takes the same arguments and wraps the dict in a :class:`~nbft.report.ComparisonTable`.

    Args:
        models: ``{name: model}`` in column order; the first is the reference (base). A value may be a loaded
            model, a ``(model, tokenizer)`` pair, a path or model name (loaded, used, then released), a run
            directory or a training ``Run`` handle (its model), or a dict made earlier by :func:`evaluate_model`.
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

    Every test example is checked against the training data of every model whose training data is known (a run
    directory, a ``Run``, a model loaded from ``<run_dir>/model``, or ``training_data``): exact matches under any
    phrasing of the task's template, and 13-word overlaps of its text. Overlapping examples are left out for every
    model (Δs stay paired) and the notes say how many; a model whose training data is unknown gets
    "overlap not checked".

    Returns the results dict: ``format``, ``config``, ``target``, ``reference``, ``columns``, ``models`` (dtype,
    training data), ``tasks`` (settings, sizes, overlap), ``scores`` (``{task: {column: score dict}}``, see
    :func:`score`), ``examples`` (``{task: {prompt, prompt_hash, reference, overlap, split_index}}``), ``deltas``
    (one record per task × non-reference column × reported metric), ``forgetting`` (one record per tuned model),
    ``notes`` and ``signatures``.

    Example::

        results = compare_models({"base": (base, tok), "tuned": "runs/sentiment-1"}, ["sentiment", "qa"],
                                 target="sentiment", n=100, icl_shots=(0, 3), chat_template=True)
    """
    cfg = _config(config, n, icl_shots, overrides)
    if not models:
        raise ValueError("compare() needs at least one model, e.g. {'base': model}")
    unknown_names = sorted(set(training_data or {}) - set(models))
    if unknown_names:
        raise ValueError(
            f"training_data names {unknown_names}, which are not among the models {list(models)}."
            f"{did_you_mean(unknown_names[0], list(models))}"
        )
    task_list, icl_tasks, shots_k, prepared = _setup(tasks, target, cfg)
    names = list(models)
    ref_name = names[0]
    notes: list[str] = []

    # 1. what each model was trained on, and which test examples it may have seen
    sources: dict[str, TrainingSource] = {}
    for mname in names:
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
    for mname in names:
        spec = models[mname]
        if _is_evaluation(spec):
            evaluations[mname] = _reuse(spec, mname, mname == ref_name, cfg, prepared)
        else:
            tok = tokenizer.get(mname) if isinstance(tokenizer, Mapping) else tokenizer
            icl = icl_tasks if mname == ref_name else set()
            evaluations[mname] = _evaluate_one(mname, spec, tok, prepared, cfg, icl, shots_k)
    _model_notes(evaluations, task_list, cfg, notes)
    columns = [ref_name]
    columns += sorted({_columns_for(ref_name, r["k"]) for r in evaluations[ref_name]["results"] if r["k"]},
                      key=lambda c: int(c.rsplit(" ", 1)[1].split("-")[0]))  # fmt: skip
    columns += names[1:]
    return _assemble(evaluations, prepared, task_list, target, columns, ref_name, cfg, notes, sources, overlap_info,
                     keep_overlap)  # fmt: skip


def _mark_overlap(
    prepared: Mapping[str, _TaskData], sources: Mapping[str, TrainingSource], keep_overlap: bool, notes: list[str]
) -> dict[str, dict[str, Any]]:
    info: dict[str, dict[str, Any]] = {}
    checked = {m: s for m, s in sources.items() if s.known}
    for tname, td in prepared.items():
        per_model: dict[str, dict[str, int]] = {}
        for mname, src in checked.items():
            flags = find_overlap(td.task, td.examples, src.hashes)
            for i, flag in enumerate(flags):
                if flag:
                    td.overlap[i][mname] = flag
            counts = {kind: flags.count(kind) for kind in ("exact", "13-gram") if flags.count(kind)}
            if counts:
                per_model[mname] = counts
        flagged = [i for i, o in enumerate(td.overlap) if o]
        if not keep_overlap:
            td.keep = [i for i in range(len(td.examples)) if not td.overlap[i]]
            if not td.keep:
                raise TaskError(
                    f"task {tname!r}: every one of its {len(td.examples)} sampled test examples is in a model's "
                    "training data, so nothing is left to score. Train on the task's train split "
                    f"(nbft.get_task({tname!r}).train(...)), or pass keep_overlap=True to score them anyway"
                )
        info[tname] = {"n_sampled": len(td.examples), "n_overlap": len(flagged), "by_model": per_model,
                       "left_out": 0 if keep_overlap else len(flagged)}  # fmt: skip
        if flagged:
            detail = "; ".join(f"{m!r}: " + ", ".join(f"{v} {k}" for k, v in c.items()) for m, c in per_model.items())
            what = (
                "kept and flagged in the examples (keep_overlap=True)"
                if keep_overlap
                else f"left out for every model, so n = {len(td.keep)} (keep_overlap=True keeps them, flagged)"
            )
            notes.append(
                f"{tname}: {len(flagged)} of {len(td.examples)} sampled test examples are in the training data "
                f"({detail}); {what}"
            )
    return info


def _model_notes(
    evaluations: Mapping[str, dict[str, Any]], task_list: list[Task], cfg: EvalConfig, notes: list[str]
) -> None:
    prints = {m: e["fingerprint"] for m, e in evaluations.items()}
    if len(set(prints.values())) > 1:
        ll_tasks = [t.name for t in task_list if t.is_classification and cfg.scoring in ("loglik", "both")]
        msg = (
            f"the models use different tokenizers ({', '.join(f'{k}: {v}' for k, v in prints.items())}); "
            "prompts are the same text, but token counts and log-likelihoods are not directly comparable"
            + (f" (log-likelihood tasks: {ll_tasks})" if ll_tasks else "")
        )
        if ll_tasks:
            warnings.warn(msg, stacklevel=3)
        notes.append(msg)
    dtypes = {m: e["dtype"] for m, e in evaluations.items()}
    if len(set(dtypes.values())) > 1:
        msg = f"the models run in different dtypes {dtypes}; cast them to one dtype for a fair comparison"
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
    for m, e in evaluations.items():
        for r in e["results"]:
            if r["outputs"] and r["empty_rate"] == 100.0:
                msg = f"{_columns_for(m, r['k'])!r} produced empty output for every example of task {r['task']!r}"
                logger.warning(msg)
                notes.append(msg)


def _assemble(
    evaluations: Mapping[str, dict[str, Any]],
    prepared: Mapping[str, _TaskData],
    task_list: list[Task],
    target: str | None,
    columns: list[str],
    ref_name: str,
    cfg: EvalConfig,
    notes: list[str],
    sources: Mapping[str, TrainingSource],
    overlap_info: Mapping[str, Any],
    keep_overlap: bool,
) -> dict[str, Any]:
    role = {t.name: ("target" if t.name == target else "other") if target else "task" for t in task_list}
    by: dict[tuple[str, str], dict[str, Any]] = {}
    for mname, ev in evaluations.items():
        for r in ev["results"]:
            by[(r["task"], _columns_for(mname, r["k"]))] = {**r, "model": mname}

    scores: dict[str, dict[str, Any]] = {t.name: {} for t in task_list}
    deltas: list[dict[str, Any]] = []
    replicates: dict[str, dict[str, np.ndarray]] = {}  # column -> task -> bootstrap Δs of the headline
    for t in task_list:
        td = prepared[t.name]
        base = by[(t.name, ref_name)]
        for col in columns:
            r = by.get((t.name, col))
            if r is None:
                continue
            stat = _stats_of(t, r, td)
            r["ci"] = {
                k: list(stats.bootstrap_ci(stat[k], n=r["n"], n_boot=cfg.n_boot, seed=cfg.seed)) for k in r["keys"]
            }
            r["prompt_tokens_mean"] = float(np.mean(r["prompt_tokens"])) if r["prompt_tokens"] else math.nan
            scores[t.name][col] = r
            if col == ref_name:
                continue
            # paired over the examples both columns scored (a k-shot column covers the first icl_n only)
            common = [p for p in r["positions"] if p in set(base["positions"])]
            b_sub, o_sub = _subset_stats(t, base, td, common), _subset_stats(t, r, td, common)
            for key in r["keys"]:
                ekey = _example_key_for(t, key, r)
                d = stats.delta(
                    b_sub[0][key], o_sub[0][key], len(common),
                    base_per_example=b_sub[1].get(ekey), other_per_example=o_sub[1].get(ekey),
                    n_boot=cfg.n_boot, seed=cfg.seed,
                )  # fmt: skip
                if key == r["keys"][0]:
                    replicates.setdefault(col, {})[t.name] = d["replicates"]
                del d["replicates"]
                deltas.append({"task": t.name, "role": role[t.name], "model": col, "k": r["k"], "metric": key,
                               "is_headline": key == r["keys"][0], **d})  # fmt: skip

    synthetic = {t.name for t in task_list if t.synthetic}
    forgetting = []
    for col in columns[1:]:
        if col.startswith(f"{ref_name} ") and col.endswith("-shot"):
            continue
        rows = {d["task"]: d for d in deltas if d["model"] == col and d["is_headline"] and d["task"] not in synthetic}
        f = stats.forgetting(rows, target, replicates={t: v for t, v in replicates.get(col, {}).items() if t in rows})
        forgetting.append({"model": col, **f})
    if synthetic and target:
        notes.append(
            f"{sorted(synthetic)}: synthetic data (generated by nbft), shown but left out of G, BWT′ and AF: "
            "it is never the evidence of forgetting"
        )
    _format_notes(deltas, scores, task_list, ref_name, notes)

    examples = {}
    for t in task_list:
        td = prepared[t.name]
        ref_positions = scores[t.name][ref_name]["positions"]
        examples[t.name] = {
            "position": ref_positions,
            "split_index": [td.split_index[p] for p in ref_positions],
            "prompt": [scores[t.name][ref_name]["prompts"][j] for j in range(len(ref_positions))],
            "prompt_hash": [scores[t.name][ref_name]["prompt_hashes"][j] for j in range(len(ref_positions))],
            "reference": [td.refs[p] for p in ref_positions],
            "overlap": [", ".join(f"{m}: {k}" for m, k in td.overlap[p].items()) for p in ref_positions],
        }
    task_info = {
        t.name: {
            "role": role[t.name],
            "headline": scores[t.name][ref_name]["keys"][0],
            "template": t.template.id,
            "n": scores[t.name][ref_name]["n"],
            "n_available": prepared[t.name].n_available,
            "max_new_tokens": cfg.max_new_tokens or t.max_new_tokens,
            "stop": list(t.stop),
            "halt": list(t.halt),
            "synthetic": t.synthetic,
            "description": t.description,
            "overlap": overlap_info[t.name],
        }
        for t in task_list
    }
    signatures = {
        k: v for ev in evaluations.values() for r in ev["results"] for k, v in r.get("signatures", {}).items()
    }
    return {
        "format": RESULTS_FORMAT,
        "config": dataclasses.asdict(cfg),
        "target": target,
        "reference": ref_name,
        "columns": columns,
        "keep_overlap": keep_overlap,
        "models": {
            m: {"dtype": ev["dtype"], "tokenizer": ev["fingerprint"], "training": sources[m].to_dict()}
            for m, ev in evaluations.items()
        },
        "tasks": task_info,
        "scores": scores,
        "examples": examples,
        "deltas": deltas,
        "forgetting": forgetting,
        "notes": notes,
        "signatures": signatures,
    }


def _stats_of(task: Task, r: Mapping[str, Any], td: _TaskData) -> dict[str, stats.Scores]:
    return _subset_stats(task, r, td, r["positions"])[0]


def _subset_stats(
    task: Task, r: Mapping[str, Any], td: _TaskData, positions: Sequence[int]
) -> tuple[dict[str, stats.Scores], dict[str, np.ndarray]]:
    """Bootstrap inputs and per-example scores of a result, restricted to ``positions`` (in that order)."""
    where = {p: j for j, p in enumerate(r["positions"])}
    idx = [where[p] for p in positions]
    _, per_ex, stat, _ = _statistics(
        task, _select(r["outputs"], idx), _select(r["ll_choices"], idx), [td.refs[p] for p in positions],
        [td.examples[p] for p in positions],
    )  # fmt: skip
    return stat, per_ex


def _example_key_for(task: Task, key: str, r: Mapping[str, Any]) -> str | None:
    """The per-example score behind wins/ties/losses of ``key``."""
    for m in task.metric_objects(loglik=r["ll_choices"] is not None, generate=r["outputs"] is not None):
        if key in m.keys:
            return m.example_key
    return None


def _format_notes(
    deltas: list[dict[str, Any]], scores: Mapping[str, Any], task_list: list[Task], ref_name: str, notes: list[str]
) -> None:
    """Say when generated answers and log-likelihood disagree: a gain in answer format rather than in skill."""
    for t in task_list:
        if not t.is_classification:
            continue
        rows = {(d["model"], d["metric"]): d for d in deltas if d["task"] == t.name}
        for (col, key), gen in rows.items():
            ll = rows.get((col, "ll_" + key))
            if key.startswith("ll_") or ll is None:
                continue
            agree = (gen["significant"] == ll["significant"]) and (
                not gen["significant"] or np.sign(gen["delta"]) == np.sign(ll["delta"])
            )
            if agree:
                continue
            base_nl = scores[t.name][ref_name].get("no_label_rate")
            col_nl = scores[t.name][col].get("no_label_rate")
            label = (
                f"; answers with no recognisable label: {ref_name} {base_nl:.0f}%, {col} {col_nl:.0f}%"
                if base_nl is not None and col_nl is not None
                else ""
            )
            notes.append(
                f"{t.name}, {col}: generated answers and log-likelihood disagree (Δ {key} {gen['delta']:+.1f} "
                f"[{gen['ci_low']:+.1f}, {gen['ci_high']:+.1f}], Δ ll_{key} {ll['delta']:+.1f} "
                f"[{ll['ci_low']:+.1f}, {ll['ci_high']:+.1f}]): much of the generated change is answer format "
                f"rather than skill{label}"
            )
