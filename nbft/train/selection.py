"""Choosing a checkpoint with forgetting in view, from the monitor rows of a run's history (plain data).

A measuring observer (e.g. :class:`nbft.evaluate.monitor.ForgettingMonitor`) writes rows ``{"kind": "monitor",
"step", "target_score", "worst_drop", "worst_task", "max_drop", "keep_checkpoints", ...}``: the target task's score,
the largest relative drop on the other tasks (0.25 = a task lost a quarter of its base score), and the checkpoints it
wants kept. This module reads only those keys, so any monitor that writes them gets the same selection.

Example::

    best_checkpoint("runs/sentiment-1", run.history, max_drop=0.2)   # runs/sentiment-1/checkpoints/step-000030
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nbft.train.checkpoint import checkpoint_dir, list_checkpoints

__all__ = ["best_checkpoint", "protected_steps"]

logger = logging.getLogger("nbft.train")


def protected_steps(history: Iterable[Mapping[str, Any]]) -> set[int]:
    """The checkpoints retention must keep besides the newest ``keep_last``: what the latest monitor row that says
    so lists under ``keep_checkpoints`` (the monitor's best point so far).

    Example:
        >>> protected_steps([{"kind": "monitor", "step": 10, "keep_checkpoints": [10]},
        ...                  {"kind": "monitor", "step": 20, "keep_checkpoints": [10]}])
        {10}
    """
    keep: set[int] = set()
    for row in history:
        if row.get("kind") == "monitor" and "keep_checkpoints" in row:
            keep = {int(s) for s in row["keep_checkpoints"] or ()}
    return keep


def _points(history: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [
        r
        for r in history
        if r.get("kind") == "monitor" and r.get("step", 0) > 0 and "target_score" in r and "worst_drop" in r
    ]


def best_checkpoint(
    run_dir: str | Path,
    history: Sequence[Mapping[str, Any]],
    max_drop: float | None = None,
    *,
    total_steps: int | None = None,
) -> Path:
    """The checkpoint with the best target score whose worst drop on the other tasks stays within ``max_drop``.

    ``max_drop`` is a fraction of each other task's base score (0.2: every other task keeps at least 80% of its base
    score); default: the monitor's own ``max_drop``. Ties go to the earlier step. ``total_steps``: the last step of
    a completed run, whose final model (``<run_dir>/model``) then stands for that step, unless the run went on past
    it (``resume(..., more_steps=N)`` wrote later checkpoints, and may have replaced or outdated ``model/``); without
    it, only checkpoint folders are returned (a completed run's final checkpoint holds its final weights).

    Returns a checkpoint folder (``nbft.load_model`` and ``nbft.compare`` take it); raises ``LookupError`` when no
    point fits, naming the smallest worst drop there was.

    Example::

        path = best_checkpoint(run.run_dir, run.history, max_drop=0.1)
        model, tok = nbft.load_model(path)
    """
    run_dir = Path(run_dir)
    points = _points(history)
    if not points:
        raise LookupError(
            "the run has no monitor points with task scores to choose from: train with "
            "observers=[nbft.ForgettingMonitor([target, *others], every=N)]"
        )
    if max_drop is None:
        max_drop = next((p.get("max_drop") for p in reversed(points) if p.get("max_drop") is not None), None)
    if max_drop is not None and not (isinstance(max_drop, int | float) and 0 <= max_drop <= 1):
        raise ValueError(f"max_drop is a fraction of the base score in [0, 1] (0.2 = 20%), got {max_drop!r}")
    budget = math.inf if max_drop is None else float(max_drop) + 1e-12
    fits = sorted((p for p in points if p["worst_drop"] <= budget), key=lambda p: (-p["target_score"], p["step"]))
    if not fits:
        least = min(points, key=lambda p: p["worst_drop"])
        raise LookupError(
            f"no checkpoint keeps every other task within {max_drop:.0%} of its base score: the smallest worst drop "
            f"was {least['worst_drop']:.0%} ({least.get('worst_task')}) at step {least['step']}. Raise max_drop, stop "
            "earlier, or train with replay (nbft.mix(..., replay=0.1))"
        )
    final = _final_model_step(run_dir, total_steps)
    for p in fits:
        step = int(p["step"])
        path = checkpoint_dir(run_dir, step)
        if step == final:
            chosen = run_dir / "model"  # the completed run's saved model (its final checkpoint holds the same weights)
        elif path.is_dir():
            chosen = path
        else:
            continue
        if p is not fits[0]:
            logger.warning(
                "the best point within the budget (step %s, target score %.1f) has no checkpoint on disk (not asked "
                "for, or removed by TrainConfig.keep_last); the best one kept is step %s (%.1f)",
                fits[0]["step"], fits[0]["target_score"], step, p["target_score"],
            )  # fmt: skip
        return chosen
    steps = [p["step"] for p in fits]
    raise FileNotFoundError(
        f"the points within the budget (steps {steps}) have no checkpoint in {run_dir / 'checkpoints'}: train with "
        "ForgettingMonitor(checkpoints=True) (the default), and a larger TrainConfig.keep_last to keep more of them"
    )


def _final_model_step(run_dir: Path, total_steps: int | None) -> int | None:
    """The step whose weights ``<run_dir>/model`` is known to hold: the completed run's last step, if nothing was
    trained past it (any later step leaves a checkpoint, when the extended run stops or completes)."""
    if total_steps is None or not (run_dir / "model" / "config.json").exists():
        return None
    later = [p for p in list_checkpoints(run_dir) if int(p.name.removeprefix("step-")) > total_steps]
    return None if later else int(total_steps)
