"""``compare()``: base vs tuned (and in-context baselines) on several tasks, with paired CIs and forgetting stats.

Example::

    import nbft
    table = nbft.compare({"base": base_model, "tuned": run.model}, tasks=["sentiment", "qa", "reply"],
                         target="sentiment", n=200, icl_shots=(0, 3), tokenizer=tokenizer)
    table.summary      # tidy: task, role, model, metric, value, ci_low, ci_high, n, prompt_tokens, ...
    table.delta        # per task and model: base, value, delta, paired 95% CI, wins/ties/losses, significant
    table.forgetting   # G, BWT', AF, worst drop, number of significant regressions
    table.examples     # per example: prompt, prompt hash, reference, each model's output and score, delta, status
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
from typing import Any

import numpy as np
import pandas as pd

from nbft._utils import did_you_mean
from nbft.config import EvalConfig
from nbft.evaluate.generation import generate, generate_and_score, prompt_token_counts, score_choices
from nbft.evaluate.metrics import Metric, MetricError, bootstrap_ci, paired_bootstrap_ci
from nbft.evaluate.tasks import Task, TaskError, resolve_tasks

__all__ = ["ComparisonTable", "ModelEvaluation", "compare", "evaluate_model"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- prompts
def build_prompt(
    task: Task, example: Mapping[str, Any], shots: Sequence[Mapping[str, Any]], tokenizer: Any, chat: bool
) -> str:
    """The exact text a model sees: k solved examples (``shots``) and then the test example's prompt.

    Plain text: each shot is its prompt followed by its completion and a blank line. Chat: each shot is a user turn
    and an assistant turn, and the test prompt the last user turn, wrapped as :func:`nbft.data.format_prompt` does
    for training (so tuned models see the format they were trained on).
    """
    template = task.template
    if not chat:
        return "".join(template.render(s) + template.completion(s) + "\n\n" for s in shots) + template.render(example)
    messages: list[dict[str, str]] = []
    for s in shots:
        messages.append({"role": "user", "content": template.render(s).rstrip("\n")})
        messages.append({"role": "assistant", "content": template.completion(s)})
    messages.append({"role": "user", "content": template.render(example).rstrip("\n")})
    if not getattr(tokenizer, "chat_template", None):
        raise TaskError(
            f"chat_template=True but tokenizer {type(tokenizer).__name__} has no chat template; "
            "use chat_template=False or an instruct model's tokenizer"
        )
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_hash(text: str) -> str:
    """A short, stable hash of the exact prompt text; equal hashes prove models saw the same input."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _example_key(task: Task, ex: Mapping[str, Any]) -> str:
    # identity of an example by its input fields and target, to keep test examples out of k-shot prompts
    payload = [ex.get(f) for f in (*task.template.fields, task.target)]
    return json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False)


@dataclasses.dataclass
class _TaskData:
    task: Task
    test: list[dict[str, Any]]
    refs: list[str]
    n_available: int
    shots: dict[int, list[list[dict[str, Any]]]]  # k -> per test example, its k shots (from train only)


def _prepare(task: Task, n: int | None, shots_k: Sequence[int], seed: int) -> _TaskData:
    splits = task.load()
    test_ds = splits["test"]
    n_avail = len(test_ds)
    if n is not None and n > n_avail:
        msg = f"task {task.name!r}: n={n} is larger than its test split ({n_avail} examples); using all {n_avail}"
        warnings.warn(msg, stacklevel=3)
        logger.warning(msg)
    if n is None or n >= n_avail:
        idx = list(range(n_avail))
    else:
        idx = sorted(random.Random(seed).sample(range(n_avail), n))
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
    return _TaskData(task, test, refs, n_avail, shots)


# --------------------------------------------------------------------------------------------------- models
@dataclasses.dataclass
class _ModelRef:
    name: str
    spec: Any
    tokenizer: Any


def _resolve_tokenizer(name: str, spec: Any, tokenizer: Any) -> Any:
    if isinstance(tokenizer, Mapping):
        return tokenizer.get(name)
    return tokenizer


def _materialize(ref: _ModelRef) -> tuple[Any, Any, bool]:
    """(model, tokenizer, owned): ``owned`` models were loaded here and are released after use."""
    spec = ref.spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return spec[0], spec[1] or ref.tokenizer, False
    if isinstance(spec, (str, bytes)) or hasattr(spec, "__fspath__"):
        from nbft.models import load_model

        model, tok = load_model(str(spec))
        return model, ref.tokenizer or tok, True
    if hasattr(spec, "model") and not hasattr(spec, "generate"):  # a training Run handle
        return spec.model, ref.tokenizer or getattr(spec, "tokenizer", None), False
    return spec, ref.tokenizer, False


def _release(model: Any) -> None:
    del model
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


# --------------------------------------------------------------------------------------------------- scoring
@dataclasses.dataclass
class _Result:
    column: str
    model: str
    k: int
    task: str
    prompts: list[str]
    hashes: list[str]
    prompt_tokens: list[int]
    outputs: list[str]
    ll_choices: list[str] | None
    values: dict[str, float]
    per_example: dict[str, np.ndarray]
    stats: dict[str, Any]  # key -> per-example array (mean keys) or statistic(idx) (corpus keys)
    ci: dict[str, tuple[float, float]]
    example_key: str | None
    empty_rate: float
    signatures: dict[str, str]


def _report_keys(task: Task, generate_on: bool, loglik_on: bool) -> list[str]:
    keys = [task.headline_key(generate=generate_on)]
    if task.is_classification and generate_on and loglik_on:
        keys.append("ll_" + keys[0])
    return keys


def _evaluate(
    model: Any,
    tokenizer: Any,
    td: _TaskData,
    k: int,
    column: str,
    model_name: str,
    cfg: EvalConfig,
) -> _Result:
    task = td.task
    shots = td.shots.get(k) if k else None
    # k-shot prompts are several times longer: `icl_n` evaluates them on the first examples only (paired with the
    # base on exactly those examples)
    m = len(td.test) if not k or cfg.icl_n is None else min(cfg.icl_n, len(td.test))
    test, refs = td.test[:m], td.refs[:m]
    prompts = [
        build_prompt(task, ex, shots[i] if shots else (), tokenizer, cfg.chat_template) for i, ex in enumerate(test)
    ]
    gen_on = not task.is_classification or cfg.scoring in ("generate", "both")
    ll_on = task.is_classification and cfg.scoring in ("loglik", "both")
    label = f"{column} · {task.name}"
    outputs = [""] * len(prompts)
    ll = None
    gen_kwargs = {
        "max_new_tokens": cfg.max_new_tokens or task.max_new_tokens,
        "stop": task.stop,
        "batch_size": cfg.batch_size,
        "chat": cfg.chat_template,
        "progress": cfg.progress,
        "desc": label,
    }
    if gen_on and ll_on:
        assert task.choices is not None
        outputs, ll = generate_and_score(model, tokenizer, prompts, task.choices, **gen_kwargs)
    elif gen_on:
        outputs = generate(model, tokenizer, prompts, **gen_kwargs)
    elif ll_on:
        assert task.choices is not None
        ll = score_choices(
            model, tokenizer, prompts, task.choices, batch_size=cfg.batch_size, chat=cfg.chat_template,
            progress=cfg.progress, desc=f"{label} log-lik",
        )  # fmt: skip
    ll_choices = None
    if ll is not None:
        assert task.choices is not None
        ll_choices = [task.choices[j] for j in ll.argmax(axis=1)]
    empty_rate = 100.0 * sum(not o.strip() for o in outputs) / max(1, len(outputs)) if gen_on else math.nan
    if gen_on and prompts and empty_rate == 100.0:
        msg = f"model {column!r} produced empty output for every example of task {task.name!r}"
        warnings.warn(msg, stacklevel=3)
        logger.warning(msg)
    metrics = task.metric_objects(loglik=ll_on, generate=gen_on)
    values, per_ex, stats = _score_metrics(task, metrics, outputs, ll_choices, refs)
    report = _report_keys(task, gen_on, ll_on)
    ci = {}
    for key in report:
        if key not in stats:
            raise MetricError(
                f"task {task.name!r}: headline metric {key!r} is not produced by its metrics "
                f"{[m.name for m in metrics]}; they give {sorted(values)}.{did_you_mean(key, values)}"
            )
        ci[key] = bootstrap_ci(stats[key], n=len(refs), n_boot=cfg.n_boot, seed=cfg.seed)
    example_key = None
    for m in metrics:
        if report[0] in m.keys:
            example_key = m.example_key
    return _Result(
        column=column,
        model=model_name,
        k=k,
        task=task.name,
        prompts=prompts,
        hashes=[prompt_hash(p) for p in prompts],
        prompt_tokens=prompt_token_counts(tokenizer, prompts, chat=cfg.chat_template),
        outputs=outputs,
        ll_choices=ll_choices,
        values=values,
        per_example=per_ex,
        stats=stats,
        ci=ci,
        example_key=example_key,
        empty_rate=empty_rate,
        signatures={f"{task.name}/{m.name}": sig for m in metrics if (sig := _signature(m))},
    )


def _signature(metric: Metric) -> str | None:
    try:
        return metric.signature()
    except Exception:  # a signature is documentation; never fail an evaluation over it
        return None


def _score_metrics(
    task: Task, metrics: list[Metric], outputs: list[str], ll_choices: list[str] | None, refs: list[str]
) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, Any]]:
    values: dict[str, float] = {}
    per_ex: dict[str, np.ndarray] = {}
    stats: dict[str, Any] = {}
    for m in metrics:
        preds = ll_choices if m.name.startswith("ll_") and ll_choices is not None else outputs
        try:
            vals = m.corpus(preds, refs)
            pe = m.per_example(preds, refs)
        except MetricError as exc:
            raise MetricError(f"task {task.name!r}: {exc}") from exc
        except Exception as exc:
            raise MetricError(f"task {task.name!r}: metric {m.name!r} raised {type(exc).__name__}: {exc}") from exc
        values.update(vals)
        per_ex.update(pe)
        for key in vals:
            if key in m.mean_keys and key in pe:
                stats[key] = pe[key]
            else:
                stats[key] = m.statistic(preds, refs, key)
    return values, per_ex, stats


# --------------------------------------------------------------------------------------------------- table
@dataclasses.dataclass
class ComparisonTable:
    """The result of :func:`compare`: tidy DataFrames plus what's needed to render and export them.

    Example::

        table.summary.query("role == 'target'")
        nbft.report.side_by_side(table)            # the pandas Styler
        nbft.report.export_html(table, "report.html")
    """

    summary: pd.DataFrame
    delta: pd.DataFrame
    forgetting: pd.DataFrame
    examples: pd.DataFrame
    target: str | None
    tasks: list[str]
    columns: list[str]
    reference: str
    config: EvalConfig
    task_info: pd.DataFrame
    notes: list[str] = dataclasses.field(default_factory=list)
    signatures: dict[str, str] = dataclasses.field(default_factory=dict)

    def headline(self) -> pd.DataFrame:
        """Tasks × columns of the headline values (points), in task then column order."""
        s = self.summary[self.summary["is_headline"]]
        wide = s.pivot_table(index=["task", "metric"], columns="model", values="value", sort=False)
        return wide.reindex(columns=[c for c in self.columns if c in wide.columns])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (``metrics.json``)."""

        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            return json.loads(df.to_json(orient="records"))

        return {
            "target": self.target,
            "tasks": self.tasks,
            "columns": self.columns,
            "reference": self.reference,
            "config": dataclasses.asdict(self.config),
            "summary": records(self.summary),
            "delta": records(self.delta),
            "forgetting": records(self.forgetting),
            "task_info": records(self.task_info),
            "notes": self.notes,
            "signatures": self.signatures,
        }

    def to_text(self) -> str:
        """A plain-text table for terminals: headline values per task and column, Δ with CI, forgetting."""
        from nbft.report import to_text

        return to_text(self)

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        from nbft.report import side_by_side

        return side_by_side(self).to_html()


# --------------------------------------------------------------------------------------------------- one model
class _Unset:
    """Marks an argument left out (``n=None`` already means "all examples")."""


_UNSET = _Unset()


@dataclasses.dataclass
class ModelEvaluation:
    """One model's results on a set of tasks, kept so that a model trained *in place* can be compared later.

    Pass it as a value in :func:`compare`'s ``models``; the settings (n, seed, decoding...) must match.

    Example::

        base_eval = evaluate_model(model, ["sentiment", "qa"], tokenizer=tok, target="sentiment", icl_shots=(0, 3))
        run = nbft.finetune(model, tok, ...)            # trains `model` in place
        table = compare({"base": base_eval, "tuned": run.model}, ["sentiment", "qa"], target="sentiment",
                        tokenizer=tok)
    """

    name: str
    results: list[_Result]
    config: EvalConfig
    tasks: dict[str, list[str]]  # task -> the zero-shot prompt hashes, which prove the inputs are the same
    fingerprint: str
    dtype: str

    def renamed(self, name: str, *, keep_icl: bool) -> ModelEvaluation:
        out = []
        for r in self.results:
            if r.k and not keep_icl:
                continue
            column = name if r.k == 0 else f"{name} {r.k}-shot"
            out.append(dataclasses.replace(r, column=column, model=name))
        return dataclasses.replace(self, name=name, results=out)

    def check_compatible(self, cfg: EvalConfig, prepared: Mapping[str, _TaskData]) -> None:
        fields = ("n", "n_per_task", "icl_n", "seed", "chat_template", "scoring", "max_new_tokens", "batch_size")
        diff = {
            f: (getattr(self.config, f), getattr(cfg, f)) for f in fields if getattr(self.config, f) != getattr(cfg, f)
        }
        if diff:
            raise ValueError(
                f"the saved evaluation {self.name!r} used different settings than this comparison "
                f"(setting: (saved, now)) {diff}; evaluate again with the same settings"
            )
        missing = sorted(set(prepared) - set(self.tasks))
        if missing:
            raise ValueError(f"the saved evaluation {self.name!r} has no results for tasks {missing}")


def _evaluate_model(
    name: str,
    spec: Any,
    tokenizer: Any,
    prepared: Mapping[str, _TaskData],
    cfg: EvalConfig,
    icl_tasks: set[str],
    shots_k: Sequence[int],
) -> ModelEvaluation:
    model, tok, owned = _materialize(_ModelRef(name, spec, tokenizer))
    if tok is None:
        raise ValueError(f"model {name!r} was given without a tokenizer: pass tokenizer=..., or (model, tokenizer)")
    results: list[_Result] = []
    try:
        for td in prepared.values():
            results.append(_evaluate(model, tok, td, 0, name, name, cfg))
            if td.task.name in icl_tasks:
                for k in shots_k:
                    results.append(_evaluate(model, tok, td, k, f"{name} {k}-shot", name, cfg))
        dtype = _dtype(model)
    finally:
        if owned:
            _release(model)
            model = None
    return ModelEvaluation(
        name=name,
        results=results,
        config=cfg,
        tasks={r.task: r.hashes for r in results if r.k == 0},
        fingerprint=_vocab_fingerprint(tok),
        dtype=dtype,
    )


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
) -> ModelEvaluation:
    """Evaluate one model now (with its k-shot baselines) and keep the results for a later :func:`compare`.

    Use it before a fine-tune that updates the model in place, so the base needs no second copy in memory.
    Arguments are those of :func:`compare`.

    Example::

        base_eval = evaluate_model(model, ["sentiment", "qa"], tokenizer=tok, target="sentiment", n=200,
                                   icl_shots=(0, 3))
    """
    cfg = _config(config, n, icl_shots, overrides)
    _, icl_tasks, shots_k, prepared = _setup(tasks, target, cfg)
    return _evaluate_model(name, model, tokenizer, prepared, cfg, icl_tasks, shots_k)


# --------------------------------------------------------------------------------------------------- compare
def compare(
    models: Mapping[str, Any],
    tasks: Sequence[str | Task] | str | Task,
    *,
    target: str | None = None,
    n: int | _Unset | None = _UNSET,
    icl_shots: Sequence[int] | None = None,
    tokenizer: Any = None,
    config: EvalConfig | None = None,
    **overrides: Any,
) -> ComparisonTable:
    """Evaluate every model on every task with identical prompts and decoding; return a :class:`ComparisonTable`.

    Args:
        models: ``{name: model}`` in column order; the first is the reference (base). A value may be a loaded
            model, a ``(model, tokenizer)`` pair, a path or model name (loaded, used, then released), a training
            run handle (its ``.model``), or a :class:`ModelEvaluation` made earlier with :func:`evaluate_model`.
        tasks: task names or :class:`Task` objects.
        target: the task the tuned model was trained for (its gain is G; the others measure forgetting).
        n: test examples per task (default from ``config``: 200). More than the split: all, with a warning.
        icl_shots: k values for the in-context baseline of the first model, e.g. ``(0, 3)``; k-shot examples come
            from each task's train split only, never from its test split.
        tokenizer: the tokenizer for models given without one (one for all, or ``{name: tokenizer}``).
        config: an :class:`~nbft.config.EvalConfig`; keyword ``overrides`` replace its fields
            (``batch_size=``, ``chat_template=``, ``scoring=``, ``n_boot=``, ``seed=``, ``progress=``...).

    Example::

        table = compare({"base": (base, tok), "tuned": "runs/sentiment-1/model"}, ["sentiment", "qa"],
                        target="sentiment", n=100, icl_shots=(0, 3), chat_template=True)
    """
    cfg = _config(config, n, icl_shots, overrides)
    if not models:
        raise ValueError("compare() needs at least one model, e.g. {'base': model}")
    task_list, icl_tasks, shots_k, prepared = _setup(tasks, target, cfg)
    model_names = list(models)
    ref_name = model_names[0]
    results: list[_Result] = []
    notes: list[str] = []
    fingerprints: dict[str, str] = {}
    dtypes: dict[str, str] = {}
    for mname in model_names:
        spec = models[mname]
        if isinstance(spec, ModelEvaluation):
            ev = spec.renamed(mname, keep_icl=mname == ref_name)
            ev.check_compatible(cfg, prepared)
        else:
            tok = _resolve_tokenizer(mname, spec, tokenizer)
            icl = icl_tasks if mname == ref_name else set()
            ev = _evaluate_model(mname, spec, tok, prepared, cfg, icl, shots_k)
        results.extend(ev.results)
        fingerprints[mname] = ev.fingerprint
        dtypes[mname] = ev.dtype
    if len(set(fingerprints.values())) > 1:
        ll_tasks = [t.name for t in task_list if t.is_classification and cfg.scoring in ("loglik", "both")]
        msg = (
            f"the models use different tokenizers ({', '.join(f'{k}: {v}' for k, v in fingerprints.items())}); "
            "prompts are the same text, but token counts and log-likelihoods are not directly comparable"
            + (f" (log-likelihood tasks: {ll_tasks})" if ll_tasks else "")
        )
        if ll_tasks:
            warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    if len(set(dtypes.values())) > 1:
        msg = f"the models run in different dtypes {dtypes}; cast them to one dtype for a fair comparison"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    for r in results:
        if r.outputs and r.empty_rate == 100.0:
            notes.append(f"{r.column!r} produced empty output for every example of task {r.task!r}")

    columns: list[str] = []
    for r in results:
        if r.column not in columns:
            columns.append(r.column)
    # column order: base, base k-shot..., then the other models
    columns = [ref_name] + [c for c in columns if c.startswith(f"{ref_name} ") and c != ref_name] + model_names[1:]
    return _build_table(results, prepared, task_list, target, columns, ref_name, cfg, notes, dtypes)


def _value_on_first(r: _Result, key: str, m: int) -> float:
    """A result's metric value on its first ``m`` examples (all of them: the stored value)."""
    if m >= len(r.prompts):
        return r.values[key]
    stat = r.stats[key]
    return float(stat(np.arange(m))) if callable(stat) else float(np.mean(np.asarray(stat)[:m]))


def _build_table(
    results: list[_Result],
    prepared: dict[str, _TaskData],
    task_list: list[Task],
    target: str | None,
    columns: list[str],
    ref_name: str,
    cfg: EvalConfig,
    notes: list[str],
    dtypes: dict[str, str],
) -> ComparisonTable:
    by = {(r.task, r.column): r for r in results}
    role = {t.name: ("target" if t.name == target else "other") if target else "task" for t in task_list}
    gen_on = {t.name: not t.is_classification or cfg.scoring in ("generate", "both") for t in task_list}
    ll_on = {t.name: t.is_classification and cfg.scoring in ("loglik", "both") for t in task_list}
    report = {t.name: _report_keys(t, gen_on[t.name], ll_on[t.name]) for t in task_list}

    # summary: one row per task x column x metric key
    rows = []
    for t in task_list:
        for col in columns:
            r = by.get((t.name, col))
            if r is None:
                continue
            for key, value in r.values.items():
                lo, hi = r.ci.get(key, (math.nan, math.nan))
                rows.append(
                    {
                        "task": t.name,
                        "role": role[t.name],
                        "model": col,
                        "k": r.k,
                        "metric": key,
                        "value": value,
                        "ci_low": lo,
                        "ci_high": hi,
                        "n": len(r.prompts),
                        "prompt_tokens": float(np.mean(r.prompt_tokens)) if r.prompt_tokens else math.nan,
                        "empty_rate": r.empty_rate,
                        "is_headline": key == report[t.name][0],
                        "in_table": key in report[t.name],
                        "dtype": dtypes.get(r.model, ""),
                    }
                )
    summary = pd.DataFrame(rows)

    # delta: every non-reference column against the reference, paired over the same examples
    drows = []
    for t in task_list:
        base = by[(t.name, ref_name)]
        for col in columns:
            if col == ref_name or (t.name, col) not in by:
                continue
            r = by[(t.name, col)]
            for key in report[t.name]:
                lo, hi = paired_bootstrap_ci(
                    base.stats[key], r.stats[key], n=len(r.prompts), n_boot=cfg.n_boot, seed=cfg.seed
                )
                base_value = _value_on_first(base, key, len(r.prompts))
                d = r.values[key] - base_value
                wins = ties = losses = 0
                ekey = r.example_key if key == report[t.name][0] else ("ll_accuracy" if key.startswith("ll_") else None)
                if ekey and ekey in r.per_example and ekey in base.per_example:
                    diff = r.per_example[ekey] - base.per_example[ekey][: len(r.per_example[ekey])]
                    wins, ties, losses = int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum())
                drows.append(
                    {
                        "task": t.name,
                        "role": role[t.name],
                        "model": col,
                        "k": r.k,
                        "metric": key,
                        "is_headline": key == report[t.name][0],
                        "base": base_value,
                        "value": r.values[key],
                        "delta": d,
                        "ci_low": lo,
                        "ci_high": hi,
                        "wins": wins,
                        "ties": ties,
                        "losses": losses,
                        "significant": bool(lo > 0 or hi < 0),
                        "regression": bool(hi < 0),
                        "n": len(r.prompts),
                    }
                )
    delta = pd.DataFrame(drows)

    # forgetting: for each trained model (not a k-shot column)
    frows = []
    for col in columns[1:]:
        if col.startswith(f"{ref_name} ") and col.endswith("-shot"):
            continue
        d = delta[(delta["model"] == col) & delta["is_headline"]] if len(delta) else delta
        tgt = d[d["role"] == "target"]
        others = d[d["role"] != "target"]
        worst = others.loc[others["delta"].idxmin()] if len(others) else None
        frows.append(
            {
                "model": col,
                "target": target,
                "G": float(tgt["delta"].iloc[0]) if len(tgt) else math.nan,
                "G_ci_low": float(tgt["ci_low"].iloc[0]) if len(tgt) else math.nan,
                "G_ci_high": float(tgt["ci_high"].iloc[0]) if len(tgt) else math.nan,
                "BWT": float(others["delta"].mean()) if len(others) else math.nan,
                "AF": float(np.maximum(0.0, -others["delta"]).mean()) if len(others) else math.nan,
                "worst_drop": float(worst["delta"]) if worst is not None else math.nan,
                "worst_task": str(worst["task"]) if worst is not None else None,
                "significant_regressions": int(others["regression"].sum()) if len(others) else 0,
                "n_other_tasks": len(others),
            }
        )
    forgetting = pd.DataFrame(frows)

    # examples: one row per task x test example, wide over columns
    erows = []
    for t in task_list:
        base = by[(t.name, ref_name)]
        cols = [c for c in columns if (t.name, c) in by]
        key = report[t.name][0]
        for i in range(len(base.prompts)):
            row: dict[str, Any] = {
                "task": t.name,
                "example": i,
                "prompt": base.prompts[i],
                "prompt_hash": base.hashes[i],
                "same_prompt": all(by[(t.name, c)].hashes[i] == base.hashes[i] for c in cols if by[(t.name, c)].k == 0),
                "reference": prepared[t.name].refs[i],
            }
            for c in cols:
                r = by[(t.name, c)]
                if i >= len(r.prompts):  # a k-shot column evaluated on the first icl_n examples only
                    row[f"output:{c}"], row[f"score:{c}"] = None, math.nan
                    if c != ref_name:
                        row[f"delta:{c}"] = math.nan
                    continue
                row[f"output:{c}"] = r.outputs[i] if gen_on[t.name] else (r.ll_choices or [""] * (i + 1))[i]
                if r.ll_choices is not None and gen_on[t.name]:
                    row[f"ll_choice:{c}"] = r.ll_choices[i]
                ekey = r.example_key
                row[f"score:{c}"] = float(r.per_example[ekey][i]) if ekey and ekey in r.per_example else math.nan
                if c != ref_name:
                    row[f"delta:{c}"] = row[f"score:{c}"] - row[f"score:{ref_name}"]
            last = next((c for c in reversed(cols) if not c.startswith(f"{ref_name} ")), None)
            if last and last != ref_name:
                dv = row[f"delta:{last}"]
                out = row[f"output:{last}"]
                row["status"] = (
                    "empty" if not str(out).strip()
                    else "improved" if dv > 0 else "regressed" if dv < 0 else "same" if dv == 0 else "n/a"
                )  # fmt: skip
            row["metric"] = key
            erows.append(row)
    examples = pd.DataFrame(erows)

    info = pd.DataFrame(
        [
            {
                "task": t.name,
                "role": role[t.name],
                "headline": report[t.name][0],
                "template": t.template.id,
                "n": len(prepared[t.name].test),
                "n_available": prepared[t.name].n_available,
                "max_new_tokens": cfg.max_new_tokens or t.max_new_tokens,
                "stop": list(t.stop),
                "description": t.description,
            }
            for t in task_list
        ]
    )
    signatures = {k: v for r in results for k, v in r.signatures.items()}
    return ComparisonTable(
        summary=summary,
        delta=delta,
        forgetting=forgetting,
        examples=examples,
        target=target,
        tasks=[t.name for t in task_list],
        columns=columns,
        reference=ref_name,
        config=cfg,
        task_info=info,
        notes=notes,
        signatures=signatures,
    )
