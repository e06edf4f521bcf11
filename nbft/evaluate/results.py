"""The results dict of a comparison: overlap marks and notes, per-column scores with CIs, paired Δs, forgetting.

:func:`nbft.evaluate.compare_models` evaluates the models and hands their per-model evaluations here; what comes back
is plain data (JSON-able), which :mod:`nbft.report` renders.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nbft._utils import user_stacklevel
from nbft.config import EvalConfig
from nbft.evaluate import stats
from nbft.evaluate.overlap import TrainingSource, find_overlap
from nbft.evaluate.scoring import _select, _statistics
from nbft.evaluate.tasks import Task, TaskError

__all__ = ["RESULTS_FORMAT"]

logger = logging.getLogger(__name__)


# Defined here, beside the code that reads it; the runner builds it and imports this module (one way, no circle).
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


RESULTS_FORMAT = "nbft-results/1"


def _columns_for(name: str, k: int) -> str:
    return name if k == 0 else f"{name} {k}-shot"


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
            warnings.warn(msg, stacklevel=user_stacklevel())
        notes.append(msg)
    dtypes = {m: e["dtype"] for m, e in evaluations.items()}
    if len(set(dtypes.values())) > 1:
        msg = f"the models run in different dtypes {dtypes}; cast them to one dtype for a fair comparison"
        warnings.warn(msg, stacklevel=user_stacklevel())
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
    seed_evaluations: Mapping[str, Sequence[dict[str, Any]]] | None = None,
    task_groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    role = {t.name: ("target" if t.name == target else "other") if target else "task" for t in task_list}
    probes = {t.name: t.probe_of for t in task_list if t.probe_of}
    role.update(dict.fromkeys(probes, "probe"))  # another domain of a task's skill: never an "other" task
    by: dict[tuple[str, str], dict[str, Any]] = {}
    for mname, ev in evaluations.items():
        for r in ev["results"]:
            by[(r["task"], _columns_for(mname, r["k"]))] = {**r, "model": mname}
    # a column with several runs (seeds): per task, each run's zero-shot result, in run order
    by_seed: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for mname, runs in (seed_evaluations or {}).items():
        if len(runs) < 2:
            continue
        for ev in runs:
            for r in ev["results"]:
                if r["k"] == 0:
                    label = ev.get("seed_label", ev["name"])
                    by_seed.setdefault((r["task"], mname), []).append({**r, "model": mname, "seed_label": label})
    draws = {m: stats.seed_indices(len(runs), cfg.n_boot, cfg.seed) for m, runs in (seed_evaluations or {}).items()
             if len(runs) > 1}  # fmt: skip
    per_seed: dict[str, dict[str, list[float]]] = {}  # column -> task -> headline Δ per seed

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
            runs = by_seed.get((t.name, col))
            if runs:
                r = _seed_score(t, runs, td, cfg, draws[col])
            else:
                stat = _stats_of(t, r, td)
                r["ci"] = {
                    k: list(stats.bootstrap_ci(stat[k], n=r["n"], n_boot=cfg.n_boot, seed=cfg.seed, key=t.name))
                    for k in r["keys"]
                }
            r["prompt_tokens_mean"] = float(np.mean(r["prompt_tokens"])) if r["prompt_tokens"] else math.nan
            scores[t.name][col] = r
            if col == ref_name:
                continue
            # paired over the examples both columns scored (a k-shot column covers the first icl_n only)
            common = [p for p in r["positions"] if p in set(base["positions"])]
            b_sub = _subset_stats(t, base, td, common)
            o_subs = [_subset_stats(t, x, td, common) for x in (runs or [r])]
            for key in r["keys"]:
                ekey = _example_key_for(t, key, r)
                if runs:  # several runs of the column: two-level bootstrap, seeds then examples
                    d = stats.seed_delta(
                        b_sub[0][key], [o[0][key] for o in o_subs], len(common),
                        base_per_example=b_sub[1].get(ekey), others_per_example=[o[1].get(ekey) for o in o_subs],
                        n_boot=cfg.n_boot, seed=cfg.seed, seed_draws=draws[col], key=t.name,
                    )  # fmt: skip
                    if key == r["keys"][0]:
                        per_seed.setdefault(col, {})[t.name] = d["per_seed"]
                        replicates.setdefault(col, {})[t.name] = d["seed_replicates"]
                    del d["seed_replicates"]
                else:
                    d = stats.delta(
                        b_sub[0][key], o_subs[0][0][key], len(common),
                        base_per_example=b_sub[1].get(ekey), other_per_example=o_subs[0][1].get(ekey),
                        n_boot=cfg.n_boot, seed=cfg.seed, key=t.name,  # each task its own resamples, shared by models
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
        rows = {d["task"]: d for d in deltas if d["model"] == col and d["is_headline"] and d["task"] not in synthetic
                and d["task"] not in probes}  # fmt: skip
        f = _forgetting_of(rows, target, replicates.get(col, {}), per_seed.get(col), draws.get(col))
        if probes:  # the skill in other domains: beside G, never in it
            from nbft.evaluate.probes import probe_records

            f["probes"] = probe_records(deltas, col, probes)
        if task_groups:  # e.g. replayed and held-out tasks: each group's AF, worst drop and regressions
            f["groups"] = {
                g: {k: v for k, v in _forgetting_of({t: d for t, d in rows.items() if t in members or t == target},
                                                    target, replicates.get(col, {}), per_seed.get(col),
                                                    draws.get(col)).items() if not k.startswith(("G", "target"))}
                for g, members in task_groups.items()
            }  # fmt: skip
        forgetting.append({"model": col, **f})
    if synthetic and target:
        notes.append(
            f"{sorted(synthetic)}: synthetic data (generated by nbft), shown but left out of G, BWT′ and AF: "
            "it is never the evidence of forgetting"
        )
    if probes:
        from nbft.evaluate.probes import probe_note

        notes.append(probe_note(task_list, target) or "")
    _format_notes(deltas, scores, task_list, ref_name, notes)
    _seed_notes(deltas, notes)
    diagnostics = _diagnostics(scores, task_list, columns, by_seed, notes)

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
            "probe_of": t.probe_of,
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
            m: {
                "dtype": ev["dtype"],
                "tokenizer": ev["fingerprint"],
                "training": sources[m].to_dict(),
                **(
                    {"runs": [e.get("seed_label", e["name"]) for e in seed_evaluations[m]]}
                    if len((seed_evaluations or {}).get(m, ())) > 1
                    else {}
                ),
            }
            for m, ev in evaluations.items()
        },
        "task_groups": {g: list(v) for g, v in (task_groups or {}).items()},
        "diagnostics": diagnostics,
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


def _seed_score(
    task: Task, runs: Sequence[Mapping[str, Any]], td: _TaskData, cfg: EvalConfig, draws: np.ndarray
) -> dict[str, Any]:
    """The score dict of a column with several runs: metrics are means over the runs, CIs two-level (seeds, then
    examples), each run's values kept under ``seeds``; outputs and per-example scores are the first run's."""
    first = runs[0]
    if any(x["positions"] != first["positions"] for x in runs):  # the runner scores every run on the same examples
        raise ValueError(f"task {task.name!r}: the runs of {first['model']!r} were scored on different examples")
    per_run = [_stats_of(task, x, td) for x in runs]
    r = dict(first)
    r["metrics"] = {k: float(np.mean([x["metrics"][k] for x in runs])) for k in first["metrics"]}
    r["value"] = r["metrics"][first["keys"][0]]
    if first.get("no_label_rate") is not None:
        r["no_label_rate"] = float(np.mean([x["no_label_rate"] for x in runs]))
    r["ci"] = {
        k: list(stats.seed_bootstrap_ci([st[k] for st in per_run], r["n"], n_boot=cfg.n_boot, seed=cfg.seed,
                                        seed_draws=draws, key=task.name))
        for k in first["keys"]
    }  # fmt: skip
    r["seeds"] = {
        "runs": [x.get("seed_label", str(i)) for i, x in enumerate(runs)],
        "metrics": {k: [float(x["metrics"][k]) for x in runs] for k in first["keys"]},
    }
    return r


def _forgetting_of(
    rows: Mapping[str, Mapping[str, Any]],
    target: str | None,
    replicates: Mapping[str, np.ndarray],
    per_seed: Mapping[str, Sequence[float]] | None,
    draws: np.ndarray | None,
) -> dict[str, Any]:
    reps = {t: v for t, v in replicates.items() if t in rows}
    if per_seed is None:
        return stats.forgetting(rows, target, replicates=reps)
    return stats.forgetting_seeds({t: per_seed[t] for t in rows}, target, records=rows, replicates=reps, seeds=draws)


def _seed_notes(deltas: list[dict[str, Any]], notes: list[str]) -> None:
    """Say where training noise (the spread over seeds) is larger than test-set noise (the examples' half-width)."""
    by_col: dict[str, list[str]] = {}
    for d in deltas:
        if d["is_headline"] and d.get("n_seeds", 1) > 1 and d["seed_spread"] > d["example_half_width"]:
            by_col.setdefault(d["model"], []).append(
                f"{d['task']} Δ {d['seed_min']:+.1f} to {d['seed_max']:+.1f} vs ±{d['example_half_width']:.1f}"
            )
    for col, parts in by_col.items():
        n_seeds = next(d["n_seeds"] for d in deltas if d["model"] == col and d.get("n_seeds"))
        notes.append(
            f"{col}: the {n_seeds} seeds spread wider than the test examples' half-width ({'; '.join(parts)}): "
            "training noise outweighs test-set noise there, and the CI (seeds, then examples) includes it"
        )


def _diagnostics(
    scores: Mapping[str, Mapping[str, Any]],
    task_list: list[Task],
    columns: list[str],
    by_seed: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]],
    notes: list[str],
) -> dict[str, Any]:
    """Per classification task and column: predicted-label shares beside the references', the confusion matrix,
    and a note for each label-prior shift (a label predicted > 15 points more often than the references hold it)."""
    from nbft.evaluate.diagnostics import PRIOR_SHIFT_POINTS, label_diagnostics, pool, prior_shift
    from nbft.evaluate.metrics import parse_choice

    out: dict[str, Any] = {}
    for t in task_list:
        labels = t.answer_choices  # a probe with 2 of the template's 3 labels: a third-label answer shows
        if not t.is_classification or not labels:
            continue
        per_col: dict[str, Any] = {}
        for col in columns:
            if col not in scores[t.name]:
                continue
            runs = by_seed.get((t.name, col)) or [scores[t.name][col]]
            sources: dict[str, Any] = {}
            for source, field in (("generate", "outputs"), ("loglik", "ll_choices")):
                if runs[0].get(field) is None:
                    continue
                parts = []
                for x in runs:
                    preds = x[field] if source == "loglik" else [parse_choice(o, labels) for o in x[field]]
                    parts.append(label_diagnostics(preds, x["references"], labels))
                sources[source] = pool(parts)
                for shift in prior_shift(sources[source]):
                    how = "generated answers" if source == "generate" else "log-likelihood choices"
                    notes.append(
                        f"{t.name}, {col} ({how}): label-prior shift: predicts {shift['label']!r} for "
                        f"{shift['predicted']:.0f}% of examples where the references hold {shift['reference']:.0f}% "
                        f"({shift['shift']:+.0f} points, more than {PRIOR_SHIFT_POINTS:.0f})"
                    )
            per_col[col] = sources
        out[t.name] = {"labels": list(labels), "models": per_col}
    return out
