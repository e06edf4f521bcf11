"""The whole job in one call (what ``nbft demo`` runs): data → base eval (+ in-context baseline) → full fine-tune →
tuned eval → side-by-side table with forgetting → report files.

The runs themselves (the target-only run, every replay share, every seed) are :func:`nbft.sweep`'s: the demo is a
thin caller that adds the base model's in-context columns, the printed steps and the report. Its folder is a sweep
folder (``<out>/target-only/seed-0`` is the tuned run; ``nbft.load_sweep(out)`` reads it back).

Offline and on CPU by default: SmolLM2-135M-Instruct from nbft's registry fallback, real data from PyPI wheels.

Example::

    from nbft.demo import run_demo
    result = run_demo(target="sentiment", out_dir="runs/demo", echo=print)
    result["table"].delta                 # the paired Δ with its 95% CI
    result["files"]["report"]             # runs/demo/report.html
    result["run_dir"]                     # runs/demo/target-only/seed-0 (its model/ is the tuned model)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nbft.config import EvalConfig

__all__ = ["DEMO_DEFAULTS", "DemoSettings", "run_demo"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DemoSettings:
    """The demo's knobs. The real-model defaults finish in about 6 minutes on 2 idle CPU cores (see the README)."""

    steps: int = 40
    """Optimizer steps of the full fine-tune."""
    batch_size: int = 8
    """Training examples per step."""
    learning_rate: float = 2e-4
    """Peak AdamW learning rate (linear warmup over 10% of steps, then linear decay)."""
    max_length: int = 384
    """Longest training example in tokens, the sweep's default: training packs examples without padding, so a longer
    limit costs nothing for short tweets and cuts none of the long ones (the part-7 sweep that chose these defaults
    trained with it)."""
    n: int = 100
    """Test examples of the target task; its paired 95% CI of Δ is computed over exactly these."""
    others: tuple[str, ...] = ("sentiment", "qa", "reply", "ner", "summarize-paper")
    """The tasks that measure forgetting (the target is left out of them). All real data: the synthetic
    ``entities`` task is never evidence of forgetting. On each, the base model scores clearly above 0 (its 95% CI
    excludes 0), so a drop can show."""
    n_other: int = 24
    """Test examples of each other task."""
    n_per_task: dict[str, int] = dataclasses.field(default_factory=lambda: {"ner": 60})
    """Per-task exceptions to ``n_other``: NER answers are short but the base model's F1 is low (about 8), so it
    needs more examples for a CI that excludes 0."""
    icl_shots: tuple[int, ...] = (0, 3)
    """In-context baselines of the base model on the target task."""
    icl_n: int | None = 20
    """The k-shot columns use the first ``icl_n`` target examples only (a 3-shot prompt costs ~4x the tokens)."""
    eval_batch_size: int = 32
    """Prompts per generation batch; larger batches amortise each decoding step on CPU."""
    chat_template: bool = True
    """Wrap prompts in the model's chat template, for training and evaluation alike (an instruct model
    follows a task far better as a user turn)."""
    max_new_tokens_other: int | None = None
    """A cap on the other tasks' generation budgets (``None``: each task's own, long enough for an answer; the
    tiny smoke run caps it to stay fast)."""
    monitor_n: int | None = 4
    """Examples per task that a :class:`~nbft.evaluate.monitor.ForgettingMonitor` scores during each fine-tune (from
    the validation splits; ``None``: no monitor). It spaces its points to stay within 15% of the run's time; 4 per
    task keep a point at a few seconds, so the 1-seed demo stays near 6 minutes."""
    replay_max_length: int = 384
    """Longest example of a replay variant (``--replay``): the other tasks' prompts are longer than tweets (a
    paper abstract is about 250 tokens)."""
    balance: bool = True
    """Sample a labelled target's training examples with the same number per label (``--no-balance``: as the train
    split holds them; a target without labels is never balanced unless asked, which is an error), so the fine-tune
    does not learn the train split's label prior (:meth:`~nbft.evaluate.Task.train`). Chosen by the 3-seed sweep in
    the README: against unbalanced sampling it gains as much in domain (G +35.0 vs +34.0) and narrows the
    out-of-domain probe's seed range from -43..+29 to -5..+12 points, at the same cost."""
    n_validation: int = 32
    """Target examples (from its validation split) whose loss is scored during training, every third of the run
    (half the cost of 64, for a validation curve of three points)."""
    probes: bool = True
    """Score the target's out-of-domain probes too (sentiment: film-review snippets), ``n`` examples each, as rows
    right below the target's: does the skill carry over to another domain? Never counted in G or AF."""


DEMO_DEFAULTS = DemoSettings()
TINY_DEFAULTS = DemoSettings(
    steps=6, batch_size=4, learning_rate=1e-3, max_length=96, n=12, n_other=6, n_per_task={}, icl_shots=(0, 2),
    icl_n=6, eval_batch_size=8, max_new_tokens_other=6, monitor_n=2, replay_max_length=96,
)  # fmt: skip


def _check_arguments(cfg: DemoSettings, names: list[str], offline: set[str], model: Any, out: Path) -> None:
    """What can be known before any work: counts are positive, every task's data is reachable, a model path
    exists, the output folder is a folder."""
    from nbft._registry import hub_reachable
    from nbft.config import check_int
    from nbft.evaluate import get_task
    from nbft.models import _looks_like_path

    cfg.steps = check_int("steps", cfg.steps, 1, "e.g. --steps 40")  # type: ignore[assignment]
    cfg.n = check_int("n", cfg.n, 1, "test examples of the target task, e.g. --n 100")  # type: ignore[assignment]
    for name in names[1:]:
        get_task(name)  # an unknown task name: "did you mean"
    online_only = [t for t in names if t not in offline]
    if online_only and not hub_reachable():
        raise ConnectionError(
            f"task(s) {online_only} need the Hugging Face Hub, which this machine cannot reach. Offline, pick a "
            f"target among {sorted(offline)} (e.g. --target sentiment), or evaluate your own copy of the data with "
            "nbft.Task.from_data(...)"
        )
    if isinstance(model, str) and model not in ("tiny", "default") and _looks_like_path(model):
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"model folder {model} "
                + ("has no config.json" if folder.is_dir() else "does not exist")
                + f" (looked in {Path.cwd()}); pass a folder written by save_pretrained, a Hub name, or 'tiny'"
            )
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder for the demo's report, metrics and model")


def run_demo(
    target: str = "sentiment",
    *,
    steps: int | None = None,
    out_dir: str | Path | None = None,
    model: Any = None,
    n: int | None = None,
    tasks: Sequence[str] | None = None,
    settings: DemoSettings | None = None,
    replay: Sequence[float] = (),
    replay_from: Sequence[str] | None = None,
    seed: int = 0,
    seeds: int = 1,
    balance: bool | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run steps 1-6 of the demo and return what it made.

    The runs (the target-only run, called ``tuned``, and each replay share, once per seed) are trained and evaluated
    by :func:`nbft.sweep`, so ``out_dir`` is a sweep folder: ``<out_dir>/<variant>/seed-<s>`` per run, with
    ``sweep.json``, beside the demo's report files. Its main run, the first seed's ``tuned`` run, is
    ``<out_dir>/target-only/seed-<seed>`` (``metrics.json["run_dir"]``; ``TryPanel.from_run_dir(out_dir)`` opens
    it). The same call with the same ``out_dir`` resumes an interrupted demo: finished runs are skipped.

    Args:
        target: the task to fine-tune on (``"sentiment"``, ``"qa"``, ``"reply"``, ``"ner"``, ...: ``list_tasks()``).
        steps: optimizer steps (default 40; 6 for ``model="tiny"``).
        out_dir: the demo's folder for the report, metrics, loss plot and runs (default ``runs/demo-<time>``).
        model: ``None`` (SmolLM2-135M-Instruct, offline fallback), a name or path, a ``(model, tokenizer)`` pair,
            or ``"tiny"`` (a tiny random model, for a fast smoke test).
        n: test examples of the target task (default 100).
        tasks: the other tasks (default ``settings.others``: sentiment, qa, reply, ner, summarize-paper, less the
            target).
        settings: a :class:`DemoSettings` (``steps``/``n``/``balance`` arguments override it).
        replay: replay shares in (0, 1) (``nbft demo --replay 0.1``): each adds a column, the same base fine-tuned
            on the same target examples plus that share of examples replayed from the other tasks' train splits
            (see :func:`nbft.forgetting.forgetting_experiment`), so the table shows what replay does to forgetting.
        replay_from: the other tasks replayed (default: all but the last); the rest are held out of the replay
            pool, and the forgetting summary reports AF, worst drop and regressions for replayed and held-out tasks
            apart, so "replay removes forgetting" is also measured on a task replay never trains on.
        seeds: train every variant with this many seeds (``seed``, ``seed + 1``, ...; ``nbft demo --seeds 3``),
            from the same base on the same examples: each number is the mean over seeds with a two-level bootstrap CI
            (seeds, then examples), and the table shows the seed range.
        balance: sample the target's training examples with the same number per label (``--balance``).
        echo: called with each line meant for a person (the CLI passes ``print``); library code never prints.

    Returns a dict: ``table`` (the :class:`~nbft.report.ComparisonTable`), ``sweep`` (the
    :class:`~nbft.sweeps.SweepResult`), ``run_dir`` (the main run's directory), ``text`` (the printed table),
    ``files`` (paths written), ``timings`` (seconds per phase), ``out_dir``.

    Example::

        result = run_demo(model="tiny", out_dir="/tmp/nbft-demo")
    """
    from nbft._quiet import call_scope

    with call_scope():  # no library bars (tokenize, save) and each library warning once, as in a notebook
        return _run_demo(
            target,
            steps=steps,
            out_dir=out_dir,
            model=model,
            n=n,
            tasks=tasks,
            settings=settings,
            replay=replay,
            replay_from=replay_from,
            seed=seed,
            seeds=seeds,
            balance=balance,
            progress=progress,
            echo=echo,
        )


def _run_demo(
    target: str,
    *,
    steps: int | None,
    out_dir: str | Path | None,
    model: Any,
    n: int | None,
    tasks: Sequence[str] | None,
    settings: DemoSettings | None,
    replay: Sequence[float],
    seed: int,
    progress: bool,
    echo: Callable[[str], None] | None,
    replay_from: Sequence[str] | None = None,
    seeds: int = 1,
    balance: bool | None = None,
) -> dict[str, Any]:
    from nbft.config import check_int
    from nbft.evaluate import evaluate_model, get_task, list_tasks
    from nbft.forgetting import check_replay, check_replay_from, replay_effect
    from nbft.models import resolve_model
    from nbft.report import ComparisonTable
    from nbft.run_dirs import load_history
    from nbft.sweeps import SWEEP_FILE, SweepInterrupted, sweep

    say = echo or (lambda line: logger.info("%s", line))
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    tiny = model == "tiny"
    cfg = dataclasses.replace(settings or (TINY_DEFAULTS if tiny else DEMO_DEFAULTS))
    if steps is not None:
        cfg.steps = steps
    if n is not None:
        cfg.n = n
    if balance is not None:
        cfg.balance = balance
    shares = [r for r in check_replay(replay) if r > 0] if replay else []  # 0 is the tuned column itself
    n_seeds = check_int("seeds", seeds, 1, "training seeds per variant, e.g. --seeds 3")
    train_seeds = tuple(seed + i for i in range(int(n_seeds)))  # the first seed's tuned run is the main run
    target_task = get_task(target)
    others = list(tasks) if tasks is not None else [t for t in cfg.others if t != target]
    names = [target, *[t for t in others if t != target]]
    offline = set(list_tasks(offline_only=True))
    out = Path(out_dir) if out_dir is not None else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    _check_arguments(cfg, names, offline, model, out)  # before any work: one clear line, nothing written
    if cfg.balance and not target_task.is_classification and balance is None:
        cfg.balance = False  # the default balances labels; a target without labels (qa, ner, ...) has none to balance
    if cfg.balance and not target_task.is_classification:
        raise ValueError(f"balance=True samples the target's labels equally, but {target!r} has no labels; "
                         "leave --balance off for this task")  # fmt: skip
    # at least one other task stays out of the replay pool: forgetting measured where replay never trains
    replayed = check_replay_from(replay_from, names[1:], target) if shares else []
    held_out = [t for t in names[1:] if t not in replayed] if shares else []
    if shares and not replayed:
        raise ValueError(f"replay_from=[] replays nothing; name tasks of {names[1:]} to replay")
    if out.is_dir() and any(out.iterdir()) and not (out / SWEEP_FILE).is_file():
        raise FileExistsError(
            f"{out} already holds a demo run of an older nbft or other files (no {SWEEP_FILE}); pass a new out_dir "
            "(--out) or delete it"
        )
    resumed = (out / SWEEP_FILE).is_file()
    say(f"nbft demo: target={target}, other tasks={names[1:]}\n  out={out}")  # lines fit 120 columns
    if resumed:
        say("  resuming the demo in this folder: finished runs are skipped")
    if shares:
        say(
            f"replay pool: {replayed}\n  held out of replay (forgetting measured where replay never trains): {held_out}"
        )
    if any(t not in offline for t in names):
        say(f"note: {[t for t in names if t not in offline]} need the Hugging Face Hub")

    # 1. data -------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    task_objs = []
    for name in names:
        task = get_task(name)
        if name != target and cfg.max_new_tokens_other is not None:
            task = dataclasses.replace(task, max_new_tokens=min(task.max_new_tokens, cfg.max_new_tokens_other))
        task_objs.append(task)
    splits = target_task.load()
    for task in task_objs[1:]:
        task.load()  # fetch and cache every task's data now, so a missing source fails before any compute
    timings["data_s"] = time.perf_counter() - t0
    # validation loss on the target's validation split (never a training or test example); none when it has none
    n_val = min(cfg.n_validation, len(splits["validation"])) if "validation" in splits else 0
    say(
        f"[1/6] data: {cfg.steps * cfg.batch_size} training examples of {target!r} "
        f"({len(splits['train'])} in its train split{', label-balanced' if cfg.balance else ''}), {n_val} validation"
        f"\n  eval tasks {names}"
    )

    # model ---------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    mdl, tok, label, base_folder = resolve_model(model)
    timings["load_s"] = time.perf_counter() - t0
    chat = cfg.chat_template and bool(getattr(tok, "chat_template", None))
    say(
        f"model: {label} ({sum(p.numel() for p in mdl.parameters()) / 1e6:.1f}M parameters) in {timings['load_s']:.0f}s"
    )

    # 2. base evaluation (with the in-context baseline on the target) -------------------------------------------
    # Each task gets its own n: the target's CI must be tight; the others only need to show large drops.
    n_per_task = {t: cfg.n_per_task.get(t, cfg.n_other) for t in names if t != target}
    ecfg = EvalConfig(
        n=cfg.n, n_per_task=n_per_task, icl_shots=cfg.icl_shots, icl_n=cfg.icl_n, batch_size=cfg.eval_batch_size,
        chat_template=chat, seed=seed, progress=progress, probes=cfg.probes,
    )  # fmt: skip
    t0 = time.perf_counter()
    base_eval = _earlier_base_evaluation(out, ecfg, mdl) if resumed else None
    if base_eval is not None:
        say(f"[2/6] base model: the evaluation of the earlier call in {out} (same model, same settings)")
    else:
        base_eval = evaluate_model(mdl, task_objs, tokenizer=tok, target=target, config=ecfg)
        say(
            f"[2/6] base model evaluated on {len(names)} tasks (k-shot {cfg.icl_shots} on {target}) "
            f"in {time.perf_counter() - t0:.0f}s"
        )
    timings["eval_base_s"] = time.perf_counter() - t0

    # 3-4. the runs: nbft.sweep trains every variant × seed from this base and evaluates each -----------------------
    t0 = time.perf_counter()
    try:
        result = sweep(
            {"replay": [0, *shares]}, model=mdl, tokenizer=tok, target=target, others=names[1:], seeds=train_seeds,
            # without replay every other task counts as replayed: no held-out group in the table
            replay_from=replay_from if shares else names[1:], learning_rate=cfg.learning_rate, steps=cfg.steps,
            balance=cfg.balance, batch_size=cfg.batch_size, max_length=cfg.max_length, n=cfg.n, n_other=cfg.n_other,
            n_per_task=cfg.n_per_task, eval_batch_size=cfg.eval_batch_size, chat_template=cfg.chat_template,
            probes=cfg.probes, seed=seed, out_dir=out, monitor=cfg.monitor_n or False,
            progress="runs" if progress else False, n_validation=n_val,
            replay_max_length=max(cfg.max_length, cfg.replay_max_length),
            max_new_tokens_other=cfg.max_new_tokens_other, base_evaluation=base_eval, labels={"target-only": "tuned"},
        )  # fmt: skip
    except SweepInterrupted as exc:
        raise SweepInterrupted(f"{exc}\n  nbft demo: run the same command (same --out) again to resume") from None
    timings["train_s"] = sum(r.train_s or 0.0 for r in result.runs)
    timings["eval_tuned_s"] = sum(r.eval_s or 0.0 for r in result.runs) + result.record["timings"]["compare_s"]
    main = next(r for r in result.runs if r.variant.replay == 0 and r.seed == train_seeds[0])
    history = [h for h in load_history(main.run_dir) if h.get("step") is not None]
    say(_train_lines(result.runs, out, time.perf_counter() - t0))
    say(f"[4/6] tuned model{'s' if len(result.runs) > 1 else ''} evaluated in {timings['eval_tuned_s']:.0f}s")
    table = result.table
    if shares:  # what replay did, in one line per share: AF removed, G kept
        effect = replay_effect(table.results, reference="tuned")
        table = ComparisonTable({**table.results, "notes": [*table.notes, *(e["line"] for e in effect)],
                                 "replay_effect": effect})  # fmt: skip

    # 5. the table ----------------------------------------------------------------------------------------------
    text = table.to_text()
    probe_rows = [t for t, i in table.results["tasks"].items() if i.get("role") == "probe"]
    ood = f"\n  in-domain and out-of-domain rows: {', '.join([target, *probe_rows])}" if probe_rows else ""
    say(f"[5/6] side by side (points, 0-100; Δ = tuned − base with paired bootstrap 95% CI):{ood}\n" + text)

    # 6. files --------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    changes = _weight_changes(base_folder, main.run_dir / "model")  # streamed from disk, tensor by tensor
    files = _write_outputs(table, history, out, main.run_dir / "model", changes, label)
    if len(result.record["variants"]) > 1:  # gain against held-out forgetting, one point per variant
        from nbft.report import figure_to_png

        files["sweep_plot"] = out / "sweep.png"
        files["sweep_plot"].write_bytes(figure_to_png(result.figure()))
    files["sweep"] = out / SWEEP_FILE
    timings["report_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    main_rel = main.run_dir.relative_to(out).as_posix()
    losses = [h["loss"] for h in history if h.get("kind") == "train"]
    train = {**result.record["runs"].get(main_rel, {}), **main.summary, "final_loss": losses[-1] if losses else None}
    _write_json(out / "metrics.json", {**table.to_dict(), "timings": timings, "model": label, "run_dir": main_rel,
                                        "train": train, "runs": result.record["runs"],
                                        "settings": dataclasses.asdict(cfg)})  # fmt: skip
    written = [str(Path(p).relative_to(out)) if Path(p).is_relative_to(out) else str(p) for p in files.values()]
    say(f"[6/6] wrote {out} in {timings['report_s']:.0f}s:\n  {', '.join(written)}\n  tuned model: {main.run_dir}")
    say(f"total {timings['total_s']:.0f}s")
    return {"table": table, "sweep": result, "run_dir": main.run_dir, "text": text, "files": files,
            "timings": timings, "out_dir": out}  # fmt: skip


def _earlier_base_evaluation(out: Path, ecfg: EvalConfig, model: Any) -> dict[str, Any] | None:
    """A resumed demo: the base evaluation its earlier call left in the sweep folder, when it is of this model
    (the sweep's fingerprint of weights and buffers) with these settings; else ``None`` (evaluated again)."""
    from nbft.sweeps import BASE_EVALUATION_FILE, SWEEP_FILE
    from nbft.train.variants import fingerprint

    try:
        saved = json.loads((out / BASE_EVALUATION_FILE).read_text())
        plan = json.loads((out / SWEEP_FILE).read_text())["plan"]
    except (OSError, ValueError, KeyError, TypeError):
        return None

    def settings(config: Any) -> Any:  # JSON's view (tuples as lists); the progress bars change no result
        return json.loads(json.dumps({k: v for k, v in dict(config).items() if k != "progress"}, default=str))

    if not isinstance(saved, dict) or plan.get("fingerprint") != fingerprint(model):
        return None
    return saved if settings(saved.get("config", {})) == settings(dataclasses.asdict(ecfg)) else None


def _train_lines(records: Sequence[Any], out: Path, took: float) -> str:
    """Step 3's lines: the main run first, then every other run (trained now or found finished)."""
    from nbft.run_dirs import load_history

    lines = []
    for i, r in enumerate(records):
        losses = [h["loss"] for h in load_history(r.run_dir) if h.get("kind") == "train"]
        loss = f"final loss {losses[-1]:.3f}" if losses else "no loss recorded"
        how = "trained earlier" if r.resumed or r.train_s is None else f"in {r.train_s:.0f}s"  # skipped on resume
        where = r.run_dir.relative_to(out).as_posix()
        if i == 0:
            lines.append(f"[3/6] full fine-tune: {r.steps} steps, {loss}, {how}{_monitor_line(r.summary, r.run_dir)}")
            lines.append(f"  runs in {out}:")
        lines.append(f"  {where}: {r.variant.label}, seed {r.seed}, {r.steps} steps, {loss}, {how}")
    lines.append(f"  {len(records)} run(s) trained and evaluated in {took:.0f}s")
    return "\n".join(lines)


def _monitor_line(summary: dict[str, Any], run_dir: Path) -> str:
    if not summary.get("monitor_s") or not summary.get("wall_s"):
        return ""
    from nbft.run_dirs import load_history

    points = sum(1 for h in load_history(run_dir) if h.get("kind") == "monitor")
    took, share = summary["monitor_s"], summary["monitor_s"] / summary["wall_s"]
    return f"\n  monitor: {points} points, {took:.0f}s = {share:.0%} of the run"


def _weight_changes(base_folder: Path | None, model: Any) -> Any:
    if base_folder is None:
        return None
    from nbft import report

    try:
        return report.weight_change(base_folder, model)  # streams the base from disk, tensor by tensor
    except Exception as exc:  # the report is still useful without this figure
        logger.warning("weight-change view skipped: %s", exc)
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from nbft._utils import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str, allow_nan=True))


def _write_outputs(
    table: Any, history: list[dict[str, Any]], out: Path, model_dir: Path, changes: Any, label: str
) -> dict[str, Path]:
    from nbft import report
    from nbft.train import update_model_card

    files: dict[str, Path] = {}
    loss_png = out / "loss.png"
    loss_png.write_bytes(report.figure_to_png(report.loss_curve(history, title=f"Full fine-tune of {label}")))
    files["loss_plot"] = loss_png
    files["report"] = report.export_html(
        table, out / "report.html", history=history, weight_changes=changes, title=f"nbft demo: {label}"
    )
    files["metrics"] = out / "metrics.json"
    report.export_csv(table, out / "tables")
    files["tables"] = out / "tables"
    update_model_card(model_dir, "Evaluation", report.model_card_section(table))  # the main run's model
    files["model"] = model_dir
    return files
