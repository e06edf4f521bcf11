"""ForgettingMonitor on tiny models: points at the right steps (step 0 = the base model), rows in the history and on
disk, its wall-time share, floors that stop the run with a checkpoint, the wall-time budget, live samples, choosing
the best checkpoint (and retention keeping it), and bad input caught before training."""

from __future__ import annotations

import json
import warnings
from collections import defaultdict

import pytest
from _train_data import records

import nbft
import nbft.evaluate.monitor as monitor_module
from nbft.config import TrainConfig
from nbft.evaluate import ForgettingMonitor, get_task
from nbft.evaluate.monitor import relative_drop
from nbft.models import tiny_random
from nbft.train import finetune, resume
from nbft.train.selection import best_checkpoint, protected_steps

FP32 = {"precision": "fp32"}


def _rows(run):
    return [h for h in run.history if h["kind"] == "monitor"]


def test_scores_every_task_at_step_0_every_n_and_the_end(tmp_path):
    model, tok = tiny_random("llama")
    mon = ForgettingMonitor(["sentiment", "qa"], every=2, n=3, samples=2)
    cfg = TrainConfig(max_steps=5, batch_size=4, learning_rate=1e-3, keep_last=10, **FP32)
    run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[mon])
    rows = _rows(run)
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    assert all(set(r["scores"]) == {"sentiment", "qa"} and r["target"] == "sentiment" for r in rows)
    assert all(r["base"] == rows[0]["scores"] for r in rows), "step 0 (the base model) is every point's reference"
    assert rows[0]["metric"] == {"sentiment": "accuracy", "qa": "token_f1"} and rows[0]["split"] == "validation"
    # the same fixed examples at every point: the live samples' inputs never change
    inputs = [[s["input"] for s in r["samples"]["qa"]] for r in rows]
    assert len(inputs[0]) == 2 and all(i == inputs[0] for i in inputs)
    fixed = get_task("qa").sample(3, split="validation")
    assert inputs[0][0].startswith(get_task("qa").template.render(fixed[0])[:50])
    # the rows reach every observer and the file on disk
    written = [json.loads(ln) for ln in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert [w for w in written if w["kind"] == "monitor"] == rows
    # its wall-time share: measured per point, and in the summary
    assert "share" not in rows[0] and all(0 < r["share"] < 1 for r in rows[1:])
    assert rows[-1]["monitor_s"] == pytest.approx(sum(mon.point_seconds))
    assert run.summary["monitor_s"] >= rows[-1]["monitor_s"] and run.summary["monitor_s"] < run.summary["wall_s"]
    # the monitor asks for a checkpoint at every point but the final one, which the completed run writes itself
    # (so that resume(more_steps=N) continues exactly)
    assert [r.get("save_checkpoint") for r in rows] == [None, True, True, False]
    assert [p.name for p in run.checkpoints] == ["step-000002", "step-000004", "step-000005"]


class Scripted:
    """Stands in for nbft.evaluate.score: the i-th call for a task returns that task's i-th value."""

    def __init__(self, values: dict[str, list[float]]):
        self.values = values
        self.calls: dict[str, int] = defaultdict(int)

    def __call__(self, model, tokenizer, task, examples, config=None, **kwargs):
        i = self.calls[task.name]
        self.calls[task.name] += 1
        value = self.values[task.name][min(i, len(self.values[task.name]) - 1)]
        refs = [task.reference(ex) for ex in examples]
        outs = [f"answer {i} of {task.name}"] * len(examples)
        return {"value": value, "headline": task.headline_key(), "outputs": outs, "ll_choices": None,
                "references": refs}  # fmt: skip


def test_a_floor_stops_the_run_with_a_checkpoint_naming_task_and_step(tmp_path, monkeypatch):
    # qa falls to 45 (90% of 50) at step 2, then to 30 (60%) at step 4: below its floor of 80%
    monkeypatch.setattr(monitor_module, "score", Scripted({"sentiment": [40, 50, 60, 70], "qa": [50, 45, 30, 30]}))
    model, tok = tiny_random("llama")
    mon = ForgettingMonitor(["sentiment", "qa"], every=2, n=2, floors={"qa": 0.8})
    cfg = TrainConfig(max_steps=8, batch_size=4, keep_last=10, **FP32)
    run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[mon])
    assert run.status == "stopped" and run.summary["steps"] == 4
    assert "qa" in run.stop_reason and "step 4" in run.stop_reason and "80%" in run.stop_reason
    assert run.summary["stop_reason"] == run.stop_reason
    assert "step-000004" in [p.name for p in run.checkpoints], "the stop writes a checkpoint"
    assert [r["step"] for r in _rows(run)] == [0, 2, 4], "the row of the crossing point is kept"
    # Resume: the base scores come back from the run's history; the next points are measured against them.
    monkeypatch.setattr(monitor_module, "score", Scripted({"sentiment": [75], "qa": [48]}))
    again = ForgettingMonitor(["sentiment", "qa"], every=2, n=2, floors={"qa": 0.8})
    rest = resume(tmp_path / "r", observers=[again])
    assert rest.status == "completed"
    later = [r for r in _rows(rest) if r["step"] > 4]
    assert [r["step"] for r in later] == [6, 8] and all(r["base"] == {"sentiment": 40, "qa": 50} for r in later)
    assert later[0]["drop"] == {"qa": pytest.approx(0.04)}


def test_best_checkpoint_within_the_forgetting_budget_and_retention_keeps_it(tmp_path, monkeypatch):
    # the target rises while qa falls: step 2 keeps qa within 20%, step 4 within 40%, steps 6 and 8 lose more
    monkeypatch.setattr(
        monitor_module, "score", Scripted({"sentiment": [40, 60, 70, 80, 85], "qa": [50, 45, 32, 20, 10]})
    )
    model, tok = tiny_random("llama")
    mon = ForgettingMonitor(["sentiment", "qa"], every=2, n=2, max_drop=0.2)
    cfg = TrainConfig(max_steps=8, batch_size=4, keep_last=2, **FP32)
    run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[mon])
    rows = _rows(run)
    assert [r["best_step"] for r in rows] == [None, 2, 2, 2, 2]
    assert [r["worst_drop"] for r in rows] == pytest.approx([0.0, 0.1, 0.36, 0.6, 0.8])
    assert protected_steps(run.history) == {2}
    # keep_last=2 keeps the newest two (step 6 and the final one, step 8) and the monitor's best one (step 2)
    assert [p.name for p in run.checkpoints] == ["step-000002", "step-000006", "step-000008"]
    assert run.best_checkpoint().name == "step-000002"  # the monitor's own budget, 20%
    assert run.best_checkpoint(max_drop=0.65).name == "step-000006"
    assert run.best_checkpoint(max_drop=1.0) == tmp_path / "r" / "model"  # the last point: the final model
    with pytest.raises(LookupError, match=r"smallest worst drop was 10% \(qa\) at step 2"):
        run.best_checkpoint(max_drop=0.05)
    with pytest.raises(ValueError, match="max_drop"):
        run.best_checkpoint(max_drop=20)
    # step 4 fits a 40% budget best, but keep_last removed it: the best one kept is returned, with a warning
    assert run.best_checkpoint(max_drop=0.4).name == "step-000002"
    # the chosen checkpoint loads like a model folder (tokenizer from the run directory)
    loaded, loaded_tok = nbft.load_model(run.best_checkpoint())
    assert type(loaded) is type(model) and loaded_tok.get_vocab() == tok.get_vocab()
    # the star on the plot: the last row names the best step
    from nbft.widgets._figures import monitor_figure

    ax = monitor_figure(run.history).axes[0]
    assert any("best checkpoint" in line.get_label() and list(line.get_xdata()) == [2] for line in ax.lines)


def test_best_checkpoint_needs_monitor_points(tmp_path):
    with pytest.raises(LookupError, match="ForgettingMonitor"):
        best_checkpoint(tmp_path, [{"kind": "train", "step": 1, "loss": 1.0}])


def test_budget_auto_spacing_and_warnings(tmp_path):
    model, tok = tiny_random("llama")
    # every=None: about four points; a budget nothing fits leaves only the start and the end, with a warning
    mon = ForgettingMonitor(["qa"], n=1, samples=0, budget=1e-6)
    cfg = TrainConfig(max_steps=8, batch_size=4, **FP32)
    with pytest.warns(UserWarning, match=r"even measuring only at the start and the end it takes about \d+%"):
        run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "a", observers=[mon])
    assert [r["step"] for r in _rows(run)] == [0, 8] and mon.every == 0
    assert "budget" in _rows(run)[-1]["warning"]
    # an explicit every is kept, and the warning gives the projected share and what to change
    mon = ForgettingMonitor(["qa"], every=2, n=1, samples=0, budget=1e-6)
    with pytest.warns(UserWarning, match=r"with every=2 it would take about \d+% of this run's wall time"):
        run = finetune(*tiny_random("llama"), records(), config=cfg, run_dir=tmp_path / "b", observers=[mon])
    assert [r["step"] for r in _rows(run)] == [0, 2, 4, 6, 8]
    # a generous budget: auto spacing gives about four points and no warning
    mon = ForgettingMonitor(["qa"], n=1, samples=0, budget=0.99)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        run = finetune(*tiny_random("llama"), records(), config=cfg, run_dir=tmp_path / "c", observers=[mon])
    assert [r["step"] for r in _rows(run)] == [0, 2, 4, 6, 8] and mon.every == 2


def test_bad_input_is_refused_before_training(tmp_path):
    with pytest.raises(LookupError, match="Did you mean 'sentiment'"):
        ForgettingMonitor(["sentimnt", "qa"])
    with pytest.raises(ValueError, match="floors name 'q'"):
        ForgettingMonitor(["sentiment", "qa"], floors={"q": 0.8})
    with pytest.raises(ValueError, match="floors\\['qa'\\] = 80"):
        ForgettingMonitor(["sentiment", "qa"], floors={"qa": 80})
    with pytest.raises(ValueError, match="target 'qa2'"):
        ForgettingMonitor(["sentiment", "qa"], target="qa2")
    for bad in ({"every": -1}, {"every": 2.5}, {"n": 0}, {"budget": 1.5}, {"max_drop": 5}):
        with pytest.raises(ValueError):
            ForgettingMonitor(["qa"], **bad)


def test_relative_drop():
    assert relative_drop(50.0, 40.0) == pytest.approx(0.2)
    assert relative_drop(50.0, 60.0) == pytest.approx(-0.2)
    assert relative_drop(0.0, 0.0) == 0.0 and relative_drop(0.0, 5.0) < 0


def test_a_mixture_shows_one_loss_line_per_task_beside_the_monitor(tmp_path):
    from nbft.widgets import LivePlot

    model, tok = tiny_random("llama")
    data = nbft.mix({"sentiment": get_task("sentiment").train(n=12), "qa": get_task("qa").train(n=4)})
    plot = LivePlot(min_interval=0.0)
    mon = ForgettingMonitor(["sentiment", "qa"], every=2, n=1, samples=1)
    cfg = TrainConfig(max_steps=4, batch_size=8, **FP32)
    run = finetune(model, tok, data, config=cfg, run_dir=tmp_path / "r", observers=[mon, plot])
    assert all(set(h["task_losses"]) <= {"sentiment", "qa"} for h in run.history if h["kind"] == "train")
    loss_ax = plot.figure().axes[0]
    assert {"sentiment", "qa"} <= {line.get_label() for line in loss_ax.lines}, "one loss line per task"
    assert [h["step"] for h in plot.history if h["kind"] == "monitor"] == [0, 2, 4]
    assert plot.last_monitor_png is not None and "Live samples" in plot.samples.value


def test_best_checkpoint_of_an_extended_then_stopped_run_is_not_the_stale_final_model(tmp_path, monkeypatch):
    """A run completes at step 4 (model/ = step 4), is extended with resume(more_steps=4) and stopped at step 6 by a
    floor: the best point, step 6, is its checkpoint, never the step-4 model/ left from the first completion."""
    import torch

    monkeypatch.setattr(monitor_module, "score", Scripted({"sentiment": [40, 50, 60], "qa": [50, 48, 47]}))
    model, tok = tiny_random("llama")
    cfg = TrainConfig(max_steps=4, batch_size=4, keep_last=10, **FP32)
    mon = ForgettingMonitor(["sentiment", "qa"], every=2, n=2)
    first = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[mon])
    assert first.status == "completed" and (tmp_path / "r" / "model" / "config.json").exists()
    monkeypatch.setattr(monitor_module, "score", Scripted({"sentiment": [70], "qa": [30]}))
    again = ForgettingMonitor(["sentiment", "qa"], every=2, n=2, floors={"qa": 0.8})
    rest = resume(tmp_path / "r", more_steps=4, observers=[again])
    assert rest.status == "stopped" and rest.summary["steps"] == 6
    best = rest.best_checkpoint(max_drop=1.0)  # the best target score: step 6
    assert best == tmp_path / "r" / "checkpoints" / "step-000006"
    assert best_checkpoint(tmp_path / "r", rest.history, max_drop=1.0) == best
    loaded, _ = nbft.load_model(best)  # and it holds the weights the run stopped with
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), rest.model.parameters(), strict=True))
    # the first run's handle: the run went on past its step 4, so model/ is no proof of step 4; its checkpoint is
    assert first.best_checkpoint(max_drop=1.0) == tmp_path / "r" / "checkpoints" / "step-000004"
