"""Mitigation shown, not described: train the same base with and without replay and put the variants side by side.

:func:`forgetting_experiment` fine-tunes one base model on a target task several times, from the same weights with
the same seed: once on the target alone, and once per replay share, where that share of the training mix comes from
the other tasks' *train* splits. Every variant sees the same target examples (the mixture adds replayed examples,
and so steps, rather than dropping target ones), so the comparison isolates what replay does. One comparison table
comes back: base, target-only and each replay share as columns, each with its gain G on the target and BWT′, AF and
the worst drop on the others, every one with a 95% CI.

The application layer (beside :mod:`nbft.demo`): it loads, trains, evaluates and reports.

Example::

    table = nbft.forgetting_experiment(target="sentiment", others=["qa", "reply", "ner"], replay=(0, 0.1, 0.3))
    print(table.to_text())                    # the table, G / BWT′ / AF / worst drop per variant, with CIs
    table.forgetting[["model", "G", "AF", "AF_ci_low", "AF_ci_high"]]
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nbft.config import EvalConfig

__all__ = [
    "check_replay",
    "check_replay_from",
    "check_seeds",
    "forgetting_experiment",
    "replay_effect",
    "replay_mixture",
    "variant_label",
]

logger = logging.getLogger(__name__)

DEFAULT_OTHERS = ("sentiment", "qa", "reply", "ner", "summarize-paper")


def check_replay(replay: float | Sequence[float]) -> tuple[float, ...]:
    """Replay shares as a tuple of floats in [0, 1); anything else is an error that names the value.

    Example:
        >>> check_replay((0, 0.1))
        (0.0, 0.1)
    """
    values = (replay,) if isinstance(replay, int | float) else tuple(replay)
    if not values:
        raise ValueError("replay=() gives nothing to train; e.g. replay=(0, 0.1, 0.3) (0 = the target task alone)")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1 or math.isnan(value):
            raise ValueError(
                f"replay={value!r} is outside [0, 1): a replay share is the fraction of the training mix drawn from "
                "the other tasks (0 = the target task alone, 0.1 = one example in ten); e.g. replay=(0, 0.1, 0.3)"
            )
        out.append(float(value))
    if len(set(out)) < len(out):
        raise ValueError(f"replay={values!r} lists a share twice")
    return tuple(out)


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """Training seeds as a tuple of distinct whole numbers; an empty or repeated list is an error that says why.

    Example:
        >>> check_seeds((0, 1, 2))
        (0, 1, 2)
    """
    values = (seeds,) if isinstance(seeds, int) else tuple(seeds)
    if not values:
        raise ValueError("seeds=() trains nothing: give the training seeds, e.g. seeds=(0, 1, 2)")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"seeds: {value!r} is not a whole number >= 0; e.g. seeds=(0, 1, 2)")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(
            f"seeds={values!r} repeats seed {repeated[0]}: a repeated seed trains the same run again and would count "
            "it twice in the seed spread; give distinct seeds, e.g. seeds=(0, 1, 2)"
        )
    return values


def check_replay_from(replay_from: Sequence[str] | None, others: Sequence[str], target: str) -> list[str]:
    """The tasks replayed (the rest of ``others`` is held out): by default all but the last of ``others`` (with one
    other task, that one), so forgetting is also measured on a task that replay never trains on.

    Example:
        >>> check_replay_from(None, ["qa", "reply", "ner"], "sentiment")
        ['qa', 'reply']
    """
    from nbft._utils import did_you_mean

    others = list(others)
    if replay_from is None:
        return others[:-1] if len(others) > 1 else others
    names = [replay_from] if isinstance(replay_from, str) else list(replay_from)
    for name in names:
        if name == target:
            raise ValueError(
                f"replay_from names the target {name!r}: every variant trains on the target already; replay_from "
                f"lists other tasks to replay, e.g. replay_from={others[:-1] or others}"
            )
        if name not in others:
            raise ValueError(
                f"replay_from names {name!r}, which is not among the other tasks {others}.{did_you_mean(name, others)} "
                "Add it to others=[...] or fix the name"
            )
    if len(set(names)) < len(names):
        raise ValueError(f"replay_from={names!r} lists a task twice")
    return [t for t in others if t in names]


def variant_label(replay: float) -> str:
    """Column name of a variant: ``"target-only"`` or ``"replay 0.1"``."""
    return "target-only" if replay == 0 else f"replay {replay:g}"


def replay_mixture(
    target: Any, others: Mapping[str, Any], replay: float, *, seed: int = 0
) -> tuple[Any, dict[str, int]]:
    """All of ``target`` plus replayed examples of ``others`` so that they make up ``replay`` of the mix.

    The target examples are all kept (the same ones every variant sees); ``round(n * replay / (1 - replay))``
    replayed examples are shared equally among the other tasks (the largest-remainder rule), drawn with ``seed``.
    Returns the shuffled mixture (a ``datasets.Dataset`` with a ``task`` column) and the count per task.

    Example::

        mixed, counts = replay_mixture(target_rows, {"qa": qa_rows, "ner": ner_rows}, 0.1)
        counts      # {'sentiment': 320, 'qa': 18, 'ner': 18}
    """
    from nbft.data import _largest_remainder, mix

    (share,) = check_replay(replay)
    name = str(target["task"][0]) if "task" in target.column_names and len(target) else "target"
    if share == 0:
        return target, {name: len(target)}
    if not others:
        raise ValueError(f"replay={share:g} needs other tasks to replay; pass others=[...]")
    n_target = len(target)
    n_replay = round(n_target * share / (1 - share))
    per_task = _largest_remainder(n_replay, {t: 1 / len(others) for t in others})
    counts = {name: n_target, **per_task}
    short = {t: (k, len(others[t])) for t, k in per_task.items() if k > len(others[t])}
    if short:
        raise ValueError(
            f"replay={share:g} needs more examples than these tasks' train splits hold (needed, held): {short}"
        )
    mixed = mix({name: target, **others}, ratios=counts, total=sum(counts.values()), seed=seed)
    return mixed, counts


@dataclasses.dataclass
class _Variant:
    replay: float
    label: str
    counts: dict[str, int]
    steps: int
    train_s: float
    eval_s: float
    run_dir: str
    summary: dict[str, Any]
    seed: int = 0


def forgetting_experiment(
    model: Any = None,
    target: str = "sentiment",
    others: Sequence[str] | None = None,
    replay: float | Sequence[float] = (0, 0.1, 0.3),
    *,
    steps: int = 40,
    batch_size: int = 8,
    learning_rate: float = 2e-4,
    max_length: int = 384,
    n: int = 100,
    n_other: int = 24,
    n_per_task: Mapping[str, int] | None = None,
    eval_batch_size: int = 32,
    chat_template: bool = True,
    seed: int = 0,
    precision: str = "auto",
    seeds: Sequence[int] | None = None,
    replay_from: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    tokenizer: Any = None,
    monitor: bool = False,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> Any:
    """Fine-tune one base model once per replay share and compare the variants in one table.

    Every variant starts from the same base weights with the same seed and sees the same ``steps × batch_size``
    target examples (from the target's train split); a replay share ``r`` adds ``r / (1 - r)`` as many examples from
    the other tasks' train splits (so a replay variant takes proportionally more steps). All variants are evaluated
    with identical prompts on the tasks' test splits, checked against their training data for overlap.

    Args:
        model: ``None`` (SmolLM2-135M-Instruct), a name or path, a ``(model, tokenizer)`` pair or a model object
            (with ``tokenizer``), or ``"tiny"`` (a tiny random model, for a smoke run). A model object is trained in
            place and given back with its base weights.
        target: the task trained for; ``others``: the tasks that measure forgetting (default: sentiment, qa, reply,
            ner, summarize-paper, less the target).
        replay: the replay shares, each in [0, 1); 0 is the target-only variant.
        replay_from: the tasks of ``others`` whose train splits are replayed (default: all but the last of
            ``others``); the rest are *held out*. AF, the worst drop and regressions are reported for each group
            (``forgetting[i]["groups"]``), so "replay removes forgetting" is also measured where it never trained.
        seed: the data seed (which examples are trained on and tested) and, without ``seeds``, the training seed.
        seeds: training seeds, e.g. ``(0, 1, 2)``: each variant is trained once per seed from the same base on the
            same examples; each number is the mean over seeds with a two-level bootstrap CI (seeds, then examples),
            the per-seed values kept, and the run directories are ``<variant>/seed-<s>``.
        steps, batch_size, learning_rate, max_length: the target-only run (linear schedule, 10% warmup).
        precision: ``TrainConfig.precision`` of every variant (``"auto"``, ``"bf16"``, ``"fp16"`` or ``"fp32"``).
        n, n_other, n_per_task: test examples of the target, of each other task, and per-task exceptions.
        monitor: also run a :class:`~nbft.evaluate.monitor.ForgettingMonitor` in each variant (its rows go into each
            run's history).
        out_dir: where the run directories go (default ``runs/forgetting-<time>``), one per variant.
        echo: called with each line meant for a person (library code never prints).

    Returns a :class:`~nbft.report.ComparisonTable` whose results dict also holds ``experiment``: per variant its
    replay share, examples per task, steps, training and evaluation seconds and run directory, and per replay share
    how much of the target-only AF it removed and how much of its G it kept.

    Example::

        table = nbft.forgetting_experiment(target="sentiment", replay=(0, 0.1))
        table.forgetting[["model", "G", "BWT", "AF", "worst_drop"]]
    """
    from nbft.data import tokenize_for_training
    from nbft.evaluate import evaluate_model, get_task
    from nbft.evaluate.monitor import ForgettingMonitor
    from nbft.models import resolve_model
    from nbft.report import ComparisonTable
    from nbft.train import ProgressObserver, TrainConfig, finetune
    from nbft.train.variants import BaseSnapshot

    shares = check_replay(replay)
    train_seeds = check_seeds(seeds) if seeds is not None else (seed,)
    if model is not None and not isinstance(model, str | tuple | Path) and tokenizer is None:
        raise ValueError("a model object needs its tokenizer: forgetting_experiment(model, tokenizer=tok, ...)")
    say = echo or (lambda line: logger.info("%s", line))
    target_task = get_task(target)  # a misspelt name fails here, before anything is loaded
    if others is not None and not isinstance(others, str) and target in others:
        rest = [t for t in others if t != target] or [t for t in DEFAULT_OTHERS if t != target]
        raise ValueError(
            f"others={list(others)!r} lists the target {target!r}: others are the tasks that measure forgetting (and "
            f"are replayed), so they must differ from the task trained for. Pass others={rest!r}"
        )
    other_names = [t for t in (others if others is not None else DEFAULT_OTHERS) if t != target]
    other_tasks = [get_task(t) for t in other_names]
    if any(r > 0 for r in shares) and not other_tasks:
        raise ValueError("replay needs other tasks to replay: pass others=[...]")
    replayed = check_replay_from(replay_from, other_names, target)
    held_out = [t for t in other_names if t not in replayed]
    if any(r > 0 for r in shares) and not replayed:
        raise ValueError(f"replay_from=[] replays nothing; name tasks of {other_names} to replay")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    TrainConfig(precision=precision)  # a bad precision fails here, before anything is loaded
    tasks = [target_task, *other_tasks]
    out = Path(out_dir) if out_dir is not None else Path("runs") / time.strftime("forgetting-%Y%m%d-%H%M%S")

    def run_dir(share: float, s: int) -> Path:
        return out / _dir_name(share) if seeds is None else out / _dir_name(share) / f"seed-{s}"

    existing = [variant_label(r) for r in shares if (out / _dir_name(r)).exists()]
    if existing:
        raise FileExistsError(f"{out} already holds runs {existing}; pass a new out_dir")
    from nbft._quiet import call_scope

    with call_scope():  # no library bars (tokenize, save); each library warning once
        t_start = time.perf_counter()
        timings: dict[str, float] = {}

        # data: the target's train split (the same examples for every variant), the others' for replay
        t0 = time.perf_counter()
        n_target = steps * batch_size
        target_rows = target_task.train(n=n_target, templates=target_task.template, seed=seed)
        if len(target_rows) < n_target:
            raise ValueError(
                f"task {target!r} has {len(target_rows)} training examples; steps × batch_size = {n_target} needs more"
            )
        biggest = max(shares)
        need = math.ceil(round(n_target * biggest / (1 - biggest)) / max(1, len(replayed))) if biggest > 0 else 0
        replay_rows = (
            {t.name: t.train(n=need, templates=t.template, seed=seed) for t in other_tasks if t.name in replayed}
            if need
            else {}
        )
        timings["data_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        mdl, tok, label, _ = resolve_model(model, tokenizer)
        timings["load_s"] = time.perf_counter() - t0
        chat = chat_template and bool(getattr(tok, "chat_template", None))
        sizes = {t.name: (n_per_task or {}).get(t.name, n_other) for t in other_tasks}
        ecfg = EvalConfig(n=n, n_per_task=sizes, icl_shots=(0,), batch_size=eval_batch_size, chat_template=chat,
                          seed=seed, progress=progress)  # fmt: skip
        say(
            f"forgetting experiment: {label}, target={target}, replayed={replayed}, held out={held_out}, "
            f"replay={list(shares)}, seeds={list(train_seeds)}, out={out}"
        )

        variants: list[_Variant] = []
        per_seed: dict[str, list[Any]] = {}
        # Weights and buffers (RoPE frequencies too) of the base, restored bit for bit before every variant; the
        # caller's model is given back as it came, also after an error.
        with BaseSnapshot(mdl) as base:
            t0 = time.perf_counter()
            evaluations: dict[str, Any] = {"base": evaluate_model(mdl, tasks, tokenizer=tok, target=target,
                                                                  config=ecfg)}  # fmt: skip
            timings["eval_base_s"] = time.perf_counter() - t0
            say(f"base model evaluated on {len(tasks)} tasks in {timings['eval_base_s']:.0f}s")
            for share in shares:
                name = variant_label(share)
                # the same examples for every seed (the data seed); only the training seed changes
                data, counts = replay_mixture(target_rows, replay_rows, share, seed=seed)
                train_tok = tokenize_for_training(data, tok, max_length=max_length, chat_template=chat)
                variant_steps = math.ceil(len(data) / batch_size)
                for s in train_seeds:
                    base.restore()  # the base that was evaluated, whatever the previous variant did to the model
                    cfg = TrainConfig(learning_rate=learning_rate, max_steps=variant_steps, batch_size=batch_size,
                                      warmup_ratio=0.1, schedule="linear", max_length=max_length, seed=s,
                                      precision=precision)  # fmt: skip
                    observers: list[Any] = [ProgressObserver()] if progress else []
                    if monitor:
                        observers.append(ForgettingMonitor(tasks, target=target, checkpoints=False, chat_template=chat,
                                                           seed=seed))  # fmt: skip
                    t0 = time.perf_counter()
                    run = finetune(mdl, tok, train_tok, config=cfg, observers=observers, run_dir=run_dir(share, s))
                    train_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    ev = evaluate_model(mdl, tasks, name=name, tokenizer=tok, target=target, config=ecfg)
                    eval_s = time.perf_counter() - t0
                    per_seed.setdefault(name, []).append(ev)
                    variants.append(_Variant(share, name, counts, variant_steps, train_s, eval_s, str(run.run_dir),
                                             dict(run.summary), s))  # fmt: skip
                    say(
                        f"{name}{f' (seed {s})' if seeds is not None else ''}: {variant_steps} steps on {counts} in "
                        f"{train_s:.0f}s, evaluated in {eval_s:.0f}s"
                    )
                evaluations[name] = per_seed[name] if seeds is not None else per_seed[name][0]

        from nbft.report import compare

        t0 = time.perf_counter()
        training: dict[str, Any] = {}
        for v in variants:
            training.setdefault(v.label, []).append(v.run_dir)
        if seeds is None:
            training = {k: v[0] for k, v in training.items()}
        groups = {"replayed": replayed, "held-out": held_out} if held_out and replayed else None
        table = compare(evaluations, tasks, target=target, config=ecfg, tokenizer=tok, training_data=training,
                        task_groups=groups)  # fmt: skip
        timings["compare_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        results = dict(table.results)
        results["experiment"] = experiment_summary(results, variants, timings, label)
        results["experiment"].update(replayed=replayed, held_out=held_out, seeds=list(train_seeds))
        results["notes"] = [*results["notes"], *results["experiment"]["lines"]]
        return ComparisonTable(results)


def _dir_name(share: float) -> str:
    return "target-only" if share == 0 else f"replay-{share:g}"


def replay_effect(results: Mapping[str, Any], reference: str = "target-only") -> list[dict[str, Any]]:
    """Each other tuned column against ``reference`` (the target-only variant): how much of its AF it removed
    (``AF_cut``: 0.6 = 60% less forgetting) and how much of its gain it kept (``G_kept``), with a line for people.

    Example::

        replay_effect(table.results)[0]["line"]   # 'replay 0.1 vs target-only: AF 9.9 → 3.1 (-69%), G ... kept)'
    """
    forgetting = {f["model"]: f for f in results["forgetting"]}
    ref = forgetting.get(reference)
    out = []
    if ref is None:
        return out
    for name, f in forgetting.items():
        if name == reference:
            continue
        cut = 1 - f["AF"] / ref["AF"] if ref["AF"] > 0 else math.nan
        kept = f["G"] / ref["G"] if ref["G"] != 0 else math.nan
        line = (
            f"{name} vs {reference}: AF {ref['AF']:.1f} → {f['AF']:.1f} ({_pct(-cut)}), G {ref['G']:+.1f} → "
            f"{f['G']:+.1f} ({_pct(kept, signed=False)} of it kept)"
        )
        row = {"model": name, "reference": reference, "AF_cut": cut, "G_kept": kept}
        groups, ref_groups = f.get("groups") or {}, ref.get("groups") or {}
        for group in (g for g in groups if g in ref_groups and groups[g].get("n_other_tasks")):
            a, b = ref_groups[group]["AF"], groups[group]["AF"]
            group_cut = 1 - b / a if a > 0 else math.nan
            row[f"AF_cut_{group}"] = group_cut
            ci = ""
            if groups[group].get("AF_ci_low") is not None:
                ci = f" [95% CI {groups[group]['AF_ci_low']:.1f}, {groups[group]['AF_ci_high']:.1f}]"
            line += f"; {group} tasks: AF {a:.1f} → {b:.1f}{ci} ({_pct(-group_cut)})"
        out.append({**row, "line": line})
    return out


def experiment_summary(
    results: Mapping[str, Any], variants: Sequence[Any], timings: Mapping[str, float], model: str
) -> dict[str, Any]:
    """What the experiment did and how each replay share compares with the target-only variant (plain data)."""
    effect = {e["model"]: e for e in replay_effect(results)}
    rows = []
    for v in variants:
        row = {"model": v.label, "replay": v.replay, "examples": v.counts, "steps": v.steps, "train_s": v.train_s,
               "eval_s": v.eval_s, "run_dir": v.run_dir, "monitor_s": v.summary.get("monitor_s"),
               "wall_s": v.summary.get("wall_s"), "seed": v.seed}  # fmt: skip
        if v.label in effect:
            row.update(AF_cut=effect[v.label]["AF_cut"], G_kept=effect[v.label]["G_kept"])
        rows.append(row)
    lines = [e["line"] for e in effect.values()]
    return {"model": model, "variants": rows, "timings": dict(timings), "lines": lines}


def _pct(x: float, signed: bool = True) -> str:
    if x is None or math.isnan(x):
        return "–"
    return f"{x:+.0%}" if signed else f"{x:.0%}"
