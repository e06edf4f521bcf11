"""A grid of training settings × seeds, trained from one base and compared in one table: which recipe gains on the
target and forgets least where replay never trains.

:func:`sweep` fine-tunes one base model once per variant (a point of the grid over learning rate, steps, replay share
and label-balanced sampling) and per training seed. Every run starts from the same base weights and buffers; the runs
of one variant see the same examples and differ only in their seed. Each run is a run directory
``<out_dir>/<variant>/seed-<s>`` named from its settings, and its evaluation is kept beside it
(``seed-<s>.evaluation.json``), so re-running the same call skips what is finished and an interrupted sweep resumes.
``sweep.json`` holds the plan, each run's record and the comparison, so :func:`load_sweep` rebuilds the table and the
figure after a restart without a model.

The comparison is :func:`nbft.compare` with a list of runs per variant (seeds as a dimension: the mean over seeds
with a two-level bootstrap CI). The figure plots the in-domain gain G against forgetting on the *held-out* tasks (the
other tasks that no variant replays), with the seed range as error bars and the Pareto front marked.

The application layer (beside :mod:`nbft.demo` and :mod:`nbft.forgetting`, which both train through it): it loads,
trains, evaluates and reports.

Example::

    result = nbft.sweep({"learning_rate": [1e-4, 3e-4], "replay": [0, 0.1]}, seeds=(0, 1, 2), out_dir="runs/sweep")
    result.table                   # the comparison: one column per variant, the mean over seeds with its CI
    result.points                  # per variant: settings, G, held-out AF, seed ranges, on the Pareto front or not
    result.figure()                # G against held-out AF, Pareto front marked, filled when every goal is met
    result.goals()                 # per variant: gain, out-of-domain probes, label-prior shift met or missed
    nbft.load_sweep("runs/sweep")  # the same, after a restart
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbft.config import EvalConfig

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "SETTINGS",
    "SweepInterrupted",
    "SweepResult",
    "check_goals",
    "check_grid",
    "check_replay",
    "check_replay_from",
    "check_seeds",
    "goals_text",
    "load_sweep",
    "pareto_front",
    "replay_mixture",
    "sweep",
    "sweep_figure",
    "sweep_points",
    "variant_label",
]

logger = logging.getLogger(__name__)

SETTINGS = ("learning_rate", "steps", "replay", "balance")
"""The training settings a grid may vary."""
SWEEP_FORMAT = "nbft-sweep/1"
SWEEP_FILE = "sweep.json"
BASE_EVALUATION_FILE = "base.evaluation.json"
"""The base model's evaluation in a sweep folder (an :func:`nbft.evaluate_model` dict), kept for a resumed sweep."""
DEFAULT_OTHERS = ("sentiment", "qa", "reply", "ner", "summarize-paper")
DEFAULT_N_PER_TASK = {"ner": 60}
"""Per-task exceptions to ``n_other`` (the demo's too): NER answers are short but the base model's F1 is low (about
8), so it needs more test examples for a CI that excludes 0."""


class SweepInterrupted(RuntimeError):
    """A run of the sweep stopped before its last step (Stop, Ctrl-C); what finished is kept, and the same call
    resumes the sweep."""


# --------------------------------------------------------------------------------------------------- checks
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
    from nbft.data import largest_remainder, mix

    (share,) = check_replay(replay)
    name = str(target["task"][0]) if "task" in target.column_names and len(target) else "target"
    if share == 0:
        return target, {name: len(target)}
    if not others:
        raise ValueError(f"replay={share:g} needs other tasks to replay; pass others=[...]")
    n_target = len(target)
    n_replay = round(n_target * share / (1 - share))
    per_task = largest_remainder(n_replay, {t: 1 / len(others) for t in others})
    counts = {name: n_target, **per_task}
    short = {t: (k, len(others[t])) for t, k in per_task.items() if k > len(others[t])}
    if short:
        raise ValueError(
            f"replay={share:g} needs more examples than these tasks' train splits hold (needed, held): {short}"
        )
    mixed = mix({name: target, **others}, ratios=counts, total=sum(counts.values()), seed=seed)
    return mixed, counts


# --------------------------------------------------------------------------------------------------- the grid
def _check_value(key: str, value: Any) -> Any:
    if key == "learning_rate":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok:
            raise ValueError(f"grid['learning_rate']: {value!r} is not a positive number; e.g. [1e-4, 3e-4]")
        return float(value)
    if key == "steps":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"grid['steps']: {value!r} is not a whole number >= 1; e.g. [20, 40]")
        return value
    if key == "replay":
        return check_replay(value)[0]
    if not isinstance(value, bool):
        raise ValueError(f"grid['balance']: {value!r} is not True or False; e.g. [False, True]")
    return value


def check_grid(grid: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    """The grid as ``{setting: values}`` with every value checked; an empty grid, a key that is not a setting, an
    empty or repeated value list are errors that say what to pass.

    Example:
        >>> check_grid({"replay": [0, 0.1], "learning_rate": 2e-4})
        {'replay': (0.0, 0.1), 'learning_rate': (0.0002,)}
    """
    from nbft._utils import did_you_mean

    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict {{setting: values}}, e.g. {{'replay': [0, 0.1]}}, not {grid!r}")
    if not grid:
        raise ValueError(
            f"the grid is empty: it gives no variant to train. Name settings to vary among {list(SETTINGS)}, e.g. "
            "grid={'learning_rate': [1e-4, 3e-4], 'replay': [0, 0.1]}"
        )
    out: dict[str, tuple[Any, ...]] = {}
    for key, values in grid.items():
        if key not in SETTINGS:
            aliases = {"lr": "learning_rate", "max_steps": "steps", "balanced": "balance", "replay_share": "replay"}
            hint = f" Did you mean {aliases[key]!r}?" if key in aliases else did_you_mean(str(key), SETTINGS)
            raise ValueError(f"grid key {key!r} is not a training setting.{hint} The settings: {list(SETTINGS)}")
        items = [values] if isinstance(values, str | int | float | bool) else list(values)
        if not items:
            raise ValueError(f"grid[{key!r}] is empty; give at least one value, e.g. grid={{{key!r}: [...]}}")
        checked = tuple(_check_value(key, v) for v in items)
        if len(set(checked)) < len(checked):
            raise ValueError(f"grid[{key!r}]={items!r} lists a value twice")
        out[key] = checked
    return out


def _part(key: str, value: Any) -> tuple[str, str]:
    """(folder-name part, column-label part) of one setting."""
    if key == "learning_rate":
        return f"lr-{value:g}", f"lr {value:g}"
    if key == "steps":
        return f"steps-{value}", f"{value} steps"
    if key == "replay":
        return ("target-only" if value == 0 else f"replay-{value:g}"), variant_label(value)
    return ("balanced" if value else "unbalanced"), ("balanced" if value else "unbalanced")


def variant_names(settings: Mapping[str, Any], keys: Sequence[str]) -> tuple[str, str]:
    """The folder name and the column label of a variant, from the settings the grid varies (in grid order).

    Example:
        >>> settings = {"learning_rate": 1e-4, "replay": 0.1, "steps": 40, "balance": False}
        >>> variant_names(settings, ["learning_rate", "replay"])
        ('lr-0.0001_replay-0.1', 'lr 0.0001 · replay 0.1')
    """
    parts = [_part(k, settings[k]) for k in keys]
    return "_".join(p[0] for p in parts), " · ".join(p[1] for p in parts)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which points are on the Pareto front of (gain, forgetting): no other point has at least as much gain and at
    most as much forgetting, and strictly better in one of them. A point with a NaN is never on the front.

    Example:
        >>> pareto_front([(30.0, 5.0), (20.0, 1.0), (10.0, 3.0), (30.0, 5.0)])
        [True, True, False, True]
    """
    pts = [(float(g), float(f)) for g, f in points]
    out = []
    for i, (g, f) in enumerate(pts):
        if math.isnan(g) or math.isnan(f):
            out.append(False)
            continue
        dominated = any(
            g2 >= g and f2 <= f and (g2 > g or f2 < f)
            for j, (g2, f2) in enumerate(pts)
            if j != i and not (math.isnan(g2) or math.isnan(f2))
        )
        out.append(not dominated)
    return out


# --------------------------------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class _Variant:
    name: str
    label: str
    learning_rate: float
    steps: int
    replay: float
    balance: bool

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SETTINGS}


@dataclasses.dataclass
class _Plan:
    """What stays the same across the sweep (a resumed sweep must match it), and where it writes."""

    out: Path
    model_label: str
    fingerprint: str
    target: str
    others: list[str]
    replayed: list[str]
    held_out: list[str]
    seed: int
    batch_size: int
    max_length: int
    precision: str
    monitor: bool | int
    eval: dict[str, Any]
    flat: bool = False  # one seed, old layout: <out>/<variant> is the run directory (forgetting_experiment)
    # added later: None is the old behaviour, so a sweep.json written before them resumes as it was
    validation: dict[str, Any] | None = None  # {"n": target validation examples, "every": steps between scores}
    replay_max_length: int | None = None  # the replay variants' longest example (None: max_length)
    max_new_tokens_other: int | None = None  # a cap on the other tasks' generation budgets (None: each task's own)

    def max_length_of(self, variant: _Variant) -> int:
        return self.replay_max_length if variant.replay > 0 and self.replay_max_length else self.max_length

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "out"}

    def run_dir(self, variant: _Variant, seed: int) -> Path:
        return self.out / variant.name if self.flat else self.out / variant.name / f"seed-{seed}"


def _evaluation_file(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".evaluation.json")


def _json_default(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return str(x)


def _write_json(path: Path, data: Any) -> None:
    from nbft._utils import atomic_path

    with atomic_path(path) as tmp:  # a killed write never leaves half a file
        tmp.write_text(json.dumps(data, indent=1, default=_json_default, allow_nan=True))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is damaged ({exc}); move it aside and run the sweep again") from None


def _run_state(run_dir: Path, expected: Mapping[str, Any]) -> str:
    """``"new"`` (no run yet), ``"done"`` (a completed run with these settings, judged like :func:`nbft.runs`) or
    ``"redo"`` (a run that did not complete: its files are replaced, nothing else in the folder)."""
    from nbft.run_dirs import read_run

    if not (run_dir / "run.json").is_file():
        return "new"
    info = read_run(run_dir)
    if info.status == "running":
        raise RuntimeError(f"{run_dir} is training in another process; wait for it or stop it (nbft.stop_run)")
    if info.status != "completed":
        return "redo"
    diff = {k: (info.config.get(k), v) for k, v in expected.items() if info.config.get(k) != v}
    if diff:
        raise ValueError(
            f"{run_dir} holds a completed run with other settings (setting: (its, this sweep's)) {diff}; pass a new "
            "out_dir, or the sweep's own settings"
        )
    return "done"


def _check_folder(out: Path) -> None:
    """Refuse, before any work, an ``out_dir`` that is a file or a non-empty folder that is not a sweep's."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out_dir {out} is a file; give a folder for the sweep")
    if not (out / SWEEP_FILE).is_file() and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} is not empty and holds no {SWEEP_FILE}: a sweep needs a new folder (or one of its own, to "
            "resume it); nbft never mixes its runs with files it did not write. Pass a new out_dir"
        )


def _saved_sweep(out: Path, plan: _Plan) -> dict[str, Any] | None:
    path = out / SWEEP_FILE
    if not path.is_file():
        _check_folder(out)
        return None
    saved = _read_json(path)
    if not isinstance(saved, dict) or saved.get("format") != SWEEP_FORMAT:
        raise ValueError(f"{path} is not an nbft sweep file (format {SWEEP_FORMAT!r}); pass a new out_dir")
    now = json.loads(json.dumps(plan.identity(), default=_json_default))
    diff = {k: (saved["plan"].get(k), v) for k, v in now.items() if saved["plan"].get(k) != v}
    if diff:
        shown = {k: (a, b) if k != "fingerprint" else ("another base model", "this one") for k, (a, b) in diff.items()}
        raise ValueError(
            f"{out} holds a sweep with other fixed settings (setting: (saved, now)) {shown}: a resumed sweep keeps "
            "them (its grid and seeds may grow). Pass the same settings, or a new out_dir"
        )
    return saved


def _validation_rows(task: Any, n: int, seed: int) -> Any:
    """``n`` prompt → completion pairs from the task's *validation* split (never a training or test example), in
    the task's evaluation phrasing, as the training rows; the same for every variant and seed."""
    from nbft.data import build_instruction_dataset

    data = build_instruction_dataset(task=task, templates=task.template, n=1, n_validation=n, seed=seed)
    if "validation" not in data or not len(data["validation"]):
        raise ValueError(f"task {task.name!r} has no validation split to score during training; pass n_validation=0")
    return data["validation"]


def _check_base_evaluation(base: Any, ecfg: EvalConfig, tasks: Sequence[Any]) -> None:
    """A caller's base evaluation must score the same examples with the same settings as the sweep's runs: checked
    before any training, naming the first setting that differs."""
    from nbft.evaluate.tasks import expand_probes

    if not isinstance(base, Mapping) or not isinstance(base.get("config"), Mapping) or "results" not in base:
        raise TypeError(
            "base_evaluation must be the dict that nbft.evaluate_model(...) returns for the base model, not "
            f"{type(base).__name__}"
        )
    fields = ("n", "n_per_task", "icl_n", "seed", "chat_template", "scoring", "max_new_tokens", "batch_size", "probes")
    saved = {"probes": False, **base["config"]}
    diff = {f: (saved.get(f), getattr(ecfg, f)) for f in fields if saved.get(f) != getattr(ecfg, f)}
    if diff:
        raise ValueError(
            f"base_evaluation was made with other settings than the sweep's evaluation (setting: (its, the sweep's)) "
            f"{diff}; evaluate the base with the sweep's n, n_other, n_per_task, eval_batch_size, chat_template, "
            "probes and seed"
        )
    names = [t.name for t in (expand_probes(list(tasks)) if ecfg.probes else tasks)]
    missing = [t for t in names if t not in base.get("tasks", {})]
    if missing:
        raise ValueError(f"base_evaluation has no results for tasks {missing}; evaluate the base on {names}")


# --------------------------------------------------------------------------------------------------- the engine
@dataclasses.dataclass
class _RunRecord:
    variant: _Variant
    seed: int
    run_dir: Path
    evaluation: dict[str, Any]
    counts: dict[str, int]
    steps: int
    train_s: float | None
    eval_s: float | None
    summary: dict[str, Any]
    resumed: bool

    def to_json(self, out: Path) -> dict[str, Any]:
        return {
            "variant": self.variant.name, "label": self.variant.label, "settings": self.variant.settings(),
            "seed": self.seed, "run_dir": str(self.run_dir.relative_to(out)), "examples": self.counts,
            "steps": self.steps, "train_s": self.train_s, "eval_s": self.eval_s,
            "monitor_s": self.summary.get("monitor_s"), "wall_s": self.summary.get("wall_s"),
        }  # fmt: skip


@dataclasses.dataclass
class _Job:
    """One variant's training data, shared by its seeds."""

    variant: _Variant
    data: Any
    counts: dict[str, int]
    steps: int
    tokenized: Any = None
    val: Any = None
    """The target's validation rows (``n_validation``), the same for every variant."""
    val_tokenized: Any = None


def _one_run(
    plan: _Plan, job: _Job, seed: int, record: Mapping[str, Any], base: Any, model: Any, tok: Any,
    tasks: Sequence[Any], ecfg: EvalConfig, *, done: int, total: int,
) -> _RunRecord:  # fmt: skip
    """One variant × seed: skipped when finished, else trained from the base (a half-written run is redone) and
    evaluated; its evaluation is written beside the run directory."""
    from nbft.data import tokenize_for_training
    from nbft.evaluate import evaluate_model
    from nbft.evaluate.monitor import ForgettingMonitor
    from nbft.train import TrainConfig, finetune

    v, run_dir = job.variant, plan.run_dir(job.variant, seed)
    max_length = plan.max_length_of(v)
    expected = {"learning_rate": v.learning_rate, "max_steps": job.steps, "batch_size": plan.batch_size,
                "seed": seed, "max_length": max_length}  # fmt: skip
    state = _run_state(run_dir, expected)
    eval_file = _evaluation_file(run_dir)
    if state == "done" and eval_file.is_file():  # finished in an earlier call: skipped
        old = record["runs"].get(str(run_dir.relative_to(plan.out)), {})
        summary = {"monitor_s": old.get("monitor_s"), "wall_s": old.get("wall_s")}
        return _RunRecord(v, seed, run_dir, _read_json(eval_file), job.counts, job.steps, old.get("train_s"),
                          old.get("eval_s"), summary, True)  # fmt: skip
    train_s, summary, spec = None, {}, str(run_dir / "model")  # completed, evaluation lost: the saved model
    if state != "done":
        if job.tokenized is None:
            job.tokenized = tokenize_for_training(job.data, tok, max_length=max_length,
                                                  chat_template=ecfg.chat_template)  # fmt: skip
        every = None
        if plan.validation:  # the same target validation examples for every run, scored every `every` steps
            if job.val_tokenized is None:
                job.val_tokenized = tokenize_for_training(job.val, tok, max_length=max_length,
                                                          chat_template=ecfg.chat_template)  # fmt: skip
            every = plan.validation["every"] or max(1, job.steps // 3)
        observers: list[Any] = []
        if ecfg.progress:  # progress="runs": the run's own step bar (loss, lr, validation), cleared when it ends
            from nbft.train import ProgressObserver

            observers.append(ProgressObserver(leave=False))
        if plan.monitor:  # True: the monitor's own n per task; a number: that many examples per task
            n_monitor = {} if plan.monitor is True else {"n": int(plan.monitor)}
            observers.append(ForgettingMonitor(list(tasks), target=plan.target, checkpoints=False,
                                               chat_template=ecfg.chat_template, seed=plan.seed,
                                               **n_monitor))  # fmt: skip
        cfg = TrainConfig(learning_rate=v.learning_rate, max_steps=job.steps, batch_size=plan.batch_size,
                          warmup_ratio=0.1, schedule="linear", max_length=max_length, seed=seed,
                          precision=plan.precision, eval_every=every)  # fmt: skip
        base.restore()  # the base that was evaluated, whatever the previous run did to the model
        t0 = time.perf_counter()
        # a run that did not complete is replaced: its own files only, nothing of the user's beside them
        run = finetune(model, tok, job.tokenized, val=job.val_tokenized, config=cfg, observers=observers,
                       run_dir=run_dir, overwrite=state == "redo")  # fmt: skip
        train_s, summary, spec = time.perf_counter() - t0, dict(run.summary), model
        if run.status != "completed":
            raise SweepInterrupted(
                f"the run {run_dir} ended {run.status!r} before its step {job.steps}: the sweep stopped there "
                f"({done} of {total} runs finished and kept). Call the same sweep again to resume it"
            )
    t0 = time.perf_counter()
    ev = evaluate_model(spec, tasks, name=v.label, tokenizer=tok, target=plan.target, config=ecfg)
    eval_s = time.perf_counter() - t0
    _write_json(eval_file, ev)  # the evaluation first, then the record in sweep.json that points at it
    return _RunRecord(v, seed, run_dir, ev, job.counts, job.steps, train_s, eval_s, summary, False)


def _run_grid(
    plan: _Plan,
    variants: Sequence[_Variant],
    seeds: Sequence[int],
    *,
    model: Any,
    tok: Any,
    tasks: Sequence[Any],
    grid: Mapping[str, Sequence[Any]],
    progress: bool | str,
    say: Callable[[str], None],
    base_evaluation: Mapping[str, Any] | None = None,
) -> tuple[Any, list[_RunRecord], dict[str, float]]:
    """Train and evaluate every variant × seed not finished yet, then compare them all: (table, records, timings)."""
    from tqdm import tqdm  # plain tqdm: tqdm.auto would import IPython, which the core never does

    from nbft.evaluate import evaluate_model
    from nbft.train.variants import BaseSnapshot

    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    target_task, others = tasks[0], {t.name: t for t in tasks[1:]}
    ecfg = EvalConfig(**{**plan.eval, "icl_shots": (0,), "progress": progress == "runs"})
    saved = _saved_sweep(plan.out, plan)
    record: dict[str, Any] = saved or {"format": SWEEP_FORMAT, "plan": plan.identity(), "runs": {}}
    record.update(grid={k: list(v) for k, v in grid.items()}, seeds=list(seeds), flat=plan.flat, results=None)
    record["variants"] = [{"name": v.name, "label": v.label, "settings": v.settings()} for v in variants]
    # the run that TryPanel.from_run_dir(out) / TrainPanel.from_run_dir(out) open: the first variant's first seed
    record["main_run"] = plan.run_dir(variants[0], seeds[0]).relative_to(plan.out).as_posix()
    _write_json(plan.out / SWEEP_FILE, record)  # first: a folder with runs of this sweep always says so

    # data: the target's train split per (steps, balance); one replay pool, large enough for the largest share
    t0 = time.perf_counter()
    target_rows: dict[tuple[int, bool], Any] = {}
    for v in variants:
        key = (v.steps, v.balance)
        if key not in target_rows:
            n_target = v.steps * plan.batch_size
            rows = target_task.train(n=n_target, templates=target_task.template, seed=plan.seed, balance=v.balance)
            if len(rows) < n_target:
                raise ValueError(
                    f"task {plan.target!r} has {len(rows)} training examples; steps × batch_size = {n_target} "
                    "needs more"
                )
            target_rows[key] = rows
    need = max(
        (math.ceil(round(v.steps * plan.batch_size * v.replay / (1 - v.replay)) / len(plan.replayed))
         for v in variants if v.replay > 0), default=0,
    )  # fmt: skip
    pool = (
        {t: others[t].train(n=need, templates=others[t].template, seed=plan.seed) for t in plan.replayed}
        if need
        else {}
    )
    val_rows = _validation_rows(target_task, plan.validation["n"], plan.seed) if plan.validation else None
    timings["data_s"] = time.perf_counter() - t0

    base_file = plan.out / BASE_EVALUATION_FILE
    records: list[_RunRecord] = []
    bar = tqdm(total=len(variants) * len(seeds), desc="sweep", unit="run", disable=not progress, dynamic_ncols=True)
    try:
        with BaseSnapshot(model) as base:  # every run starts from these weights and buffers; the model comes back
            t0 = time.perf_counter()
            if base_evaluation is not None:  # the caller's (e.g. the demo's, with its k-shot columns)
                base_eval = dict(base_evaluation)
                _write_json(base_file, base_eval)
            elif base_file.is_file():  # evaluated by an earlier call of this sweep (same base, same settings)
                base_eval = _read_json(base_file)
            else:
                base_eval = evaluate_model(model, tasks, tokenizer=tok, target=plan.target, config=ecfg)
                _write_json(base_file, base_eval)
            timings["eval_base_s"] = time.perf_counter() - t0
            for v in variants:
                data, counts = replay_mixture(target_rows[(v.steps, v.balance)], pool, v.replay, seed=plan.seed)
                job = _Job(v, data, counts, math.ceil(len(data) / plan.batch_size), val=val_rows)
                for s in seeds:
                    bar.set_postfix_str(f"{v.label}, seed {s}")
                    rec = _one_run(plan, job, s, record, base, model, tok, tasks, ecfg, done=len(records),
                                   total=len(variants) * len(seeds))  # fmt: skip
                    records.append(rec)
                    if not rec.resumed:
                        record["runs"][str(rec.run_dir.relative_to(plan.out))] = rec.to_json(plan.out)
                        _write_json(plan.out / SWEEP_FILE, record)  # after the evaluation file it points at
                        took = f" in {rec.train_s:.0f}s" if rec.train_s is not None else " (trained earlier)"
                        say(f"{v.label}, seed {s}: {rec.steps} steps on {counts}{took}, evaluated in {rec.eval_s:.0f}s")
                    bar.update(1)
    finally:
        bar.close()

    from nbft.evaluate.compare import compare

    t0 = time.perf_counter()
    evaluations: dict[str, Any] = {"base": base_eval}
    training: dict[str, Any] = {}
    for r in records:
        evaluations.setdefault(r.variant.label, []).append(r.evaluation)
        training.setdefault(r.variant.label, []).append(r.run_dir)
    if plan.flat:
        evaluations = {k: v[0] if isinstance(v, list) else v for k, v in evaluations.items()}
        training = {k: v[0] for k, v in training.items()}
    groups = {"replayed": plan.replayed, "held-out": plan.held_out} if plan.held_out and plan.replayed else None
    # the base's in-context (k-shot) results, when it has them, become the table's k-shot columns
    shots = tuple(sorted({0, *(int(r["k"]) for r in base_eval.get("results", ()))}))
    table = compare(evaluations, list(tasks), target=plan.target, config=dataclasses.replace(ecfg, icl_shots=shots),
                    tokenizer=tok, training_data=training, task_groups=groups)  # fmt: skip
    timings["compare_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    record["results"] = table.to_dict()
    record["timings"] = timings
    _write_json(plan.out / SWEEP_FILE, record)
    return table, records, timings


# --------------------------------------------------------------------------------------------------- results
def sweep_points(results: Mapping[str, Any], variants: Sequence[Mapping[str, Any]] = ()) -> pd.DataFrame:
    """One row per variant: its settings, the gain G and the forgetting (held-out AF when some tasks are held out of
    replay, else AF over all other tasks) with their CIs and seed ranges, whether it is on the Pareto front, the
    target's label-prior shift (``prior_shift``: the most over-predicted label's excess, points) and every task's
    headline Δ with its CI's lower bound (``Δ <task>``, ``Δ <task> ci_low``).

    Example::

        sweep_points(result.table.results, result.record["variants"])[["variant", "G", "AF_held_out", "pareto"]]
    """
    import pandas as pd

    settings = {v["label"]: v.get("settings", {}) for v in variants}
    rows = []
    for f in results["forgetting"]:
        held = (f.get("groups") or {}).get("held-out")
        src, kind = (held, "held-out") if held and held.get("n_other_tasks") else (f, "all other tasks")
        row: dict[str, Any] = {"variant": f["model"], **settings.get(f["model"], {}), "forgetting_of": kind}
        for out_name, rec, name in (("G", f, "G"), ("AF_held_out", src, "AF")):
            row[out_name] = rec.get(name, math.nan)
            for suffix in ("ci_low", "ci_high", "seed_min", "seed_max"):
                value = rec.get(f"{name}_{suffix}")
                row[f"{out_name}_{suffix}"] = math.nan if value is None else value
        row["AF_all"] = f.get("AF", math.nan)
        row["n_seeds"] = f.get("n_seeds", 1)
        row["prior_shift"], row["prior_shift_label"] = _prior_shift(results, f["model"])
        for probe, info in results.get("tasks", {}).items():  # each out-of-domain probe's label-prior shift too
            if info.get("role") == "probe":
                row[f"prior_shift {probe}"], _ = _prior_shift(results, f["model"], probe)
        for d in results.get("deltas", ()):  # every task's headline Δ with its CI's lower bound (probe rows too)
            if d["model"] == f["model"] and d.get("is_headline"):
                row[f"Δ {d['task']}"], row[f"Δ {d['task']} ci_low"] = d["delta"], d["ci_low"]
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["pareto"] = pareto_front(list(zip(df["G"], df["AF_held_out"], strict=True)))
    return df


def _prior_shift(results: Mapping[str, Any], column: str, task: str | None = None) -> tuple[float, str | None]:
    """The largest excess of a predicted label over its share in the references (points), on the generated answers
    of ``task`` (default: the target), pooled over seeds: the label-prior shift; NaN when it is not classification."""
    diag = (results.get("diagnostics") or {}).get(task or results.get("target") or "", {})
    gen = (diag.get("models") or {}).get(column, {}).get("generate")
    if not gen:
        return math.nan, None
    shifts = {c: gen["predicted_share"][c] - gen["reference_share"][c] for c in diag["labels"]}
    label = max(shifts, key=shifts.get)  # type: ignore[arg-type]
    return float(shifts[label]), label


# --------------------------------------------------------------------------------------------------- goals
MET, MISSED, NA = "met", "missed", "n/a"
"""A goal's status in :func:`check_goals`; ``"n/a"``: nothing to measure (no probe, a target without labels)."""
GOALS = {"gain": "in-domain gain", "ood": "out-of-domain probes", "prior": "label-prior shift"}
"""The goals :func:`check_goals` checks (its ``goal <name>`` columns), with the words its lines use."""
_TEXT_WIDTH = 120  # the report's plain-text width (nbft.report.table.TEXT_WIDTH), without importing the report


def _probe_names(points: pd.DataFrame) -> list[str]:
    """The probe rows :func:`sweep_points` gave columns to (``prior_shift <probe>`` is there for every probe)."""
    return [c.removeprefix("prior_shift ") for c in points.columns if c.startswith("prior_shift ")]


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def check_goals(
    points: pd.DataFrame,
    *,
    g_low: float = 0.0,
    ood_low: float = -2.0,
    max_prior_shift: float = 15.0,
    probes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Which variants of a sweep meet the goals of a recipe that generalises, and which one to take.

    One row per variant of ``points`` (:func:`sweep_points`), each goal's measured value and its status
    (``"met"``, ``"missed"`` or ``"n/a"`` when there is nothing to measure):

    - ``goal gain``: the in-domain gain is real, its 95% CI's lower bound ``G_ci_low > g_low`` (a NaN is missed);
    - ``goal ood``: the skill carries over, every out-of-domain probe's headline Δ has its CI's lower bound
      ``>= ood_low`` (``ood_ci_low`` is the lowest, of probe ``ood_worst``; ``"n/a"`` without probes);
    - ``goal prior``: the model did not learn to over-predict one label, the label-prior shift (the most
      over-predicted label's share minus its share in the references, points) is ``<= max_prior_shift`` on the
      target and on every probe (``prior_shift_max``, on ``prior_shift_of``; ``"n/a"`` when no row has labels).

    Then held-out AF with its CI (forgetting on the tasks never replayed; AF over all other tasks when none is held
    out), ``goals_missed``, ``meets_all``, ``recommended`` (among the variants that meet every goal, the lowest
    held-out AF; a tie goes to the higher G) and ``closest`` (when none meets them all: the fewest goals missed, then
    the same order). ``result.attrs["recommendation"]`` says it in one line, naming the trade-off when no variant
    meets every goal; ``result.attrs["thresholds"]`` keeps the thresholds.

    ``probes``: the probe rows to check (default: every probe ``points`` has columns for).

    Example::

        goals = check_goals(result.points, ood_low=-2.0, max_prior_shift=15.0)
        goals[goals["meets_all"]]
        goals.attrs["recommendation"]   # 'recommended: replay 0.1 (meets all 3 goals; held-out AF 0.4 ...)'
    """
    import pandas as pd

    missing = [c for c in ("variant", "G_ci_low") if c not in getattr(points, "columns", ())]
    if missing:
        raise ValueError(
            f"check_goals needs a sweep's points (columns {missing} are missing): pass result.points, or "
            "nbft.sweeps.sweep_points(table.results, variants)"
        )
    probe_names = _probe_names(points) if probes is None else [probes] if isinstance(probes, str) else list(probes)
    rows = []
    for _, p in points.iterrows():
        seeds = _num(p.get("n_seeds", 1))
        row: dict[str, Any] = {"variant": p["variant"], "n_seeds": 1 if math.isnan(seeds) else int(seeds)}
        row["G"], row["G_ci_low"] = _num(p.get("G")), _num(p.get("G_ci_low"))
        row["goal gain"] = MET if row["G_ci_low"] > g_low else MISSED  # a NaN bound shows no gain: missed
        lows = {name: _num(p.get(f"Δ {name} ci_low")) for name in probe_names}
        lows = {k: v for k, v in lows.items() if not math.isnan(v)}
        worst = min(lows, key=lows.get) if lows else None  # type: ignore[arg-type]
        row["ood_ci_low"], row["ood_worst"] = (lows[worst], worst) if worst else (math.nan, None)
        row["goal ood"] = NA if worst is None else MET if row["ood_ci_low"] >= ood_low else MISSED
        shifts = {"target": _num(p.get("prior_shift"))}
        shifts.update({name: _num(p.get(f"prior_shift {name}")) for name in probe_names})
        shifts = {k: v for k, v in shifts.items() if not math.isnan(v)}
        top = max(shifts, key=shifts.get) if shifts else None  # type: ignore[arg-type]
        row["prior_shift_max"], row["prior_shift_of"] = (shifts[top], top) if top else (math.nan, None)
        row["goal prior"] = NA if top is None else MET if row["prior_shift_max"] <= max_prior_shift else MISSED
        for suffix in ("", "_ci_low", "_ci_high"):
            row[f"AF_held_out{suffix}"] = _num(p.get(f"AF_held_out{suffix}"))
        row["forgetting_of"] = p.get("forgetting_of", "held-out")
        row["goals_missed"] = sum(row[f"goal {g}"] == MISSED for g in GOALS)
        row["meets_all"] = row["goals_missed"] == 0
        rows.append(row)
    columns = ["variant", "n_seeds", "G", "G_ci_low", "goal gain", "ood_ci_low", "ood_worst", "goal ood",
               "prior_shift_max", "prior_shift_of", "goal prior", "AF_held_out", "AF_held_out_ci_low",
               "AF_held_out_ci_high", "forgetting_of", "goals_missed", "meets_all"]  # fmt: skip
    goals = pd.DataFrame(rows, columns=columns)
    goals["meets_all"] = goals["meets_all"].astype(bool)
    goals["recommended"] = False
    goals["closest"] = False
    pick = _pick(goals)
    if pick is not None:
        goals.loc[pick, "recommended" if goals.loc[pick, "meets_all"] else "closest"] = True
    goals.attrs["thresholds"] = {"g_low": g_low, "ood_low": ood_low, "max_prior_shift": max_prior_shift}
    goals.attrs["recommendation"] = _recommendation(goals, pick)
    return goals


def _pick(goals: pd.DataFrame) -> Any:
    """The row to take: the fewest goals missed, then the lowest held-out AF (NaN last), then the higher G."""
    if not len(goals):
        return None
    order = sorted(
        goals.index,
        key=lambda i: (
            goals.loc[i, "goals_missed"],
            math.inf if math.isnan(goals.loc[i, "AF_held_out"]) else goals.loc[i, "AF_held_out"],
            -goals.loc[i, "G"] if not math.isnan(goals.loc[i, "G"]) else math.inf,
        ),
    )
    return order[0]


def _missed_words(row: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[str]:
    """What each missed goal measured, e.g. ``'gain (G CI low -1.2 <= 0)'``."""
    out = []
    if row["goal gain"] == MISSED:
        out.append(f"in-domain gain (G CI low {row['G_ci_low']:+.1f}, needs > {thresholds['g_low']:g})")
    if row["goal ood"] == MISSED:
        out.append(f"out-of-domain ({row['ood_worst']} Δ CI low {row['ood_ci_low']:+.1f}, needs >= "
                   f"{thresholds['ood_low']:g})")  # fmt: skip
    if row["goal prior"] == MISSED:
        where = "the target" if row["prior_shift_of"] == "target" else row["prior_shift_of"]
        out.append(f"label-prior shift ({row['prior_shift_max']:.1f} on {where}, needs <= "
                   f"{thresholds['max_prior_shift']:g})")  # fmt: skip
    return out


def _recommendation(goals: pd.DataFrame, pick: Any) -> str:
    if pick is None:
        return "no variants to recommend"
    th = goals.attrs["thresholds"]
    row = goals.loc[pick]
    checked = ", ".join(GOALS[g] for g in GOALS if (goals[f"goal {g}"] != NA).any())
    af_kind = "held-out AF" if row["forgetting_of"] == "held-out" else "AF"
    af = f"{af_kind} {row['AF_held_out']:.1f}"
    if not math.isnan(row["AF_held_out_ci_low"]):
        af += f" [{row['AF_held_out_ci_low']:.1f}, {row['AF_held_out_ci_high']:.1f}]"
    measured = f"G {row['G']:+.1f} (CI low {row['G_ci_low']:+.1f}), {af}"
    if row["meets_all"]:
        n_met = int(goals["meets_all"].sum())
        others = f"; {n_met - 1} other variant(s) meet them too" if n_met > 1 else ""
        return f"recommended: {row['variant']}: meets every goal ({checked}); {measured}{others}"
    missed = "; ".join(_missed_words(row, th))
    trade = ""  # the other side of the trade-off: the variant with the most gain, and what it misses
    best = goals["G"].idxmax() if goals["G"].notna().any() else None
    if best is not None and best != pick:
        trade = f"; the most gain is {goals.loc[best, 'variant']}'s, missing {int(goals.loc[best, 'goals_missed'])}"
    return (
        f"no variant meets every goal ({checked}); closest: {row['variant']}, missing {int(row['goals_missed'])}: "
        f"{missed}; {measured}{trade}"
    )


def goals_text(goals: pd.DataFrame) -> str:
    """The goals table of :func:`check_goals` for a terminal (lines of at most 120 characters) and its one-line
    recommendation (wrapped): ✓ met, ✗ missed, – nothing to measure.

    Example::

        print(goals_text(check_goals(result.points)))
    """
    import textwrap

    import pandas as pd

    th = goals.attrs.get("thresholds", {"g_low": 0.0, "ood_low": -2.0, "max_prior_shift": 15.0})
    mark = {MET: "✓", MISSED: "✗", NA: "–"}

    def cell(value: float, status: str, fmt: str) -> str:
        return "–" if math.isnan(value) else f"{format(value, fmt)} {mark[status]}"

    rows = []
    for _, g in goals.iterrows():
        af = "–" if math.isnan(g["AF_held_out"]) else f"{g['AF_held_out']:.1f}"
        if not math.isnan(g["AF_held_out_ci_low"]):
            af += f" [{g['AF_held_out_ci_low']:.1f}, {g['AF_held_out_ci_high']:.1f}]"
        pick = "← recommended" if g["recommended"] else "← closest" if g["closest"] else ""
        rows.append({
            "variant": textwrap.shorten(str(g["variant"]), 40, placeholder="…"),
            "G CI low": cell(g["G_ci_low"], g["goal gain"], "+.1f"),
            "probe Δ CI low": cell(g["ood_ci_low"], g["goal ood"], "+.1f"),
            "prior shift": cell(g["prior_shift_max"], g["goal prior"], ".1f"),
            ("held-out AF [CI]" if g["forgetting_of"] == "held-out" else "AF [CI]"): af,
            "all": "yes" if g["meets_all"] else f"{int(g['goals_missed'])} missed",
            "": pick,
        })  # fmt: skip
    table = pd.DataFrame(rows).to_string(index=False, line_width=_TEXT_WIDTH - 2) if rows else "(no variants)"
    table = "\n".join(line.rstrip() for line in table.splitlines())
    seeds = int(goals["n_seeds"].max()) if len(goals) else 0
    head = (
        f"goals ({seeds} seed{'s' if seeds != 1 else ''}; ✓ met, ✗ missed, – nothing to measure): G CI low > "
        f"{th['g_low']:g}; every probe's Δ CI low >= {th['ood_low']:g}; label-prior shift <= "
        f"{th['max_prior_shift']:g} on the target and each probe; then the lowest held-out AF"
    )
    wrap = lambda text: textwrap.fill(text, _TEXT_WIDTH, subsequent_indent="  ", break_on_hyphens=False)  # noqa: E731
    return f"{wrap(head)}\n{table}\n{wrap(goals.attrs.get('recommendation', ''))}"


def sweep_figure(points: pd.DataFrame, *, title: str | None = None, goals: pd.DataFrame | bool | None = None) -> Figure:
    """In-domain gain G (y) against forgetting (x: held-out AF), one point per variant with its seed range as error
    bars; the Pareto front (most gain for least forgetting) is joined and marked. A matplotlib ``Figure`` (no pyplot).

    ``goals``: a variant that meets every goal of :func:`check_goals` is a filled marker, one that misses a goal a
    hollow one. ``None`` checks the default goals when ``points`` has the CIs to check them on (:func:`sweep_points`
    does; ``True`` always); a :func:`check_goals` frame uses its thresholds; ``False`` marks nothing (all filled).

    Example::

        fig = sweep_figure(result.points, goals=result.goals(ood_low=-3)); fig.savefig("sweep.png")
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    if not len(points):
        ax.text(0.5, 0.5, "no variants", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    kind = points["forgetting_of"].iloc[0]
    n_seeds = int(points["n_seeds"].max())
    if goals is None or goals is True:
        goals = check_goals(points) if goals or "G_ci_low" in points.columns else False
    meets = None  # variant -> meets every goal
    if goals is not False:
        meets = dict(zip(goals["variant"], goals["meets_all"], strict=True))
    for _, p in points.iterrows():
        on = bool(p["pareto"])
        color = "#bf3989" if on else "#0969da"
        filled = meets is None or bool(meets.get(p["variant"], False))
        xerr = yerr = None
        if n_seeds > 1:  # the spread over training seeds, around the mean
            xerr = [[max(0.0, p["AF_held_out"] - p["AF_held_out_seed_min"])],
                    [max(0.0, p["AF_held_out_seed_max"] - p["AF_held_out"])]]  # fmt: skip
            yerr = [[max(0.0, p["G"] - p["G_seed_min"])], [max(0.0, p["G_seed_max"] - p["G"])]]
        ax.errorbar(
            p["AF_held_out"], p["G"], xerr=xerr, yerr=yerr, fmt="o" if on else "s", ms=7 if on else 5, color=color,
            mfc=color if filled else "white", mew=1.5, ecolor="#888888", elinewidth=1, capsize=3, zorder=3,
        )  # fmt: skip
        ax.annotate(str(p["variant"]), (p["AF_held_out"], p["G"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)  # fmt: skip
    front = points[points["pareto"]].sort_values("AF_held_out")
    if len(front) > 1:
        ax.plot(front["AF_held_out"], front["G"], "-", color="#bf3989", lw=1.5, alpha=0.6, zorder=2)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", ls="-", color="#bf3989", label="Pareto front (most G for least AF)"),
        Line2D([], [], marker="s", ls="", color="#0969da", label="dominated"),
    ]
    if meets is not None:
        handles += [
            Line2D([], [], marker="o", ls="", color="#57606a", label="meets every goal (filled)"),
            Line2D([], [], marker="o", ls="", color="#57606a", mfc="white", mew=1.5, label="misses a goal (hollow)"),
        ]
    if n_seeds > 1:
        handles.append(Line2D([], [], ls="-", color="#888888", label=f"range over {n_seeds} seeds"))
    ax.legend(handles=handles, frameon=False, fontsize=8, loc="best")
    ax.axhline(0, color="#888888", lw=0.8, ls=":")
    ax.set_xlabel(f"forgetting: AF on {kind} tasks (points, lower is better)")
    ax.set_ylabel("in-domain gain G (points)")
    ax.set_title(title or "Sweep: gain against forgetting")
    ax.grid(alpha=0.3)
    return fig


@dataclasses.dataclass
class SweepResult:
    """What :func:`sweep` returns (and :func:`load_sweep` rebuilds): the comparison table, one row per variant with
    G, held-out AF and the Pareto front, the goals each variant meets (:meth:`goals`), the figure, and where it all is.

    Example::

        result.points[result.points["pareto"]]   # the recipes nothing beats on both gain and forgetting
        result.goals().attrs["recommendation"]   # the variant to take, or the closest and what it misses
        result.figure().savefig("sweep.png")
    """

    table: Any
    """The :class:`~nbft.report.ComparisonTable` (one column per variant, seeds as a dimension)."""
    out_dir: Path
    record: dict[str, Any]
    """``sweep.json``: the plan, the grid, the seeds, each run's record and the results."""
    runs: list[Any] = dataclasses.field(default_factory=list, repr=False)
    """This call's runs, one per variant and seed (trained now or found finished); empty after :func:`load_sweep`."""

    @property
    def points(self) -> pd.DataFrame:
        return sweep_points(self.table.results, self.record.get("variants", ()))

    def goals(self, *, g_low: float = 0.0, ood_low: float = -2.0, max_prior_shift: float = 15.0) -> pd.DataFrame:
        """:func:`check_goals` of this sweep's variants: per goal its measured value and ``"met"``/``"missed"``/
        ``"n/a"``, ``meets_all``, and the recommended variant (``.attrs["recommendation"]`` says it in one line).

        Example::

            goals = result.goals(ood_low=-2.0, max_prior_shift=15.0)
            goals[goals["recommended"]]
        """
        probes = [t for t, info in self.table.results.get("tasks", {}).items() if info.get("role") == "probe"]
        return check_goals(self.points, g_low=g_low, ood_low=ood_low, max_prior_shift=max_prior_shift, probes=probes)

    def figure(self) -> Figure:
        title = f"Sweep on {self.table.target}: gain against forgetting"
        return sweep_figure(self.points, title=title, goals=self.goals())

    def to_text(self) -> str:
        cols = ["variant", "G", "G_ci_low", "G_ci_high", "AF_held_out", "AF_held_out_ci_low", "AF_held_out_ci_high",
                "AF_all", "prior_shift", "pareto"]  # fmt: skip
        pts = self.points
        shown = pts[[c for c in cols if c in pts.columns]].round(1).to_string(index=False, line_width=_TEXT_WIDTH - 2)
        shown = "\n".join(line.rstrip() for line in shown.splitlines())  # pandas pads wrapped blocks
        return (
            f"{self.table.to_text()}\n\nvariants (G and forgetting, Pareto front marked):\n{shown}\n\n"
            f"{goals_text(self.goals())}"
        )

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        import html

        goals = self.goals()
        line = f"<p>{html.escape(goals.attrs['recommendation'])}</p>"
        return (
            self.table._repr_html_()
            + self.points.round(1).to_html(index=False)
            + goals.round(1).to_html(index=False)
            + line
        )


def load_sweep(out_dir: str | Path) -> SweepResult:
    """The result of a sweep that completed, from its ``sweep.json`` (no model, no evaluation).

    Example::

        result = nbft.load_sweep("runs/sweep"); result.figure()
    """
    from nbft.report import ComparisonTable

    out = Path(out_dir)
    path = out / SWEEP_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no {SWEEP_FILE}; pass the out_dir of an nbft sweep")
    record = _read_json(path)
    if not isinstance(record, dict) or record.get("format") != SWEEP_FORMAT:
        raise ValueError(f"{path} is not an nbft sweep file (format {SWEEP_FORMAT!r})")
    if not record.get("results"):
        done, total = len(record.get("runs", {})), len(record.get("variants", ())) * len(record.get("seeds", ()))
        raise ValueError(
            f"the sweep in {out} has not finished ({done} of {total} runs): call the same sweep(...) again to resume it"
        )
    return SweepResult(ComparisonTable(record["results"]), out, record)


# --------------------------------------------------------------------------------------------------- the call
def _prepare(
    model: Any,
    tokenizer: Any,
    target: str,
    others: Sequence[str] | None,
    replay_from: Sequence[str] | None,
    any_replay: bool,
) -> tuple[Any, list[str], list[str], list[str]]:
    """Check the task names before any work: (target task, other names, replayed, held out)."""
    from nbft.evaluate import get_task

    if model is not None and not isinstance(model, str | tuple | Path) and tokenizer is None:
        raise ValueError("a model object needs its tokenizer: pass tokenizer=tok (or model=(model, tok))")
    target_task = get_task(target)  # a misspelt name fails here, before anything is loaded
    if others is not None and not isinstance(others, str) and target in others:
        rest = [t for t in others if t != target] or [t for t in DEFAULT_OTHERS if t != target]
        raise ValueError(
            f"others={list(others)!r} lists the target {target!r}: others are the tasks that measure forgetting (and "
            f"are replayed), so they must differ from the task trained for. Pass others={rest!r}"
        )
    names = [t for t in (others if others is not None else DEFAULT_OTHERS) if t != target]
    for name in names:
        get_task(name)
    if any_replay and not names:
        raise ValueError("replay needs other tasks to replay: pass others=[...]")
    replayed = check_replay_from(replay_from, names, target)
    if any_replay and not replayed:
        raise ValueError(f"replay_from=[] replays nothing; name tasks of {names} to replay")
    held_out = [t for t in names if t not in replayed]
    return target_task, names, replayed, held_out


def sweep(
    grid: Mapping[str, Any],
    *,
    model: Any = None,
    target: str = "sentiment",
    others: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    replay_from: Sequence[str] | None = None,
    learning_rate: float = 2e-4,
    steps: int = 40,
    replay: float = 0.0,
    balance: bool = False,
    batch_size: int = 8,
    max_length: int = 384,
    n: int = 100,
    n_other: int = 24,
    n_per_task: Mapping[str, int] | None = None,
    eval_batch_size: int = 32,
    chat_template: bool = True,
    probes: bool = True,
    seed: int = 0,
    precision: str = "auto",
    out_dir: str | Path | None = None,
    tokenizer: Any = None,
    monitor: bool | int = False,
    progress: bool | str = True,
    echo: Callable[[str], None] | None = None,
    seed_dirs: bool = True,
    n_validation: int = 0,
    eval_every: int | None = None,
    replay_max_length: int | None = None,
    max_new_tokens_other: int | None = None,
    base_evaluation: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> SweepResult:
    """Fine-tune one base model once per grid point and seed, and compare the variants in one table and one figure.

    Args:
        grid: the settings to vary, ``{setting: values}``: ``learning_rate`` (peak AdamW rate), ``steps`` (optimizer
            steps of the target-only run: ``steps × batch_size`` target examples), ``replay`` (share of the mix from
            the other tasks' train splits, in [0, 1); it adds examples and so steps) and ``balance`` (``True``: the
            same number of target examples per label, :meth:`~nbft.evaluate.Task.train`). Every combination is a
            variant; the settings the grid leaves out take the values of the keyword arguments of the same name.
        model: ``None`` (SmolLM2-135M-Instruct), a name or path, a ``(model, tokenizer)`` pair or a model object
            (with ``tokenizer``), or ``"tiny"``. A model object is trained in place and given back with its base
            weights.
        target, others: the task trained for, and the tasks that measure forgetting (default: sentiment, qa, reply,
            ner, summarize-paper, less the target).
        seeds: training seeds: every variant is trained once per seed, on the same examples from the same base.
        replay_from: the other tasks that replay draws from (default: all but the last); the rest are held out, and
            the figure's forgetting axis is their AF (forgetting where no variant ever trains).
        seed: the data seed (which examples are trained on and tested).
        batch_size, max_length, precision: the same for every run (linear schedule, 10% warmup).
        n, n_other, n_per_task, eval_batch_size, chat_template: the evaluation (the same prompts for every model);
            ``n_per_task`` defaults to 60 NER examples (:data:`DEFAULT_N_PER_TASK`), as in the demo.
        probes: also score the target's out-of-domain probes (``Task.probes``; sentiment: movie reviews) as rows of
            their own, kept out of G and AF; :func:`sweep_points` gives each probe's Δ, its CI's lower bound and
            its label-prior shift.
        out_dir: the sweep folder (default ``runs/sweep-<time>``): one run directory per variant and seed,
            ``<variant>/seed-<s>``, named from the grid's settings, plus ``sweep.json``. The same call with the same
            ``out_dir`` skips the finished runs (a completed run and its evaluation), redoes a run that did not
            complete (replacing its own files only) and trains the rest; the grid and the seeds may grow.
        monitor: also run a :class:`~nbft.evaluate.monitor.ForgettingMonitor` in each run (its rows go into each
            run's ``history.jsonl``): ``True`` scores the monitor's default number of examples per task, a number
            ``n`` scores ``n`` per task.
        progress: one progress bar over variants × seeds (the library's own bars stay off); ``"runs"`` adds each
            run's own bars below it, its optimizer steps (loss, learning rate, validation loss) and its evaluation
            per task, as ``nbft demo`` shows them; ``False``: no bar.
        echo: called with one line per finished run (default: the ``nbft.sweeps`` logger, at debug level).
        seed_dirs: ``False`` (one seed only): each variant's run directory is ``<out_dir>/<variant>`` and its column
            a single run rather than a list of one (the layout of :func:`nbft.forgetting_experiment` without seeds).
        n_validation: score the validation loss of this many target examples during each run (from the target's
            *validation* split, so never a training or test example; the same examples for every run), every
            ``eval_every`` steps (default: a third of each run's steps) and at its end; ``0``: no validation.
        replay_max_length: the longest example of a replay variant (default ``max_length``): the other tasks'
            prompts can be longer than the target's (a paper abstract is about 250 tokens, a tweet 40).
        max_new_tokens_other: a cap on the other tasks' generation budgets (``None``: each task's own; a smoke run
            caps it to stay fast).
        base_evaluation: the base model's evaluation made by the caller (:func:`nbft.evaluate_model` on the target
            and the other tasks with the sweep's evaluation settings, before any run), used instead of the sweep's
            own; its in-context (k-shot) results become the table's k-shot columns. Checked before any training.
        labels: column labels by variant folder name, e.g. ``{"target-only": "tuned"}`` (default: from the grid).

    Returns a :class:`SweepResult`. A run that stops early (Stop, Ctrl-C) raises :class:`SweepInterrupted` after
    keeping what finished.

    Example::

        result = nbft.sweep({"learning_rate": [1e-4, 3e-4], "replay": [0, 0.1], "balance": [False, True]},
                            seeds=(0, 1, 2), out_dir="runs/sweep")
        print(result.to_text())
        result.figure()
    """
    checked = check_grid(grid)
    train_seeds = check_seeds(seeds)
    if not seed_dirs and len(train_seeds) > 1:
        raise ValueError(f"seed_dirs=False keeps one run per variant; seeds={list(train_seeds)} needs seed_dirs=True")
    fixed = {"learning_rate": learning_rate, "steps": steps, "replay": replay, "balance": balance}
    defaults = {k: _check_value(k, v) for k, v in fixed.items()}
    any_replay = any(r > 0 for r in checked.get("replay", (defaults["replay"],)))
    target_task, names, replayed, held_out = _prepare(model, tokenizer, target, others, replay_from, any_replay)
    if any(checked.get("balance", (defaults["balance"],))) and not target_task.is_classification:
        raise ValueError(
            f"balance=True samples the target's labels equally, but {target!r} has no labels (no choices); "
            "leave balance out of the grid for this task"
        )
    variants = _relabel(_variants(checked, defaults), labels)
    return _sweep_call(
        variants, train_seeds, checked, model=model, tokenizer=tokenizer, target_task=target_task, names=names,
        replayed=replayed, held_out=held_out, batch_size=batch_size, max_length=max_length, n=n, n_other=n_other,
        n_per_task=n_per_task, eval_batch_size=eval_batch_size, chat_template=chat_template, probes=probes, seed=seed,
        precision=precision, out_dir=out_dir, monitor=monitor, progress=progress, echo=echo, flat=not seed_dirs,
        n_validation=n_validation, eval_every=eval_every, replay_max_length=replay_max_length,
        max_new_tokens_other=max_new_tokens_other, base_evaluation=base_evaluation,
    )  # fmt: skip


def _relabel(variants: list[_Variant], labels: Mapping[str, str] | None) -> list[_Variant]:
    if not labels:
        return variants
    names = [v.name for v in variants]
    unknown = [k for k in labels if k not in names]
    if unknown:
        raise ValueError(f"labels names variants {unknown}, not among this sweep's {names}")
    out = [dataclasses.replace(v, label=str(labels.get(v.name, v.label))) for v in variants]
    shown = [v.label for v in out]
    if len(set(shown)) < len(shown) or "base" in shown:
        raise ValueError(f"labels give the columns {shown}: each must be unique and none may be 'base'")
    return out


def _variants(grid: Mapping[str, Sequence[Any]], defaults: Mapping[str, Any]) -> list[_Variant]:
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        settings = {**defaults, **dict(zip(keys, combo, strict=True))}
        name, label = variant_names(settings, keys)
        out.append(_Variant(name, label, **settings))
    return out


def _sweep_call(
    variants: Sequence[_Variant],
    seeds: Sequence[int],
    grid: Mapping[str, Sequence[Any]],
    *,
    model: Any,
    tokenizer: Any,
    target_task: Any,
    names: Sequence[str],
    replayed: list[str],
    held_out: list[str],
    batch_size: int,
    max_length: int,
    n: int,
    n_other: int,
    n_per_task: Mapping[str, int] | None,
    eval_batch_size: int,
    chat_template: bool,
    seed: int,
    precision: str,
    out_dir: str | Path | None,
    probes: bool = True,
    monitor: bool | int,
    progress: bool | str,
    echo: Callable[[str], None] | None,
    flat: bool,
    n_validation: int = 0,
    eval_every: int | None = None,
    replay_max_length: int | None = None,
    max_new_tokens_other: int | None = None,
    base_evaluation: Mapping[str, Any] | None = None,
) -> SweepResult:
    """The work shared by :func:`sweep` and :func:`nbft.forgetting_experiment`, after their argument checks."""
    from nbft._quiet import call_scope
    from nbft.config import check_int
    from nbft.evaluate import get_task
    from nbft.models import resolve_model
    from nbft.report import ComparisonTable
    from nbft.train import TrainConfig
    from nbft.train.variants import fingerprint

    check_int("batch_size", batch_size, 1, "e.g. batch_size=8")
    check_int("n_validation", n_validation, 0, "target validation examples, e.g. n_validation=64 (0: none)")
    for key, value, hint in (
        ("eval_every", eval_every, "e.g. eval_every=10"),
        ("replay_max_length", replay_max_length, "e.g. replay_max_length=384"),
        ("max_new_tokens_other", max_new_tokens_other, "e.g. max_new_tokens_other=16"),
    ):
        if value is not None:
            check_int(key, value, 1, hint)
    if not isinstance(monitor, bool):
        check_int("monitor", monitor, 1, "True, or the examples per task it scores, e.g. monitor=6")
    TrainConfig(precision=precision)  # a bad precision fails here, before anything is loaded
    out = Path(out_dir) if out_dir is not None else Path("runs") / time.strftime("sweep-%Y%m%d-%H%M%S")
    _check_folder(out)
    say = echo or (lambda line: logger.debug("%s", line))
    other_tasks = [get_task(t) for t in names]
    if max_new_tokens_other is not None:
        other_tasks = [dataclasses.replace(t, max_new_tokens=min(t.max_new_tokens, max_new_tokens_other))
                       for t in other_tasks]  # fmt: skip
    tasks = [target_task, *other_tasks]
    with call_scope():  # no library bars (tokenize, save); each library warning once
        t0 = time.perf_counter()
        mdl, tok, label, _ = resolve_model(model, tokenizer)
        load_s = time.perf_counter() - t0
        chat = chat_template and bool(getattr(tok, "chat_template", None))
        per_task = DEFAULT_N_PER_TASK if n_per_task is None else n_per_task
        sizes = {t.name: per_task.get(t.name, n_other) for t in other_tasks}
        icl_n = base_evaluation.get("config", {}).get("icl_n") if isinstance(base_evaluation, Mapping) else None
        ecfg = EvalConfig(n=n, n_per_task=sizes, icl_shots=(0,), icl_n=icl_n, batch_size=eval_batch_size,
                          chat_template=chat, seed=seed, progress=False, probes=probes)  # fmt: skip
        if base_evaluation is not None:
            _check_base_evaluation(base_evaluation, ecfg, tasks)
        eval_fields = {k: getattr(ecfg, k) for k in ("n", "n_per_task", "batch_size", "chat_template", "seed")}
        if probes:  # a sweep saved before probes existed resumes as it was
            eval_fields["probes"] = True
        if icl_n is not None:  # the k-shot columns' examples (a caller's base evaluation); checked on resume too
            eval_fields["icl_n"] = icl_n
        validation = {"n": n_validation, "every": eval_every} if n_validation else None
        plan = _Plan(out, label, fingerprint(mdl), target_task.name, list(names), replayed, held_out, seed,
                     batch_size, max_length, precision, monitor, eval_fields, flat=flat, validation=validation,
                     replay_max_length=replay_max_length,
                     max_new_tokens_other=max_new_tokens_other)  # fmt: skip
        say(f"sweep: {label}, target={target_task.name}, replayed={replayed}, held out={held_out}, "
            f"{len(variants)} variants × seeds {list(seeds)}, out={out}")  # fmt: skip
        table, records, timings = _run_grid(plan, variants, seeds, model=mdl, tok=tok, tasks=tasks, grid=grid,
                                            progress=progress, say=say, base_evaluation=base_evaluation)  # fmt: skip
        record = _read_json(out / SWEEP_FILE)
        record["timings"] = {**timings, "load_s": load_s}
        return SweepResult(ComparisonTable(table.results), out, record, records)
