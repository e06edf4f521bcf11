"""Mitigation shown, not described: train the same base with and without replay and put the variants side by side.

:func:`forgetting_experiment` fine-tunes one base model on a target task several times, from the same weights with
the same seed: once on the target alone, and once per replay share, where that share of the training mix comes from
the other tasks' *train* splits. Every variant sees the same target examples (the mixture adds replayed examples,
and so steps, rather than dropping target ones), so the comparison isolates what replay does. One comparison table
comes back: base, target-only and each replay share as columns, each with its gain G on the target and BWT′, AF and
the worst drop on the others, every one with a 95% CI.

It is a sweep over the replay share (:func:`nbft.sweep` with ``{"replay": shares}``): the same engine, so the same
``out_dir`` resumes an interrupted experiment. The application layer (beside :mod:`nbft.demo`).

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

# the checks and the replay mixture live with the sweep engine (forgetting -> sweep, never back); kept importable here
from nbft.sweeps import check_replay, check_replay_from, check_seeds, replay_mixture, variant_label

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

    @classmethod
    def of(cls, r: Any) -> _Variant:
        """From one run of the sweep engine."""
        v = r.variant
        return cls(v.replay, v.label, r.counts, r.steps, r.train_s, r.eval_s, str(r.run_dir), r.summary, r.seed)


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
    probes: bool = True,
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
        probes: also score the target's out-of-domain probes (``Task.probes``; sentiment: movie reviews) as rows of
            their own, left out of G and AF (as :func:`nbft.sweep` does); ``False`` leaves them out.
        monitor: also run a :class:`~nbft.evaluate.monitor.ForgettingMonitor` in each variant (its rows go into each
            run's history).
        out_dir: where the run directories go (default ``runs/forgetting-<time>``), one per variant, with
            ``sweep.json``; calling again with the same ``out_dir`` skips the finished variants (an interrupted
            experiment resumes) and refuses other fixed settings.
        echo: called with each line meant for a person (library code never prints).

    Returns a :class:`~nbft.report.ComparisonTable` whose results dict also holds ``experiment``: per variant its
    replay share, examples per task, steps, training and evaluation seconds and run directory, and per replay share
    how much of the target-only AF it removed and how much of its G it kept.

    Example::

        table = nbft.forgetting_experiment(target="sentiment", replay=(0, 0.1))
        table.forgetting[["model", "G", "BWT", "AF", "worst_drop"]]
    """
    from nbft.report import ComparisonTable
    from nbft.sweeps import sweep

    shares = check_replay(replay)
    train_seeds = check_seeds(seeds) if seeds is not None else (seed,)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    out = Path(out_dir) if out_dir is not None else Path("runs") / time.strftime("forgetting-%Y%m%d-%H%M%S")
    # a sweep over the replay share: one run directory per share (and seed), finished ones skipped on a re-run
    result = sweep(
        {"replay": shares}, model=model, target=target, others=others, seeds=train_seeds, replay_from=replay_from,
        learning_rate=learning_rate, steps=steps, batch_size=batch_size, max_length=max_length, n=n, n_other=n_other,
        n_per_task=n_per_task, eval_batch_size=eval_batch_size, chat_template=chat_template, probes=probes,
        seed=seed, precision=precision, out_dir=out, tokenizer=tokenizer, monitor=monitor, progress=progress,
        echo=echo or (lambda line: logger.info("%s", line)), seed_dirs=seeds is not None,
    )  # fmt: skip
    replayed, held_out = result.record["plan"]["replayed"], result.record["plan"]["held_out"]
    variants = [_Variant.of(r) for r in result.runs]
    results = dict(result.table.results)
    results["experiment"] = experiment_summary(results, variants, result.record["timings"],
                                               result.record["plan"]["model_label"])  # fmt: skip
    results["experiment"].update(replayed=replayed, held_out=held_out, seeds=list(train_seeds))
    results["notes"] = [*results["notes"], *results["experiment"]["lines"]]
    return ComparisonTable(results)


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
