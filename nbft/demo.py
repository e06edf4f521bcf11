"""The whole job in one call (what ``nbft demo`` runs): data → base eval (+ in-context baseline) → full fine-tune →
tuned eval → side-by-side table with forgetting → report files.

Offline and on CPU by default: SmolLM2-135M-Instruct from nbft's registry fallback, real data from PyPI wheels.

Example::

    from nbft.demo import run_demo
    result = run_demo(target="sentiment", out_dir="runs/demo", echo=print)
    result["table"].delta                 # the paired Δ with its 95% CI
    result["files"]["report"]             # runs/demo/report.html
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
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
    max_length: int = 128
    """Longest training example in tokens (tweets and their prompts fit)."""
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
    icl_n: int | None = 30
    """The k-shot columns use the first ``icl_n`` target examples only (a 3-shot prompt costs ~4x the tokens)."""
    eval_batch_size: int = 32
    """Prompts per generation batch; larger batches amortise each decoding step on CPU."""
    chat_template: bool = True
    """Wrap prompts in the model's chat template, for training and evaluation alike (an instruct model
    follows a task far better as a user turn)."""
    max_new_tokens_other: int | None = None
    """A cap on the other tasks' generation budgets (``None``: each task's own, long enough for an answer; the
    tiny smoke run caps it to stay fast)."""
    monitor_n: int | None = 6
    """Examples per task that a :class:`~nbft.evaluate.monitor.ForgettingMonitor` scores during each fine-tune (from
    the validation splits; ``None``: no monitor). It spaces its points to stay within 15% of the run's time."""
    replay_max_length: int = 384
    """Longest example of a replay variant (``--replay``): the other tasks' prompts are longer than tweets (a
    paper abstract is about 250 tokens)."""
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


def _training_data(task: Any, n_train: int, seed: int) -> Any:
    """The target task's train split (the path every notebook uses too): never an example compare() scores."""
    from nbft.data import build_instruction_dataset

    # the evaluation template only: the demo shows what training on one phrasing does
    data = build_instruction_dataset(task=task, templates=task.template, n=n_train, n_validation=64, seed=seed)
    return data["train"], data["validation"]


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
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run steps 1-6 of the demo and return what it made.

    Args:
        target: the task to fine-tune on (``"sentiment"``, ``"qa"``, ``"reply"``, ``"ner"``, ...: ``list_tasks()``).
        steps: optimizer steps (default 40; 6 for ``model="tiny"``).
        out_dir: run directory for the report, metrics, loss plot and model (default ``runs/demo-<time>``).
        model: ``None`` (SmolLM2-135M-Instruct, offline fallback), a name or path, a ``(model, tokenizer)`` pair,
            or ``"tiny"`` (a tiny random model, for a fast smoke test).
        n: test examples of the target task (default 100).
        tasks: the other tasks (default ``settings.others``: sentiment, qa, reply, ner, summarize-paper, less the
            target).
        settings: a :class:`DemoSettings` (``steps``/``n`` arguments override it).
        replay: replay shares in (0, 1) (``nbft demo --replay 0.1``): each adds a column, the same base fine-tuned
            on the same target examples plus that share of examples replayed from the other tasks' train splits
            (see :func:`nbft.forgetting.forgetting_experiment`), so the table shows what replay does to forgetting.
        replay_from: the other tasks replayed (default: all but the last); the rest are held out of the replay
            pool, and the forgetting summary reports AF, worst drop and regressions for replayed and held-out tasks
            apart, so "replay removes forgetting" is also measured on a task replay never trains on.
        seeds: train every variant with this many seeds (``seed``, ``seed + 1``, ...; ``nbft demo --seeds 3``),
            from the same base on the same examples: each number is the mean over seeds with a two-level bootstrap CI
            (seeds, then examples), the table shows the seed range, and the extra runs go to ``seed-<s>`` (and
            ``replay-<share>-seed-<s>``) inside the run directory.
        echo: called with each line meant for a person (the CLI passes ``print``); library code never prints.

    Returns a dict: ``table`` (the :class:`~nbft.report.ComparisonTable`), ``run`` (the training run),
    ``text`` (the printed table), ``files`` (paths written), ``timings`` (seconds per phase), ``out_dir``,
    ``replay_runs`` (the replay variants' runs).

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
) -> dict[str, Any]:
    from nbft.config import check_int
    from nbft.data import tokenize_for_training
    from nbft.evaluate import ForgettingMonitor, evaluate_model, get_task, list_tasks
    from nbft.evaluate.compare import compare
    from nbft.forgetting import check_replay, check_replay_from, replay_effect, replay_mixture, variant_label
    from nbft.models import resolve_model
    from nbft.train import ProgressObserver, TrainConfig, finetune
    from nbft.train.variants import BaseSnapshot

    say = echo or (lambda line: logger.info("%s", line))
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    tiny = model == "tiny"
    cfg = dataclasses.replace(settings or (TINY_DEFAULTS if tiny else DEMO_DEFAULTS))
    if steps is not None:
        cfg.steps = steps
    if n is not None:
        cfg.n = n
    shares = [r for r in check_replay(replay) if r > 0] if replay else []  # 0 is the tuned column itself
    n_seeds = check_int("seeds", seeds, 1, "training seeds per variant, e.g. --seeds 3")
    extra = [seed + i for i in range(1, int(n_seeds))]  # the first seed's run is the demo's own run directory
    target_task = get_task(target)
    others = list(tasks) if tasks is not None else [t for t in cfg.others if t != target]
    names = [target, *[t for t in others if t != target]]
    offline = set(list_tasks(offline_only=True))
    out = Path(out_dir) if out_dir is not None else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    _check_arguments(cfg, names, offline, model, out)  # before any work: one clear line, nothing written
    # at least one other task stays out of the replay pool: forgetting measured where replay never trains
    replayed = check_replay_from(replay_from, names[1:], target) if shares else []
    held_out = [t for t in names[1:] if t not in replayed] if shares else []
    if shares and not replayed:
        raise ValueError(f"replay_from=[] replays nothing; name tasks of {names[1:]} to replay")
    if (out / "model").exists() or any(out.glob("checkpoint-*")):
        raise FileExistsError(f"{out} already holds a demo run; pass a new out_dir (--out) or delete it")
    say(f"nbft demo: target={target}, other tasks={names[1:]}\n  out={out}")  # lines fit 120 columns
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
    train_rows, val_rows = _training_data(target_task, cfg.steps * cfg.batch_size, seed)
    replay_rows = {}
    if shares:  # the other tasks' train splits, for the replay variants (never their test splits)
        need = math.ceil(round(len(train_rows) * max(shares) / (1 - max(shares))) / max(1, len(replayed)))
        replay_rows = {t.name: t.train(n=need, templates=t.template, seed=seed) for t in task_objs[1:]
                       if t.name in replayed}  # fmt: skip
    timings["data_s"] = time.perf_counter() - t0
    say(
        f"[1/6] data: {len(train_rows)} training examples of {target!r} "
        f"({len(splits['train'])} in its train split), {len(val_rows)} validation\n  eval tasks {names}"
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
    base_eval = evaluate_model(mdl, task_objs, tokenizer=tok, target=target, config=ecfg)
    timings["eval_base_s"] = time.perf_counter() - t0
    say(
        f"[2/6] base model evaluated on {len(names)} tasks (k-shot {cfg.icl_shots} on {target}) "
        f"in {timings['eval_base_s']:.0f}s"
    )

    # 3. full fine-tune -----------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    train_tok = tokenize_for_training(train_rows, tok, max_length=cfg.max_length, chat_template=chat)
    val_tok = tokenize_for_training(val_rows, tok, max_length=cfg.max_length, chat_template=chat)
    tcfg = TrainConfig(
        learning_rate=cfg.learning_rate,
        max_steps=cfg.steps,
        batch_size=cfg.batch_size,
        warmup_ratio=0.1,
        schedule="linear",
        eval_every=max(1, cfg.steps // 3),
        max_length=cfg.max_length,
        seed=seed,
    )

    def observers() -> list[Any]:
        out_: list[Any] = [ProgressObserver()] if progress else []
        if cfg.monitor_n:  # the tasks scored while training: forgetting seen as it happens (history.jsonl)
            out_.append(ForgettingMonitor(task_objs, n=cfg.monitor_n, checkpoints=False, chat_template=chat, seed=seed))
        return out_

    retrain = bool(shares or extra)  # the same model object is trained again from the base
    base = BaseSnapshot(mdl) if retrain else None  # weights and buffers: each variant starts from this base
    run = finetune(mdl, tok, train_tok, val=val_tok, config=tcfg, observers=observers(), run_dir=out)
    run.wait()
    timings["train_s"] = time.perf_counter() - t0
    say(f"[3/6] full fine-tune: {cfg.steps} steps, final loss {run.final_loss:.3f}, in {timings['train_s']:.0f}s"
        + _monitor_line(run))  # fmt: skip

    # 4. tuned evaluation, against the stored base results ------------------------------------------------------
    t0 = time.perf_counter()
    changes = _weight_changes(base_folder, mdl)  # now: a replay variant below trains the same model object
    models: dict[str, Any] = {"base": base_eval, "tuned": run}
    training: dict[str, Any] = {}
    replay_runs = []
    if base is not None:
        # the tuned model is evaluated now, before the replay variants retrain the same weights from the base
        zero_shot = dataclasses.replace(ecfg, icl_shots=(0,))  # k-shot columns are the base model's only
        models["tuned"] = evaluate_model(mdl, task_objs, name="tuned", tokenizer=tok, target=target, config=zero_shot)
        training["tuned"] = out
        timings["eval_tuned_s"] = time.perf_counter() - t0
        if extra:  # the same target examples and base, another training seed each
            t0 = time.perf_counter()
            tuned_evals, tuned_dirs = [models["tuned"]], [out]
            for s in extra:
                base.restore()  # the same base, bit for bit (buffers too)
                srun = finetune(mdl, tok, train_tok, val=val_tok, config=dataclasses.replace(tcfg, seed=s),
                                observers=observers(), run_dir=out / f"seed-{s}")  # fmt: skip
                tuned_evals.append(evaluate_model(mdl, task_objs, name="tuned", tokenizer=tok, target=target,
                                                  config=zero_shot))  # fmt: skip
                tuned_dirs.append(srun.run_dir)
                say(f"[3/6] tuned, seed {s}: final loss {srun.final_loss:.3f}" + _monitor_line(srun))
            models["tuned"], training["tuned"] = tuned_evals, tuned_dirs
            timings["seeds_s"] = time.perf_counter() - t0
        for share in shares:
            t0 = time.perf_counter()
            mixed, counts = replay_mixture(train_rows, replay_rows, share, seed=seed)
            mixed_tok = tokenize_for_training(mixed, tok, max_length=max(cfg.max_length, cfg.replay_max_length),
                                              chat_template=chat)  # fmt: skip
            rcfg = dataclasses.replace(tcfg, max_steps=math.ceil(len(mixed) / cfg.batch_size),
                                       max_length=max(cfg.max_length, cfg.replay_max_length))  # fmt: skip
            name = variant_label(share)
            evals, dirs = [], []
            for s in (seed, *extra):
                base.restore()  # the same base (bit for bit, buffers too), the same target examples
                where = out / (f"replay-{share:g}" if s == seed else f"replay-{share:g}-seed-{s}")
                rrun = finetune(mdl, tok, mixed_tok, val=val_tok, config=dataclasses.replace(rcfg, seed=s),
                                observers=observers(), run_dir=where)  # fmt: skip
                if s == seed:
                    replay_runs.append(rrun)
                evals.append(evaluate_model(mdl, task_objs, name=name, tokenizer=tok, target=target,
                                            config=zero_shot))  # fmt: skip
                dirs.append(rrun.run_dir)
            models[name], training[name] = (evals, dirs) if extra else (evals[0], dirs[0])
            timings[f"train_{name}_s"] = time.perf_counter() - t0
            say(f"[3+/6] {name}: {rcfg.max_steps} steps on {counts}\n  final loss {replay_runs[-1].final_loss:.3f}"
                f"{f' ({len(dirs)} seeds)' if extra else ''}, trained and evaluated in "
                f"{timings[f'train_{name}_s']:.0f}s" + _monitor_line(replay_runs[-1]))  # fmt: skip
        del base
        t0 = time.perf_counter()
    # the runs themselves (not bare models): compare() reads what each trained on and checks every test example
    groups = {"replayed": replayed, "held-out": held_out} if replayed and held_out else None
    table = compare(models, task_objs, target=target, config=ecfg, tokenizer=tok, training_data=training or None,
                    task_groups=groups)  # fmt: skip
    if shares:  # what replay did, in one line per share: AF removed, G kept
        from nbft.report import ComparisonTable

        effect = replay_effect(table.results, reference="tuned")
        table = ComparisonTable({**table.results, "notes": [*table.notes, *(e["line"] for e in effect)],
                                 "replay_effect": effect})  # fmt: skip
    timings["eval_tuned_s" if not retrain else "compare_s"] = time.perf_counter() - t0
    say(f"[4/6] tuned model evaluated in {timings['eval_tuned_s']:.0f}s")

    # 5. the table ----------------------------------------------------------------------------------------------
    text = table.to_text()
    probe_rows = [t for t, i in table.results["tasks"].items() if i.get("role") == "probe"]
    ood = f"\n  in-domain and out-of-domain rows: {', '.join([target, *probe_rows])}" if probe_rows else ""
    say(f"[5/6] side by side (points, 0-100; Δ = tuned − base with paired bootstrap 95% CI):{ood}\n" + text)

    # 6. files --------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    files = _write_outputs(table, run, out, changes, timings, label)
    timings["report_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    replay_train = {variant_label(s): r.summary for s, r in zip(shares, replay_runs, strict=True)}
    _write_json(out / "metrics.json", {**table.to_dict(), "timings": timings, "model": label, "train": run.summary,
                                        "replay_train": replay_train, "settings": dataclasses.asdict(cfg)})  # fmt: skip
    written = [str(Path(p).relative_to(out)) if Path(p).is_relative_to(out) else str(p) for p in files.values()]
    say(f"[6/6] wrote {out} in {timings['report_s']:.0f}s:\n  {', '.join(written)}")
    say(f"total {timings['total_s']:.0f}s")
    return {"table": table, "run": run, "text": text, "files": files, "timings": timings, "out_dir": out,
            "replay_runs": replay_runs}  # fmt: skip


def _monitor_line(run: Any) -> str:
    s = run.summary
    if not s.get("monitor_s") or not s.get("wall_s"):
        return ""
    points = sum(1 for h in run.history if h.get("kind") == "monitor")
    return f"\n  monitor: {points} points, {s['monitor_s']:.0f}s = {s['monitor_s'] / s['wall_s']:.0%} of the run"


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
    table: Any, run: Any, out: Path, changes: Any, timings: dict[str, float], label: str
) -> dict[str, Path]:
    from nbft import report
    from nbft.train import update_model_card

    files: dict[str, Path] = {}
    history = [h for h in run.history if h.get("step") is not None]
    loss_png = out / "loss.png"
    loss_png.write_bytes(report.figure_to_png(report.loss_curve(history, title=f"Full fine-tune of {label}")))
    files["loss_plot"] = loss_png
    files["report"] = report.export_html(
        table, out / "report.html", history=history, weight_changes=changes, title=f"nbft demo: {label}"
    )
    files["metrics"] = out / "metrics.json"
    report.export_csv(table, out / "tables")
    files["tables"] = out / "tables"
    model_dir = out / "model"
    if not (model_dir / "config.json").exists():
        run.save(model_dir)
    update_model_card(model_dir, "Evaluation", report.model_card_section(table))
    files["model"] = model_dir
    return files
