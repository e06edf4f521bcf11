"""One model on one task: generate (or score choices), then score with the task's metrics, into a plain dict.

:func:`score` is the small, fast entry point: greedy, batched, no bootstrap unless asked. A training-time monitor calls
it every N steps with the same fixed examples (``task.sample(16)``); :mod:`nbft.evaluate.runner` calls it for every
model, task and k-shot column of a comparison.

Example::

    from nbft.evaluate import get_task, score
    s = score(model, tok, "qa", get_task("qa").sample(16))     # {'task': 'qa', 'value': 12.3, 'metrics': {...}, ...}
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nbft._utils import did_you_mean
from nbft.config import EvalConfig
from nbft.evaluate import stats
from nbft.evaluate.generation import generate, generate_and_score, prompt_token_counts, score_choices
from nbft.evaluate.metrics import Metric, MetricError
from nbft.evaluate.tasks import Task, TaskError, get_task

__all__ = ["prompt_hash", "score"]


def prompt_hash(text: str) -> str:
    """A short, stable hash of the exact prompt text; equal hashes prove models saw the same input."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


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
        ci = {k: stats.bootstrap_ci(stat[k], n=n, n_boot=cfg.n_boot, seed=cfg.seed, key=task.name) for k in keys}
        result["ci"] = {k: list(v) for k, v in ci.items()}
    return result


def _signature(metric: Metric) -> str | None:
    try:
        return metric.signature()
    except Exception:  # a signature is documentation; never fail an evaluation over it
        return None
