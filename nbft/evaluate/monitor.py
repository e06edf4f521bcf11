"""ForgettingMonitor: score the target task and the other tasks *while* training, and act on it.

A measuring observer for :func:`nbft.finetune` (see :mod:`nbft.train.events`): at step 0 (the base model) and every
``every`` optimizer steps it scores a small fixed set of examples per task with the batched evaluator
(:func:`nbft.evaluate.score`: greedy, the same prompts every time, the task's own metric). Each point becomes a
history row ``{"kind": "monitor", ...}`` (in ``run.history``, ``history.jsonl`` and every observer's
``on_monitor``), so a live plot draws the metric per task against the step with the base value as a reference.

It also

- regenerates a few fixed prompts per task at each point (**live samples**: ``row["samples"]``), which a panel shows
  beside the base model's answers;
- stops the run when a task falls below a **floor** (``floors={"qa": 0.8}``: 80% of its base score), with a
  checkpoint and a message naming the task and the step;
- asks for a checkpoint at each point and marks the best one whose worst drop on the other tasks stays within
  ``max_drop`` (``run.best_checkpoint(max_drop=...)`` chooses among them after the run; checkpoint retention keeps
  the marked one besides the newest ``TrainConfig.keep_last``);
- measures its own share of the run's wall time and keeps it within ``budget``: with ``every=None`` it spaces its
  points to fit, and it warns (with the measured share) when even the start and end points would not fit;
- measures the model's **loss per token on general text** at each point (:mod:`nbft.evaluate.text_probe`: a few
  fixed chunks of public-domain prose, no labels needed), a cheap sign of whether the model is still a language
  model: ``text_loss`` and ``text_loss_base`` in the row (lower is better), drawn on the monitor figure's right axis.

The examples come from each task's *validation* split (its test split, if it has none), so choosing a checkpoint by
the monitor never looks at the test examples that :func:`nbft.compare` scores afterwards.

Record fields (one row per point): ``monitor`` (``"forgetting"``), ``target``, ``scores`` ``{task: value}``
(points 0-100, the task's headline metric), ``base`` ``{task: value at step 0}``, ``metric`` ``{task: key}``, ``drop``
``{other task: (base - value) / base}``, ``worst_drop`` and ``worst_task`` (the largest relative drop among the other
tasks), ``target_score``, ``max_drop``, ``best_step`` (the best point so far within ``max_drop``), ``samples``
``{task: [{"input", "output", "reference"}]}``, ``every``, ``n`` ``{task: examples scored}`` (fewer than asked when a
split is smaller: the monitor warns once), ``split``, ``monitor_s`` (its time so far),
``share`` (its share of the wall time so far, from step 1), ``floors``, ``warning`` (when it warned),
``save_checkpoint`` and ``keep_checkpoints``; with the text probe on, ``text_loss`` (mean loss per token on the
probe's chunks), ``text_loss_base`` (at step 0) and ``text_probe`` ``{"n_chunks", "chunk_tokens"}``.

Example::

    monitor = nbft.ForgettingMonitor(["sentiment", "qa", "reply"], every=10, n=8, floors={"qa": 0.8})
    run = nbft.finetune(model, tok, data, config=cfg, observers=[monitor])
    run.best_checkpoint(max_drop=0.2)        # the checkpoint with the best sentiment score, qa/reply within 20%
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nbft._utils import did_you_mean
from nbft.config import EvalConfig
from nbft.evaluate.scoring import score
from nbft.evaluate.tasks import Task, TaskError, resolve_tasks

__all__ = ["ForgettingMonitor", "relative_drop"]

logger = logging.getLogger(__name__)

_SAMPLE_CHARS = 400  # live-sample inputs are cut to this many characters in the history


def relative_drop(base: float, value: float) -> float:
    """How much of its base score a task lost, as a fraction: ``(base - value) / base`` (negative for a gain).

    A task whose base score is 0 cannot drop (0 when it stays at 0, negative for a gain).

    Example:
        >>> relative_drop(40.0, 30.0), relative_drop(40.0, 50.0), relative_drop(0.0, 0.0)
        (0.25, -0.25, 0.0)
    """
    if base > 0:
        return (base - value) / base
    return 0.0 if value <= base else -1.0


class ForgettingMonitor:
    """Scores the target and the other tasks during training (step 0 = the base model, then every ``every`` steps).

    Args:
        tasks: task names or :class:`~nbft.evaluate.Task` objects; the first is the target unless ``target`` says.
            A misspelt name fails here, with "did you mean", before any training.
        every: optimizer steps between points. ``None`` (default): about 4 points per run, spaced further apart if
            the measured cost would exceed ``budget``. ``0``: only at the start and the end.
        n: examples per task (a fixed, seeded sample of its validation split: the same ones at every point). A
            smaller split is monitored on all it has, with a warning naming the task and both counts.
        target: the task being trained for (default: the first of ``tasks``).
        floors: ``{task: fraction}``: stop the run (with a checkpoint) when a task scores below that fraction of its
            base score, e.g. ``{"qa": 0.8}``.
        max_drop: the forgetting budget for the checkpoint the monitor marks as best (and that retention keeps): the
            largest relative drop allowed on any other task (0.2 = each keeps at least 80% of its base score).
        samples: prompts per task regenerated at each point and kept in the row (live samples).
        max_new_tokens: a cap on each task's answer length while monitoring (``None``: the task's own). Long answers
            (a summary) dominate a point's cost; the first 32 tokens show forgetting as well, the same way at every
            point. The comparison table after training uses each task's own budget.
        checkpoints: ask for a checkpoint at each point (needed by ``run.best_checkpoint``).
        budget: the largest share of the run's wall time the monitor may take (it warns when it would take more).
        chat_template: wrap prompts in the tokenizer's chat template. ``None`` (default): as the training data is
            tokenized (its settings, :mod:`nbft.dataset_settings`); a format other than the training data's is
            used as asked, with a warning.
        config: an :class:`~nbft.config.EvalConfig` for the rest (``batch_size``, ``max_new_tokens``...).
        split: the split the examples come from (default: validation, else test).
        seed: seeds the sample of examples.
        text_probe: the loss per token on general text at each point (:func:`nbft.evaluate.general_text_loss`).
            ``None`` (default): on, with 4 chunks of 128 tokens (one forward pass over 512 tokens per point), and
            switched off with a warning when the text cannot be fetched; ``True`` or a number of chunks: on, and a
            text that cannot be fetched refuses the run when training starts; ``False``: off. Encoder-decoder models
            have no next-token loss on plain text: the probe is switched off for them, with a warning.

    Example::

        monitor = ForgettingMonitor(["sentiment", "qa", "ner"], every=10, n=8, floors={"qa": 0.5})
        run = nbft.finetune(model, tok, data, observers=[monitor])
        [(r["step"], r["scores"]) for r in run.history if r["kind"] == "monitor"]
    """

    def __init__(
        self,
        tasks: Sequence[str | Task] | str | Task,
        *,
        every: int | None = None,
        n: int = 8,
        target: str | None = None,
        floors: Mapping[str, float] | None = None,
        max_drop: float | None = 0.2,
        samples: int = 2,
        max_new_tokens: int | None = 32,
        checkpoints: bool = True,
        budget: float = 0.15,
        chat_template: bool | None = None,
        config: EvalConfig | None = None,
        split: str | None = None,
        seed: int = 0,
        text_probe: bool | int | None = None,
    ) -> None:
        self.tasks: list[Task] = resolve_tasks(tasks)  # unknown names: "did you mean", now, before any training
        names = [t.name for t in self.tasks]
        self.max_new_tokens = max_new_tokens
        self._capped: list[Task] | None = None
        if target is not None and target not in names:
            raise TaskError(
                f"ForgettingMonitor: target {target!r} is not among its tasks {names}.{did_you_mean(target, names)}"
            )
        self.target = target if target is not None else names[0]
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
            raise ValueError(f"ForgettingMonitor: every must be a whole number of steps >= 0 or None, got {every!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"ForgettingMonitor: n must be a positive whole number of examples per task, got {n!r}")
        if max_new_tokens is not None and (
            isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1
        ):
            raise ValueError(
                f"ForgettingMonitor: max_new_tokens must be a positive whole number or None, got {max_new_tokens!r}"
            )
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise ValueError(f"ForgettingMonitor: samples must be a whole number >= 0, got {samples!r}")
        if not (isinstance(budget, int | float) and 0 < budget < 1):
            raise ValueError(f"ForgettingMonitor: budget is a share of the wall time in (0, 1), got {budget!r}")
        if max_drop is not None and not (isinstance(max_drop, int | float) and 0 <= max_drop <= 1):
            raise ValueError(
                f"ForgettingMonitor: max_drop is a fraction of the base score in [0, 1] (0.2 = 20%), got {max_drop!r}"
            )
        self.floors = dict(floors or {})
        for task, frac in self.floors.items():
            if task not in names:
                raise TaskError(
                    f"ForgettingMonitor: floors name {task!r}, which is not among its tasks {names}."
                    f"{did_you_mean(task, names)}"
                )
            if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 < frac <= 1:
                raise ValueError(
                    f"ForgettingMonitor: floors[{task!r}] = {frac!r}; a floor is a fraction of the task's base score "
                    "in (0, 1], e.g. floors={'qa': 0.8} stops when qa falls below 80% of its base score"
                )
        self.auto = every is None
        self.every: int = 0 if every is None else every
        """Steps between points (the loop reads it at every step; in auto mode it is set when training starts)."""
        self.n = n
        self.max_drop = None if max_drop is None else float(max_drop)
        self.samples = min(samples, n)
        self.checkpoints = checkpoints
        self.budget = float(budget)
        base_cfg = config or EvalConfig(scoring="generate")
        self.config = dataclasses.replace(
            base_cfg,
            chat_template=bool(chat_template) if config is None else base_cfg.chat_template,
            batch_size=base_cfg.batch_size if config is not None else max(n, 1),
            progress=False,  # a worker thread's progress bar would land in whatever cell runs
        )
        self._chat_asked = chat_template if config is None else base_cfg.chat_template  # None: the run's format
        self.split = split
        self.seed = seed
        if text_probe is not None and not isinstance(text_probe, bool) and not isinstance(text_probe, int):
            raise ValueError(
                f"ForgettingMonitor: text_probe is True/False/None or a number of chunks, got {text_probe!r}"
            )
        if isinstance(text_probe, int) and not isinstance(text_probe, bool) and text_probe < 1:
            raise ValueError(
                f"ForgettingMonitor: text_probe={text_probe!r} chunks; give a positive number, or False to turn it off"
            )
        chunks = 4 if text_probe is None or isinstance(text_probe, bool) else int(text_probe)
        self.text_probe: dict[str, int] | None = None if text_probe is False else {"n_chunks": chunks,
                                                                                  "chunk_tokens": 128}  # fmt: skip
        """The general-text probe's settings (``None``: off)."""
        self._probe_required = text_probe is not None and text_probe is not False
        self.text_base: float | None = None
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.splits: dict[str, str] = {}
        self.base: dict[str, float] | None = None
        self.points: list[dict[str, Any]] = []
        """The points of this run so far: ``{"step", "scores", "target_score", "worst_drop", ...}`` per point."""
        self.warnings: list[str] = []
        self.point_seconds: list[float] = []
        self._total = 0
        self._start = 0
        self._t_begin = 0.0
        self._time = 0.0
        self._projected = False
        self._pending_stop: tuple[int, str] | None = None
        self._pending_warning: str | None = None

    # ------------------------------------------------------------------------------------------------ data
    def prepare(self) -> None:
        """Load each task's fixed examples (done when training starts; call it earlier to fail earlier)."""
        if self.examples:
            return
        if self.text_probe is not None:
            from nbft.sources import SourceUnavailableError, general_text

            try:
                general_text()  # fetched once, here: a required probe without its text refuses the run now
            except SourceUnavailableError as exc:
                if self._probe_required:
                    raise
                self.text_probe = None
                self._warn(f"ForgettingMonitor: the general-text probe is off for this run ({exc})")
        for task in self.tasks:
            splits = task.load()
            split = self.split or ("validation" if "validation" in splits else "test")
            if split not in splits:
                raise TaskError(f"ForgettingMonitor: task {task.name!r} has no {split!r} split (it has {list(splits)})")
            self.examples[task.name] = task.sample(self.n, split=split, seed=self.seed)
            self.splits[task.name] = split
            used = len(self.examples[task.name])
            if used == 0:
                raise TaskError(
                    f"ForgettingMonitor: task {task.name!r} has no examples in its {split!r} split; give it some "
                    "or leave it out of the monitor"
                )
            if used < self.n:  # once per task: prepare() loads each task once
                self._warn(
                    f"ForgettingMonitor: task {task.name!r}: asked for n={self.n}, but its {split!r} split has only "
                    f"{used} example{'s' if used != 1 else ''}: every point scores those {used} (each one moves the "
                    f"score by {100 / used:.0f} points). Give the task a larger {split!r} split for a steadier curve"
                )

    def _scored_tasks(self) -> list[Task]:
        """The tasks as scored while monitoring: answers capped at ``max_new_tokens``."""
        if self._capped is None:
            cap = self.max_new_tokens
            self._capped = [
                t if cap is None or t.max_new_tokens <= cap else dataclasses.replace(t, max_new_tokens=cap)
                for t in self.tasks
            ]
        return self._capped

    @property
    def others(self) -> list[str]:
        return [t.name for t in self.tasks if t.name != self.target]

    # ------------------------------------------------------------------------------------------------ events
    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.prepare()  # a missing split or field refuses the run here, before any step
        self._follow_training_format(info.get("data"))
        self._total = int(info.get("total_steps") or 0)
        self._start = int(info.get("start_step") or 0)
        self._t_begin = time.perf_counter()
        self._time = 0.0
        self._projected = False
        self._pending_stop = None
        self.points = []
        self.point_seconds = []
        if self._start:
            self._restore(info.get("run_dir"))
        else:
            self.base = None
            self.text_base = None
        if self.auto:
            self.every = max(1, self._total // 4)

    def _follow_training_format(self, data: Any) -> None:
        """Score prompts in the format the model trains on (the run's data settings); warn when told otherwise."""
        from nbft.dataset_settings import format_mismatch

        trained = data.get("chat_template") if isinstance(data, Mapping) else None
        if not isinstance(trained, bool):
            return  # unknown (tokenized before): the monitor keeps what it was given
        if self._chat_asked is None:
            self.config = dataclasses.replace(self.config, chat_template=trained)
        elif self._chat_asked != trained:
            self._warn(
                format_mismatch(
                    "ForgettingMonitor: the model", trained, self._chat_asked,
                    f"Pass chat_template={trained} (or leave it out to follow the training data).",
                )
            )  # fmt: skip

    def _restore(self, run_dir: Any) -> None:
        """A resumed run: the base scores (and the points so far) come from the run's history on disk."""
        path = Path(run_dir) / "history.jsonl" if run_dir else None
        rows = []
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if row.get("monitor") == "forgetting" and row.get("step", math.inf) <= self._start:
                    rows.append(row)
        base = next((r["scores"] for r in rows if r["step"] == 0), None)
        self.base = dict(base) if base else None
        self.text_base = next((r.get("text_loss") for r in rows if r["step"] == 0), None)
        self.points = [{k: v for k, v in r.items() if k != "measure_s"} for r in rows]
        if self.base is None:
            logger.warning("ForgettingMonitor: no base-model point in %s; the first point is the reference", path)

    def on_step(self, state: Any) -> None:
        if not self._projected and self.point_seconds and state.step > self._start:
            self._projected = True
            self._fit_budget(state)

    def on_monitor(self, state: Any, row: Mapping[str, Any]) -> None:
        from nbft.train.events import StopTraining  # the engine's stop request (train and evaluate share a layer)

        if self._pending_stop is not None and row.get("step") == self._pending_stop[0]:
            message = self._pending_stop[1]
            self._pending_stop = None
            raise StopTraining(message)

    # ------------------------------------------------------------------------------------------------ measuring
    def measure(self, model: Any, tokenizer: Any, step: int) -> dict[str, Any]:
        """Score every task's fixed examples now; the row for the history (see the module docstring)."""
        if tokenizer is None:
            raise ValueError("ForgettingMonitor needs the run's tokenizer to generate answers")
        self.prepare()
        t0 = time.perf_counter()
        scores: dict[str, float] = {}
        metric: dict[str, str] = {}
        samples: dict[str, list[dict[str, str]]] = {}
        for task in self._scored_tasks():
            examples = self.examples[task.name]
            r = score(model, tokenizer, task, examples, self.config, desc=f"monitor · {task.name}")
            scores[task.name] = float(r["value"])
            metric[task.name] = r["headline"]
            outputs = r["outputs"] or r["ll_choices"] or [""] * len(examples)
            samples[task.name] = [
                {"input": _cut(task.template.render(ex)), "output": outputs[i], "reference": r["references"][i]}
                for i, ex in enumerate(examples[: self.samples])
            ]
        text_loss = self._text_loss(model, tokenizer)
        if self.base is None:
            self.base = dict(scores)  # step 0: the base model is the reference of every later point
        drop = {t: relative_drop(self.base[t], scores[t]) for t in self.others}
        worst_task = max(drop, key=drop.__getitem__) if drop else None
        record: dict[str, Any] = {
            "monitor": "forgetting",
            "target": self.target,
            "scores": scores,
            "base": dict(self.base),
            "metric": metric,
            "drop": drop,
            "worst_drop": drop[worst_task] if worst_task else 0.0,
            "worst_task": worst_task,
            "target_score": scores[self.target],
            "max_drop": self.max_drop,
            "samples": samples,
            "every": self.every,
            "n": {name: len(ex) for name, ex in self.examples.items()},
            "split": self.splits.get(self.target),
        }
        if text_loss is not None and self.text_probe is not None:
            if self.text_base is None:
                self.text_base = text_loss
            record.update(text_loss=text_loss, text_loss_base=self.text_base, text_probe=dict(self.text_probe))
        if self.floors:
            record["floors"] = dict(self.floors)
        if step > 0:
            # a checkpoint at every point but the last of a completed run (its model is saved in <run_dir>/model)
            record["save_checkpoint"] = self.checkpoints and step < self._total
            self._check_floors(step, scores)
        self.points.append({"step": step, **record})
        best = self.best_step()
        record["best_step"] = best
        if best is not None and self.checkpoints:
            record["keep_checkpoints"] = [best]  # retention keeps it besides the newest keep_last
        seconds = time.perf_counter() - t0
        self._time += seconds
        self.point_seconds.append(seconds)
        record["monitor_s"] = self._time
        if step > 0:
            record["share"] = self._time / max(time.perf_counter() - self._t_begin, 1e-9)
        if self._pending_warning is not None:
            record["warning"], self._pending_warning = self._pending_warning, None
        return record

    def _text_loss(self, model: Any, tokenizer: Any) -> float | None:
        """The loss per token on the probe's general-text chunks, or ``None`` when the probe is off (or had to be
        switched off: the text cannot be fetched, or the model is an encoder-decoder)."""
        if self.text_probe is None:
            return None
        from nbft.evaluate.text_probe import general_text_loss

        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            self.text_probe = None
            self._warn(
                "ForgettingMonitor: the general-text probe is off for this run: an encoder-decoder model has no "
                "next-token loss on plain text (the probe measures causal LMs)"
            )
            return None
        batch = self.text_probe["n_chunks"]  # a handful of chunks: one batch
        return float(general_text_loss(model, tokenizer, batch_size=batch, **self.text_probe)["loss"])

    def best_step(self, max_drop: float | None = None) -> int | None:
        """The point (step > 0) with the best target score whose worst drop is within ``max_drop`` (default: the
        monitor's); ``None`` when no point so far is."""
        budget = self.max_drop if max_drop is None else max_drop
        fits = [p for p in self._points_after_start() if budget is None or p["worst_drop"] <= budget + 1e-12]
        if not fits:
            return None
        return max(fits, key=lambda p: (p["target_score"], -p["step"]))["step"]

    def _points_after_start(self) -> list[dict[str, Any]]:
        return [p for p in self.points if p.get("step", 0) > 0]

    def _check_floors(self, step: int, scores: Mapping[str, float]) -> None:
        assert self.base is not None
        crossed = [
            (t, scores[t], self.base[t], frac)
            for t, frac in self.floors.items()
            if self.base[t] > 0 and scores[t] < frac * self.base[t]
        ]
        if not crossed:
            return
        parts = [
            f"{t} scored {v:.1f}, below {frac:.0%} of its base score {b:.1f} (floor {frac * b:.1f})"
            for t, v, b, frac in crossed
        ]
        message = f"forgetting floor crossed at step {step}: " + "; ".join(parts)
        logger.warning("%s: stopping with a checkpoint", message)
        self._pending_stop = (step, message)

    # ------------------------------------------------------------------------------------------------ budget
    def _fit_budget(self, state: Any) -> None:
        """After the first step: project the monitor's share of the wall time; space the points (auto) or warn."""
        point = max(self.point_seconds)  # the base model's point is usually the dearest (longest answers)
        step_s = state.elapsed_s / max(state.step, 1)
        train = step_s * self._total

        def share(every: int) -> float:
            remaining = _points_between(state.step, self._total, every)
            monitor = self._time + remaining * point
            return monitor / (monitor + train) if monitor + train > 0 else 0.0

        projected = share(self.every)
        if projected <= self.budget:
            return
        if self.auto:
            fitting = [e for e in range(max(self.every, 1), self._total + 1) if share(e) <= self.budget]
            if fitting:
                self.every = fitting[0]
                logger.info(
                    "ForgettingMonitor: every=%d keeps it within %.0f%% of the run", self.every, 100 * self.budget
                )
                return
            self.every = 0
            projected = share(0)
            message = (
                f"ForgettingMonitor: one point costs {point:.1f} s ({len(self.tasks)} tasks × {self.n} examples) and a "
                f"training step {step_s:.2f} s: even measuring only at the start and the end it takes about "
                f"{projected:.0%} of this run's wall time (budget {self.budget:.0%}). Lower n=, monitor fewer tasks, "
                "or train for more steps"
            )
        else:
            message = (
                f"ForgettingMonitor: with every={self.every} it would take about {projected:.0%} of this run's wall "
                f"time (budget {self.budget:.0%}): one point costs {point:.1f} s ({len(self.tasks)} tasks × {self.n} "
                f"examples), a training step {step_s:.2f} s. Raise every=, lower n= or leave every=None to space the "
                "points automatically"
            )
        self._warn(message)

    def _warn(self, message: str) -> None:
        """Warn once: in ``warnings``, on the next history row and as a ``UserWarning``."""
        self.warnings.append(message)
        self._pending_warning = message if self._pending_warning is None else f"{self._pending_warning}; {message}"
        warnings.warn(message, UserWarning, stacklevel=3)

    def __repr__(self) -> str:
        every = "auto" if self.auto else self.every
        names = [t.name for t in self.tasks]
        return f"ForgettingMonitor(tasks={names}, target={self.target!r}, every={every}, n={self.n})"


def _points_between(step: int, total: int, every: int) -> int:
    """Monitor points after ``step`` up to ``total``: every ``every``-th step, and always the last one."""
    if step >= total:
        return 0
    points = (total // every - step // every) if every > 0 else 0
    return points + (0 if every > 0 and total % every == 0 else 1)


def _cut(text: str) -> str:
    return text if len(text) <= _SAMPLE_CHARS else text[: _SAMPLE_CHARS - 1] + "…"
